"""Small shared fixtures."""

import pytest


@pytest.fixture
def tiny_model():
    """A fresh `tiny` preset transformer (fp32, seeded: every call gives the same weights)."""
    from wanrt.export.model import ModelSpec, load_transformer

    return load_transformer(ModelSpec("tiny"))
