"""Calibration data (seeded dummy inputs of the DiT I/O contract, or a user .npz set), ONNX Runtime sessions on CPU,
activation ranges and the relative-error check."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from wanrt.dit_io import DitIO, ShapeRange, VideoShape, parse_video_shape
from wanrt.engines.trt.fp8.graph import fits_protobuf, save_model
from wanrt.errors import BadInputError

# calibration shapes for a graph whose manifest gives no range: anything the VAE grid allows
_ANY_SHAPE = ShapeRange(VideoShape(1, 16, 16), VideoShape(81, 1280, 1280))


def to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    return np.asarray(v, dtype=np.float32)


def random_calibration(model, n: int, seed: int = 0, shape: str | None = None,
                       shape_ranges: dict[str, Any] | None = None, batch: int = 2) -> list[dict[str, np.ndarray]]:
    """`n` samples of the DiT I/O contract's seeded dummy inputs (N(0,1) latents and embeddings, timesteps in
    (0, 1000)) for the graph `model`, at `shape` (FRAMESxHxW) or a small in-range video shape: what calibrates until
    real denoising-step inputs are captured."""
    dims = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in model.graph.input}
    io = DitIO.from_graph_inputs(dims)
    if shape is not None:
        video = parse_video_shape(shape, "--calib-shape")
    else:
        video = ShapeRange.from_manifest(shape_ranges, _ANY_SHAPE).example_shape()
    gen = torch.Generator().manual_seed(seed)
    return [{k: v.numpy() for k, v in io.dummy_inputs(batch, video, generator=gen).items() if k in dims}
            for _ in range(n)]


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


def check_inputs(samples: list[dict[str, np.ndarray]], model) -> None:
    names = [v.name for v in model.graph.input]
    for i, s in enumerate(samples):
        missing = [n for n in names if n not in s]
        if missing:
            raise BadInputError(f"calibration sample {i} lacks input(s) {missing}; it has {sorted(s)}")


def calibration_session(model_or_path, extra_outputs: Iterable[str] = ()):
    """CPU session, basic graph optimizations only: ORT's full level fuses DequantizeLinear+MatMul into
    MatMulIntegerToFloat, which rejects float8 inputs (ORT 1.31)."""
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
        if fits_protobuf(model_or_path):
            return ort.InferenceSession(model_or_path.SerializeToString(), options, providers=["CPUExecutionProvider"])
        # over 2 GB: through a file, removed once the session has read it (the CPU EP keeps its own copy)
        with tempfile.TemporaryDirectory(prefix="wanrt-ort-") as tmp:
            save_model(model_or_path, Path(tmp) / "model.onnx")
            return ort.InferenceSession(str(Path(tmp) / "model.onnx"), options,
                                        providers=["CPUExecutionProvider"])
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


def calibrate_amax(model32, tensors: list[str], samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-tensor max |x| of `tensors` over the calibration samples (ORT on CPU)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model32)
    sess = calibration_session(probe, tensors)
    amax = {t: 0.0 for t in tensors}
    for s in samples:
        feed = {i.name: s[i.name] for i in sess.get_inputs()}
        for t, v in zip(tensors, sess.run(tensors, feed)):
            amax[t] = max(amax[t], float(np.abs(v).max()) if v.size else 0.0)
    return amax
