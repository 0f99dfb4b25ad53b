"""Trace a Wan transformer (with its LoRA applied) to ONNX with the dynamo exporter.

optimum-style: `WanOnnxConfig` declares the component (I/O names, dynamic axes, dtypes, dummy inputs, tolerance);
`export_onnx` does the work in numbered steps; patches live in `export_patches()`, reversible, with their reasons.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from wanrt.errors import BadInputError
from wanrt.export.presets import IMAGE_TOKENS, TEXT_TOKENS, VideoShape, VAE_STRIDE

# Default opset 23: fused Attention and RMSNormalization nodes; ORT 1.31 and TensorRT-RTX 1.7 parse them (measured,
# README "ONNX"). --opset 18 decomposes both, for older TensorRT parsers.
DEFAULT_OPSET = 23
SUPPORTED_OPSETS = (18, 20, 21, 23)
# ONNX protobuf cannot hold more than 2 GB; past that weights go to one external file beside model.onnx.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
EXTERNAL_DATA_NAME = "model.onnx.data"
# Validation tolerance per dtype: max |onnx - torch| / max |torch| (relative to the output's scale, robust to
# near-zero elements). fp32 is a re-ordering of the same arithmetic; fp16/bf16 compare a half-precision graph
# (run in fp32 by ORT-CPU, see validate.py) against half-precision eager.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


@dataclass(frozen=True)
class ExportSpec:
    dtype: str = "fp32"
    opset: int = DEFAULT_OPSET
    min_shape: VideoShape | None = None  # None: the preset's range (or a default for checkpoints)
    max_shape: VideoShape | None = None
    max_batch: int = 2  # CFG runs conditional and unconditional in one batch
    validate: bool = True
    external_data: bool | None = None  # None: only when the model is over 2 GB


@dataclass(frozen=True)
class ShapeRange:
    """Latent-space ranges the graph is exported for (frames in latent steps, H/W in latent pixels)."""

    min_shape: VideoShape
    max_shape: VideoShape
    max_batch: int = 2

    @property
    def latent(self) -> dict[str, tuple[int, int]]:
        lo, hi = self.min_shape.latent, self.max_shape.latent
        return {"F": (lo[0], hi[0]), "H": (lo[1], hi[1]), "W": (lo[2], hi[2])}


def check_video_shape(frames: int, height: int, width: int) -> VideoShape:
    """Pixel-space request -> VideoShape, refusing what the VAE/patching cannot represent."""
    if frames < 1 or (frames - 1) % VAE_STRIDE[0]:
        raise BadInputError(f"frames {frames}: must be 4k+1 (1, 5, 9, ..., 81) for the Wan VAE's temporal stride 4")
    for name, v in (("height", height), ("width", width)):
        if v < 16 or v % 16:
            raise BadInputError(f"{name} {v}: must be a positive multiple of 16 (VAE stride 8 x patch 2)")
    return VideoShape(frames, height, width)


class WanOnnxConfig:
    """The exported component: names, axes, dtypes, dummy inputs. One place, read by export, validation,
    engines (profiles) and the ORT backend."""

    INPUTS = ("latents", "timestep", "text", "image")
    OUTPUTS = ("prediction",)

    def __init__(self, geometry: dict[str, Any], dtype: torch.dtype, shapes: ShapeRange):
        self.geometry, self.dtype, self.shapes = geometry, dtype, shapes
        self.has_image = geometry["image_dim"] is not None  # T2V models (1.3B) have no image branch

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.INPUTS if self.has_image else self.INPUTS[:3]

    def input_shapes(self, batch: int, shape: VideoShape) -> dict[str, tuple[int, ...]]:
        f, h, w = shape.latent
        g = self.geometry
        shapes = {"latents": (batch, g["in_channels"], f, h, w), "timestep": (batch,),
                  "text": (batch, TEXT_TOKENS, g["text_dim"])}
        if self.has_image:
            shapes["image"] = (batch, IMAGE_TOKENS, g["image_dim"])
        return shapes

    def input_dtype(self, name: str) -> torch.dtype:
        return torch.float32 if name == "timestep" else self.dtype

    def dummy_inputs(self, batch: int, shape: VideoShape, seed: int = 0) -> dict[str, torch.Tensor]:
        """Seeded inputs at the real statistics' scale: N(0,1) latents and embeddings, timesteps in (0, 1000)."""
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for name, shp in self.input_shapes(batch, shape).items():
            if name == "timestep":
                out[name] = torch.rand(shp, generator=gen) * 999.0 + 0.5
            else:
                out[name] = torch.randn(shp, generator=gen).to(self.dtype)
        return out

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        lat = self.shapes.latent
        Dim = torch.export.Dim
        batch = Dim("batch", min=1, max=self.shapes.max_batch)
        frames = Dim("latent_frames", min=lat["F"][0], max=lat["F"][1])
        # latent H/W are even (patch 2): export them as 2*h so the graph knows patching divides them
        half_h = Dim("latent_half_height", min=lat["H"][0] // 2, max=lat["H"][1] // 2)
        half_w = Dim("latent_half_width", min=lat["W"][0] // 2, max=lat["W"][1] // 2)
        axes = {"latents": {0: batch, 2: frames, 3: 2 * half_h, 4: 2 * half_w}, "timestep": {0: batch},
                "text": {0: batch}}
        if self.has_image:
            axes["image"] = {0: batch}
        return axes

    def trace_shape(self) -> VideoShape:
        """An example strictly inside the range with no axis equal to 1, so torch.export keeps every axis
        dynamic (it specialises sizes 0 and 1)."""
        lo, hi = self.shapes.min_shape, self.shapes.max_shape
        frames = min(max(lo.frames, 5), hi.frames)
        return VideoShape(frames, min(max(lo.height, 32), hi.height), min(max(lo.width, 32), hi.width))


class _ForwardWrapper(torch.nn.Module):
    """Positional (latents, timestep, text, image) -> prediction, the graph's public signature."""

    def __init__(self, transformer: torch.nn.Module, has_image: bool):
        super().__init__()
        self.transformer, self.has_image = transformer, has_image

    def forward(self, latents, timestep, text, image=None):
        return self.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                                encoder_hidden_states_image=image if self.has_image else None,
                                return_dict=False)[0]


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Reversible settings active only while tracing, each with its reason."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        # The exporter logs every decomposition step at INFO and warns about unbacked symbols it resolves itself;
        # the progress bar says what is happening instead.
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------------- naming
_LORA_PARAM = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B|bias)$")


