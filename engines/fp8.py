"""FP8 (E4M3) post-training quantization of an exported Wan ONNX into a Q/DQ graph TensorRT builds strongly typed.

Steps (`quantize_fp8`):
1. A float32 twin of the graph (bf16/fp16 tensors, Casts and constants widened; same node and tensor names), since
   ONNX Runtime on CPU has no bf16 kernels and calibration runs there.
2. Which MatMuls get FP8: those whose weight is `blocks.N.<module>.weight` for a block not in --keep-blocks. Kept in
   the export's precision: embedders (patch/time/text/image), `proj_out`, norms and modulation (not MatMuls),
   attention's activation x activation products (MHA), the LoRA branch (`lora.*`, so separate-mode refit still
   works) and the first/last blocks.
3. Calibration on any iterable of input dicts (seeded random inputs by default, a user .npz set, or inputs captured
   from real denoising steps), then Q/DQ insertion by NVIDIA ModelOpt (`modelopt.onnx.quantization`, max
   calibration, MHA Q/DQ off, only the chosen nodes) or, without ModelOpt, by wanrt's own pass (per-tensor
   activation amax, per-output-channel weight amax, scale = amax / 448).
4. Numerics check before any build: the fp32 Q/DQ graph against the fp32 twin in ONNX Runtime (CPU), relative error
   ||y_fp8 - y_ref|| / ||y_ref|| per output on held-out inputs; over the tolerance -> ValidationError.
5. The Q/DQ graph in the export's own precision: every tensor, Cast and constant gets its original dtype back, and
   each Q/DQ scale the dtype of the tensor it quantizes, so bf16 stays bf16 and the keep-in-fp32 parts stay fp32.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.errors import (
    BadInputError,
    EngineError,
    MissingDependencyError,
    ValuesMismatch,
)

FP8_MAX = 448.0  # largest finite float8 e4m3fn
FP8_BACKENDS = ("auto", "modelopt", "wanrt")
DEFAULT_TOLERANCE = 0.1
_WEIGHT = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")
_PASS_THROUGH = ("Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze")
_MOVE_OPS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Flatten",
             "Gather", "Expand")


@dataclass(frozen=True)
class Fp8Spec:
    """How FP8 Q/DQ is made and checked."""

    calib: int = 8  # calibration samples
    keep_blocks: str = "1"  # N: first N and last N blocks stay high precision; or a comma list of block indices
    backend: str = "auto"  # auto | modelopt | wanrt
    tolerance: float = DEFAULT_TOLERANCE  # max relative error per output in the ORT check
    seed: int = 0
    calib_data: str | None = None  # .npz file or directory of .npz files with input dicts
    calib_shape: str | None = None  # FRAMESxHxW of random calibration inputs (default: small, in range)
    check: bool = True
    per_channel: bool = True  # wanrt backend: weight scales per output channel (ModelOpt: per tensor)


# --------------------------------------------------------------------------------------------- graph helpers
def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a core dependency
        raise MissingDependencyError(f"onnx is required for fp8 ({e})") from None
    return onnx


def load_model(path: str | os.PathLike):
    return _onnx().load(str(path), load_external_data=True)


def save_model(model, path: str | os.PathLike) -> None:
    onnx = _onnx()
    path = Path(path)
    big = not _fits_protobuf(model) or model.ByteSize() > 2**31 - 2**26
    if big:
        data = path.name + ".data"
        if (path.parent / data).exists():
            (path.parent / data).unlink()
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                  size_threshold=1024)
    else:
        onnx.save(model, str(path))


def _fits_protobuf(model) -> bool:
    """False for models over protobuf's 2 GB limit (ByteSize raises), which are saved with external data."""
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf refuses > 2 GB
        return False


def block_count(model) -> int:
    idx = [int(m.group(1)) for i in model.graph.initializer if (m := _WEIGHT.match(i.name))]
    return max(idx) + 1 if idx else 0


