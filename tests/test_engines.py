"""engines/: TensorRT flavour shim, profiles, FP8 Q/DQ, builder configuration, refit mapping, cache and the load
checks, on CPU with TensorRT-RTX (parse/configure need no GPU; TensorRT-RTX even compiles plans ahead of time).
GPU execution lives in test_engines_gpu.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wanrt.artifacts import check_artifact_files
from wanrt.engines.trt import flavour as fl
from wanrt.engines.onnx_dir import read_onnx_dir
from wanrt.engines.trt.build import configure_from_onnx_dir, lora_section
from wanrt.engines.trt.engine_spec import EngineSpec
from wanrt.engines.trt.network import mark_refittable, parse_network
from wanrt.engines.trt.resolve import prepare
from wanrt.engines.trt.fp8.calibration import calibration_session, load_calibration_set
from wanrt.engines.trt.fp8.qdq import make_simulatable
from wanrt.engines.trt.fp8.quantize import Fp8Spec, quantize_fp8
from wanrt.engines.trt.fp8.selection import parse_keep_blocks
from wanrt.engines.trt.profiles import (
    ProfileSpec,
    check_against_export,
    parse_range,
    resolve_profiles,
    select_profile,
)

from wanrt.errors import (
    BadInputError,
    EngineError,
    LoraError,
    MissingDependencyError,
    ValuesMismatch,
)
from wanrt.manifests import EngineManifest

TINY_PROFILE = "1x1x16x16:2x5x32x32:2x9x64x64"  # BxFRAMESxHxW min:opt:max inside the tiny preset's range


# --------------------------------------------------------------------------------------------- fixtures
def _export(out: Path, mode: str, dtype: str, opset: int | None = None, rank: int = 4) -> Path:
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    kwargs = {} if opset is None else {"opset": opset}
    export_model(ModelSpec("tiny"), LoraSpec(rank=rank, mode=mode, seed=0),
                 ExportSpec(dtype=dtype, validate=False, **kwargs), out, progress=False)
    return out


@pytest.fixture(scope="module")
def merged_bf16(tmp_path_factory) -> Path:
    """tiny + rank-4 synthetic LoRA merged, bf16, the export's default opset."""
    return _export(tmp_path_factory.mktemp("onnx") / "merged_bf16", "merged", "bf16")


@pytest.fixture(scope="module")
def separate_fp16(tmp_path_factory) -> Path:
    """tiny + rank-4 synthetic LoRA as a separate branch, fp16, opset 18 (both opsets get parsed here)."""
    return _export(tmp_path_factory.mktemp("onnx") / "separate_fp16", "separate", "fp16", opset=18)


@pytest.fixture(scope="module")
def rtx():
    return fl.load_flavour("rtx")


def _spec(**kw) -> EngineSpec:
    base = dict(flavour="rtx", profiles=(TINY_PROFILE,), fp8=Fp8Spec(calib=2, keep_blocks="0", backend="wanrt"),
                cache=False)
    base.update(kw)
    return EngineSpec(**base)


def _engine_manifest(onnx_dir: Path, spec: EngineSpec, refit: str = "individual") -> EngineManifest:
    """An engine manifest as `wanrt build` writes it, minus the plan (refit logic is pure CPU)."""
    resolved = prepare(onnx_dir, spec, dry_run=True)
    resolved.refit_kind = refit
    return EngineManifest(flavour="rtx", engine="engine.plan", plan_bytes=0, precision=resolved.precision,
                          lora=lora_section(resolved), onnx={"dtype": resolved.manifest.specs["export"]["dtype"]},
                          specs={"engine": {}, "onnx": resolved.manifest.specs})


# --------------------------------------------------------------------------------------------- flavour shim
def test_flavour_features_are_feature_tested(rtx):
    f = rtx.features()
    assert rtx.name == "rtx" and rtx.version.startswith("1.")
    for needed in ("strongly_typed", "refit", "refit_individual", "onnx_refitter", "weight_streaming",
                   "progress_monitor", "builder_optimization_level", "compute_capability", "engine_validity"):
        assert f[needed], needed
    assert not f["timing_cache"]  # a no-op in TensorRT-RTX: not offered as a feature
    assert not f["precision_flags"]  # strongly typed only: no FP16/BF16 builder flags
    assert "8.9" in rtx.compute_capabilities() and "9.0" not in rtx.compute_capabilities()
    with pytest.raises(EngineError, match="--flavour tensorrt"):
        rtx.compute_capability_enum("9.0")
    with pytest.raises(EngineError, match="has no a tactic timing cache"):
        rtx.require("timing_cache")


