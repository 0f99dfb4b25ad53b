"""Validate an exported ONNX against eager PyTorch, in tiers (optimum's habit): names -> axes -> shapes -> values.

Each tier raises its own typed error (wanrt.errors.NamesMismatch, AxesMismatch, ShapeMismatch, ValuesMismatch).
Values run in ONNX Runtime on CPU against reference outputs computed from the eager model beforehand, so the torch
model can be freed before ORT loads the graph (peak memory stays near one copy of the weights).

ORT's CPU provider has no bf16 kernels (Conv, MatMul): a bf16 graph is checked through an fp32 copy of itself
(every bf16 tensor and Cast widened to fp32, same structure, same bf16-rounded weights) and the report says so.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wanrt.dit_io import DitIO, VideoShape
from wanrt.memory import release_memory
from wanrt.errors import AxesMismatch, NamesMismatch, ShapeMismatch, ValuesMismatch
from wanrt.export.onnx_export import TOLERANCE

@dataclass
class ShapeCheck:
    shape: str
    batch: int
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    mean_rel: float  # mean |onnx - torch| / mean |torch|
    passed: bool


@dataclass
class ValidationReport:
    tolerance: float
    evaluated_as: str
    checks: list[ShapeCheck] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:  # Polygraphy's comparators: a result is truthy when it passed
        return self.passed

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=float("nan"))


def reference_outputs(transformer: torch.nn.Module, config: DitIO, shapes: list[tuple[int, VideoShape]],
                      seed: int = 0) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Eager (inputs, output) pairs at each (batch, shape), computed before export so the model can be freed."""
    pairs = []
    with torch.inference_mode():
        for i, (batch, shape) in enumerate(shapes):
            inputs = config.dummy_inputs(batch, shape, seed=seed + 1 + i)
            out = transformer(hidden_states=inputs["latents"], timestep=inputs["timestep"],
                              encoder_hidden_states=inputs["text"],
                              encoder_hidden_states_image=inputs.get("image"), return_dict=False)[0]
            pairs.append((inputs, out.float().clone()))
    return pairs


# --------------------------------------------------------------------------------------------- tiers 1-2
def check_names(model, config: DitIO) -> None:
    got_in = [v.name for v in model.graph.input]
    got_out = [v.name for v in model.graph.output]
    if got_in != list(config.input_names) or got_out != list(config.output_names):
        raise NamesMismatch(f"graph I/O {got_in} -> {got_out}, expected {list(config.input_names)} -> "
                            f"{list(config.output_names)}")


def check_axes(model, config: DitIO) -> None:
    """Dynamic axes are symbolic, static ones have the config's sizes."""
    expected = config.input_shapes(batch=1, shape=config.shapes.min_shape)
    dynamic = {n: set(axes) for n, axes in config.dynamic_shapes().items()}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        want = expected[value.name]
        if len(dims) != len(want):
            raise AxesMismatch(f"input {value.name}: rank {len(dims)}, expected {len(want)}")
        for axis, (dim, size) in enumerate(zip(dims, want)):
            is_dynamic = bool(dim.dim_param)
            if axis in dynamic.get(value.name, ()):
                if not is_dynamic:
                    raise AxesMismatch(f"input {value.name} axis {axis} is fixed at {dim.dim_value}, expected dynamic")
            elif is_dynamic or dim.dim_value != size:
                raise AxesMismatch(f"input {value.name} axis {axis} is {dim.dim_param or dim.dim_value}, "
                                   f"expected {size}")
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 5 or not all(d.dim_param for i, d in enumerate(out_dims) if i != 1):
        raise AxesMismatch("output prediction: expected [batch, C, F, H, W] with dynamic batch/F/H/W")


