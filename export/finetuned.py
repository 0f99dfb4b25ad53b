"""A full fine-tune as a source of weights: a checkpoint on disk read tensor by tensor, or a synthetic one.

`--finetuned PATH` accepts what people have: a diffusers transformer directory (or a pipeline directory with
`transformer/`), sharded (`*.safetensors.index.json`) or not, a single `.safetensors` file with diffusers names, or a
ComfyUI-style checkpoint (original Wan names, optionally under `model.diffusion_model.` / `diffusion_model.`), in
bf16, fp16 or fp32. Names are mapped to diffusers' with diffusers' own converter
(`convert_wan_transformer_to_diffusers`, applied to key names only), so one table decides what a Wan key means.

Memory: nothing here holds more than one tensor of the checkpoint at a time (safetensors `safe_open` reads a tensor on
request), so the 14B geometry (28 GB in bf16) streams through a 24 GiB machine. `load_finetuned_into` copies into the
model that `load_transformer` built for `--model` (the same code path, the same casts and fp32-kept modules), one
parameter at a time.

`synthetic[:EXPONENT]` instead of a path: a fine-tune made from the base weights, whose delta on every block Linear
has a power-law singular spectrum sigma_i ~ i^-EXPONENT (docs/rank-study.md says where the default exponent comes
from), plus small bias and norm deltas. Random dense deltas would be full-rank noise and make every LoRA rank look
equally bad; real fine-tune deltas are not like that. Every report that uses it says "synthetic".
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import nn

from wanrt.artifacts import confined_path
from wanrt.errors import BadInputError, LoraError, ModelSourceError
from wanrt.export.lora import LoraWeights, SYNTHETIC_RELATIVE_NORM, resolve_targets
from wanrt.export.model import load_transformer
from wanrt.jsonio import read_json

# Fitted to the per-projection energy table of a real full fine-tune delta (Llama-2-7b-chat minus Llama-2-7b,
# energy kept at k = 1/4/16/64 of 4096 for q/k/v/o_proj; see docs/rank-study.md): sigma_i ~ i^-0.28.
SYNTHETIC_EXPONENT = 0.28
# Norm and bias deltas of the synthetic fine-tune: what a LoRA cannot carry, kept small as in real fine-tunes.
SYNTHETIC_NORM_RELATIVE = 0.002
SYNTHETIC_BIAS_RELATIVE = 0.05
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
_LORA_KEY = re.compile(r"(\.lora_(A|B|down|up)\.|\.alpha$|^lora_unet_|^lora_transformer_|\.lora_magnitude_vector)")
_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# keys that only original Wan checkpoints have (diffusers names never contain them)
_WAN_MARKERS = (".self_attn.", ".cross_attn.", "head.head.", "time_embedding.", "text_embedding.")


class WeightReader(Protocol):
    """Parameters by diffusers name, one tensor at a time."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