def test_polygraphy_loaders_bound_to_rtx(rtx):
    from polygraphy import config as pconfig

    ptrt = fl.polygraphy_trt()
    assert pconfig.USE_TENSORRT_RTX
    assert sys.modules["tensorrt_rtx"] is rtx.trt
    assert ptrt.Profile is not None and ptrt.EngineBytesFromNetwork is not None
    if "tensorrt" in fl.installed_flavours():
        with pytest.raises(EngineError, match="already in use"):
            fl.load_flavour("tensorrt")


def test_missing_tensorrt_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(fl, "installed_flavours", list)
    with pytest.raises(MissingDependencyError, match="pip install 'wanrt\\[rtx\\]'"):
        fl.load_flavour("auto")
    monkeypatch.setattr(fl, "_LOADED", {})
    monkeypatch.setattr(fl, "MODULES", {**fl.MODULES, "tensorrt": ("wanrt_no_such_tensorrt",)})
    with pytest.raises(MissingDependencyError, match="tensorrt is not installed|no_such_tensorrt is not installed"):
        fl.load_flavour("tensorrt")
    assert MissingDependencyError.exit_code == 3


def test_precision_support_per_compute_capability(rtx):
    fl.check_precision_supported("bf16", "8.6", rtx)
    fl.check_precision_supported("fp8", "8.9", rtx)
    with pytest.raises(EngineError, match="fp8 needs compute capability 8.9"):
        fl.check_precision_supported("fp8", "8.6", rtx)
    with pytest.raises(EngineError, match="bf16 needs compute capability 8.0"):
        fl.check_precision_supported("bf16", "7.5", rtx)


# --------------------------------------------------------------------------------------------- profiles
def test_profile_presets_and_ranges():
    assert parse_range("17..81", "--frames") == (17, 81, 81)
    assert parse_range("17..49..81", "--frames") == (17, 49, 81)
    assert parse_range("81", "--frames") == (81, 81, 81)
    (p,) = resolve_profiles(["480p"], frames="17..81", batch="1..2")
    assert (p.height, p.width, p.batch, p.frames) == ((480,) * 3, (832,) * 3, (1, 2, 2), (17, 81, 81))
    shapes = p.input_shapes({"latents": [-1, 36, -1, -1, -1], "timestep": [-1], "text": [-1, 512, 4096],
                             "image": [-1, 257, 1280]})
    assert shapes["latents"] == ((1, 36, 5, 60, 104), (2, 36, 21, 60, 104), (2, 36, 21, 60, 104))
    assert shapes["text"][0] == (1, 512, 4096) and shapes["timestep"][2] == (2,)
    p720, _p480 = resolve_profiles(["720p", "480p"])
    assert p720.latent()["H"] == (90, 90, 90)
    (custom,) = resolve_profiles([TINY_PROFILE])
    assert custom.batch == (1, 2, 2) and custom.frames == (1, 5, 9) and custom.width == (16, 32, 64)
    with pytest.raises(BadInputError, match="4k\\+1"):
        ProfileSpec("bad", frames=(16, 16, 16))
    with pytest.raises(BadInputError, match="multiple of 16"):
        resolve_profiles(["1x5x30x32"])
    with pytest.raises(BadInputError, match="min <= opt <= max"):
        parse_range("81..17", "--frames")


def test_profiles_checked_against_export_and_inputs():
    ranges = {"batch": [1, 2], "min": {"frames": 1, "height": 16, "width": 16},
              "max": {"frames": 17, "height": 128, "width": 128}}
    (export,) = resolve_profiles([], shape_ranges=ranges)
    assert export.name == "export" and export.frames == (1, 17, 17)
    with pytest.raises(BadInputError, match="outside the ONNX export's range 1..17"):
        check_against_export(resolve_profiles(["480p"]), ranges)
    profiles = resolve_profiles([TINY_PROFILE, "1x5x64x64:2x9x128x128:2x17x128x128"])
    assert select_profile(profiles, 2, (2, 4, 4)) == 0
    assert select_profile(profiles, 1, (5, 16, 16)) == 1
    with pytest.raises(BadInputError, match="outside this engine's profiles: custom0: batch 1..2"):
        select_profile(profiles, 2, (9, 4, 4))


