"""Trace a Wan transformer (with its LoRA applied) to ONNX with the dynamo exporter.

optimum-style: `wanrt.dit_io.DitIO` declares the component (I/O names, dynamic axes, dtypes, dummy inputs) and
`TOLERANCE` its validation tolerance; `export_onnx` does the work in numbered steps; patches live in
`export_patches()`, reversible, with their reasons; initializer names follow `wanrt.lora_layout`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from wanrt import lora_layout
from wanrt.dit_io import DitIO, VideoShape
from wanrt.errors import BadInputError

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
    """Strip the wrapper prefix and apply lora_layout's names; returns {old: new}."""
    renames = {}
    for old in list(model.graph.initializers):
        base = old[len(prefix):] if old.startswith(prefix) else old
        new = lora_layout.initializer_name_of_parameter(base)
        if new != old:
            renames[old] = new
    for old, new in renames.items():
        model.graph.initializers[old].name = new
    return renames


# --------------------------------------------------------------------------------------------- export
def export_onnx(transformer: torch.nn.Module, config: DitIO, path: Path, opset: int = DEFAULT_OPSET,
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
            input_names=list(config.input_names), output_names=list(config.output_names),
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