def onnx_initializer_name(param_name: str) -> str:
    """State-dict name -> ONNX initializer name: base weights keep diffusers' names; separate-mode LoRA
    parameters become `lora.<module>.A|B|bias` (documented, what refit addresses)."""
    m = _LORA_PARAM.match(param_name)
    return f"lora.{m['module']}.{m['part']}" if m else param_name


def _optimize_keeping_names(model, names: set[str]) -> None:
    """Run onnxscript's optimizer without folding named parameters away.

    The optimizer constant-folds Transpose(weight) into an anonymous `val_N` initializer for small tensors, which
    would lose the names refit and manifests rely on. Parameters are turned into graph inputs for the duration
    (nothing folds through an input), then restored as initializers.
    """
    import onnxscript.optimizer

    graph = model.graph
    protected = []
    for name in names:
        value = graph.initializers.get(name)
        if value is None:
            continue
        tensor = value.const_value
        graph.initializers.pop(name)
        value.const_value = None
        graph.inputs.append(value)
        protected.append((value, tensor))
    onnxscript.optimizer.optimize(model)
    for value, tensor in protected:
        graph.inputs.remove(value)
        value.const_value = tensor
        graph.register_initializer(value)


def _rename_initializers(model, prefix: str) -> dict[str, str]:
    """Strip the wrapper prefix and apply onnx_initializer_name; returns {old: new}."""
    renames = {}
    for old in list(model.graph.initializers):
        base = old[len(prefix):] if old.startswith(prefix) else old
        new = onnx_initializer_name(base)
        if new != old:
            renames[old] = new
    for old, new in renames.items():
        model.graph.initializers[old].name = new
    return renames


# --------------------------------------------------------------------------------------------- export
def export_onnx(transformer: torch.nn.Module, config: WanOnnxConfig, path: Path, opset: int = DEFAULT_OPSET,
                external_data: bool | None = None, progress=None) -> dict[str, Any]:
    """Trace `transformer` to `path` (model.onnx [+ model.onnx.data]). Returns facts for the manifest."""
    if opset not in SUPPORTED_OPSETS:
        raise BadInputError(f"--opset {opset}: choose one of {', '.join(map(str, SUPPORTED_OPSETS))}")
    step = progress or (lambda _msg: None)
    wrapper = _ForwardWrapper(transformer, config.has_image).eval()
    example = config.dummy_inputs(batch=2, shape=config.trace_shape())
    # 1. trace without the exporter's own optimisation pass (it would fold and rename small weights)
    step("tracing (torch.export)")
    with export_patches(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, tuple(example[n] for n in config.input_names), dynamo=True, opset_version=opset,
            input_names=list(config.input_names), output_names=list(config.OUTPUTS),
            dynamic_shapes=tuple(config.dynamic_shapes()[n] for n in config.input_names),
            optimize=False, verbose=False, report=False)
    model = program.model
    # 2. optimise (SplitToSequence -> Split etc., which TensorRT needs) with parameters protected
    step("optimising graph")
    params = {f"transformer.{n}" for n, _ in transformer.named_parameters()}
    with export_patches():
        _optimize_keeping_names(model, params)
    # 3. deterministic initializer names
    renames = _rename_initializers(model, "transformer.")
    # 4. save, with one external data file past 2 GB
    step("saving")
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    use_external = size > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    model.producer_name, model.producer_version = "wanrt", __import__("wanrt").__version__
    program.save(str(path), external_data=use_external)
    if use_external:
        written = path.parent / (path.name + ".data")
        if written.name != EXTERNAL_DATA_NAME and written.exists():
            written.rename(path.parent / EXTERNAL_DATA_NAME)
    # The in-memory graph outlives this function (the exporter keeps references to it), and its initializers
    # wrap the torch parameters: drop them so the weights can be freed before validation loads the file.
    for value in model.graph.initializers.values():
        value.const_value = None
    del program, model
    return {"initializer_bytes": size, "external_data": EXTERNAL_DATA_NAME if use_external else None,
            "renamed_initializers": len(renames)}