# --------------------------------------------------------------------------------------------- construct + parse
@pytest.mark.parametrize("which,precision", [("merged_bf16", None), ("separate_fp16", None),
                                             ("merged_bf16", "fp8"), ("separate_fp16", "fp8")])
def test_network_profiles_and_config_for_every_precision_and_mode(which, precision, request, rtx, tmp_path):
    onnx_dir = request.getfixturevalue(which)
    spec = _spec(precision=precision, opt_level=2, workspace_gib=1.5, weight_streaming=True)
    resolved, c = configure_from_onnx_dir(onnx_dir, spec, tmp_path)
    trt = rtx.trt
    want = {"merged_bf16": "bf16", "separate_fp16": "fp16"}[which]
    assert resolved.precision == (precision or want)
    assert c.parser.num_errors == 0 and c.network.num_layers > 500
    # strongly typed: the precision is in the graph's own dtypes
    assert c.network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    dt = {"bf16": trt.DataType.BF16, "fp16": trt.DataType.HALF}[want]
    assert c.network.get_input(0).dtype == dt
    layer_types = {c.network.get_layer(i).type for i in range(c.network.num_layers)}
    assert (trt.LayerType.QUANTIZE in layer_types) == (precision == "fp8")
    # builder configuration
    cfg = c.config
    assert cfg.num_optimization_profiles == 1
    assert cfg.builder_optimization_level == 2
    assert cfg.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == int(1.5 * 2**30)
    flags = c.flags()
    assert flags["WEIGHT_STREAMING"]
    mode = "separate" if which == "separate_fp16" else "merged"
    refittable = not (precision == "fp8" and mode == "merged")  # merged FP8 would reuse stale weight scales
    assert flags["REFIT_INDIVIDUAL"] == refittable and not flags["REFIT"]
    assert resolved.refit_names["mode"] == mode
    if refittable:
        assert all(c.network.are_weights_marked_refittable(n) for n in resolved.refit_names["weights"])
    lat = resolved.profiles[0].input_shapes({"latents": [-1, 36, -1, -1, -1]})["latents"]
    assert lat == ((1, 36, 1, 2, 2), (2, 36, 2, 4, 4), (2, 36, 3, 8, 8))


def test_refit_mapping_covers_every_lora_weight(merged_bf16, separate_fp16, rtx):
    """Every `lora.<module>.A/B` (separate) and `<module>.weight` (merged) the manifest names is a weight of the
    parsed TensorRT network (mark_weights_refittable is False for names the network does not have)."""
    for onnx_dir, mode in ((separate_fp16, "separate"), (merged_bf16, "merged")):
        manifest, onnx_path = read_onnx_dir(onnx_dir)
        resolved = prepare(onnx_dir, _spec(), dry_run=True)
        lora = manifest.lora
        if mode == "separate":
            named = [n for names in lora["initializers"].values() for n in names.values()]
            assert len(named) == 2 * len(lora["initializers"]) == 2 * 12 * 2  # A+B x 12 targets x 2 blocks
        else:
            named = list(lora["merged_weights"].values())
            assert len(named) == 12 * 2
        assert set(named) <= set(resolved.refit_names["weights"])
        _, network, _, _ = parse_network(rtx, onnx_path)
        assert mark_refittable(network, resolved.refit_names["weights"]) == []
        assert mark_refittable(network, ["lora.blocks.0.attn1.to_q.C"]) == ["lora.blocks.0.attn1.to_q.C"]


# --------------------------------------------------------------------------------------------- FP8
def test_keep_blocks():
    assert parse_keep_blocks("1", 40) == {0, 39}
    assert parse_keep_blocks("2", 40) == {0, 1, 38, 39}
    assert parse_keep_blocks("0,1,39", 40) == {0, 1, 39}
    assert parse_keep_blocks("0", 40) == set()
    with pytest.raises(BadInputError, match="do not exist"):
        parse_keep_blocks("3,41", 40)
    with pytest.raises(BadInputError, match="--keep-blocks"):
        parse_keep_blocks("first", 40)


