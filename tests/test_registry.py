"""The flavour registry (engines/registry.py) is the one vocabulary of engine flavours: the CLI's choices, the
runtime's backends and the bench's precisions come from it, and a precision a flavour does not build is refused in
one line, never swapped for another."""

from __future__ import annotations

from click.testing import CliRunner

from wanrt.commands.main import cli
from wanrt.engines import registry
from wanrt.manifests import EngineManifest
from wanrt.runtime.backend_names import Backend
from wanrt.runtime.bench.spec import BenchSpec


def test_the_registry_names_every_flavour_once_and_the_cli_offers_them():
    assert registry.names() == ("tensorrt", "rtx", "openvino")
    assert registry.choices() == ("auto", *registry.names()) and registry.get("auto").name == "tensorrt"
    assert registry.backends() == ("trt", "ov") and set(registry.backends()) <= set(Backend.values())
    assert registry.precision_choices() == ("fp32", "fp16", "bf16", "fp8", "int8", "w8a8")
    help_text = CliRunner().invoke(cli, ["build", "--help"]).output
    assert "[auto|tensorrt|rtx|openvino]" in help_text and "OpenVINO (--flavour openvino):" in help_text


def test_an_engine_manifest_names_its_flavour():
    trt = {"kind": "engine", "specs": {}, "payload": {"engine": "engine.plan", "plan_bytes": 1, "precision": "bf16",
                                                       "lora": {}, "trt": {"flavour": "rtx", "version": "1.2"}}}
    ov = {"kind": "engine", "specs": {}, "payload": {"engine": "model.blob", "plan_bytes": 1, "precision": "fp32",
                                                      "lora": {}, "flavour": "openvino"}}
    assert [registry.get(EngineManifest.from_dict(m).flavour).name for m in (trt, ov)] == ["rtx", "openvino"]


def test_a_precision_a_flavour_does_not_build_is_refused_not_substituted(tmp_path):
    ov = registry.get("openvino")
    assert BenchSpec(backends=("ov",), trt_precision="fp16").precision_of("ov") == "fp16"  # was fp32 silently
    assert BenchSpec(backends=("ov",)).precision_of("ov") == "fp32"  # its default without --precision
    assert "builds fp32, bf16, int8" in ov.refusal("fp16") and registry.get("tensorrt").refusal("int8")
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny", "--backends", "eager,ov", "--precision", "fp8",
                                   "-o", str(tmp_path / "res")], env={"WANRT_CACHE_DIR": str(tmp_path / "cache")})
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "--backends ov: --precision fp8" in lines[0], res.output
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_every_flavour_hook_names_a_callable():
    """A flavour's build, load, runtime check, runner and refit are "module:attribute" names (LazyHooks), imported on
    first call: a misspelt one would fail only when that path runs, so each is resolved here."""
    for f in registry.flavours():
        # stage_session only where the flavour runs stage graphs (the VAE, the encoders): its stage_precisions say
        stage = {"stage_session"} if f.stage_precisions else set()
        assert set(f.hooks) == {"build", "load", "check_runtime", "runner", "refit"} | stage, f.name
        assert all(callable(f._hook(name)) for name in f.hooks), f.name
