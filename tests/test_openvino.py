"""OpenVINO engines (issue 12): build, load, manifest checks, cache, bf16/int8 gates, LoRA hot-swap on OpenVINO and
ONNX Runtime, and bad input. Tiny preset; one separate-mode export (and one fresh export of the swapped-in LoRA)
shared by the module."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wanrt.artifacts import cpu_info, sha256_file
from wanrt.commands.main import cli
from wanrt.dit_io import DitIO, ShapeRange, VideoShape
from wanrt.engines.openvino.engine import (
    OvEngine,
    OvEngineSpec,
    build_openvino_engine,
    openvino_version,
    require_openvino,
)
from wanrt.errors import EngineError, LoraError, MissingDependencyError, WanrtError

SHAPE = VideoShape(9, 48, 64)


@pytest.fixture(scope="module")
def ov_art(tmp_path_factory, tiny_rank4_exports):
    """Exports: r4 separate (the engine's), the rank-2 LoRA as a file, a fresh separate export of that file, a merged
    r4 export; the eager fp32 reference on seeded inputs."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.export.onnx_export import ExportSpec
    from wanrt.runtime.backends import build_transformer

    root = tmp_path_factory.mktemp("ov")
    spec = ExportSpec(validate=False)
    shutil.copytree(tiny_rank4_exports["separate"], root / "sep4")
    model = load_transformer(ModelSpec("tiny"))
    lora2 = synthetic_lora(model, rank=2, seed=11)
    lora_file = save_lora_file(lora2, root / "r2.safetensors")
    export_model(ModelSpec("tiny"), LoraSpec(file=str(lora_file), mode="separate"), spec, root / "fresh2",
                 progress=False)
    shutil.copytree(tiny_rank4_exports["merged"], root / "merged4")
    manifest = json.loads((root / "sep4" / "manifest.json").read_text())
    feeds = DitIO(manifest["payload"]["geometry"], torch.float32, ShapeRange(SHAPE, SHAPE)).dummy_inputs(1, SHAPE)
    eager, _ = build_transformer(ModelSpec("tiny"), LoraSpec(rank=4, mode="separate"))
    with torch.inference_mode():
        ref = eager(hidden_states=feeds["latents"], timestep=feeds["timestep"], encoder_hidden_states=feeds["text"],
                    encoder_hidden_states_image=feeds["image"], return_dict=False)[0].numpy()
    return {"root": root, "sep4": root / "sep4", "fresh2": root / "fresh2", "merged4": root / "merged4",
            "lora2": lora2, "lora_file": lora_file, "model": model, "ref": ref,
            "feeds": {k: v.numpy() for k, v in feeds.items()}, "cache": root / "cache"}


def _build(ov_art, precision, name=None, **kw):
    out = ov_art["root"] / (name or f"eng-{precision}")
    spec = OvEngineSpec(precision=precision, cache_dir=str(ov_art["cache"]), **kw)
    return out, build_openvino_engine(ov_art["sep4"], spec, out, force=True)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _ort(export_dir, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(export_dir / "model.onnx")).run(None, feeds)[0]


# ------------------------------------------------------------------------------------------------ build / load
def test_build_manifest_and_fp32_parity(ov_art):
    out, m = _build(ov_art, "fp32")
    assert m.flavour == "openvino" and m.precision == "fp32" and m.document == json.loads((out / "manifest.json")
                                                                                         .read_text())
    assert m.runtime["version"] == openvino_version() and m.runtime["properties"]["INFERENCE_PRECISION_HINT"]
    assert m.section("cpu")["model"] == cpu_info()["model"] and isinstance(m.section("cpu")["isa"], list)
    assert m.onnx["sha256"] == sha256_file(ov_art["sep4"] / "model.onnx")
    assert (out / "model.blob").stat().st_size == m.plan_bytes and (out / "lora.safetensors").is_file()
    y = OvEngine(out, threads=1).infer(ov_art["feeds"])
    assert _rel(y, ov_art["ref"]) <= 1e-5  # fp32 engine vs eager fp32 (an imported blob keeps its fp32 hint)


def test_cache_reuses_the_compiled_engine(ov_art):
    _, first = _build(ov_art, "fp32", name="cache-a")
    out, second = _build(ov_art, "fp32", name="cache-b")
    assert second.cache_key == first.cache_key
    assert second.document["created"] == first.document["created"]  # fetched from the cache, not recompiled
    assert (out / "model.blob").read_bytes() == (ov_art["root"] / "cache-a" / "model.blob").read_bytes()


def test_manifest_mismatch_is_one_line(ov_art):
    out, _ = _build(ov_art, "fp32", name="tamper")
    path = out / "manifest.json"
    good = path.read_text()
    for key, value, needle in (("version", "2020.1.0", "compiled by OpenVINO 2020.1.0"),):
        m = json.loads(good)
        m["payload"]["openvino"][key] = value
        path.write_text(json.dumps(m))
        with pytest.raises(EngineError, match=needle) as e:
            OvEngine(out)
        assert "\n" not in str(e.value)
    m = json.loads(good)
    m["payload"]["cpu"] = {"model": "Some Other CPU", "isa": ["amx_bf16"]}
    path.write_text(json.dumps(m))
    with pytest.raises(EngineError, match="compiled on Some Other CPU"):
        OvEngine(out)
    path.write_text(good)
    (out / "model.blob").write_bytes(b"x")  # truncated blob: refused before OpenVINO sees it
    with pytest.raises(WanrtError, match="truncated or replaced"):
        OvEngine(out)


# ------------------------------------------------------------------------------------------------ precision
def _lacks(precision):
    """wanrt's own reading of this CPU (engines/openvino.device_capabilities): the reason it cannot run
    `precision`, or None. A CPU without BF16 (AVX2-only) or VNNI tests the refusal instead of the gate."""
    from wanrt.engines.openvino.engine import supported_precisions

    return supported_precisions()[precision]


def _refused(ov_art, precision, why):
    out = ov_art["root"] / f"refused-{precision}"
    with pytest.raises(EngineError) as e:
        build_openvino_engine(ov_art["sep4"], OvEngineSpec(precision=precision, cache=False), out)
    assert str(e.value) == why and "\n" not in why and not out.exists()


def test_bf16_meets_the_bf16_gate(ov_art):
    why = _lacks("bf16")
    if why is not None:
        _refused(ov_art, "bf16", why)
        return
    out, m = _build(ov_art, "bf16")
    assert m.section("time_engine")["precision"] == "fp32"  # Wan's keep-in-fp32 time path, cut out
    err = _rel(OvEngine(out).infer(ov_art["feeds"]), ov_art["ref"])
    assert err <= 1e-2, err


def test_int8_meets_its_gate_and_lists_quantized_nodes(ov_art):
    why = _lacks("int8")
    if why is not None:
        _refused(ov_art, "int8", why)
        return
    out, m = _build(ov_art, "int8")
    int8 = m.section("precision_report")["int8"]
    assert int8["count"] == len(int8["quantized_nodes"]) > 0
    err = _rel(OvEngine(out).infer(ov_art["feeds"]), ov_art["ref"])
    assert err <= 5e-2, err


# ------------------------------------------------------------------------------------------------ LoRA swap
def test_swap_equals_a_fresh_export_on_openvino_and_ort(ov_art):
    from wanrt.engines.openvino.engine import OvEngine as Engine
    from wanrt.runtime.backends import OrtBackend

    fresh = _ort(ov_art["fresh2"], ov_art["feeds"])
    out, m = _build(ov_art, "fp32", name="swap")
    engine = Engine(out)
    before = engine.infer(ov_art["feeds"])
    t0 = time.perf_counter()
    info = engine.set_lora(ov_art["lora2"])  # rank 2 into the rank-4 engine: zero-padded
    swap_s = time.perf_counter() - t0
    after = engine.infer(ov_art["feeds"])
    assert _rel(after, fresh) <= 1e-5 and _rel(before, fresh) > 1e-2 and info["weights"] > 0
    compile_s = m.timings_s["compile"]
    print(f"OpenVINO swap {swap_s * 1e3:.1f} ms vs compile {compile_s * 1e3:.0f} ms: {compile_s / swap_s:.0f}x")

    ort_backend = OrtBackend(ov_art["sep4"], threads=1)
    feeds = {k: torch.from_numpy(v) for k, v in ov_art["feeds"].items()}
    ort_backend.set_lora(ov_art["lora2"])
    y = ort_backend(feeds["latents"], feeds["timestep"], feeds["text"], feeds["image"]).numpy()
    assert _rel(y, fresh) <= 1e-5
    ort_backend.set_lora(None)  # no LoRA: the base model
    base = ort_backend(feeds["latents"], feeds["timestep"], feeds["text"], feeds["image"]).numpy()
    assert _rel(base, fresh) > 1e-3


def test_refit_cli_swaps_without_recompiling(ov_art):
    out, m = _build(ov_art, "fp32", name="refit")
    blob = (out / "model.blob").read_bytes()
    res = CliRunner().invoke(cli, ["refit", str(out), "--lora", str(ov_art["lora_file"])])
    assert res.exit_code == 0, res.output
    assert (out / "model.blob").read_bytes() == blob  # the compiled model is untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["payload"]["refits"][-1]["recompiled"] is False
    fresh = _ort(ov_art["fresh2"], ov_art["feeds"])
    assert _rel(OvEngine(out).infer(ov_art["feeds"]), fresh) <= 1e-5


# ------------------------------------------------------------------------------------------------ bad input
def test_wrong_rank_or_module_set_is_refused_before_any_change(ov_art):
    from wanrt.export.lora import synthetic_lora

    out, _ = _build(ov_art, "fp32", name="bad-lora")
    engine = OvEngine(out)
    before = engine.infer(ov_art["feeds"])
    with pytest.raises(LoraError, match="exceeds the engine's rank 4") as e:
        engine.set_lora(synthetic_lora(ov_art["model"], rank=8, seed=1))
    assert "\n" not in str(e.value)
    with pytest.raises(LoraError, match="outside the engine's branch"):
        engine.set_lora(synthetic_lora(ov_art["model"], rank=2, targets="proj_out", seed=1))
    assert np.array_equal(engine.infer(ov_art["feeds"]), before)  # nothing half-swapped
    res = CliRunner().invoke(cli, ["refit", str(out), "--rank", "8"])
    assert res.exit_code == 2 and "exceeds" in res.output and len(res.output.strip().splitlines()) == 1


def test_merged_export_cannot_swap(ov_art):
    from wanrt.runtime.backends import OrtBackend

    with pytest.raises(EngineError, match="lora-mode separate"):
        OrtBackend(ov_art["merged4"], threads=1).set_lora(ov_art["lora2"])
    out = ov_art["root"] / "merged-engine"
    build_openvino_engine(ov_art["merged4"], OvEngineSpec(cache=False), out)
    with pytest.raises(EngineError, match="lora-mode separate"):
        OvEngine(out).set_lora(ov_art["lora2"])


def test_openvino_missing_disables_the_flavour_with_a_reason(ov_art, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees when it is not installed
    with pytest.raises(MissingDependencyError, match=r"wanrt\[openvino\]"):
        require_openvino()
    res = CliRunner().invoke(cli, ["build", str(ov_art["sep4"]), "--flavour", "openvino", "-o",
                                   str(ov_art["root"] / "never")])
    assert res.exit_code == MissingDependencyError.exit_code
    assert len(res.output.strip().splitlines()) == 1 and "wanrt[openvino]" in res.output
    assert not (ov_art["root"] / "never").exists()


def test_ov_backend_from_an_export_is_usable_by_bench_and_generate(ov_art, monkeypatch):
    from wanrt.runtime.backends import available_backends, create_backend

    monkeypatch.setenv("WANRT_CACHE_DIR", str(ov_art["root"] / "wanrt-cache"))  # never the user's cache
    assert available_backends()["ov"] is None
    backend = create_backend("ov", artifact=ov_art["sep4"], threads=1, precision="fp32")
    f = {k: torch.from_numpy(v) for k, v in ov_art["feeds"].items()}
    y = backend(f["latents"], f["timestep"], f["text"], f["image"])
    assert y.shape == f["latents"][:, :16].shape and _rel(y.numpy(), ov_art["ref"]) <= 1e-5
    assert backend.describe()["precision"] == "fp32" and list((ov_art["root"] / "wanrt-cache").iterdir())
    backend.set_lora(ov_art["lora2"])
    y2 = backend(f["latents"], f["timestep"], f["text"], f["image"]).numpy()
    assert _rel(y2, _ort(ov_art["fresh2"], ov_art["feeds"])) <= 1e-5


def test_precision_the_cpu_lacks_is_refused_before_any_write(ov_art, monkeypatch):
    import wanrt.engines.openvino.engine as ovx

    monkeypatch.setattr(ovx, "device_capabilities", lambda _core, _device: ["FP32"])  # a CPU without bf16/int8
    out = ov_art["root"] / "no-bf16"
    with pytest.raises(EngineError, match="no BF16 support") as e:
        build_openvino_engine(ov_art["sep4"], OvEngineSpec(precision="bf16", cache=False), out)
    assert "\n" not in str(e.value) and not out.exists()


def test_ov_backend_loads_the_export_from_the_shared_engine_cache(ov_art, monkeypatch):
    """An export handed to backend 'ov' is compiled once under the engine cache's own key (engines/cache.py, the
    entry `wanrt build` stores and reuses), loaded from there in place, and found again without a compile."""
    from wanrt.engines.cache import EngineCache
    from wanrt.engines.openvino.engine import cache_key
    from wanrt.runtime.backends import create_backend

    cache = ov_art["root"] / "shared-cache"
    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache))
    entry = EngineCache(cache / "engines").path(cache_key(ov_art["sep4"], OvEngineSpec(precision="fp32")))
    first = create_backend("ov", artifact=ov_art["sep4"], threads=1, precision="fp32")
    assert first.artifact == entry and (entry / "manifest.json").is_file()
    assert [p.name for p in (cache / "engines").iterdir()] == [entry.name]  # no second copy beside it
    again = create_backend("ov", artifact=ov_art["sep4"], threads=1, precision="fp32")
    assert again.artifact == entry and again.manifest.cache_key == entry.name