@pytest.mark.parametrize("backend", ["wanrt", "modelopt"])
def test_fp8_qdq_validates_in_onnxruntime(backend, merged_bf16, tmp_path):
    import onnx

    manifest, onnx_path = read_onnx_dir(merged_bf16)
    dst = tmp_path / "model.fp8.onnx"
    report = quantize_fp8(onnx_path, dst, Fp8Spec(calib=2, keep_blocks="0", backend=backend),
                          shape_ranges=manifest.shape_ranges)
    check = report["check"]
    assert check["passed"] and 0 < check["relative_error"]["prediction"] < 0.1, check
    assert report["quantized_matmuls"] == 2 * 12  # per block: 4 self-attn, 4 cross-attn, 2 image K/V, 2 FFN
    assert report["kept_high_precision"]["outside_blocks"] >= 5  # embedders + proj_out
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == report["qdq_pairs"] > 0
    inits = {i.name: i for i in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert {s.data_type for s in scales} == {onnx.TensorProto.BFLOAT16}  # the bf16 graph stays bf16
    # keep-in-fp32 parts of the export are untouched: same dtype per initializer as the source
    src = {i.name: i.data_type for i in onnx.load(str(onnx_path)).graph.initializer}
    assert all(inits[n].data_type == t for n, t in src.items())


def test_fp8_base_keeps_the_lora_branch_unquantized(separate_fp16, tmp_path):
    """LoRA on a quantized base (issue 20): FP8 Q/DQ on the base weights only; the separate branch's MatMuls read
    their `lora.*` initializers unquantized (refit/swap still replace them), and the graph validates in ORT."""
    import onnx

    manifest, onnx_path = read_onnx_dir(separate_fp16)
    dst = tmp_path / "model.fp8.onnx"
    report = quantize_fp8(onnx_path, dst, Fp8Spec(calib=2, keep_blocks="0"), shape_ranges=manifest.shape_ranges)
    assert report["check"]["passed"] and report["quantized_matmuls"] == 2 * 12, report["check"]
    model = onnx.load(str(dst))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    lora = {i.name for i in model.graph.initializer if i.name.startswith("lora.")}
    assert len(lora) == 48 and not (quantized & lora)
    assert lora <= {i for n in model.graph.node for i in n.input}  # the branch is still in the graph, float


def test_fp8_tolerance_and_calibration_set(merged_bf16, tmp_path):
    manifest, onnx_path = read_onnx_dir(merged_bf16)
    ranges = manifest.shape_ranges
    dst = tmp_path / "never.onnx"
    with pytest.raises(ValuesMismatch, match="exceeds --fp8-tolerance"):
        quantize_fp8(onnx_path, dst, Fp8Spec(calib=1, keep_blocks="0", backend="wanrt", tolerance=1e-6),
                     shape_ranges=ranges)
    assert not dst.exists()
    with pytest.raises(BadInputError, match="no MatMul left"):
        quantize_fp8(onnx_path, dst, Fp8Spec(keep_blocks="1", backend="wanrt"), shape_ranges=ranges)
    # a user calibration set: .npz of input dicts with a samples axis
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", latents=rng.standard_normal((3, 1, 36, 2, 4, 4)).astype(np.float32),
             timestep=np.array([[100.0], [500.0], [900.0]], np.float32),
             text=rng.standard_normal((3, 1, 512, 32)).astype(np.float32),
             image=rng.standard_normal((3, 1, 257, 16)).astype(np.float32), samples_axis=np.array(1))
    samples = load_calibration_set(tmp_path / "calib.npz")
    assert len(samples) == 3 and samples[0]["latents"].shape == (1, 36, 2, 4, 4)
    report = quantize_fp8(onnx_path, tmp_path / "c.onnx", Fp8Spec(calib=3, keep_blocks="0", backend="wanrt",
                          calib_data=str(tmp_path / "calib.npz")), shape_ranges=ranges)
    assert report["calibration"] == {"samples": 3, "method": "max", "source": "given"}
    with pytest.raises(BadInputError, match="lacks input"):
        quantize_fp8(onnx_path, dst, Fp8Spec(keep_blocks="0", backend="wanrt"), calibration=[{"latents": 0}],
                     shape_ranges=ranges)


