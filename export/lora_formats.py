"""LoRA files in the formats people actually have, read into (and written from) the canonical `LoraWeights`.

Read (`load_lora_file`), detected per file:

- diffusers: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (or no prefix), `.lora_B.bias`; alpha from the
  safetensors metadata `lora_adapter_metadata` (the peft config diffusers writes) or `<module>.alpha` keys.
- peft: `base_model.model.<module>.lora_A.weight`; a directory (or adapter_model.* file) with adapter_config.json
  (r, lora_alpha, alpha_pattern, use_rslora).
- comfyui (Kijai, ComfyUI, original Wan names): `diffusion_model.blocks.N.self_attn.q.lora_A.weight` or
  `.lora_down/.lora_up`, `.alpha`, `.diff_b`, `.diff`; also without the `diffusion_model.` prefix.
- kohya (musubi-tuner): `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.alpha` (underscore names resolved
  against the model's own module list, so `k_img`/`out_0` ambiguities never arise).

Why not diffusers' converters (`_convert_non_diffusers_wan_lora_to_diffusers`, `_convert_musubi_wan_lora_to_diffusers`)
at run time: they bake alpha/rank into the factors (the file's alpha is lost for the manifest and, for bf16 files,
rounded), the musubi one requires all 10 modules in every block (KeyError on an attention-only LoRA), both drop
`.diff` keys silently and fail with bare ValueError/KeyError. We keep their module mapping (table `_BLOCK_MAP` /
`_GLOBAL_MAP` below is theirs) and the tests check our result against their output.

Semantics (canonical): delta = lora_scale * alpha / r * B @ A (alpha None -> alpha / r = 1); diff_b = the bias delta
as the file means it: ComfyUI/kohya `.diff_b` as stored; peft/diffusers `lora_B.bias` times alpha / r (peft scales the
bias with the adapter's scaling), and written back divided by it.

Decisions:
- `.diff` (full weight diffs): all-zero ones (Kijai's extracted LoRAs carry zeroed norm diffs; diffusers drops them
  too) are skipped and counted; a non-zero one is refused with LoraError: a dense full-rank delta is not a LoRA and
  cannot be kept low-rank or refit as one; merge it into the base checkpoint instead.
- `.diff_b` on a Linear with no A/B: kept as a bias-only module with zero factors of the LoRA's common rank.
- `.diff_b` on a non-Linear (norms): skipped when zero, refused otherwise.
- DoRA (`dora_scale`, `lora_magnitude_vector`, use_dora) and LyCORIS (LoHa/LoKr) are refused.
- A T2V LoRA on the I2V model: the image K/V projections are simply not adapted (reported as
  `source["image_kv_untouched"]`); an I2V LoRA on a T2V model (image keys, no image branch) is refused.
- Keys that match nothing: all -> LoraError; some -> warnings.warn with counts, the rest loads.
- Wan2.2's two experts (`expert`, load_lora_file): a file of one transformer (every format; Wan2.2's HIGH/LOW
  LoRAs are pairs of such files) fits either expert. A diffusers file that holds both, each under its pipeline
  component (`transformer.` for the high-noise expert, `transformer_2.` for the low-noise one, as a pipeline packs
  a LoRA per component), gives each expert its part; its `transformer_2.` keys alone given to the high expert, or
  to a one-transformer model, are refused in one line. (diffusers' own `load_lora_weights(...,
  load_into_transformer_2=True)` reads a file's `transformer.` keys into transformer_2: the pair convention.) A file
  whose name says HIGH or LOW loaded onto the other expert is warned about, not refused: a name is no proof.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from wanrt.export.lora import LoraModule, LoraWeights, check_fits, linear_modules

from wanrt.artifacts import atomic_path, sha256_file, write_text_atomic
from wanrt import jsonio
from wanrt.choices import ComfyuiKeys, LoraFormat
from wanrt.errors import BadInputError, LoraError, WanrtError, first_line
from wanrt.jsonio import read_json

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
# diffusers' pipeline component of each Wan2.2 expert: a packed file's key (and metadata) prefix
EXPERT_COMPONENTS = {"high": "transformer", "low": "transformer_2"}
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.bin",
                     "pytorch_lora_weights.bin")

# Original Wan (ComfyUI/Kijai/musubi) module names -> diffusers WanTransformer3DModel names, as in diffusers'
# _convert_non_diffusers_wan_lora_to_diffusers.
_BLOCK_MAP = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_GLOBAL_MAP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
_BLOCK_INV = {v: k for k, v in _BLOCK_MAP.items()}
_GLOBAL_INV = {v: k for k, v in _GLOBAL_MAP.items()}
_IMAGE_MARKERS = ("k_img", "v_img", "add_k_proj", "add_v_proj", "img_emb", "image_embedder")

# key suffix -> kind; longest first so ".lora_B.bias" wins over ".bias"-less forms and ".diff_b" over ".diff"
_SUFFIXES = (
    (".lora_A.default.weight", "A"), (".lora_B.default.weight", "B"), (".lora_B.default.bias", "peft_bias"),
    (".lora_down.weight", "A"), (".lora_up.weight", "B"),
    (".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_B.bias", "peft_bias"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
    (".dora_scale", "dora"), (".lora_magnitude_vector", "dora"), (".lora_magnitude_vector.default.weight", "dora"),
)
_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.", "lora_unet_",
             "lora_transformer_")
_LYCORIS = ("hada_w1", "hada_w2", "lokr_w1", "lokr_w2", ".lora_mid.", "oft_", ".b1.", ".w_norm")


# ------------------------------------------------------------------------------------------------ names
def _translate(name: str, block_names: dict[str, str], global_names: dict[str, str]) -> str | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        rest = block_names.get(m.group(2))
        return f"blocks.{m.group(1)}.{rest}" if rest else None
    return global_names.get(name)


def to_wan_name(name: str) -> str | None:
    """diffusers module name -> original Wan name (`blocks.0.attn1.to_q` -> `blocks.0.self_attn.q`)."""
    return _translate(name, _BLOCK_INV, _GLOBAL_INV)


def to_diffusers_name(name: str) -> str | None:
    """original Wan module name -> diffusers name (inverse of to_wan_name)."""
    return _translate(name, _BLOCK_MAP, _GLOBAL_MAP)


def _kohya(name: str) -> str:
    return name.replace(".", "_")


class _Resolver:
    """File module stems -> the model's Linear names."""

    def __init__(self, model: nn.Module):
        self.linears = linear_modules(model)
        names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
        self.modules = names | {_kohya(n) for n in names}
        self.kohya: dict[str, str] = {}
        for d in self.linears:
            self.kohya[_kohya(d)] = d
            w = to_wan_name(d)
            if w:
                self.kohya[_kohya(w)] = d

    @staticmethod
    def strip(stem: str) -> str:
        for p in _PREFIXES:
            stem = stem.removeprefix(p)
        return stem

    def linear(self, stem: str) -> str | None:
        s = self.strip(stem)
        if s in self.linears:
            return s
        d = to_diffusers_name(s)
        if d in self.linears:
            return d
        return self.kohya.get(s)

    def known_module(self, stem: str) -> bool:
        """A non-Linear part of the model (norms, modulation tables) under any naming."""
        s = self.strip(stem)
        return s in self.modules or any(w in s for w in ("norm", "modulation", "scale_shift_table"))