class ModuleWeights:
    """The parameters of a model in memory (a preset base, or a fine-tune already loaded)."""

    def __init__(self, model: nn.Module, label: str = "model"):
        self._params = dict(model.named_parameters())
        self.label = label

    def names(self) -> list[str]:
        return list(self._params)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._params[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._params[name].detach()

    def describe(self) -> dict[str, Any]:
        return {"kind": "in-memory", "label": self.label}


# ------------------------------------------------------------------------------------------------ names
def to_wan_param_name(name: str) -> str:
    """diffusers parameter name -> original Wan name (the inverse of diffusers' converter for the I2V/T2V keys).
    `blocks.0.attn2.add_k_proj.weight` -> `blocks.0.cross_attn.k_img.weight`; `blocks.0.norm2` (the cross-attention
    norm) -> `blocks.0.norm3`."""
    rules = (
        (r"^scale_shift_table$", "head.modulation"), (r"^proj_out\.", "head.head."),
        (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
        (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
        (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
        (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
        (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
        (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
        (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"), (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
        (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."), (r"\.to_out\.0\.", ".o."),
        (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.add_k_proj\.", ".k_img."),
        (r"\.add_v_proj\.", ".v_img."), (r"\.norm_added_k\.", ".norm_k_img."), (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
        (r"\.ffn\.net\.2\.", ".ffn.2."),
    )
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def wan_keys_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """{diffusers name: original key} for original-Wan keys, through diffusers' own converter (names only)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    keys = list(keys)
    odd = [k for k in keys if "face_adapter" in k or "motion_encoder" in k]
    if odd:
        raise ModelSourceError(f"{odd[0]!r}: an Animate/face-adapter Wan checkpoint, not the I2V transformer")
    stripped = {}
    for k in keys:
        s = k
        for p in _COMFY_PREFIXES:
            if s.startswith(p):
                s = s[len(p):]
                break
        stripped[s] = k
    # the converter renames the dict's keys and moves the values along: feed it the original keys as values
    return dict(convert_wan_transformer_to_diffusers(dict(stripped)))


# ------------------------------------------------------------------------------------------------ checkpoint files
def _files_of(path: Path) -> tuple[list[Path], Path]:
    """The safetensors files of a checkpoint and the directory/file that names it."""
    if path.is_dir():
        if (path / "transformer").is_dir():
            path = path / "transformer"
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise ModelSourceError(f"{path}: {len(indexes)} shard indexes; point --finetuned at one of them")
        if indexes:
            return _files_of(indexes[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            pickles = [p for s in PICKLE_SUFFIXES for p in path.glob(f"*{s}")]
            what = f" (only pickle files such as {pickles[0].name}: convert to .safetensors)" if pickles else ""
            raise ModelSourceError(f"{path}: no .safetensors weights{what}")
        return files, path
    if path.name.endswith(".index.json"):
        try:
            weight_map = read_json(path)["weight_map"]  # bounded: size and depth
            shards = set(weight_map.values())
        except BadInputError as e:
            raise ModelSourceError(f"unreadable shard index: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise ModelSourceError(f"{path}: unreadable shard index ({type(e).__name__}: {e})") from None
        # a shard name is a path read from a file: never outside the checkpoint's directory (the index is named)
        files = sorted({confined_path(path.parent, f, "shard", source=path) for f in shards})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelSourceError(f"{path}: shard {missing[0]} is missing ({len(missing)} of {len(files)})")
        return files, path
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelSourceError(f"{path.name}: a pickle checkpoint can run code when loaded; convert it to .safetensors")
    if path.suffix.lower() != ".safetensors":
        raise ModelSourceError(f"{path}: not a .safetensors file, a shard index or a checkpoint directory")
    return [path], path


# What a checkpoint's weights may be (safetensors header names): real floating point that torch computes in. An
# int8/fp8 tensor needs the quantization scales its writer kept elsewhere, a complex one loses its imaginary part
# in the float cast; either would be "extracted" into a LoRA of garbage.
FLOAT_STORAGE = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


class CheckpointWeights:
    """A checkpoint on disk, read one tensor at a time (safetensors `safe_open`), under diffusers names. Every
    tensor is checked as it is read: floating point (all dtypes, from the header, when opened) and finite (on
    `get`), so a bad value is one line naming the tensor, never a NaN carried into an SVD, a LoRA or a report.
    `option`: the flag the checkpoint came from (for the messages)."""

    def __init__(self, source: str | Path, option: str = "--finetuned"):
        from safetensors import safe_open

        self.option = option
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelSourceError(f"{option} {source}: no such file or directory")
        self.files, self.path = _files_of(path)
        self._handles = {}
        keys: dict[str, Path] = {}
        for f in self.files:
            if not f.is_file():  # a FIFO or device named *.safetensors would block the reader
                raise ModelSourceError(f"{f}: not a regular file (a FIFO, device or socket)")
            try:
                handle = safe_open(str(f), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - SafetensorError and friends: truncated, corrupt, not safetensors
                raise ModelSourceError(f"{f.name}: not a readable safetensors file: {str(e).splitlines()[0]}") from None
            self._handles[f] = handle
            for k in handle.keys():
                if k in keys:
                    raise ModelSourceError(f"{f.name}: key {k!r} is also in {keys[k].name}")
                keys[k] = f
        if not keys:
            raise ModelSourceError(f"{self.path}: the checkpoint holds no tensors")
        lora = [k for k in keys if _LORA_KEY.search(k)]
        if lora:
            raise ModelSourceError(f"{self.path.name}: a LoRA file (keys such as {lora[0]!r}), not a fine-tuned "
                                   f"checkpoint; pass it as --lora, or --finetuned the full model")
        comfy = any(k.startswith(_COMFY_PREFIXES) or any(m in k for m in _WAN_MARKERS) for k in keys)
        if comfy:
            prefixed = [k for k in keys if k.startswith(_COMFY_PREFIXES)]
            # an all-in-one ComfyUI file also holds the VAE and text encoders: keep the diffusion model's keys
            wanted = prefixed if prefixed else list(keys)
            self.layout = "comfyui"
            self._key = wan_keys_to_diffusers(wanted)
        else:
            self.layout = "diffusers"
            self._key = {k: k for k in keys}
        self._file = {name: keys[key] for name, key in self._key.items()}
        for name in self._key:
            dtype = self._slice(name).get_dtype()
            if dtype not in FLOAT_STORAGE:
                raise ModelSourceError(f"{option} {self.path.name}: tensor {self._key[name]!r} is {dtype}; weights "
                                       f"must be {', '.join(FLOAT_STORAGE.values())} (dequantize it first)")

    def names(self) -> list[str]:
        return list(self._key)

    def _slice(self, name: str):
        return self._handles[self._file[name]].get_slice(self._key[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        t = self._handles[self._file[name]].get_tensor(self._key[name])
        if not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise ModelSourceError(f"{self.option} {self.path.name}: tensor {self._key[name]!r} contains {kind} "
                                   f"values")
        return t

    def dtypes(self) -> list[str]:
        return sorted({str(self._slice(n).get_dtype()).lower() for n in self._key})

    def describe(self) -> dict[str, Any]:
        return {"kind": "checkpoint", "path": str(self.path.resolve()), "layout": self.layout,
                "files": [f.name for f in self.files], "bytes": sum(f.stat().st_size for f in self.files),
                "mtime": max(f.stat().st_mtime for f in self.files),
                "tensors": len(self._key), "dtypes": self.dtypes()}


# ------------------------------------------------------------------------------------------------ synthetic
@dataclass(frozen=True)
class SyntheticFinetune:
    """A deterministic fine-tune of any base: per block Linear a delta U diag(i^-exponent) V^T (U, V seeded random
    orthonormal) scaled to `relative_norm` x ||W||_F, bias deltas, and small norm deltas. `rank` (tests): deltas
    of exactly that rank (a flat spectrum over `rank` directions)."""

    exponent: float = SYNTHETIC_EXPONENT
    relative_norm: float = SYNTHETIC_RELATIVE_NORM
    norm_relative: float = SYNTHETIC_NORM_RELATIVE
    bias_relative: float = SYNTHETIC_BIAS_RELATIVE
    targets: str = "all"
    seed: int = 0
    rank: int | None = None

    @property
    def label(self) -> str:
        return "synthetic" + (f":{self.exponent:g}" if self.rank is None else f" (exact rank {self.rank})")

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic", "label": self.label, "spectrum": "power law sigma_i ~ i^-exponent"
                if self.rank is None else f"flat, exactly rank {self.rank}", "exponent": self.exponent,
                "relative_norm": self.relative_norm, "norm_relative": self.norm_relative,
                "bias_relative": self.bias_relative, "targets": self.targets, "seed": self.seed, "rank": self.rank,
                "synthetic": True}

    def _gen(self, name: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))

    def delta(self, name: str, base: torch.Tensor, linear_weights: set[str]) -> torch.Tensor | None:
        """The fp32 delta of parameter `name` (None: unchanged)."""
        gen = self._gen(name)
        w = base.float()
        if name in linear_weights:
            out, inp = w.shape
            n = min(out, inp) if self.rank is None else self.rank
            u, _ = torch.linalg.qr(torch.randn(out, n, generator=gen))
            v, _ = torch.linalg.qr(torch.randn(inp, n, generator=gen))
            s = torch.arange(1, n + 1, dtype=torch.float32) ** -self.exponent if self.rank is None else \
                torch.ones(n)
            d = (u * s) @ v.T
            return d * (self.relative_norm * w.norm() / d.norm())
        owner = name.rsplit(".", 1)[0]
        if name.endswith(".bias") and f"{owner}.weight" in linear_weights:
            noise = torch.randn(w.shape, generator=gen)
            return noise * (self.bias_relative * w.norm().clamp_min(1e-3) / noise.norm())
        if re.search(r"blocks\.\d+\.norm2\.(weight|bias)$", name):  # the cross-attention norm's affine
            noise = torch.randn(w.shape, generator=gen)
            return noise * (self.norm_relative * w.norm().clamp_min(1.0) / noise.norm())
        return None


class SyntheticWeights:
    """The synthetic fine-tune of a base, one tensor at a time (base + its seeded delta)."""

    def __init__(self, base: WeightReader, model: nn.Module, synthetic: SyntheticFinetune):
        self.base, self.synthetic = base, synthetic
        self.linear_weights = {f"{n}.weight" for n in resolve_targets(model, synthetic.targets)}

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def get(self, name: str) -> torch.Tensor:
        w = self.base.get(name)
        d = self.synthetic.delta(name, w, self.linear_weights)
        return w if d is None else (w.float() + d).to(w.dtype)

    def describe(self) -> dict[str, Any]:
        return self.synthetic.describe()


def parse_synthetic(source: str, seed: int = 0) -> SyntheticFinetune | None:
    """`synthetic` or `synthetic:EXPONENT` -> SyntheticFinetune; anything else None (a path)."""
    if source != "synthetic" and not source.startswith("synthetic:"):
        return None
    text = source.partition(":")[2]
    try:
        exponent = float(text) if text else SYNTHETIC_EXPONENT
    except ValueError:
        raise ModelSourceError(f"--finetuned {source!r}: expected synthetic or synthetic:EXPONENT (e.g. "
                               f"synthetic:0.5)") from None
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ModelSourceError(f"--finetuned {source!r}: the exponent must be a finite number >= 0")
    return SyntheticFinetune(exponent=exponent, seed=seed)


# ------------------------------------------------------------------------------------------------ opening
def check_geometry(model: nn.Module, reader: WeightReader, sliced: bool) -> None:
    """Every parameter of `model` is in the fine-tune with the same shape; extra parameters are refused, except
    blocks beyond a `--layers` slice."""
    have = set(reader.names())
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in have]
    if missing:
        raise ModelSourceError(f"the fine-tune lacks {len(missing)} of the model's {len(params)} parameters, e.g. "
                               f"{missing[0]!r}: not a Wan transformer of this geometry")
    for name, p in params.items():
        shape = reader.shape(name)
        if shape != tuple(p.shape):
            raise ModelSourceError(f"a fine-tune of another geometry: {name} is {list(shape)} there, "
                                   f"{list(p.shape)} in --model")
    extra = [n for n in have - set(params)
             if not (sliced and re.match(r"blocks\.(\d+)\.", n) and int(n.split(".")[1]) >= len(model.blocks))]
    if extra:
        raise ModelSourceError(f"the fine-tune has {len(extra)} parameters --model has not, e.g. {sorted(extra)[0]!r}: "
                               f"another architecture or geometry")


def open_finetuned(source: str, model: nn.Module, base: WeightReader | None = None, seed: int = 0,
                   sliced: bool = False) -> WeightReader:
    """`--finetuned` -> a reader checked against `model`'s geometry. `base` (synthetic only): the base weights the
    synthetic fine-tune is made from (default: the model's own)."""
    synthetic = parse_synthetic(source, seed)
    if synthetic is not None:
        return SyntheticWeights(base or ModuleWeights(model, "base"), model, synthetic)
    reader = CheckpointWeights(source)
    check_geometry(model, reader, sliced)
    return reader


@torch.no_grad()
def load_finetuned_into(model: nn.Module, reader: WeightReader) -> dict[str, Any]:
    """Replace every parameter of `model` by the fine-tune's, one tensor at a time, cast to the parameter's dtype
    (so `_keep_in_fp32_modules` stay fp32 as load_transformer left them). Returns what changed."""
    changed, total = 0, 0
    for name, p in model.named_parameters():
        t = reader.get(name)  # a checkpoint reader refuses NaN/Inf as it reads (CheckpointWeights.get)
        total += 1
        if not torch.equal(t.to(p.dtype), p.data):
            changed += 1
            p.data.copy_(t)
    return {**reader.describe(), "finetuned_parameters": total, "finetuned_parameters_changed": changed}


def finetuned_model(model_spec, source: str, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The full fine-tune as a model: `--model`'s transformer (load_transformer, same casts) with the fine-tune's
    weights streamed in."""
    model = load_transformer(model_spec)
    # a synthetic fine-tune reads each base tensor just before overwriting it (each delta depends on its own
    # tensor only), so no second copy of the model is needed
    reader = open_finetuned(source, model, seed=seed, sliced=model_spec.layers is not None)
    return model, load_finetuned_into(model, reader)


def finetuned_reference(model: nn.Module, spec) -> LoraWeights:
    """LoraSpec(finetuned=..., mode="full") -> the fine-tune's weights streamed into `model` (in place), and a
    LoraWeights with no deltas (apply_lora then has nothing left to do) whose source says what was loaded."""
    if spec.mode != "full":
        raise LoraError(f"--finetuned is a full fine-tune: use it with --lora-mode full (not {spec.mode}), or "
                        f"extract LoRAs from it with 'wanrt extract'")
    if spec.file is not None:
        raise LoraError("--finetuned and --lora are two different sources; give one")
    # blocks beyond the model's are accepted: a --layers slice of a full-depth fine-tune (the model spec, which
    # would tell, is not known here)
    reader = open_finetuned(spec.finetuned, model, seed=spec.seed, sliced=True)
    info = load_finetuned_into(model, reader)
    return LoraWeights({}, lora_scale=1.0, source={**info, "finetuned": spec.finetuned, "full_reference": True},
                       dense={})
