"""Precision of OpenVINO engines: what runs in bf16, what stays fp32, what NNCF quantizes to int8.

bf16: OpenVINO's CPU plugin, given INFERENCE_PRECISION_HINT=bf16, runs every float op in bf16 except the graph's
tail; on Wan that misses the bf16 gate (rel. error <= 1e-2 vs eager fp32) by ~4-8x. What matters was measured with
OpenVINO's own per-node tools (tools/ov_precision_study.py): node groups are marked with the runtime attribute
`precise` (ov::DisableFP16Compression, which the CPU plugin honours for bf16 too: the runtime model's
`runtimePrecision` shows the marked nodes in f32), one group at a time, and the error and latency compared.

The attribute only exists on the C++ side: a string put into `rt_info` from Python is not it (and is ignored), so
`mark_precise` writes the model to IR, adds `<attribute name="precise" version="0"/>` to the chosen layers and reads
it back; OpenVINO's IR reader creates the real attribute.

Node groups (on the ov.Model read from the ONNX, by graph structure, not by names that depend on the exporter):
- time:       the timestep embedding: everything fed by the `timestep` input and not by latents/text/image
              (sinusoid, time_embedder MLP, time_proj, scale_shift_table add): Wan's keep-in-fp32 time modules.
- norms:      MVN / RMS normalisations and their arithmetic (norm1/2/3, norm_q/k, norm_out): Wan keeps norms fp32.
- rope:       the rotary tables (Sin/Cos and what feeds them) and the ops applying them to q/k (Wan: `rope`).
- modulation: the adaLN multiply/adds that combine the time path with the hidden states (shift, scale, gate).
- residual:   the residual-stream adds (hidden + attention/FFN output).
- attention:  ScaledDotProductAttention.
- lora:       the LoRA branch MatMuls (their weights are Parameters).
Policies name the groups kept in fp32; KEEP_POLICIES["wan"] is what the study selected (see docs/results/ov-*).

int8 (the CPU analogue of FP8): NNCF weight compression to int8 (per-channel symmetric, data-free) of every MatMul
weight except those of fp32-kept groups; the CPU plugin then runs those MatMuls with int8 weights and bf16/fp32
activations. The quantized node list goes into the manifest.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wanrt.errors import BadInputError, MissingDependencyError

GROUPS = ("time", "norms", "rope", "modulation", "residual", "attention", "lora")
KEEP_POLICIES: dict[str, tuple[str, ...]] = {
    "none": (),  # OpenVINO's default bf16: misses the gate (see tools/ov_precision_study.py)
    "wan": ("time",),  # the timestep embedding cut out and compiled fp32: what Wan keeps fp32 and what measured
    "wan+residual": ("time", "residual"),  # + residual-stream adds: lower error, some speed
    "wan+norms": ("time", "norms", "residual"),
}
NORM_TYPES = {"MVN", "ReduceMean", "Power", "Sqrt", "Divide", "RMS"}
VIDEO_INPUTS = ("latents", "text", "image")


# ------------------------------------------------------------------------------------------------ graph walking
def _key(node) -> str:
    return node.get_name()  # unique per node (friendly names need not be)


def _consumers(node) -> list:
    return [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]


def _producers(node) -> list:
    return [i.get_source_output().get_node() for i in node.inputs()]


def cone(starts: Iterable, step: Callable[[Any], list]) -> dict[str, Any]:
    """Every node reachable from `starts` by `step` (_consumers: downstream, _producers: upstream), by key."""
    seen: dict[str, Any] = {}
    stack = list(starts)
    while stack:
        n = stack.pop()
        if _key(n) not in seen:
            seen[_key(n)] = n
            stack.extend(step(n))
    return seen


def node_groups(model, lora_names: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """{group: {node key: node}} for GROUPS (see module docstring)."""
    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    ops = list(model.get_ops())
    video = cone([params[n] for n in VIDEO_INPUTS if n in params], _consumers)
    time_cone = cone([params["timestep"]], _consumers) if "timestep" in params else {}
    groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    groups["time"] = {k: n for k, n in time_cone.items() if k not in video and n.get_type_name() != "Result"}
    # rope: the tables are computed from shapes (ShapeOf/Range) into Sin/Cos; keep what feeds and follows them up to
    # the point where they meet q/k
    trig = [n for n in ops if n.get_type_name() in ("Sin", "Cos")]
    rope_tables = {}
    for n in trig:
        rope_tables.update({k: v for k, v in cone([n], _producers).items() if v.get_type_name() != "Constant"
                            and v.get_type_name() != "Parameter"})
    for k, n in cone(trig, _consumers).items():
        if k not in video:
            rope_tables[k] = n
    groups["rope"] = {k: n for k, n in rope_tables.items() if k not in groups["time"]}
    for n in ops:  # the ops applying the rotary tables to q/k: consumers of a table output on the video path
        if _key(n) in video and any(_key(p) in groups["rope"] for p in _producers(n)):
            groups["rope"][_key(n)] = n
            for c in _consumers(n):  # the rotate-half arithmetic right after (Subtract/Add/ScatterNDUpdate)
                if c.get_type_name() in ("Add", "Subtract", "ScatterNDUpdate", "Concat", "Reshape"):
                    groups["rope"][_key(c)] = c
    for n in ops:
        t = n.get_type_name()
        k = _key(n)
        if k in groups["time"] or k in groups["rope"]:
            continue
        if t in ("MVN", "RMS"):
            groups["norms"][k] = n
        elif t in NORM_TYPES and k in video:
            groups["norms"][k] = n
        elif t == "ScaledDotProductAttention":
            groups["attention"][k] = n
        elif t in ("Multiply", "Add") and k in video:
            srcs = _producers(n)
            if any(_key(s) in groups["time"] for s in srcs):
                groups["modulation"][k] = n
            elif any(s.get_type_name() in ("MVN", "RMS") or _key(s) in groups["norms"] for s in srcs):
                groups["norms"][k] = n  # the affine weight/bias of a norm
            elif t == "Add" and all(_key(s) in video for s in srcs) and len(srcs) == 2:
                groups["residual"][k] = n
        if t == "MatMul" and any(s.get_friendly_name() in set(lora_names) for s in _producers(n)):
            groups["lora"][k] = n
    # modulation also covers the gate/scale ops fed through a split of the time path (Split/VariadicSplit outputs)
    return groups


# ------------------------------------------------------------------------------------------------ time split
TIME_PREFIX = "wanrt.time."


def split_time_path(model):
    """Cut the timestep embedding out of `model` into its own ov.Model, to be compiled in fp32.

    Returns (main model, time model or None). The time model maps `timestep` to the tensors the main graph takes
    from it (the sinusoid -> time_embedder -> time_proj path, scale_shift_table adds): each becomes a Parameter of
    the main model named `wanrt.time.<i>`. Why a cut and not a mark: under a bf16 hint the CPU plugin fuses this
    path's eltwise chain and runs `timestep * freqs` in bf16 whatever the node attributes say; with t up to 1000
    that destroys the sinusoid's phase (32% error at time_embedder's first Linear on `small`), and every block's
    adaLN modulation inherits it. Wan keeps exactly this path in fp32 (`time_embedder`, `scale_shift_table`)."""
    from openvino import Model
    from openvino import opset13 as ops

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    if "timestep" not in params:
        return model, None
    video = cone([params[n] for n in VIDEO_INPUTS if n in params], _consumers)
    time_nodes = {k: n for k, n in cone([params["timestep"]], _consumers).items() if k not in video}
    boundary = []
    for node in time_nodes.values():
        for out in node.outputs():
            outside = [t for t in out.get_target_inputs() if _key(t.get_node()) not in time_nodes]
            if outside:
                boundary.append((out, outside))
    if not boundary:
        return model, None
    # constants shared with the main graph (axes, shapes) get a private copy: a node of one model must not
    # have consumers in the other (NNCF walks every consumer of every node)
    for node in time_nodes.values():
        for inp in node.inputs():
            src = inp.get_source_output().get_node()
            if src.get_type_name() == "Constant" and any(_key(t.get_node()) not in time_nodes
                                                          for t in src.output(0).get_target_inputs()):
                inp.replace_source_output(ops.constant(src.get_data().copy(), src.get_output_element_type(0)).output(0))
    results, new_params = [], []
    for i, (out, outside) in enumerate(boundary):
        name = f"{TIME_PREFIX}{i}"
        param = ops.parameter(out.get_partial_shape(), out.get_element_type(), name=name)
        param.output(0).get_tensor().set_names({name})
        for target in outside:
            target.replace_source_output(param.output(0))
        res = ops.result(out)
        res.output(0).get_tensor().set_names({name})
        results.append(res)
        new_params.append(param)
    model.add_parameters(new_params)
    model.remove_parameter(params["timestep"])
    model.validate_nodes_and_infer_types()
    time_model = Model(results, [params["timestep"]], "wanrt_time_embedding")
    time_model.validate_nodes_and_infer_types()
    return model, time_model


# ------------------------------------------------------------------------------------------------ marking
def mark_precise(core, model, nodes: dict[str, Any], work_dir: Path):
    """A copy of `model` (through IR in work_dir) whose `nodes` carry the `precise` runtime attribute, so the CPU
    plugin keeps them in fp32 under a bf16 hint. Returns the new ov.Model."""
    import openvino as ov

    names = {n.get_friendly_name() for n in nodes.values()}
    xml = work_dir / "marked.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    tree = ET.parse(xml)
    layers = tree.getroot().find("layers")
    marked = 0
    for layer in layers.iter("layer"):
        if layer.get("name") not in names:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            # rt_info comes right after <data> (before <input>/<output>) in OpenVINO's IR
            index = 1 if layer.find("data") is not None else 0
            layer.insert(index, rt)
        if not any(a.get("name") == "precise" for a in rt.findall("attribute")):
            ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
            marked += 1
    tree.write(xml)
    out = core.read_model(str(xml))
    return out, marked


def runtime_precisions(compiled) -> dict[str, dict[str, int]]:
    """{layer type: {runtime precision: count}} from the compiled model's runtime graph (OpenVINO's own record of
    what each node ran in)."""
    out: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ops():
        ri = op.get_rt_info()
        t, p = ri["layerType"].astype(str), ri["runtimePrecision"].astype(str)
        if t in ("Const", "Input", "Output", "Reorder", "Reshape"):
            continue
        out.setdefault(t, {}).setdefault(p, 0)
        out[t][p] += 1
    return out


# ------------------------------------------------------------------------------------------------ int8
def compress_int8(model, keep: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """NNCF int8 weight compression (symmetric, per output channel) of every MatMul weight outside `keep`.
    Returns (model, report with the names of the quantized MatMuls)."""
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError(f"int8 needs NNCF ({e}); pip install 'wanrt[openvino]'") from None
    from openvino.passes import ConstantFolding, Manager

    # the exporter feeds Linear weights through Transpose(W); NNCF compresses only MatMuls whose weight is a
    # constant, so fold those first (the LoRA weights are Parameters and stay untouched)
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    ignored = sorted({n.get_friendly_name() for n in keep.values() if n.get_type_name() == "MatMul"})
    scope = nncf.IgnoredScope(names=ignored, validate=False) if ignored else None
    kwargs = {"mode": nncf.CompressWeightsMode.INT8_SYM}
    if scope is not None:
        kwargs["ignored_scope"] = scope
    model = nncf.compress_weights(model, **kwargs)
    quantized = quantized_matmuls(model)
    return model, {"method": "nncf.compress_weights INT8_SYM (per output channel, data-free)",
                   "quantized_nodes": quantized, "count": len(quantized)}


def quantized_matmuls(model) -> list[str]:
    """MatMuls whose weight input comes from an int8/uint8 constant (through NNCF's decompression ops)."""
    out = []
    for n in model.get_ops():
        if n.get_type_name() != "MatMul":
            continue
        for src in cone([_producers(n)[1]], _producers).values():
            is_int8 = src.get_output_element_type(0).get_type_name() in ("i8", "u8")
            if src.get_type_name() == "Constant" and is_int8:
                out.append(n.get_friendly_name())
                break
    return out


# ------------------------------------------------------------------------------------------------ w8a8
def linear_matmuls(model) -> list:
    """The MatMuls of Linear layers: weight input derived from a Constant alone (the LoRA branch's weights are
    Parameters, attention's operands are activations)."""
    out = []
    for n in model.get_ops():
        if n.get_type_name() != "MatMul":
            continue
        upstream = cone([_producers(n)[1]], _producers)
        if not any(c.get_type_name() == "Parameter" for c in upstream.values()):
            out.append(n)
    return out


# W8A8 choices as data, from one exploratory run (`small`, rank-16 separate export, 8 calibration samples, max-abs
# error vs eager fp32 at 5x64x64, t=500; not kept as a results file): SmoothQuant at NNCF's transformer default
# (alpha 0.95) 7.8e-2, over the 5e-2 gate; SmoothQuant off 2.1e-2; the MIXED preset (asymmetric activations) 7.5e-2
# with SmoothQuant. The seeded presets' activations have no outlier channels for SmoothQuant to migrate, so it only
# moved error into the weights; a real checkpoint may differ.
W8A8_POLICY = {"preset": "PERFORMANCE", "smooth_quant_alpha": -1.0}  # -1: SmoothQuant off (NNCF's convention)


def quantize_w8a8(model, keep: dict[str, Any], calibration: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """Static W8A8 (NNCF post-training quantization): int8 weights per output channel and int8 activations per
    tensor (symmetric) on every Linear MatMul outside `keep`, the activation ranges from `calibration` (inputs of
    this model), per W8A8_POLICY. Everything else (attention, the LoRA branch, norms, the fp32-kept groups) stays
    float: a LoRA branch beside an int8 base keeps its precision and stays swappable."""
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError(f"w8a8 needs NNCF ({e}); pip install 'wanrt[openvino]'") from None
    from openvino.passes import ConstantFolding, Manager

    manager = Manager()  # as compress_int8: Transpose(W) folded so each Linear's weight is one Constant
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    linear = {n.get_friendly_name() for n in linear_matmuls(model)}
    kept = {n.get_friendly_name() for n in keep.values() if n.get_type_name() == "MatMul"}
    ignored = sorted({n.get_friendly_name() for n in model.get_ops() if n.get_type_name() == "MatMul"}
                     - (linear - kept))
    smooth = nncf.AdvancedSmoothQuantParameters(matmul=W8A8_POLICY["smooth_quant_alpha"])
    model = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                          model_type=nncf.ModelType.TRANSFORMER,
                          preset=getattr(nncf.QuantizationPreset, W8A8_POLICY["preset"]),
                          target_device=nncf.TargetDevice.CPU,
                          ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                          advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alphas=smooth))
    quantized = [n.get_friendly_name() for n in model.get_ops() if n.get_type_name() == "MatMul"
                 and _producers(n)[0].get_type_name() == "FakeQuantize"]
    return model, {"method": "nncf.quantize W8A8 (int8 weights per channel, int8 activations per tensor), "
                             "calibrated", "policy": dict(W8A8_POLICY), "calibration_samples": len(calibration),
                   "quantized_nodes": quantized, "count": len(quantized)}


