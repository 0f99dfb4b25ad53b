"""The pipeline's text encoder (UMT5) and image encoder (CLIP ViT) as ONNX graphs, for the stages a video runs once
(issue 21): with a 4-step CFG-free schedule the encoders cost as much as the denoise loop (UMT5-XXL at 512 tokens is
~1 TFLOP per prompt, CLIP ViT-H ~0.3 TFLOP per image).

Each graph is the call the pipeline makes, nothing more:
- text:  input_ids, attention_mask [1, 512] int64 -> last_hidden_state [1, 512, d_model] (wanrt's `encode_prompt`
  zeroes the rows past the prompt itself, as diffusers does, after the graph);
- image: pixel_values [1, 3, 224, 224] -> hidden_states[-2] [1, 257, hidden] (diffusers' Wan `encode_image` takes the
  penultimate layer; the last layer still runs, as it does in transformers).
Shapes are static: the pipeline always pads text to 512 tokens and resizes images to 224 px. Traced with the
dynamo exporter and saved with one external data file past protobuf's 2 GB (UMT5-XXL is 23 GB fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import atomic_output_dir, build_manifest, write_manifest
from wanrt.errors import BadInputError
from wanrt.export.onnx_export import EXTERNAL_DATA_THRESHOLD, export_patches
from wanrt.manifests import EncoderManifest

TEXT_TOKENS = 512  # the pipeline's max_sequence_length
IMAGE_PX = 224
OPSET = 18


class _TextGraph(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids, attention_mask).last_hidden_state


class _ImageGraph(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        return self.encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]


@dataclass(frozen=True)
class EncoderGraph:
    """What one encoder's graph takes and gives."""

    graph: type[torch.nn.Module]
    inputs: tuple[str, ...]
    output: str

    def example(self) -> tuple[torch.Tensor, ...]:
        if self.inputs == ("pixel_values",):
            return (torch.zeros(1, 3, IMAGE_PX, IMAGE_PX),)
        ids = torch.ones(1, TEXT_TOKENS, dtype=torch.int64)
        return ids, torch.ones_like(ids)


GRAPHS = {"text": EncoderGraph(_TextGraph, ("input_ids", "attention_mask"), "last_hidden_state"),
          "image": EncoderGraph(_ImageGraph, ("pixel_values",), "penultimate_hidden_state")}


def export_encoder(kind: str, encoder, out_dir: str | Path, force: bool = False) -> Path:
    """Write model.onnx (+ model.onnx.data past 2 GB) and a manifest for `encoder` (the pipeline's text_encoder
    or image_encoder, any dtype: the graph is fp32) into `out_dir`, atomically."""
    if kind not in GRAPHS:
        raise BadInputError(f"encoder kind {kind!r}: choose one of {', '.join(GRAPHS)}", param="encoder")
    spec = GRAPHS[kind]
    module = spec.graph(encoder.eval().float()).eval()
    example = spec.example()
    size = sum(p.numel() * 4 for p in encoder.parameters())
    with atomic_output_dir(Path(out_dir), force=force) as tmp, torch.no_grad(), export_patches():
        program = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET, input_names=list(spec.inputs),
                                    output_names=[spec.output], verbose=False, report=False)
        program.save(str(tmp / EncoderManifest.model), external_data=size > EXTERNAL_DATA_THRESHOLD)
        payload: dict[str, Any] = {"encoder": kind, "inputs": list(spec.inputs), "output": spec.output,
                                   "input_shapes": [list(t.shape) for t in example], "opset": OPSET,
                                   "config": encoder.config.to_dict(), "parameters": size // 4}
        write_manifest(tmp, build_manifest(EncoderManifest.KIND, {"encoder": kind}, payload))
    return Path(out_dir)
