"""The pipeline's text and image encoders on exported graphs (export/encoders.py), as drop-ins for its calls.

Each encoder is exported once into wanrt's cache (exports/text-enc-KEY, image-enc-KEY; the key is its config and a
sha256 of its weights) and run on a stage session (engines/sessions.py, fp32). The drop-ins take what the
pipeline's call takes and give what it gives:
- `CompiledTextEncoder(ids, mask)` -> an output with `last_hidden_state`, as `text_encoder(ids, mask)` in wanrt's
  `encode_prompt` (which then zeroes the rows past the prompt, as diffusers does);
- `CompiledImageEncode(image, device)` -> diffusers' `encode_image`: the processor's pixels, CLIP's penultimate
  hidden state; a list of images (first and last frame) runs one graph call per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wanrt.engines.sessions import session
from wanrt.export.encoders import export_encoder
from wanrt.manifests import EncoderManifest
from wanrt.runtime.stages import cached_export, weights_key


def encoder_session(kind: str, encoder, backend: str, threads: int | None = None, cache_dir: Path | None = None,
                    say: Callable[[str], None] = lambda _m: None, precision: str = "fp32"):
    """A session of `encoder`'s graph ("text" or "image"), exported into the cache the first time."""
    key = weights_key(encoder, encoder.config.to_dict())
    out = cached_export(encoder, f"{kind}-enc-{key}", f"{kind} encoder",
                        lambda m, d: export_encoder(kind, m, d, force=True), cache_dir, say)
    manifest = EncoderManifest.read(out, check_files=True)  # every file's size and sha256
    return session(backend, out / manifest.model, threads, precision)


class CompiledTextEncoder:
    def __init__(self, sess):
        self.sess = sess
        self.device = torch.device("cpu")  # where encode_prompt puts the token ids

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.modeling_outputs import BaseModelOutput  # lazy: transformers, a heavy import

        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        return BaseModelOutput(last_hidden_state=torch.from_numpy(self.sess(feeds)[0]))


class CompiledImageEncode:
    def __init__(self, sess, processor):
        self.sess, self.processor = sess, processor

    def __call__(self, image, device: torch.device | None = None) -> torch.Tensor:
        pixels = np.asarray(self.processor(images=image, return_tensors="np")["pixel_values"], dtype=np.float32)
        out = np.concatenate([self.sess({"pixel_values": pixels[i:i + 1]})[0] for i in range(len(pixels))])
        return torch.from_numpy(out).to(device or "cpu")
