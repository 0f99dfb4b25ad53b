"""`wanrt refit` and the LoRA swap as an attacker would drive them: a non-finite `--lora-scale`, a scale that
overflows the engine's dtype, a bad LoRA file or a foreign `-o` directory. Each is refused in one line, exit 2,
with the engine left byte for byte as it was, and the input checks come before the base model loads (the
OpenVINO swap used to load the model first; TensorRT's refit checked first). And `wanrt pack` refuses a library
LoRA its swapping engine cannot take (an extracted LoRA's bias deltas into a graph without a bias slot), which
used to pass pack and verify and then fail every request naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from wanrt.commands.main import cli
from wanrt.errors import LoraError


@pytest.fixture(scope="module")
def art(serve_artifacts, tmp_path_factory):
    """An fp32 OpenVINO engine of the serve tests' rank-4 separate-mode export (tiny preset), a rank-4 LoRA file
    and a copy of that file with one NaN."""
    from safetensors.torch import load_file, save_file

    from wanrt.engines.openvino.engine import OvEngineSpec, build_openvino_engine

    root = tmp_path_factory.mktemp("refit2")
    build_openvino_engine(serve_artifacts["separate"], OvEngineSpec(precision="fp32", cache=False), root / "engine")
    lora_file = serve_artifacts["lora_b"]
    sd = load_file(str(lora_file))
    key = sorted(sd)[0]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(root / "nan.safetensors"))
    return {"root": root, "export": serve_artifacts["separate"], "engine": root / "engine", "lora": lora_file,
            "nan_lora": root / "nan.safetensors"}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def no_model_load(monkeypatch):
    """Refusals must come before the base model loads (minutes on 14B): loading it here fails the test."""
    import wanrt.engines.trt.refit as refit

    def forbidden(_manifest):
        raise AssertionError("the base model was loaded before the inputs were checked")

    monkeypatch.setattr(refit, "load_base_model", forbidden)


def _refused(res, *needles: str) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_non_finite_scale_is_refused_and_the_engine_is_untouched(art, no_model_load, scale):
    before = _snapshot(art["engine"])
    res = CliRunner().invoke(cli, ["refit", str(art["engine"]), "--lora", str(art["lora"]), "--lora-scale", scale])
    _refused(res, "--lora-scale")
    assert _snapshot(art["engine"]) == before


def test_bad_lora_and_foreign_output_are_refused_before_the_model_loads(art, tmp_path, no_model_load):
    before = _snapshot(art["engine"])
    _refused(CliRunner().invoke(cli, ["refit", str(art["engine"]), "--lora", str(art["nan_lora"])]), "NaN")
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["refit", str(art["engine"]), "--rank", "2", "-o", str(mine), "--force"])
    _refused(res, "not a wanrt artifact")
    assert (mine / "notes.txt").read_text() == "mine" and _snapshot(art["engine"]) == before


def test_scale_overflowing_the_engine_dtype_is_refused_before_any_write(art):
    """Every input finite, the product not: scale 1e300 times B overflows float32. The last gate before an engine
    (check_weights) is shared by the OpenVINO swap, the ORT swap and TensorRT's refit."""
    before = _snapshot(art["engine"])
    res = CliRunner().invoke(cli, ["refit", str(art["engine"]), "--lora", str(art["lora"]), "--lora-scale", "1e300"])
    _refused(res, "not finite")
    assert _snapshot(art["engine"]) == before

    from wanrt.export.lora_formats import load_lora_file
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.runtime.backends import OrtBackend

    lora = load_lora_file(art["lora"], load_transformer(ModelSpec("tiny", layers=1)), lora_scale=1e300)
    backend = OrtBackend(art["export"], threads=1)
    with pytest.raises(LoraError, match="not finite"):
        backend.set_lora(lora)
    assert backend._lora_feeds == {} or all(bool(torch.isfinite(t).all()) for t in backend._lora_feeds.values())


# ------------------------------------------------------------------------------------------------ pack
@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A LoRA from `wanrt extract` (it carries diff_b) and a separate-mode export of it (its graph has the bias
    slots). The export without bias slots is the serve tests' rank-4 separate one (serve_artifacts)."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.extract import ExtractSpec, extract_to_dir
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    root = tmp_path_factory.mktemp("pack2")
    one_block = ModelSpec("tiny", layers=1)  # as the serve tests' exports: half the export time
    extract_to_dir(one_block, ExtractSpec("synthetic", ranks=(2,)), root / "ex")
    lora = root / "ex" / "lora-r2.safetensors"
    spec = ExportSpec(validate=False)
    export_model(one_block, LoraSpec(file=str(lora), mode="separate"), spec, root / "sep-ex", progress=False)
    return {"root": root, "lora": lora, "sep_ex": root / "sep-ex"}


def test_pack_refuses_a_library_lora_its_engine_cannot_swap(extracted, serve_artifacts, tmp_path):
    out = tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["pack", "-o", str(out), "--artifact", f"sep={serve_artifacts['separate']}",
                                   "--lora", f"other={extracted['lora']}"])
    line = _refused(res, "--lora other", "bias", "--lora-mode separate")
    assert "'sep'" in line and not out.exists() and not list(tmp_path.glob(".bundle*"))


def test_an_extracted_lora_packs_and_swaps_into_an_engine_with_bias_slots(extracted, tmp_path):
    from wanrt.export.lora_formats import load_lora_file
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.runtime.backends import OrtBackend
    from wanrt.runtime.serving.bundle import load_catalog

    out = tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["pack", "-o", str(out), "--artifact", f"sep={extracted['sep_ex']}",
                                   "--lora", f"other={extracted['lora']}"])
    assert res.exit_code == 0, res.output
    catalog = load_catalog(out)
    engine = catalog.route("other")
    assert engine.name == "sep"
    lora = load_lora_file(catalog.loras["other"]["abspath"], load_transformer(ModelSpec("tiny", layers=1)),
                          lora_scale=0.5)
    swapped = OrtBackend(engine.path, threads=1).set_lora(lora)  # what a replica does for `lora: "other"`
    assert swapped["loaded"]["has_diff_b"] and swapped["weights"] == 3 * len(lora.modules)
