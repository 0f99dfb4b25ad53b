"""Small shared fixtures, and the skip policy: a test skips only for a GPU or the platform, never for an extra.

The README's test command installs `.[dev]` (every extra the suite uses) and fetches the metric weights, so a skip
for anything else means a broken install, for a user as for CI: it fails the run, naming the test and the reason,
whether or not `CI` is set. A module-level `pytest.importorskip` is a collection-time skip and fails the same way.
"""

import shutil

import pytest

# A skip reason must start with one of these (the skip's own text, as `pytest -rs` prints it).
ALLOWED_SKIP_REASONS = (
    "needs an NVIDIA GPU",  # CI's machine has none; tests/test_engines_gpu.py runs where one is
    "needs a machine without a GPU",  # the CPU-only paths; on a GPU machine the GPU tests cover them
    "platform:",  # what this OS or container forbids, e.g. mounting a tmpfs without root or user namespaces
)


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The text a skip was given (pytest stores it as the last item of a (path, line, text) longrepr)."""
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


def _refuse_disallowed_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not reason.startswith(ALLOWED_SKIP_REASONS):
        report.outcome = "failed"
        report.longrepr = (f"{report.nodeid} skipped for a reason the suite does not allow: {reason!r}\n"
                           f"a test skips only with a reason starting {ALLOWED_SKIP_REASONS} (tests/conftest.py); "
                           "a missing extra is a broken install: pip install -e '.[dev]' && wanrt weights fetch")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport():  # pluggy passes only the arguments named
    report = yield
    _refuse_disallowed_skip(report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report():
    report = yield
    _refuse_disallowed_skip(report)
    return report


@pytest.fixture
def keep_built_pipelines(monkeypatch):
    """`wrap(module)` makes `module.build_pipeline` keep what it builds; returns that list, for a test to inspect
    the pipeline a command ran (its encoders' and VAE's geometry)."""
    def wrap(module) -> list:
        built, real = [], module.build_pipeline

        def build_and_keep(*args, **kwargs):
            built.append(real(*args, **kwargs))
            return built[-1]

        monkeypatch.setattr(module, "build_pipeline", build_and_keep)
        return built
    return wrap


@pytest.fixture
def tiny_model():
    """A fresh `tiny` preset transformer (fp32, seeded: every call gives the same weights)."""
    from wanrt.export.model import ModelSpec, load_transformer

    return load_transformer(ModelSpec("tiny"))


# issue 13: the serve tests' session-scoped artifacts (tiny exports + bundle), shared by tests/test_serve*.py and
# tests/test_runtime_serve.py so they are built once per run
from tests.serve_helpers import serve_artifacts, stack_artifacts  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_rank4_exports(tmp_path_factory):
    """`tiny` with the seeded rank-4 synthetic LoRA (seed 0), merged and separate, exported once per run (~15 s
    each, most of it torch.export) for the modules that need exactly these; each copies them into
    its own folder, so nothing a test writes beside or into one reaches another module."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    root = tmp_path_factory.mktemp("tiny-rank4")
    for mode in ("separate", "merged"):
        export_model(ModelSpec("tiny"), LoraSpec(rank=4, mode=mode, seed=0), ExportSpec(validate=False), root / mode,
                     progress=False)
    return {mode: root / mode for mode in ("separate", "merged")}


@pytest.fixture(scope="session")
def tiny_separate_exports(tmp_path_factory, tiny_rank4_exports):
    """Two `tiny` separate-mode exports with rank-4 synthetic LoRAs, seeds 0 ("sep") and 5 ("fresh": what a swap to
    seed 5 must equal), built once per run for tests/test_w8a8.py and tests/test_lora_forms.py (~30 s each)."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    from wanrt.dit_io import DitIO, ShapeRange, VideoShape

    root = tmp_path_factory.mktemp("tiny-separate")
    shutil.copytree(tiny_rank4_exports["separate"], root / "sep")
    export_model(ModelSpec("tiny"), LoraSpec(rank=4, mode="separate", seed=5), ExportSpec(validate=False),
                 root / "fresh", progress=False)
    shape = VideoShape(5, 32, 32)  # the seeded inputs both files run the engines on (torch, and numpy feeds)
    geometry = {"in_channels": 36, "text_dim": 32, "image_dim": 16}  # the tiny preset's
    inputs = DitIO(geometry, shapes=ShapeRange(shape, shape)).dummy_inputs(1, shape, seed=3, timestep=500.0)
    return {"sep": root / "sep", "fresh": root / "fresh", "inputs": inputs,
            "feeds": {k: v.numpy() for k, v in inputs.items()}}