def _split_key(key: str) -> tuple[str, str]:
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return key, "unknown"


# ------------------------------------------------------------------------------------------------ reading
def check_lora_exists(path: str | os.PathLike) -> None:
    """The one wording of a missing LoRA source (a file or a peft adapter directory), for every command."""
    if not Path(path).expanduser().exists():
        raise LoraError(f"LoRA file not found: {path}")


def _locate(path: Path) -> tuple[Path, Path | None]:
    """The weights file and an adapter_config.json (peft) if there is one."""
    check_lora_exists(path)
    if path.is_dir():
        for name in PEFT_WEIGHT_NAMES:
            if (path / name).is_file():
                cfg = path / "adapter_config.json"
                return path / name, cfg if cfg.is_file() else None
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise LoraError(f"{path}: a directory with {len(files)} .safetensors files; pass the LoRA file itself")
        return files[0], None
    cfg = path.parent / "adapter_config.json"
    return path, cfg if path.stem in ("adapter_model", "pytorch_lora_weights") and cfg.is_file() else None


def _check_source(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[Path, Path | None]:
    """The file (or peft directory) exists, and is not a pickle unless allowed."""
    weights_path, config_path = _locate(Path(path).expanduser())
    if not weights_path.is_file():  # a FIFO or device would block the reader: refuse what is not a regular file
        raise LoraError(f"{weights_path}: not a regular file (a FIFO, device or socket); pass the LoRA file itself")
    if weights_path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise LoraError(f"{weights_path.name}: a pickle file ({weights_path.suffix}) can run code when loaded; "
                        f"convert it to .safetensors or pass --allow-pickle if you trust it")
    return weights_path, config_path


def check_lora_source(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[Path, Path | None]:
    """Every check that needs no model (validate_lora_file). Returns (weights file, peft adapter_config.json or
    None). The CLI runs it before loading any model, so a bad LoRA fails in seconds, not after a 14B load."""
    f = validate_lora_file(path, allow_pickle)
    return f.weights_path, f.config_path


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    # pickles reach here only when allowed (_check_source refused them otherwise)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise LoraError(f"{path.name}: cannot load pickle with weights_only=True: {first_line(e)}") from None
        for nested in ("state_dict", "module", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
                obj = obj[nested]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LoraError(f"{path.name}: the pickle holds no tensor state dict")
        return {str(k): v for k, v in obj.items()}, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: truncated, corrupt, not safetensors
        raise LoraError(f"{path.name}: not a readable safetensors file (truncated or corrupt?): "
                        f"{first_line(e)}") from None
    if not sd:
        raise LoraError(f"{path.name}: the file holds no tensors")
    return sd, metadata


def _peft_config(metadata: dict[str, str], config_path: Path | None,
                 component: str = "transformer") -> dict[str, Any] | None:
    if config_path is not None:
        try:
            return read_json(config_path)  # bounded: size, depth, regular files only
        except WanrtError as e:
            raise LoraError(f"unreadable adapter_config.json: {first_line(e)}") from None
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = jsonio.loads(raw, f"metadata {METADATA_KEY}")  # bounded: 100k-deep metadata is no RecursionError
    except BadInputError:
        log.warning("ignoring unparsable %s metadata", METADATA_KEY)
        return None
    if not isinstance(cfg, dict):
        raise LoraError(f"metadata {METADATA_KEY} is a JSON {type(cfg).__name__}, not an object")
    prefix = f"{component}."
    if any(k.startswith(prefix) for k in cfg):  # pipeline.save_lora_weights packs with the component prefix
        cfg = {k[len(prefix):]: v for k, v in cfg.items() if k.startswith(prefix)}
    return cfg


def _config_alpha(cfg: dict[str, Any] | None, name: str, rank: int) -> float | None:
    """peft semantics: alpha_pattern (regex on the module name's tail) else lora_alpha; rslora -> canonical alpha."""
    if not cfg or cfg.get("lora_alpha") is None:
        return None
    alpha = cfg["lora_alpha"]
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        try:
            hit = re.match(rf"(.*\.)?({pattern})$", name)
        except re.error:
            hit = name == pattern or name.endswith("." + pattern)
        if hit:
            alpha = value
            break
    alpha = float(alpha)
    return alpha * math.sqrt(rank) if cfg.get("use_rslora") else alpha


def _detect_format(keys: list[str], config_path: Path | None) -> str:
    if any(k.startswith(("lora_unet_", "lora_transformer_")) for k in keys):
        return "kohya"
    if any(k.startswith(("diffusion_model.", "model.diffusion_model.")) or
           re.match(r"blocks\.\d+\.(self_attn|cross_attn|ffn\.\d)\.", k) for k in keys):
        return "comfyui"
    if config_path is not None or any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    return "diffusers"


def _check_finite(key: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise LoraError(f"LoRA tensor {key!r} contains {kind} values")


# ------------------------------------------------------------------------------------------- validation
# What a LoRA tensor may be: real floating point of a width torch computes in. Integer/bool factors are not a LoRA
# (a quantized file needs its scales), complex ones would lose their imaginary part in any cast, and fp8 factors
# need the scale their trainer kept elsewhere.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class LoraFile:
    """A LoRA file that passed validate_lora_file: its tensors, metadata and (peft) config, not yet matched to a
    model."""

    weights_path: Path
    config_path: Path | None
    sd: dict[str, torch.Tensor]
    metadata: dict[str, str]
    cfg: dict[str, Any] | None
    fmt: str


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(cfg: dict[str, Any] | None, where: str) -> None:
    """peft/diffusers adapter config fields that enter the arithmetic must have their JSON types."""
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise LoraError(f"{where}: adapter config is a JSON {type(cfg).__name__}, not an object")
    if cfg.get("lora_alpha") is not None and not _is_number(cfg["lora_alpha"]):
        raise LoraError(f"{where}: lora_alpha {cfg['lora_alpha']!r} is not a finite number")
    if cfg.get("r") is not None and not (isinstance(cfg["r"], int) and not isinstance(cfg["r"], bool)
                                         and cfg["r"] > 0):
        raise LoraError(f"{where}: r {cfg['r']!r} is not a positive integer")
    for field in ("alpha_pattern", "rank_pattern"):
        pattern = cfg.get(field)
        if pattern is None:
            continue
        if not isinstance(pattern, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in pattern.items()):
            raise LoraError(f"{where}: {field} must map module patterns to finite numbers, got {pattern!r:.80}")
    for field in ("use_rslora", "use_dora"):
        if cfg.get(field) is not None and not isinstance(cfg[field], bool):
            raise LoraError(f"{where}: {field} {cfg[field]!r} is not true/false")


def _check_tensors(sd: dict[str, torch.Tensor], where: str) -> None:
    """dtypes first (a cheap pass over the header), then finiteness of every value."""
    for key, t in sd.items():
        if t.dtype not in FLOAT_DTYPES:
            raise LoraError(f"{where}: tensor {key!r} is {str(t.dtype).removeprefix('torch.')}; LoRA tensors must "
                            f"be float16, bfloat16, float32 or float64")
    for key, t in sd.items():
        _check_finite(key, t)


def _check_pairs(sd: dict[str, torch.Tensor], where: str) -> None:
    """Within each module: A/B (down/up) are 2-D with one positive rank, alpha a finite scalar."""
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, t in sd.items():
        stem, kind = _split_key(key)
        if kind in ("A", "B", "alpha"):
            groups.setdefault(stem, {})[kind] = (key, t)
    for stem, g in groups.items():
        if "alpha" in g:
            key, t = g["alpha"]
            if t.numel() != 1:
                raise LoraError(f"{where}: {key!r}: alpha must be a scalar, got shape {tuple(t.shape)}")
        if "A" not in g or "B" not in g:
            continue  # a lone factor is reported with the module's name once the model is known
        (ka, a), (kb, b) = g["A"], g["B"]
        if a.ndim != 2 or b.ndim != 2:
            raise LoraError(f"{where}: {stem}: LoRA A {tuple(a.shape)} / B {tuple(b.shape)} are not 2-D matrices "
                            f"(conv LoRAs are not supported)")
        if a.shape[0] != b.shape[1]:
            raise LoraError(f"{where}: {stem}: inconsistent rank: A {tuple(a.shape)} has rank {a.shape[0]} but B "
                            f"{tuple(b.shape)} has rank {b.shape[1]}")
        if a.shape[0] == 0:
            raise LoraError(f"{where}: {stem}: rank-0 factors {ka!r} / {kb!r} (alpha / rank is undefined)")


def validate_lora_file(path: str | os.PathLike, allow_pickle: bool = False) -> LoraFile:
    """One pass over a LoRA file before any model is loaded: source (exists, no pickle), header and tensors
    (readable safetensors), metadata/config types, supported kind (no DoRA/LyCORIS), dtypes (floating only),
    shapes consistent within each A/B pair, finite values. Every problem is one LoraError line."""
    weights_path, config_path = _check_source(path, allow_pickle)
    where = weights_path.name
    sd, metadata = _read_state_dict(weights_path)
    cfg = _peft_config(metadata, config_path)
    _check_config(cfg, where)
    if cfg and cfg.get("use_dora"):
        raise LoraError(f"{where}: DoRA adapters (use_dora) are not supported; only plain LoRA")
    lycoris = [k for k in sd if any(m in k for m in _LYCORIS)]
    if lycoris:
        raise LoraError(f"{where}: LyCORIS (LoHa/LoKr/LoCon) keys such as {lycoris[0]!r} are not "
                        f"supported; only plain LoRA (A/B or down/up)")
    dora = [k for k in sd if _split_key(k)[1] == "dora"]
    if dora:
        raise LoraError(f"{where}: DoRA key {dora[0]!r}: DoRA adapters are not supported; only plain LoRA")
    _check_tensors(sd, where)
    _check_pairs(sd, where)
    return LoraFile(weights_path, config_path, sd, metadata, cfg, _detect_format(list(sd), config_path))


# ------------------------------------------------------------------------------------------- loading
def load_lora_file(path: str | os.PathLike, model: nn.Module, lora_scale: float = 1.0,
                   allow_pickle: bool = False, expert: str | None = None) -> LoraWeights:
    """Read a LoRA file (any format above) for `model` into the canonical LoraWeights; every problem is a LoraError.
    `expert`: which of Wan2.2's experts `model` is (None: a one-transformer model), for files that hold both."""
    if not (_is_number(lora_scale)):
        raise LoraError(f"--lora-scale {lora_scale!r}: must be a finite number")
    f, split = expert_part(validate_lora_file(path, allow_pickle), expert)
    res = _Resolver(model)
    parts, unmatched, zero_skipped = _match_keys(f, res, model)
    modules, bias_only = _assemble_modules(f, res, parts, unmatched)
    lora = LoraWeights(modules, lora_scale=float(lora_scale))
    check_fits(model, lora)  # names the module and both shapes
    lora.source = _source_info(f, res, model, modules, unmatched, zero_skipped, bias_only)
    if expert is not None:
        lora.source["expert"] = expert
        if split:
            lora.source["expert_keys"] = f"{EXPERT_COMPONENTS[expert]}."
    return lora


def expert_part(f: LoraFile, expert: str | None) -> tuple[LoraFile, bool]:
    """The part of `f` that `expert` loads (module docstring, "Wan2.2's two experts"), and whether `f` held both
    experts' keys. Refuses low-expert keys given to the high expert or to a one-transformer model."""
    low = f"{EXPERT_COMPONENTS['low']}."
    low_keys = [k for k in f.sd if k.startswith(low)]
    name = f.weights_path.name
    if not low_keys:
        _warn_if_named_for_other(f.weights_path, expert)
        return f, False
    only_low = len(low_keys) == len(f.sd)
    if expert is None and only_low:
        raise LoraError(f"{name}: a Wan2.2 low-noise expert LoRA (only '{low}' keys, e.g. {low_keys[0]!r}); this "
                        f"model has one transformer")
    if expert is None:
        return f, False  # as diffusers' load_lora_weights: the `transformer.` part, the rest warned as unmatched
    if expert != "low":
        if only_low:
            raise LoraError(f"{name}: holds only the low-noise expert's keys ('{low}...'), given to the {expert} "
                            f"expert; give it as low:{f.weights_path}")
        return replace(f, sd={k: v for k, v in f.sd.items() if not k.startswith(low)}), True
    return replace(f, sd={k[len(low):]: v for k, v in f.sd.items() if k.startswith(low)},
                   cfg=_peft_config(f.metadata, f.config_path, EXPERT_COMPONENTS["low"])), True


def _warn_if_named_for_other(path: Path, expert: str | None) -> None:
    """Wan2.2 LoRA pairs are named ..._HIGH / ..._high_noise and ..._LOW / ..._low_noise: a file whose name says one
    expert loaded onto the other is most likely a mix-up (one warning; a name proves nothing, so no refusal)."""
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    said = [e for e in EXPERT_COMPONENTS if e in tokens or f"{e}noise" in tokens]
    if expert is None or len(said) != 1 or said[0] == expert:
        return
    msg = (f"{path.name}: the name says the {said[0]}-noise expert; it is loaded onto the {expert}-noise one "
           f"(check its high:/low: prefix; a plain --lora goes to both experts)")
    warnings.warn(msg, stacklevel=4)
    log.warning(msg)


_Parts = dict[str, dict[str, tuple[str, torch.Tensor]]]  # linear -> kind -> (file key, tensor)


def _match_keys(f: LoraFile, res: _Resolver, model: nn.Module) -> tuple[_Parts, list[str], list[str]]:
    """File keys -> the model's Linear modules; zero `.diff`/`.diff_b` skipped; unmatched keys warned about."""
    sd, name = f.sd, f.weights_path.name
    parts: _Parts = {}
    unmatched: list[str] = []
    zero_skipped: list[str] = []
    for key, tensor in sd.items():
        stem, kind = _split_key(key)
        if kind == "unknown":
            unmatched.append(key)
            continue
        target = res.linear(stem)
        if kind == "diff":
            if not bool((tensor == 0).all()):
                n = sum(1 for k in sd if k.endswith(".diff"))
                raise LoraError(f"{name}: {key!r} is a full weight diff ({n} '.diff' keys): not a "
                                f"low-rank LoRA; merge it into the base checkpoint instead")
            zero_skipped.append(key)
            continue
        if target is None:
            if kind == "diff_b" and res.known_module(stem):
                if not bool((tensor == 0).all()):
                    raise LoraError(f"{name}: {key!r} is a bias diff for a non-Linear module; "
                                    f"only Linear layers can be adapted")
                zero_skipped.append(key)
                continue
            unmatched.append(key)
            continue
        if kind in parts.setdefault(target, {}):
            other = parts[target][kind][0]
            raise LoraError(f"{name}: {key!r} and {other!r} both give {kind} of module {target}")
        parts[target][kind] = (key, tensor)

    image_unmatched = [k for k in unmatched if any(m in k for m in _IMAGE_MARKERS)]
    if not parts:
        shown = ", ".join(unmatched[:5]) if unmatched else "(none)"
        if image_unmatched and not _has_image_branch(model):
            raise LoraError(f"{name}: an I2V LoRA (image K/V keys such as {image_unmatched[0]!r}) but the "
                            f"model has no image branch")
        raise LoraError(f"{name}: none of its {len(sd)} keys matches a Linear module of this model "
                        f"(detected format {f.fmt}), e.g. {shown}")
    if image_unmatched and not _has_image_branch(model):
        raise LoraError(f"{name}: {len(image_unmatched)} image K/V keys such as {image_unmatched[0]!r} "
                        f"match no module: an I2V LoRA on a model without an image branch")
    if unmatched:
        msg = (f"{name}: {len(unmatched)} of {len(sd)} keys match no Linear module of this model and "
               f"are ignored, e.g. {', '.join(unmatched[:5])}")
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
    return parts, unmatched, zero_skipped


def _assemble_modules(f: LoraFile, res: _Resolver, parts: _Parts,
                      unmatched: list[str]) -> tuple[dict[str, LoraModule], list[str]]:
    """Canonical LoraModules in model order (alpha from `.alpha` keys or the config); bias-only modules get zero
    factors of the LoRA's common rank."""
    modules: dict[str, LoraModule] = {}
    bias_only: list[str] = []
    for name in [n for n in res.linears if n in parts]:  # model order
        p = parts[name]
        if ("A" in p) != ("B" in p):
            have, miss = ("lora_A/down", "lora_B/up") if "A" in p else ("lora_B/up", "lora_A/down")
            raise LoraError(f"{name}: the file has {have} ({next(iter(p.values()))[0]!r}) but no {miss}")
        if "A" not in p:
            if "diff_b" in p or "peft_bias" in p:
                bias_only.append(name)
                continue
            log.warning("ignoring %s: an alpha with no LoRA factors", p["alpha"][0])
            unmatched.append(p["alpha"][0])
            continue
        a, b = p["A"][1], p["B"][1]  # 2-D, one positive rank: checked by validate_lora_file
        rank = a.shape[0]
        alpha = float(p["alpha"][1].float().item()) if "alpha" in p else _config_alpha(f.cfg, name, rank)
        if alpha is not None and not math.isfinite(alpha / rank):
            raise LoraError(f"{name}: alpha {alpha!r} / rank {rank} is not a finite scale")
        modules[name] = LoraModule(down=a, up=b, alpha=alpha, diff_b=_diff_b(p, alpha, rank))

    if bias_only:
        ranks = Counter(m.rank for m in modules.values())
        rank = ranks.most_common(1)[0][0] if ranks else 1
        for name in bias_only:
            layer = res.linears[name]
            p = parts[name]
            dtype = (p.get("diff_b") or p.get("peft_bias"))[1].dtype
            modules[name] = LoraModule(down=torch.zeros(rank, layer.in_features, dtype=dtype),
                                       up=torch.zeros(layer.out_features, rank, dtype=dtype), alpha=None,
                                       diff_b=_diff_b(p, None, rank))
        modules = {n: modules[n] for n in res.linears if n in modules}
    return modules, bias_only


def _source_info(f: LoraFile, res: _Resolver, model: nn.Module, modules: dict[str, LoraModule],
                 unmatched: list[str], zero_skipped: list[str], bias_only: list[str]) -> dict[str, Any]:
    """What the manifest records about the file."""
    sd = f.sd
    dtypes = sorted({str(m.down.dtype).removeprefix("torch.") for m in modules.values()})
    source: dict[str, Any] = {
        "kind": "file",
        "path": str(f.weights_path.resolve()),
        "sha256": sha256_file(f.weights_path),
        "format": f.fmt,
        "keys_total": len(sd),
        "keys_unmatched": len(unmatched),
        "keys_zero_diff_skipped": len(zero_skipped),
        "modules_loaded": len(modules),
        "bias_only_modules": len(bias_only),
        "file_dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
    }
    if f.fmt == "comfyui":
        source["comfyui_keys"] = "lora_down" if any(".lora_down." in k for k in sd) else "lora_A"
    if _has_image_branch(model):
        image_kv = [n for n in res.linears if n.endswith(("attn2.add_k_proj", "attn2.add_v_proj"))]
        untouched = [n for n in image_kv if n not in modules]
        cross = any(n.endswith(("attn2.to_k", "attn2.to_v")) for n in modules)
        source["image_kv_untouched"] = len(untouched)
        if cross and len(untouched) == len(image_kv):
            source["t2v_lora_on_i2v"] = True
            log.info("%s: a T2V LoRA on an I2V model: %d image K/V projections left untouched",
                     f.weights_path.name, len(untouched))
    return source


def _diff_b(p: dict[str, tuple[str, torch.Tensor]], alpha: float | None, rank: int) -> torch.Tensor | None:
    if "diff_b" in p and "peft_bias" in p:
        raise LoraError(f"{p['diff_b'][0]!r} and {p['peft_bias'][0]!r} both give a bias delta for one module")
    if "diff_b" in p:
        return p["diff_b"][1]
    if "peft_bias" in p:  # peft applies lora_B's bias times its scaling alpha / r
        t = p["peft_bias"][1]
        factor = alpha / rank if alpha is not None else 1.0
        return t if factor == 1.0 else (t.float() * factor).to(t.dtype)
    return None


def _has_image_branch(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "image_dim", None) or getattr(cfg, "added_kv_proj_dim", None)) if cfg is not None \
        else any("add_k_proj" in n for n, _ in model.named_modules())


# ------------------------------------------------------------------------------------------------ writing
def peft_config_dict(lora: LoraWeights) -> dict[str, Any]:
    """The peft LoraConfig fields that reproduce `lora`'s ranks and scales (alpha None -> alpha = r)."""
    ranks = {n: m.rank for n, m in lora.modules.items()}
    alphas = {n: (m.alpha if m.alpha is not None else float(m.rank)) for n, m in lora.modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(n): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in alphas.items() if v != alpha},
        "target_modules": sorted(lora.modules),
        "lora_bias": any(m.diff_b is not None for m in lora.modules.values()),
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "lora_dropout": 0.0,
        "bias": "none",
    }


def _peft_bias(m: LoraModule, name: str) -> torch.Tensor:
    factor = m.alpha / m.rank if m.alpha is not None else 1.0
    if factor == 0:
        raise LoraError(f"{name}: alpha 0 with a bias delta cannot be written in peft/diffusers form")
    return m.diff_b if factor == 1.0 else (m.diff_b.float() / factor).to(m.diff_b.dtype)


def lora_state_dict(lora: LoraWeights, format: str, comfyui_keys: str = "lora_A") -> dict[str, torch.Tensor]:
    """The tensors of `lora` keyed as `format` writes them (see save_lora_file)."""
    if lora.dense is not None:
        raise LoraError("a dense (full) reference is not a LoRA and cannot be written as a LoRA file")
    LoraFormat.parse(format, "LoRA format", LoraError)
    ComfyuiKeys.parse(comfyui_keys, "comfyui_keys", LoraError)
    sd: dict[str, torch.Tensor] = {}
    for name, m in lora.modules.items():
        if format in ("diffusers", "peft"):
            prefix = ("transformer." if format == "diffusers" else "base_model.model.") + name
            sd[f"{prefix}.lora_A.weight"] = m.down
            sd[f"{prefix}.lora_B.weight"] = m.up
            if m.diff_b is not None:
                sd[f"{prefix}.lora_B.bias"] = _peft_bias(m, name)
            continue
        wan = to_wan_name(name) or name
        alpha = torch.tensor(m.alpha if m.alpha is not None else float(m.rank), dtype=torch.float32)
        if format == "comfyui":
            prefix = f"diffusion_model.{wan}"
            down, up = ("lora_A", "lora_B") if comfyui_keys == "lora_A" else ("lora_down", "lora_up")
        else:
            prefix = f"lora_unet_{_kohya(wan)}"
            down, up = "lora_down", "lora_up"
        sd[f"{prefix}.{down}.weight"] = m.down
        sd[f"{prefix}.{up}.weight"] = m.up
        sd[f"{prefix}.alpha"] = alpha
        if m.diff_b is not None:
            sd[f"{prefix}.diff_b"] = m.diff_b
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _atomic_save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)


def save_lora_file(lora: LoraWeights, path: str | os.PathLike, format: str = "diffusers",
                   comfyui_keys: str = "lora_A", extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `lora` as a .safetensors file in `format` (lora_scale is not baked in); returns the weights path.

    diffusers: `transformer.<module>.lora_A/B.weight`, `.lora_B.bias`, peft config in metadata `lora_adapter_metadata`
    (what diffusers' save_lora_adapter writes). peft: `path` is a directory with adapter_model.safetensors
    (`base_model.model.` keys) and adapter_config.json. comfyui: `diffusion_model.<wan name>.lora_A/B.weight` (or
    lora_down/up with comfyui_keys="lora_down"), `.alpha`, `.diff_b`. kohya: `lora_unet_<wan_name>.lora_down/up.weight`,
    `.alpha`, `.diff_b`. Alpha None is written as alpha = rank (the same scale).
    """
    sd = lora_state_dict(lora, format, comfyui_keys)
    # extra (issue 11, `wanrt extract --keep-diff`): full `.diff`/`.diff_b` tensors already keyed for `format`
    for key, tensor in (extra or {}).items():
        if key in sd:
            raise LoraError(f"extra tensor {key!r} collides with a LoRA key")
        sd[key] = tensor.detach().contiguous()
    path = Path(path).expanduser()
    metadata = {"format": "pt"}
    if format in ("diffusers", "peft"):
        cfg = peft_config_dict(lora)
        # a diffusers file's config is packed under its component, as pipeline.save_lora_weights writes it:
        # load_lora_weights(path) reads only 'transformer.' keys (unprefixed, it failed with KeyError 'model_type')
        packed = {f"{EXPERT_COMPONENTS['high']}.{k}": v for k, v in cfg.items()} if format == "diffusers" else cfg
        metadata[METADATA_KEY] = jsonio.dumps(packed, f"metadata {METADATA_KEY}", indent=2, sort_keys=True)
    if format == "peft":
        path.mkdir(parents=True, exist_ok=True)
        _atomic_save(sd, path / "adapter_model.safetensors", metadata)
        write_text_atomic(path / "adapter_config.json", jsonio.dumps(cfg, "adapter_config.json", indent=2,
                                                                     sort_keys=True))
        return path / "adapter_model.safetensors"
    _atomic_save(sd, path, metadata)
    return path