def time_inputs(time_model, feeds: list[dict[str, Any]], core) -> list[dict[str, Any]]:
    """`feeds` (the graph's own inputs) as inputs of the main model after split_time_path: each timestep through
    the fp32 time model, the time outputs added under their `wanrt.time.<i>` names, `timestep` dropped."""
    if time_model is None:
        return feeds
    compiled = core.compile_model(time_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [o.get_any_name() for o in time_model.outputs]
    out = []
    for feed in feeds:
        result = compiled({"timestep": feed["timestep"]})
        out.append({**{k: v for k, v in feed.items() if k != "timestep"},
                    **{name: result[compiled.output(i)] for i, name in enumerate(names)}})
    return out


# ------------------------------------------------------------------------------------------------ the build step
def apply(model, spec, work_dir: Path, lora_names: Iterable[str] = (), core=None,
          calibration: list[dict[str, Any]] | None = None):
    """The precision steps of a build: (main model, time model or None, report for the manifest). `work_dir` holds
    the marked IR, whose weights the returned model maps: keep it until the model is compiled. `calibration`
    (w8a8): samples of the graph's inputs, LoRA weights included."""
    import openvino as ov

    if spec.precision == "fp32":
        return model, None, {"hint": "f32", "keep_fp32": [], "marked_nodes": 0}
    if spec.keep_fp32 not in KEEP_POLICIES:
        raise BadInputError(f"keep-fp32 policy {spec.keep_fp32!r}: choose one of {', '.join(KEEP_POLICIES)}")
    core = core or ov.Core()
    groups = KEEP_POLICIES[spec.keep_fp32]
    time_model = None
    if "time" in groups:
        model, time_model = split_time_path(model)
    quantize = None
    if spec.precision == "int8":
        quantize = compress_int8
    elif spec.precision == "w8a8":
        samples = time_inputs(time_model, calibration or [], core)
        quantize = lambda m, keep: quantize_w8a8(m, keep, samples)  # noqa: E731 - one call site
    model, report = mark_groups(core, model, [g for g in groups if g != "time"], work_dir, lora_names, quantize)
    report["keep_fp32"] = list(groups)
    report["time_engine_fp32"] = time_model is not None
    return model, time_model, report


def mark_groups(core, model, keep_groups: Iterable[str], work_dir: Path, lora_names: Iterable[str] = (),
                quantize=None) -> tuple[Any, dict[str, Any]]:
    """(quantize: int8 weight compression or W8A8, outside the kept groups, then) mark `keep_groups` precise.
    Returns (model, report)."""
    keep_groups = tuple(keep_groups)
    lora_names = set(lora_names)
    groups = node_groups(model, lora_names)
    keep = {k: n for g in keep_groups for k, n in groups[g].items()}
    report: dict[str, Any] = {"hint": "bf16", "keep_fp32": list(keep_groups),
                              "group_sizes": {g: len(groups[g]) for g in GROUPS}}
    if quantize is not None:
        model, report["int8"] = quantize(model, keep)
        groups = node_groups(model, lora_names)  # compression added nodes: find the groups on the new graph
        keep = {k: n for g in keep_groups for k, n in groups[g].items()}
    marked = 0
    if keep:
        model, marked = mark_precise(core, model, keep, Path(work_dir))
    report["marked_nodes"] = marked
    return model, report
