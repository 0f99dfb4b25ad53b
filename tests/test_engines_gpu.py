"""engines/ on an NVIDIA GPU: build, deserialize, run with torch CUDA tensors against eager PyTorch, LoRA refit in
both modes (A -> B -> A exact), FP8, corrupt plans. Skipped (with the reason) where torch sees no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wanrt.engines.trt.refit import refit_loaded_engine
from wanrt.errors import BadInputError, EngineError, LoraError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda)")

SHAPE_PROFILE = "1x1x16x16:2x5x32x32:2x9x64x64"


def _export(out: Path, mode: str, dtype: str, rank: int = 4):
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    export_model(ModelSpec("tiny"), LoraSpec(rank=rank, mode=mode, seed=0), ExportSpec(dtype=dtype, validate=False),
                 out, progress=False)
    return out


def _build(onnx_dir: Path, out: Path, **kw):
    from wanrt.engines.trt.build import build_engine_from_onnx_dir
    from wanrt.engines.trt.engine_spec import EngineSpec
    from wanrt.engines.trt.fp8.quantize import Fp8Spec

    spec = EngineSpec(profiles=(SHAPE_PROFILE,), cache=False, fp8=Fp8Spec(calib=2, keep_blocks="0"), **kw)
    return build_engine_from_onnx_dir(onnx_dir, spec, out)


def _inputs(batch=2, f=2, h=4, w=4, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(batch, 36, f, h, w, generator=g).to(dtype).cuda(),
            "timestep": (torch.rand(batch, generator=g) * 999 + 0.5).cuda(),
            "text": torch.randn(batch, 512, 32, generator=g).to(dtype).cuda(),
            "image": torch.randn(batch, 257, 16, generator=g).to(dtype).cuda()}


def _eager(mode: str, dtype: str, lora, feed):
    from wanrt.export.lora import apply_lora
    from wanrt.export.model import ModelSpec, load_transformer

    model = load_transformer(ModelSpec("tiny", dtype=dtype))
    if lora is not None:
        apply_lora(model, lora, mode)
    model = model.cuda()
    with torch.no_grad():
        return model(hidden_states=feed["latents"], timestep=feed["timestep"], encoder_hidden_states=feed["text"],
                     encoder_hidden_states_image=feed["image"], return_dict=False)[0]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _lora(rank, seed, dtype="bf16"):
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.model import ModelSpec, load_transformer

    return synthetic_lora(load_transformer(ModelSpec("tiny", dtype=dtype)), rank, "all", seed=seed)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    return _export(d / "onnx", "merged", "bf16"), d


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    return _export(d / "onnx", "separate", "bf16"), d


def test_build_run_matches_eager_and_refuses_bad_shapes(merged):
    from wanrt.engines.trt.engine import TRTEngine

    onnx_dir, d = merged
    manifest = _build(onnx_dir, d / "engine")
    assert manifest.section("gpu")["name"] == torch.cuda.get_device_name()
    with TRTEngine(d / "engine", verify_hash=True) as engine:
        for batch, (f, h, w) in ((1, (1, 2, 2)), (2, (2, 4, 4)), (2, (3, 8, 6))):
            feed = _inputs(batch, f, h, w)
            out = engine(**feed)
            torch.cuda.synchronize()
            ref = _eager("merged", "bf16", _lora(4, 0), feed)
            assert out.shape == ref.shape and _rel(out, ref) < 3e-2
        with pytest.raises(BadInputError, match="outside this engine's profiles"):
            engine(**_inputs(2, 5, 4, 4))


def test_separate_refit_hot_swap_and_zero_padding(separate):
    from wanrt.engines.trt.engine import TRTEngine

    onnx_dir, d = separate
    manifest = _build(onnx_dir, d / "engine", refit="yes")
    assert manifest.lora["refit"] == "individual"
    feed = _inputs()
    with TRTEngine(d / "engine") as engine:
        out_a = engine(**feed).clone()
        lora_b = _lora(2, 7)  # rank 2 into the rank-4 engine: zero-padded
        refit_loaded_engine(engine, lora_b)
        out_b = engine(**feed).clone()
        assert _rel(out_b, _eager("separate", "bf16", lora_b, feed)) < 3e-2
        refit_loaded_engine(engine, _lora(4, 0))
        assert torch.equal(engine(**feed), out_a)
        with pytest.raises(LoraError, match="rebuild"):
            refit_loaded_engine(engine, _lora(8, 0))


def test_merged_refit_round_trip_is_exact_and_written(merged):
    from wanrt.engines.trt.refit import refit_engine_dir
    from wanrt.engines.trt.engine import TRTEngine

    onnx_dir, d = merged
    _build(onnx_dir, d / "engine-refit", refit="yes")
    feed = _inputs()
    with TRTEngine(d / "engine-refit") as engine:
        out_a = engine(**feed).clone()
        refit_loaded_engine(engine, _lora(8, 1))
        assert not torch.equal(engine(**feed), out_a)
        refit_loaded_engine(engine, _lora(4, 0))
        assert torch.equal(engine(**feed), out_a)
    m = refit_engine_dir(d / "engine-refit", rank=8, seed=1)
    assert m.lora["loaded"]["rank"] == 8 and m.lora["history"]
    with TRTEngine(d / "engine-refit", verify_hash=True) as engine:
        assert _rel(engine(**feed), _eager("merged", "bf16", _lora(8, 1), feed)) < 3e-2


def test_fp8_engine_runs_close_to_bf16(merged):
    from wanrt.engines.trt.flavour import gpu_info
    from wanrt.engines.trt.engine import TRTEngine

    cc = tuple(int(v) for v in gpu_info()["compute_capability"].split("."))
    onnx_dir, d = merged
    if cc < (8, 9):
        with pytest.raises(EngineError, match="fp8 needs compute capability 8.9"):
            _build(onnx_dir, d / "engine-fp8", precision="fp8")
        return
    m = _build(onnx_dir, d / "engine-fp8", precision="fp8")
    assert m.section("fp8")["check"]["passed"]
    feed = _inputs()
    with TRTEngine(d / "engine-fp8") as engine:
        out = engine(**feed)
        assert _rel(out, _eager("merged", "bf16", _lora(4, 0), feed)) < 0.1


def test_corrupt_plan_is_a_clear_error(merged, tmp_path):
    import shutil

    from wanrt.engines.trt.engine import TRTEngine

    onnx_dir, d = merged
    if not (d / "engine").is_dir():
        _build(onnx_dir, d / "engine")
    bad = tmp_path / "bad"
    shutil.copytree(d / "engine", bad)
    plan = (bad / "engine.plan").read_bytes()
    (bad / "engine.plan").write_bytes(plan[:64] + bytes(len(plan) - 64))  # same size, garbage body
    with pytest.raises(EngineError, match="rebuild"):
        TRTEngine(bad)
    (bad / "engine.plan").write_bytes(b"garbage" * 20)
    with pytest.raises(EngineError, match="truncated"):
        TRTEngine(bad)
