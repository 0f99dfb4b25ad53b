"""Peak rates of the matmul kernels the backends run, measured in the run that uses them.

A backend's MFU is its achieved FLOP/s over the peak of its own kernel: torch's F.linear at its dtype for eager,
compile and TensorRT (cuBLAS on a GPU), ONNX Runtime's MatMul for ort on a CPU, OpenVINO's FullyConnected at the
engine's precision for ov. Taking every backend against torch's fp32 peak reported OpenVINO at 126-136% "MFU" on a
Zen 2 CPU, where OpenVINO's fp32 FC runs about twice torch's fp32 F.linear: a figure that told nothing.
`wanrt bench` and tools/bench_cpu_engines.py measure through these functions.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from wanrt.dit_io import TORCH_DTYPES
from wanrt.engines import registry
from wanrt.engines.openvino.engine import compile_properties

# bench backend -> the kernel family its MFU is taken against (the precision completes the name); an engine
# flavour names its own
_FAMILY = {"eager": "F.linear", "compile": "F.linear", "ort": "ORT MatMul",
           **{b: registry.for_backend(b).kernel for b in registry.backends()}}


def kernel_for(backend: str, precision: str, device: torch.device) -> str:
    """The kernel whose peak `backend` running at `precision` on `device` is measured against."""
    family = _FAMILY[backend]
    if device.type == "cuda" and backend == "ort":
        family = "F.linear"  # ORT's CUDA EP runs cuBLAS, as torch does
    if family == "F.linear" and precision not in ("fp32", "bf16", "fp16"):
        precision = "bf16"  # fp8/int8 engines: their non-quantized layers run at bf16; no torch fp8 matmul here
    if family == "ORT MatMul" and precision != "fp32":
        precision = "fp32"  # ORT's CPU EP runs fp32 MatMuls for every export the bench makes on a CPU
    return f"{family} {precision}"


def _timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None], warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def _torch_linear(dtype: torch.dtype, x, w, device: torch.device):
    xd, wd = x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)
    return lambda: torch.nn.functional.linear(xd, wd)


def _ort(op: str, m: int, k: int, n: int, x, w):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if op == "MatMul":
        a_type, out_type, b_arr, a = TensorProto.FLOAT, TensorProto.FLOAT, w.T.contiguous().numpy(), x.numpy()
    else:  # MatMulInteger u8 x s8
        rng = np.random.default_rng(0)
        a_type, out_type = TensorProto.UINT8, TensorProto.INT32
        b_arr, a = rng.integers(-127, 127, (k, n), dtype=np.int8), rng.integers(0, 255, (m, k), dtype=np.uint8)
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, n])],
                              [numpy_helper.from_array(b_arr, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"a": a})


def _openvino_fc(precision: str, m: int, k: int, x, w):
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter([m, k], ov.Type.f32, name="x")
    model = ov.Model([ops.result(ops.matmul(param, ops.constant(w.numpy()), False, True))], [param])
    if precision == "int8":
        import nncf

        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    elif precision == "w8a8":  # int8 x int8 (VNNI/AMX): activations quantized too, as a w8a8 engine's Linears
        import nncf

        model = nncf.quantize(model, nncf.Dataset([{"x": x.numpy()}]), subset_size=1,
                              preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU)
    # the engines' own compile properties: the peak is of the kernel an engine of that precision runs
    req = ov.Core().compile_model(model, "CPU", compile_properties(precision, torch.get_num_threads())
                                  ).create_infer_request()
    xn = x.numpy()
    return lambda: req.infer({"x": xn})


def measure_kernel(name: str, m: int, k: int, n: int, device: torch.device | str = "cpu",
                   repeats: int = 5) -> dict[str, Any]:
    """{"tflops", "median_s", "shape"} of kernel `name` on [m x k]·[k x n], or {"error": one line} when this machine
    cannot run it (e.g. torch._int_mm without its CPU kernel)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    family, _, precision = name.rpartition(" ")
    try:
        if family == "F.linear":
            fn = _torch_linear(TORCH_DTYPES[precision], x, w, device)
        elif name == "torch._int_mm int8":
            xi = torch.randint(-127, 127, (m, k), dtype=torch.int8, generator=gen).to(device)
            wi = torch.randint(-127, 127, (k, n), dtype=torch.int8, generator=gen).to(device)
            fn = lambda: torch._int_mm(xi, wi)  # noqa: E731
        elif family == "ORT MatMul":
            fn = _ort("MatMul", m, k, n, x, w)
        elif name == "ORT MatMulInteger u8s8":
            fn = _ort("MatMulInteger", m, k, n, x, w)
        elif family == "OpenVINO FC":
            fn = _openvino_fc(precision, m, k, x, w)
        else:
            raise ValueError(f"unknown kernel {name!r}")
        with torch.inference_mode():
            times = _timed(fn, repeats, sync)
    except (RuntimeError, ImportError) as e:
        return {"error": (str(e).strip().splitlines() or [type(e).__name__])[0][:200], "shape": [m, k, n]}
    med = statistics.median(times)
    flops = 2.0 * m * k * n
    return {"tflops": flops / med / 1e12, "median_s": med, "shape": [m, k, n],
            "samples_tflops": [flops / t / 1e12 for t in times]}


def measure_bandwidth(repeats: int = 5, mib: int = 256) -> dict[str, Any]:
    """Copy bandwidth (read + write bytes per second) of a `mib` MiB fp32 tensor copy, best of `repeats`."""
    src = torch.empty(mib * 2**18, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = _timed(lambda: dst.copy_(src), repeats, lambda: None, warmup=1)
    return {"gbps": 2 * src.numel() * 4 / min(times) / 1e9, "bytes": 2 * src.numel() * 4}