def parse_keep_blocks(text: str | int | None, num_blocks: int) -> set[int]:
    """'N' -> the first N and last N blocks; '0,1,39' -> those; '' or 0 -> none."""
    if text is None or str(text).strip() in ("", "0"):
        return set()
    text = str(text).strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 0:
                raise ValueError
            return set(range(min(n, num_blocks))) | set(range(max(num_blocks - n, 0), num_blocks))
        values = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise BadInputError(f"--keep-blocks {text!r}: expected N (first and last N blocks) or a list like 0,1,39") from None
    bad = sorted(v for v in values if not 0 <= v < num_blocks)
    if bad:
        raise BadInputError(f"--keep-blocks: block(s) {bad} do not exist (the model has {num_blocks})")
    return values


def _producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def weight_source(model, tensor: str, producers=None, initializers=None) -> tuple[str | None, list[Any]]:
    """Follow a MatMul's B input up through Transpose/Reshape/Cast/Identity to an initializer; returns
    (initializer name or None, the pass-through nodes from the initializer down)."""
    producers = producers if producers is not None else _producers(model)
    initializers = initializers if initializers is not None else {i.name for i in model.graph.initializer}
    chain = []
    while tensor not in initializers:
        node = producers.get(tensor)
        if node is None or node.op_type not in _PASS_THROUGH:
            return None, []
        chain.append(node)
        tensor = node.input[0]
    return tensor, chain[::-1]


def select_matmuls(model, keep: set[int]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """{MatMul node name: {activation, weight_input, weight, module, block}} to quantize, plus what was kept and why."""
    producers = _producers(model)
    initializers = {i.name for i in model.graph.initializer}
    chosen: dict[str, dict[str, Any]] = {}
    kept: dict[str, list[str]] = {"keep_blocks": [], "lora": [], "mha": [], "outside_blocks": []}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            continue  # Wan's dynamo export has none; per-channel axis would differ
        weight, _ = weight_source(model, node.input[1], producers, initializers)
        if weight is None:
            kept["mha"].append(node.name)
            continue
        if weight.startswith("lora."):
            kept["lora"].append(weight)
            continue
        m = _WEIGHT.match(weight)
        if m is None:
            kept["outside_blocks"].append(weight)
            continue
        block = int(m.group(1))
        if block in keep:
            kept["keep_blocks"].append(weight)
            continue
        chosen[node.name] = {"activation": node.input[0], "weight_input": node.input[1], "weight": weight,
                             "module": weight[: -len(".weight")], "block": block}
    return chosen, kept


# --------------------------------------------------------------------------------------------- dtypes
def _float_types():
    onnx = _onnx()
    return {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}


def widen_to_fp32(model):
    """A float32 twin: bf16/fp16 initializers, constants, Casts and graph I/O widened; names unchanged."""
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString()) if _fits_protobuf(model) else _copy_big(model)
    low = _float_types()
    f32 = onnx.TensorProto.FLOAT
    g = model.graph
    for i, init in enumerate(g.initializer):
        if init.data_type in low:
            new = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            g.initializer[i].CopyFrom(new)
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in low:
                attr.i = f32
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in low:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type in low:
            v.type.tensor_type.elem_type = f32
    del g.value_info[:]
    return model


def _copy_big(model):
    onnx = _onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def graph_dtype(model) -> str:
    """The export precision of a graph, from its first floating input other than `timestep`."""
    onnx = _onnx()
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    for v in model.graph.input:
        if v.name != "timestep" and v.type.tensor_type.elem_type in names:
            return names[v.type.tensor_type.elem_type]
    return "fp32"