def test_simulatable_rewrites_fp8_through_transpose():
    """ORT refuses float8 into a Transpose (what TensorRT-side quantizers emit before attention); the rewrite
    dequantizes right after Q and gives the same values."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "w")
    s = numpy_helper.from_array(np.array(0.01, np.float32), "s")
    z = helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("Transpose", ["xq"], ["xt"], name="t", perm=[1, 0]),
             helper.make_node("DequantizeLinear", ["xt", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, s, z]),
                              opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    with pytest.raises(Exception, match="float8"):
        calibration_session(model)
    sim, rewrites = make_simulatable(model)
    assert rewrites == 1 and [n.op_type for n in sim.graph.node].count("Identity") == 1
    xv = np.array([[0.1, -0.5, 1.0], [0.25, 0.75, -1.0]], np.float32)
    got = calibration_session(sim).run(None, {"x": xv})[0]
    import ml_dtypes

    xq = (xv / 0.01).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * 0.01
    np.testing.assert_allclose(got, xq.T @ (np.arange(6, dtype=np.float32).reshape(2, 3) / 7), rtol=1e-6)


# --------------------------------------------------------------------------------------------- refit (CPU half)
def test_separate_refit_weights_exact_and_zero_padded(separate_fp16):
    import onnx
    import torch
    from onnx import numpy_helper
    from wanrt.engines.trt.refit import load_base_model, refit_weights
    from wanrt.export.lora import synthetic_lora

    manifest = _engine_manifest(separate_fp16, _spec())
    model = load_base_model(manifest)
    onnx_inits = {i.name: i for i in onnx.load(str(separate_fp16 / "model.onnx")).graph.initializer}
    # the export's own LoRA gives back its initializers bit for bit
    same = refit_weights(manifest, synthetic_lora(model, 4, "all", seed=0))
    assert len(same) == 48
    for name, t in same.items():
        assert torch.equal(t, torch.from_numpy(numpy_helper.to_array(onnx_inits[name]).copy())), name
    # rank 2 into the rank-4 engine: zero-padded, the same function
    small = synthetic_lora(model, 2, "all", seed=3)
    w = refit_weights(manifest, small)
    a, b = w["lora.blocks.0.attn1.to_q.A"].float(), w["lora.blocks.0.attn1.to_q.B"].float()
    assert a.shape == (24, 4) and torch.all(a[:, 2:] == 0) and torch.all(b[2:] == 0)
    m = small.modules["blocks.0.attn1.to_q"]
    x = torch.randn(5, 24)
    ref = (x @ m.down.float().T.half().float()) @ (m.scale() * m.up.float()).T.half().float()
    torch.testing.assert_close(x @ a @ b, ref)
    with pytest.raises(LoraError, match="rank 8 exceeds the engine's rank 4.*rebuild"):
        refit_weights(manifest, synthetic_lora(model, 8, "all", seed=0))
    # a LoRA on a subset of the branch's modules (a smaller stack): zero branches elsewhere, exact
    subset = refit_weights(manifest, synthetic_lora(model, 4, "self-attn", seed=0))
    assert not subset["lora.blocks.0.attn2.to_k.A"].any() and not subset["lora.blocks.0.attn2.to_k.B"].any()
    assert subset["lora.blocks.0.attn1.to_q.A"].any()
    with pytest.raises(LoraError, match="outside the engine's branch"):
        refit_weights(manifest, synthetic_lora(model, 4, "proj_out", seed=0))


def test_merged_refit_from_original_base_round_trip(merged_bf16):
    """A -> B -> A gives A's weights bit for bit, and A's are exactly the exported merged weights."""
    import onnx
    import torch
    from onnx import numpy_helper
    from wanrt.engines.trt.refit import (
        base_weights_from_model,
        load_base_model,
        refit_weights,
    )
    from wanrt.export.lora import synthetic_lora

    manifest = _engine_manifest(merged_bf16, _spec())
    model = load_base_model(manifest)
    names = [n for e in manifest.lora["modules"].values() for n in e.values()]
    base = base_weights_from_model(model, names)
    lora_a = synthetic_lora(model, 4, "all", seed=0)
    lora_b = synthetic_lora(model, 8, "all", seed=1)  # any rank: merged weights keep their shape
    w_a = refit_weights(manifest, lora_a, base)
    w_b = refit_weights(manifest, lora_b, base)
    w_a2 = refit_weights(manifest, lora_a, base)
    onnx_inits = {i.name: i for i in onnx.load(str(merged_bf16 / "model.onnx")).graph.initializer}
    for name in w_a:
        assert torch.equal(w_a[name], w_a2[name]), name
        if name.endswith(".weight"):
            assert not torch.equal(w_a[name], w_b[name]), name
        exported = torch.from_numpy(numpy_helper.to_array(onnx_inits[name]).astype(np.float32))
        assert torch.equal(w_a[name].float(), exported), name
    assert w_a["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    # no LoRA at all: the base weights themselves
    w_none = refit_weights(manifest, None, base)
    assert torch.equal(w_none["blocks.1.ffn.net.2.weight"], base["blocks.1.ffn.net.2.weight"])


def test_refit_refuses_non_refittable_engine(merged_bf16):
    from wanrt.engines.trt.refit import refit_weights

    manifest = _engine_manifest(merged_bf16, _spec(), refit=None)
    with pytest.raises(EngineError, match="not refittable.*--refit yes"):
        refit_weights(manifest, None, {})


# --------------------------------------------------------------------------------------------- build errors
def test_build_refuses_bad_requests_before_work(merged_bf16, tmp_path):
    from wanrt.engines.trt.build import build_engine_from_onnx_dir

    out = tmp_path / "e"
    with pytest.raises(BadInputError, match="exported in bf16.*--dtype fp16"):
        build_engine_from_onnx_dir(merged_bf16, _spec(precision="fp16"), out)
    with pytest.raises(BadInputError, match="outside the ONNX export's range"):
        build_engine_from_onnx_dir(merged_bf16, _spec(profiles=("720p",)), out)
    with pytest.raises(EngineError, match="fp8 needs compute capability 8.9.*8.6"):
        build_engine_from_onnx_dir(merged_bf16, _spec(precision="fp8", compute_capabilities=("8.6",)), out)
    with pytest.raises(EngineError, match="cannot target compute capability 9.0"):
        build_engine_from_onnx_dir(merged_bf16, _spec(compute_capabilities=("9.0",), refit="no"), out)
    if fl.gpu_info() is None:
        with pytest.raises(EngineError, match="needs a GPU to build refittable engines"):
            build_engine_from_onnx_dir(merged_bf16, _spec(refit="yes"), out)
    with pytest.raises(BadInputError, match="not a directory"):
        build_engine_from_onnx_dir(tmp_path / "missing", _spec(), out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_bytes((merged_bf16 / "manifest.json").read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(BadInputError, match="truncated or replaced"):  # the manifest lists other bytes
        configure_from_onnx_dir(broken, _spec(refit="no"))
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["contents"]["model.onnx"] = {"bytes": 17, "sha256": hashlib.sha256(b"not an onnx model").hexdigest()}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="not a readable ONNX model"):  # listed, yet not ONNX
        configure_from_onnx_dir(broken, _spec(refit="no"))
    _, network_path = read_onnx_dir(broken)
    with pytest.raises(EngineError, match="cannot parse model.onnx: 1 error"):
        parse_network(fl.load_flavour("rtx"), network_path)
    assert not out.exists()


# --------------------------------------------------------------------------------------------- AOT build + cache
def _wanrt(*args, **kw):
    env = {**os.environ, "WANRT_CACHE_DIR": str(kw.pop("cache"))}
    return subprocess.run([sys.executable, "-m", "wanrt", *args], capture_output=True, text=True, env=env, check=False,
                          timeout=300)


@pytest.mark.skipif(fl.gpu_info() is not None,
                    reason="needs a machine without a GPU (tests/test_engines_gpu.py builds on the GPU)")
def test_cli_aot_build_manifest_cache_and_load_checks(separate_fp16, tmp_path, rtx):
    """`wanrt build` with TensorRT-RTX on CPU compiles a real plan (subprocess: a native crash must not take pytest
    down); the same request again is served from the out dir / cache; loading checks refuse what they must."""
    from wanrt.engines.trt.engine import (
        TRTEngine,
        check_compatibility,
        check_input_shapes,
    )

    out, cache = tmp_path / "engine", tmp_path / "cache"
    args = ["build", str(separate_fp16), "-o", str(out), "--profile", TINY_PROFILE, "--refit", "no", "--trt", "rtx"]
    r = _wanrt(*args, cache=cache)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    p = m["payload"]
    assert m["kind"] == "engine" and p["trt"]["flavour"] == "rtx" and p["trt"]["version"] == rtx.version
    assert p["precision"] == "fp16" and p["targets"] == list(fl.RTX_DEFAULT_TARGETS)
    assert p["onnx"]["sha256"] == json.loads((separate_fp16 / "manifest.json").read_text())["payload"]["sha256"]
    assert p["plan_bytes"] == (out / "engine.plan").stat().st_size > 1_000_000
    assert p["profiles"][0]["batch"] == [1, 2, 2] and p["lora"]["mode"] == "separate" and p["lora"]["refit"] is None
    assert (cache / "engines" / p["cache_key"] / "engine.plan").is_file()
    # same engine again: not rebuilt (the manifest, with its creation time, is the one already there)
    r2 = _wanrt(*args, cache=cache)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["created"] == m["created"]
    # ... and from the cache into a new directory
    r3 = _wanrt(*args[:3], str(tmp_path / "engine2"), *args[4:], cache=cache)
    assert r3.returncode == 0
    assert (tmp_path / "engine2" / "engine.plan").read_bytes() == (out / "engine.plan").read_bytes()
    # a different request into an existing directory: refused, nothing overwritten
    r4 = _wanrt("build", str(separate_fp16), "-o", str(out), "--profile", "1x5x32x32", "--refit", "no",
                cache=cache)
    assert r4.returncode == 2 and "pass --force" in r4.stderr
    assert json.loads((out / "manifest.json").read_text())["created"] == m["created"]
    # load checks (no GPU here: each refusal comes before deserialization)
    check_artifact_files(out, m)
    m = EngineManifest.from_dict(m)
    gpu = {"name": "NVIDIA RTX 4090", "compute_capability": "8.9"}
    check_compatibility(m, rtx.info(), gpu)
    with pytest.raises(EngineError, match="another|built with TensorRT-RTX.*--flavour rtx"):
        check_compatibility(m, {"flavour": "tensorrt", "version": "10.13.0", "label": "TensorRT 10.13.0"}, gpu)
    with pytest.raises(EngineError, match="only load in the version that built them"):
        check_compatibility(m, {**rtx.info(), "version": "1.6.0.1", "label": "TensorRT-RTX 1.6.0.1"}, gpu)
    with pytest.raises(EngineError, match="targets compute capability.*H100.*9.0"):
        check_compatibility(m, rtx.info(), {"name": "NVIDIA H100", "compute_capability": "9.0"})
    with pytest.raises(EngineError, match="needs an NVIDIA GPU"):
        check_compatibility(m, rtx.info(), None)
    shapes = {"latents": (2, 36, 2, 4, 4), "timestep": (2,), "text": (2, 512, 32), "image": (2, 257, 16)}
    assert check_input_shapes(m, shapes) == 0
    with pytest.raises(BadInputError, match="outside this engine's profiles.*frames 1..9"):
        check_input_shapes(m, {**shapes, "latents": (2, 36, 5, 4, 4)})
    with pytest.raises(BadInputError, match="axis 2 is 64, the engine takes 32"):
        check_input_shapes(m, {**shapes, "text": (2, 512, 64)})
    # truncated and corrupt plans: clear errors, the files untouched
    plan = (out / "engine.plan").read_bytes()
    (out / "engine.plan").write_bytes(plan[: len(plan) // 2])
    with pytest.raises(BadInputError, match="truncated or replaced"):  # the load-time artifact check, first
        TRTEngine(out)
    (out / "engine.plan").write_bytes(plan[:100] + bytes([plan[100] ^ 0xFF]) + plan[101:])
    with pytest.raises(BadInputError, match="sha256 does not match"):
        TRTEngine(out)
    assert len((out / "engine.plan").read_bytes()) == len(plan)
    # a corrupt resolved in the output dir is rebuilt only with --force
    r5 = _wanrt(*args, cache=tmp_path / "other-cache")
    assert r5.returncode == 2 and "pass --force" in r5.stderr


def test_cli_refit_on_non_refittable_engine(tmp_path):
    """A clear error (exit 2), before any model or GPU is touched."""
    engine = tmp_path / "engine"
    engine.mkdir()
    from wanrt.artifacts import build_manifest, write_json

    write_json(engine / "manifest.json", build_manifest("engine", {}, {
        "engine": "engine.plan", "plan_bytes": 0, "trt": {"flavour": "rtx"}, "targets": [], "profiles": [], "io": {},
        "precision": "bf16", "lora": {"mode": "merged", "refit": None}}))
    r = _wanrt("refit", str(engine), "--rank", "4", cache=tmp_path / "c")
    assert r.returncode == 2 and "not refittable" in r.stderr, r.stderr
