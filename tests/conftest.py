"""Small shared fixtures."""

import pytest


@pytest.fixture
def tiny_model():
    """A fresh `tiny` preset transformer (fp32, seeded: every call gives the same weights)."""
    from wanrt.export.model import ModelSpec, load_transformer

    return load_transformer(ModelSpec("tiny"))


# issue 13: the serve tests' session-scoped artifacts (tiny exports + bundle), shared by tests/test_serve*.py and
# tests/test_runtime_serve.py so they are built once per run
from tests.serve_helpers import serve_artifacts  # noqa: E402,F401