# --------------------------------------------------------------------------------------------- fp32 copy
def write_fp32_copy(src: Path, dst_dir: Path) -> Path:
    """A copy of a bf16 graph with every bf16 tensor, value and Cast widened to fp32 (see module docstring)."""
    import onnx_ir as ir

    model = ir.load(str(src))
    bf16, f32 = ir.DataType.BFLOAT16, ir.DataType.FLOAT
    graph = model.graph
    sources = [v.const_value for v in graph.initializers.values() if v.const_value is not None]
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is not None and tensor.dtype == bf16:
            # lazy: each fp32 copy exists only while the saver writes it (peak ~ one tensor, not the whole model)
            value.const_value = ir.LazyTensor(lambda t=tensor: ir.tensor(t.numpy().astype(np.float32)),
                                              dtype=f32, shape=tensor.shape, name=name)
            value.dtype = f32
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type == "Cast" and node.attributes.get("to") is not None and node.attributes["to"].value == bf16:
            node.attributes["to"] = ir.AttrInt64("to", f32)
        for attr in list(node.attributes.values()):
            if attr.type == ir.AttributeType.TENSOR and attr.value.dtype == bf16:
                node.attributes[attr.name] = ir.AttrTensor(attr.name, ir.tensor(attr.value.numpy().astype(np.float32)))
        for out in node.outputs:
            if out.dtype == bf16:
                out.dtype = f32
    for value in [*graph.inputs, *graph.outputs]:
        if value.dtype == bf16:
            value.dtype = f32
    dst = dst_dir / "model_fp32.onnx"
    ir.save(model, str(dst), external_data="model_fp32.onnx.data")
    # close the memory maps of the bf16 file now: touched pages count as resident until then, and ONNX Runtime is
    # about to load the fp32 copy on top
    for tensor in sources:
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()
    del model, sources
    release_memory()
    return dst


def validation_session(path: Path):
    """ONNX Runtime CPU session for the value tier."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Prepacked MatMul weights are a second copy of every weight; validation shapes are small, memory is not.
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------- all tiers
def validate_onnx(path: Path, config: DitIO, references, dtype_name: str,
                  tolerance: float | None = None) -> ValidationReport:
    import onnx

    tolerance = TOLERANCE[dtype_name] if tolerance is None else tolerance
    # 1-2. names and axes, from the graph alone (no weights loaded)
    header = onnx.load(str(path), load_external_data=False)
    check_names(header, config)
    check_axes(header, config)
    del header
    report = ValidationReport(tolerance=tolerance, evaluated_as=dtype_name, tiers=["names", "axes"])
    with tempfile.TemporaryDirectory(prefix="wanrt-validate-") as tmp:
        run_path = path
        if dtype_name == "bf16":
            run_path = write_fp32_copy(path, Path(tmp))
            report.evaluated_as = "bf16 graph widened to fp32 (ONNX Runtime CPU has no bf16 kernels)"
        session = validation_session(run_path)
        feed_dtype = np.float16 if dtype_name == "fp16" else np.float32
        for inputs, ref in references:
            feed = {n: t.float().numpy().astype(np.float32 if n == "timestep" else feed_dtype)
                    for n, t in inputs.items()}
            # 3. shapes
            out = session.run(None, feed)[0].astype(np.float32)
            batch = inputs["latents"].shape[0]
            if tuple(out.shape) != tuple(ref.shape):
                raise ShapeMismatch(f"prediction {tuple(out.shape)} for latents {tuple(inputs['latents'].shape)}, "
                                    f"PyTorch gives {tuple(ref.shape)}")
            # 4. values
            ref_np = ref.numpy()
            diff = np.abs(out - ref_np)
            max_rel = float(diff.max() / max(np.abs(ref_np).max(), 1e-12))
            mean_rel = float(diff.mean() / max(np.abs(ref_np).mean(), 1e-12))
            finite = bool(np.isfinite(out).all())
            shape_str = "x".join(map(str, inputs["latents"].shape[2:]))
            report.checks.append(ShapeCheck(shape=f"latent {shape_str}", batch=batch, max_abs=float(diff.max()),
                                            max_rel=max_rel, mean_rel=mean_rel,
                                            passed=finite and max_rel <= tolerance))
        del session
    report.tiers += ["shapes", "values"]
    failed = [c for c in report.checks if not c.passed]
    if failed:
        c = failed[0]
        raise ValuesMismatch(f"ONNX vs PyTorch at {c.shape} batch {c.batch}: max relative error {c.max_rel:.3g} "
                             f"> tolerance {tolerance:g} ({dtype_name})")
    return report