def _value_types(model) -> dict[str, int]:
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model) if _fits_protobuf(model) else model
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def transplant_qdq(q32, source):
    """The Q/DQ pairs of the fp32 quantized twin, inserted into the source graph (see module docstring, step 5):
    same tensors, same consumers, each scale cast to the dtype the quantized tensor has in the source, so bf16 stays
    bf16 and the keep-in-fp32 parts stay fp32. Whatever else a quantizer changed in the twin is not carried over."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    f32 = onnx.TensorProto.FLOAT
    g32 = q32.graph
    init32 = {i.name: i for i in g32.initializer}
    producers32 = _producers(q32)
    src_types = _value_types(source)
    g = source.graph
    src_nodes = {n.name: n for n in g.node}
    new_inits, before = [], {}
    made: dict[tuple[str, str], str] = {}
    pairs = 0
    for dq in g32.node:
        if dq.op_type != "DequantizeLinear":
            continue
        q = producers32.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        x = q.input[0]
        consumers = [(n, k) for n in g32.node for k, t in enumerate(n.input) if t == dq.output[0]]
        want = src_types.get(x, f32)
        key = (x, q.input[1])
        for node32, k in consumers:
            target = src_nodes.get(node32.name)
            if target is None or k >= len(target.input) or target.input[k] != x:
                raise EngineError(f"the quantizer rewired '{node32.name}' in a way wanrt cannot carry over to the "
                                  f"{'bf16' if want == onnx.TensorProto.BFLOAT16 else 'source'} graph; "
                                  f"use --fp8-backend wanrt")
            if key not in made:
                tag = f"{x}_fp8_{len(made)}"
                scale = numpy_helper.to_array(init32[q.input[1]]).astype(np.float32)
                if want != f32:
                    scale = scale.astype(onnx.helper.tensor_dtype_to_np_dtype(want))
                zero = onnx.TensorProto()
                zero.CopyFrom(init32[q.input[2]])
                zero.name = f"{tag}_zero"
                new_inits += [numpy_helper.from_array(scale, f"{tag}_scale"), zero]
                axis = {a.name: a.i for a in q.attribute if a.name == "axis"}
                before.setdefault(target.name, []).extend([
                    helper.make_node("QuantizeLinear", [x, f"{tag}_scale", f"{tag}_zero"], [f"{tag}_q"],
                                     name=f"{tag}_QuantizeLinear", **axis),
                    helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zero"], [f"{tag}_dq"],
                                     name=f"{tag}_DequantizeLinear", **axis)])
                made[key] = f"{tag}_dq"
                pairs += 1
            target.input[k] = made[key]
    _insert_before_consumers(source, before, new_inits)
    return source, pairs


def _insert_before_consumers(model, before: dict, new_inits: list) -> None:
    """Put each list of new Q/DQ nodes right before the node (by name) that consumes them, so the graph stays
    topologically sorted; add their initializers; Q/DQ with float8 needs opset 19."""
    graph = model.graph
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    _ensure_opset(model, 19)


def _ensure_opset(model, version: int = 19) -> None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < version:
            op.version = version


# --------------------------------------------------------------------------------------------- calibration data
def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    return np.asarray(v, dtype=np.float32)


def random_calibration(model, n: int, seed: int = 0, shape: str | None = None,
                       shape_ranges: dict[str, Any] | None = None, batch: int = 2) -> list[dict[str, np.ndarray]]:
    """Seeded inputs at the real statistics' scale (N(0,1) latents and embeddings, timesteps in (0, 1000)) at a
    small in-range video shape: what calibrates until real denoising-step inputs are captured."""
    from wanrt.export.presets import VideoShape

    if shape is not None:
        from wanrt.options import parse_shape

        video = parse_shape(shape, "--calib-shape")
    else:
        lo = (shape_ranges or {}).get("min", {"frames": 1, "height": 16, "width": 16})
        hi = (shape_ranges or {}).get("max", {"frames": 81, "height": 1280, "width": 1280})
        video = VideoShape(min(max(lo["frames"], 5), hi["frames"]), min(max(lo["height"], 32), hi["height"]),
                           min(max(lo["width"], 32), hi["width"]))
    f, h, w = video.latent
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        sample = {}
        for v in model.graph.input:
            dims = [d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim]
            dims[0] = batch
            if v.name == "latents":
                dims[2:5] = [f, h, w]
            if v.name == "timestep":
                sample[v.name] = (rng.random(dims) * 999.0 + 0.5).astype(np.float32)
            else:
                sample[v.name] = rng.standard_normal(dims).astype(np.float32)
        samples.append(sample)
    return samples


def load_calibration_set(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """A user calibration set: one .npz or a directory of .npz files; each holds arrays named like the graph's
    inputs (one sample), or the same with a leading samples axis (`samples_axis=1` in the file, or ndim + 1)."""
    path = Path(path)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise BadInputError(f"--calib-data {path}: no .npz files")
    samples = []
    for f in files:
        try:
            data = dict(np.load(f, allow_pickle=False))
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            raise BadInputError(f"--calib-data {f}: not a readable .npz ({e})") from None
        stacked = bool(data.pop("samples_axis", np.array(0)).item()) or (
            "timestep" in data and data["timestep"].ndim == 2)
        if stacked:
            n = len(next(iter(data.values())))
            samples.extend({k: v[i].astype(np.float32) for k, v in data.items()} for i in range(n))
        else:
            samples.append({k: v.astype(np.float32) for k, v in data.items()})
    return samples[:limit] if limit else samples


def _check_inputs(samples: list[dict[str, np.ndarray]], model) -> None:
    names = [v.name for v in model.graph.input]
    for i, s in enumerate(samples):
        missing = [n for n in names if n not in s]
        if missing:
            raise BadInputError(f"calibration sample {i} lacks input(s) {missing}; it has {sorted(s)}")


# --------------------------------------------------------------------------------------------- ONNX Runtime
def ort_session(model_or_path, extra_outputs: Iterable[str] = ()):
    """CPU session, basic graph optimizations only: ORT's full level fuses DequantizeLinear+MatMul into
    MatMulIntegerToFloat, which rejects float8 inputs (ORT 1.31)."""
    import onnxruntime as ort

    onnx = _onnx()
    extra = list(extra_outputs)
    if extra:
        model = model_or_path
        have = {o.name for o in model.graph.output}
        for name in extra:
            if name not in have:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        model_or_path = model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    if not isinstance(model_or_path, (str, os.PathLike)):
        if _fits_protobuf(model_or_path):
            return ort.InferenceSession(model_or_path.SerializeToString(), options, providers=["CPUExecutionProvider"])
        tmp = tempfile.mkdtemp(prefix="wanrt-ort-")
        save_model(model_or_path, Path(tmp) / "model.onnx")
        model_or_path = Path(tmp) / "model.onnx"
    return ort.InferenceSession(str(model_or_path), options, providers=["CPUExecutionProvider"])


def relative_errors(session_ref, session_test, samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """max over samples of ||y_test - y_ref|| / ||y_ref|| per output."""
    names = [o.name for o in session_ref.get_outputs()]
    worst = {n: 0.0 for n in names}
    for s in samples:
        feed = {i.name: s[i.name] for i in session_ref.get_inputs()}
        ref = session_ref.run(names, feed)
        test = session_test.run(names, feed)
        for n, r, t in zip(names, ref, test):
            r64, t64 = r.astype(np.float64), t.astype(np.float64)
            err = float(np.linalg.norm(t64 - r64) / max(np.linalg.norm(r64), 1e-30))
            worst[n] = max(worst[n], err if np.isfinite(err) else float("inf"))
    return worst


# --------------------------------------------------------------------------------------------- wanrt backend
def _fp8_zero(name: str, n: int | None):
    onnx = _onnx()
    dims = [] if n is None else [n]
    return onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT8E4M3FN, dims, [0] * (n or 1))


def calibrate_amax(model32, tensors: list[str], samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-tensor max |x| of `tensors` over the calibration samples (ORT on CPU)."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model32)
    sess = ort_session(probe, tensors)
    amax = {t: 0.0 for t in tensors}
    for s in samples:
        feed = {i.name: s[i.name] for i in sess.get_inputs()}
        for t, v in zip(tensors, sess.run(tensors, feed)):
            amax[t] = max(amax[t], float(np.abs(v).max()) if v.size else 0.0)
    return amax


def insert_qdq(model32, chosen: dict[str, dict[str, Any]], amax: dict[str, float], per_channel: bool = True):
    """Q/DQ on the chosen MatMuls: activations per tensor, weights per output channel (axis 1 of B [in, out])
    or per tensor."""
    from onnx import helper, numpy_helper

    g = model32.graph
    producers = _producers(model32)
    inits = {i.name: i for i in g.initializer}
    nodes_by_name = {n.name: n for n in g.node}
    new_nodes: dict[str, list[Any]] = {}  # insert before the consumer
    new_inits = []
    act_done: dict[str, str] = {}
    for name, info in chosen.items():
        node = nodes_by_name[name]
        # activation: one Q/DQ pair per tensor, shared by its quantized consumers
        a = info["activation"]
        if a not in act_done:
            scale = max(amax.get(a, 0.0), 1e-12) / FP8_MAX
            s_name, z_name, q_out, dq_out = f"{a}_fp8_scale", f"{a}_fp8_zero", f"{a}_fp8_q", f"{a}_fp8_dq"
            new_inits += [numpy_helper.from_array(np.array(scale, np.float32), s_name), _fp8_zero(z_name, None)]
            new_nodes.setdefault(name, []).extend([
                helper.make_node("QuantizeLinear", [a, s_name, z_name], [q_out], name=f"{a}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{a}_DequantizeLinear")])
            act_done[a] = dq_out
        node.input[0] = act_done[a]
        # weight: value of the B input (initializer through its Transposes), per output channel
        b = info["weight_input"]
        weight, chain = weight_source(model32, b, producers, set(inits))
        w = numpy_helper.to_array(inits[weight]).astype(np.float32)
        for step in chain:
            if step.op_type == "Transpose":
                perm = next((list(a.ints) for a in step.attribute if a.name == "perm"), None)
                w = np.transpose(w, perm)
            elif step.op_type == "Reshape":
                w = w.reshape(numpy_helper.to_array(inits[step.input[1]]) if step.input[1] in inits else w.shape)
        if w.ndim != 2:
            continue
        s_name, z_name = f"{b}_fp8_scale", f"{b}_fp8_zero"
        if per_channel:
            ch_amax = np.maximum(np.abs(w).max(axis=0), 1e-12)
            new_inits += [numpy_helper.from_array((ch_amax / FP8_MAX).astype(np.float32), s_name),
                          _fp8_zero(z_name, w.shape[1])]
            axis = {"axis": 1}
        else:
            new_inits += [numpy_helper.from_array(np.array(max(np.abs(w).max(), 1e-12) / FP8_MAX, np.float32), s_name),
                          _fp8_zero(z_name, None)]
            axis = {}
        q_out, dq_out = f"{b}_fp8_q", f"{b}_fp8_dq"
        new_nodes.setdefault(name, []).extend([
            helper.make_node("QuantizeLinear", [b, s_name, z_name], [q_out], name=f"{b}_QuantizeLinear", **axis),
            helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{b}_DequantizeLinear",
                             **axis)])
        node.input[1] = dq_out
    _insert_before_consumers(model32, new_nodes, new_inits)
    return model32


# --------------------------------------------------------------------------------------------- simulatable
def make_simulatable(model):
    """ONNX Runtime refuses float8 into anything but DequantizeLinear; TensorRT-side quantizers sometimes move fp8
    through Transpose/Reshape before the DQ. Insert a DQ right after such Q outputs and turn the now-float DQs
    downstream into Identity: the same values, in a graph ORT runs. Returns (model, number of rewrites)."""
    from onnx import helper

    g = model.graph
    q_nodes = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for k, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, k))
    rewrites = 0
    floated: set[str] = set()
    inserted = []
    for t, q in q_nodes.items():
        bad = [(n, k) for n, k in consumers.get(t, []) if n.op_type != "DequantizeLinear"]
        if not bad:
            continue
        dq_out = f"{t}_sim_dq"
        inserted.append((q, helper.make_node("DequantizeLinear", [t, *q.input[1:]], [dq_out], name=f"{t}_sim_dq",
                                             **{a.name: a.i for a in q.attribute if a.name == "axis"})))
        for n, k in bad:
            n.input[k] = dq_out
            if n.op_type in _MOVE_OPS:
                floated.update(n.output)
            rewrites += 1
    changed = True
    while changed:  # float now flows where fp8 did: downstream DQs become Identity
        changed = False
        for n in g.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in floated:
                n.op_type = "Identity"
                del n.input[1:]
                del n.attribute[:]
                floated.update(n.output)
                changed = True
            elif n.op_type in _MOVE_OPS and any(i in floated for i in n.input) and not set(n.output) <= floated:
                floated.update(n.output)
                changed = True
    if inserted:
        order = []
        after = {id(q): dq for q, dq in inserted}
        for n in g.node:
            order.append(n)
            if id(n) in after:
                order.append(after[id(n)])
        del g.node[:]
        g.node.extend(order)
    return model, rewrites


# --------------------------------------------------------------------------------------------- ModelOpt backend
def _import_modelopt():
    """Import modelopt.onnx.quantization quietly: it logs to stdout at import (e.g. "Failed to get GPU count" on
    machines without NVML), which would mix into wanrt's tables. Its handlers then write errors to stderr."""
    import contextlib
    import io
    import logging
    import sys

    with contextlib.redirect_stdout(io.StringIO()):
        import modelopt.onnx.quantization as mq
    log = logging.getLogger("modelopt.onnx")
    log.setLevel(logging.ERROR)
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    return mq


def modelopt_available() -> bool:
    try:
        _import_modelopt()
        return True
    except Exception:  # noqa: BLE001 - ImportError or its optional deps failing
        return False


def _modelopt_quantize(twin_path: Path, out_path: Path, chosen: dict[str, Any], samples, eps: list[str]) -> None:

    from onnxruntime.quantization import CalibrationDataReader

    mq = _import_modelopt()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

        def get_first(self):  # ModelOpt's readers have it (a test run before calibration)
            return samples[0]

        def rewind(self):
            self._it = iter(samples)

    try:  # ModelOpt's graph surgery logs through onnx-graphsurgeon's own logger
        from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER

        GS_LOGGER.severity = GS_LOGGER.ERROR
    except ImportError:
        pass
    mq.quantize(str(twin_path), quantize_mode="fp8", calibration_data_reader=Reader(), calibration_method="max",
                calibration_eps=eps, nodes_to_quantize=[f"^{re.escape(n)}$" for n in chosen],
                op_types_to_quantize=["MatMul", "Gemm"], high_precision_dtype="fp32", disable_mha_qdq=True,
                output_path=str(out_path), log_level="ERROR", use_external_data_format=_too_big(twin_path))


def _too_big(path: Path) -> bool:
    return path.stat().st_size > 2**31 - 2**26 or Path(str(path) + ".data").exists()


def resolve_backend(name: str) -> str:
    if name not in FP8_BACKENDS:
        raise BadInputError(f"--fp8-backend {name!r}: choose one of {', '.join(FP8_BACKENDS)}")
    if name == "auto":
        return "modelopt" if modelopt_available() else "wanrt"
    if name == "modelopt" and not modelopt_available():
        raise MissingDependencyError("--fp8-backend modelopt: nvidia-modelopt is not importable; pip install "
                                     "nvidia-modelopt onnx-graphsurgeon onnxslim onnxconverter-common lief "
                                     "(not the [onnx] extra, which pulls onnxruntime-gpu and cupy), or use "
                                     "--fp8-backend wanrt")
    return name


# --------------------------------------------------------------------------------------------- the pass
def quantize_fp8(src: str | os.PathLike, dst: str | os.PathLike, spec: Fp8Spec = Fp8Spec(),
                 calibration: Iterable[dict[str, Any]] | None = None, shape_ranges: dict[str, Any] | None = None,
                 calibration_eps: list[str] | None = None) -> dict[str, Any]:
    """ONNX (fp32/fp16/bf16) -> FP8 Q/DQ ONNX at `dst`, checked in ONNX Runtime first. Returns the report.

    `calibration`: any iterable of {input name: array or torch tensor}; None -> spec.calib_data or seeded random
    inputs. ValuesMismatch when the FP8 graph's relative error exceeds spec.tolerance (nothing written then)."""
    src, dst = Path(src), Path(dst)
    backend = resolve_backend(spec.backend)
    source = load_model(src)
    dtype = graph_dtype(source)
    num_blocks = block_count(source)
    keep = parse_keep_blocks(spec.keep_blocks, num_blocks)
    twin = widen_to_fp32(source) if dtype != "fp32" else source
    chosen, kept = select_matmuls(twin, keep)
    if not chosen:
        raise BadInputError(f"FP8: no MatMul left to quantize ({num_blocks} blocks, --keep-blocks "
                            f"{spec.keep_blocks} keeps {sorted(keep)}); lower --keep-blocks")
    # calibration samples (fp32 numpy), a few held out for the check
    if calibration is None:
        calibration = (load_calibration_set(spec.calib_data, spec.calib) if spec.calib_data else
                       random_calibration(twin, spec.calib, spec.seed, spec.calib_shape, shape_ranges))
    samples = [{k: _to_numpy(v) for k, v in s.items()} for s, _ in zip(calibration, range(max(spec.calib, 1)))]
    if not samples:
        raise BadInputError("FP8 calibration got no samples (--calib N with N >= 1)")
    _check_inputs(samples, twin)
    check_samples = random_calibration(twin, 2, spec.seed + 1000, spec.calib_shape, shape_ranges, batch=1)
    with tempfile.TemporaryDirectory(prefix="wanrt-fp8-") as tmp:
        tmp = Path(tmp)
        twin_path = tmp / "twin32.onnx"
        save_model(twin, twin_path)
        q32_path = tmp / "q32.onnx"
        report_extra: dict[str, Any] = {"weight_scales": "per-tensor"}
        if backend == "modelopt":
            _modelopt_quantize(twin_path, q32_path, chosen, samples, calibration_eps or ["cpu"])
            q32 = load_model(q32_path)
        else:
            acts = sorted({c["activation"] for c in chosen.values()})
            amax = calibrate_amax(twin, acts, samples)
            q32 = insert_qdq(load_model(twin_path), chosen, amax, per_channel=spec.per_channel)
            report_extra["weight_scales"] = "per-channel" if spec.per_channel else "per-tensor"
        n_q = sum(1 for n in q32.graph.node if n.op_type == "QuantizeLinear")
        # numerics: fp32 Q/DQ vs fp32 twin, in ORT
        report: dict[str, Any] = {"backend": backend, "source_dtype": dtype, "blocks": num_blocks,
                                  "keep_blocks": sorted(keep), "quantized_matmuls": len(chosen),
                                  "quantize_nodes": n_q, "quantized_modules": sorted({c["module"] for c in chosen.values()}),
                                  "kept_high_precision": {k: len(v) for k, v in kept.items()},
                                  "calibration": {"samples": len(samples), "method": "max",
                                                  "source": "given" if spec.calib_data else "random (seeded)"},
                                  "tolerance": spec.tolerance, **report_extra}
        if spec.check:
            sim_model, rewrites = make_simulatable(_copy_big(q32))
            errors = relative_errors(ort_session(twin_path), ort_session(sim_model), check_samples)
            report["check"] = {"runtime": "onnxruntime CPU", "reference": f"{dtype} graph widened to fp32",
                               "relative_error": errors, "simulation_rewrites": rewrites,
                               "passed": all(e <= spec.tolerance for e in errors.values())}
            if not report["check"]["passed"]:
                worst = max(errors, key=errors.get)
                raise ValuesMismatch(f"FP8 check failed: relative error {errors[worst]:.3g} on '{worst}' exceeds "
                                     f"--fp8-tolerance {spec.tolerance} (keep more blocks with --keep-blocks, "
                                     f"calibrate on more or real inputs with --calib/--calib-data)")
        out, pairs = transplant_qdq(q32, source)
        report["qdq_pairs"] = pairs
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_model(out, dst)
    report["onnx"] = dst.name
    return report
