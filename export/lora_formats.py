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
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wanrt.artifacts import sha256_file
from wanrt.errors import LoraError
from wanrt.export.lora import LoraModule, LoraWeights, check_fits, linear_modules

log = logging.getLogger(__name__)

FORMATS = ("diffusers", "peft", "comfyui", "kohya")
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
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
def to_wan_name(name: str) -> str | None:
    """diffusers module name -> original Wan name (`blocks.0.attn1.to_q` -> `blocks.0.self_attn.q`)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        rest = _BLOCK_INV.get(m.group(2))
        return f"blocks.{m.group(1)}.{rest}" if rest else None
    return _GLOBAL_INV.get(name)


def to_diffusers_name(name: str) -> str | None:
    """original Wan module name -> diffusers name (inverse of to_wan_name)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        rest = _BLOCK_MAP.get(m.group(2))
        return f"blocks.{m.group(1)}.{rest}" if rest else None
    return _GLOBAL_MAP.get(name)


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
            if stem.startswith(p):
                stem = stem[len(p):]
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
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _locate(path: Path) -> tuple[Path, Path | None]:
    """The weights file and an adapter_config.json (peft) if there is one."""
    if not path.exists():
        raise LoraError(f"LoRA file not found: {path}")
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


def check_lora_source(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[Path, Path | None]:
    """The checks that need no model: the file (or peft directory) exists, and is not a pickle unless allowed.
    Returns (weights file, peft adapter_config.json or None). The CLI runs it before loading any model."""
    weights_path, config_path = _locate(Path(path).expanduser())
    if weights_path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise LoraError(f"{weights_path.name}: a pickle file ({weights_path.suffix}) can run code when loaded; "
                        f"convert it to .safetensors or pass --allow-pickle if you trust it")
    return weights_path, config_path


def _read_state_dict(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise LoraError(f"{path.name}: cannot load pickle with weights_only=True: {_first_line(e)}") from None
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
                        f"{_first_line(e)}") from None
    if not sd:
        raise LoraError(f"{path.name}: the file holds no tensors")
    return sd, metadata


def _peft_config(metadata: dict[str, str], config_path: Path | None) -> dict[str, Any] | None:
    if config_path is not None:
        try:
            return json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise LoraError(f"{config_path}: unreadable adapter_config.json: {_first_line(e)}") from None
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError:
        log.warning("ignoring unparsable %s metadata", METADATA_KEY)
        return None
    if any(k.startswith("transformer.") for k in cfg):  # pipeline.save_lora_weights packs with the component prefix
        cfg = {k[len("transformer."):]: v for k, v in cfg.items() if k.startswith("transformer.")}
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


def load_lora_file(path: str | os.PathLike, model: nn.Module, lora_scale: float = 1.0,
                   allow_pickle: bool = False) -> LoraWeights:
    """Read a LoRA file (any format above) for `model` into the canonical LoraWeights; every problem is a LoraError."""
    if not (isinstance(lora_scale, (int, float)) and math.isfinite(lora_scale)):
        raise LoraError(f"--lora-scale {lora_scale!r}: must be a finite number")
    weights_path, config_path = check_lora_source(path, allow_pickle)
    sd, metadata = _read_state_dict(weights_path, allow_pickle)
    cfg = _peft_config(metadata, config_path)
    fmt = _detect_format(list(sd), config_path)

    if cfg and cfg.get("use_dora"):
        raise LoraError(f"{weights_path.name}: DoRA adapters (use_dora) are not supported; only plain LoRA")
    lycoris = [k for k in sd if any(m in k for m in _LYCORIS)]
    if lycoris:
        raise LoraError(f"{weights_path.name}: LyCORIS (LoHa/LoKr/LoCon) keys such as {lycoris[0]!r} are not "
                        f"supported; only plain LoRA (A/B or down/up)")

    res = _Resolver(model)
    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # linear -> kind -> (file key, tensor)
    unmatched: list[str] = []
    zero_skipped: list[str] = []
    for key, tensor in sd.items():
        stem, kind = _split_key(key)
        if kind == "dora":
            raise LoraError(f"{weights_path.name}: DoRA key {key!r}: DoRA adapters are not supported; only plain LoRA")
        if kind == "unknown":
            unmatched.append(key)
            continue
        target = res.linear(stem)
        if kind == "diff":
            if not bool((tensor == 0).all()):
                n = sum(1 for k in sd if k.endswith(".diff"))
                raise LoraError(f"{weights_path.name}: {key!r} is a full weight diff ({n} '.diff' keys): not a "
                                f"low-rank LoRA; merge it into the base checkpoint instead")
            zero_skipped.append(key)
            continue
        if target is None:
            if kind == "diff_b" and res.known_module(stem):
                if not bool((tensor == 0).all()):
                    raise LoraError(f"{weights_path.name}: {key!r} is a bias diff for a non-Linear module; "
                                    f"only Linear layers can be adapted")
                zero_skipped.append(key)
                continue
            unmatched.append(key)
            continue
        if kind in parts.setdefault(target, {}):
            other = parts[target][kind][0]
            raise LoraError(f"{weights_path.name}: {key!r} and {other!r} both give {kind} of module {target}")
        parts[target][kind] = (key, tensor)

    if not parts:
        image = [k for k in unmatched if any(m in k for m in _IMAGE_MARKERS)]
        shown = ", ".join(unmatched[:5]) if unmatched else "(none)"
        if image and not _has_image_branch(model):
            raise LoraError(f"{weights_path.name}: an I2V LoRA (image K/V keys such as {image[0]!r}) but the "
                            f"model has no image branch")
        raise LoraError(f"{weights_path.name}: none of its {len(sd)} keys matches a Linear module of this model "
                        f"(detected format {fmt}), e.g. {shown}")
    image_unmatched = [k for k in unmatched if any(m in k for m in _IMAGE_MARKERS)]
    if image_unmatched and not _has_image_branch(model):
        raise LoraError(f"{weights_path.name}: {len(image_unmatched)} image K/V keys such as {image_unmatched[0]!r} "
                        f"match no module: an I2V LoRA on a model without an image branch")
    if unmatched:
        msg = (f"{weights_path.name}: {len(unmatched)} of {len(sd)} keys match no Linear module of this model and "
               f"are ignored, e.g. {', '.join(unmatched[:5])}")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)

    # assemble modules, every tensor checked
    modules: dict[str, LoraModule] = {}
    bias_only: list[str] = []
    for name in [n for n in res.linears if n in parts]:  # model order
        p = parts[name]
        for key, t in p.values():
            _check_finite(key, t)
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
        a, b = p["A"][1], p["B"][1]
        if a.ndim != 2 or b.ndim != 2:
            raise LoraError(f"{name}: LoRA A {tuple(a.shape)} / B {tuple(b.shape)} are not 2-D matrices "
                            f"(conv LoRAs are not supported)")
        if a.shape[0] != b.shape[1]:
            raise LoraError(f"{name}: inconsistent rank: A {tuple(a.shape)} has rank {a.shape[0]} but B "
                            f"{tuple(b.shape)} has rank {b.shape[1]}")
        rank = a.shape[0]
        if "alpha" in p:
            alpha_t = p["alpha"][1]
            if alpha_t.numel() != 1:
                raise LoraError(f"{p['alpha'][0]!r}: alpha must be a scalar, got shape {tuple(alpha_t.shape)}")
            alpha = float(alpha_t.float().item())
        else:
            alpha = _config_alpha(cfg, name, rank)
        diff_b = _diff_b(p, alpha, rank)
        modules[name] = LoraModule(down=a, up=b, alpha=alpha, diff_b=diff_b)

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

    lora = LoraWeights(modules, lora_scale=float(lora_scale))
    check_fits(model, lora)  # names the module and both shapes

    dtypes = sorted({str(m.down.dtype).removeprefix("torch.") for m in modules.values()})
    source: dict[str, Any] = {
        "kind": "file",
        "path": str(weights_path.resolve()),
        "sha256": sha256_file(weights_path),
        "format": fmt,
        "keys_total": len(sd),
        "keys_unmatched": len(unmatched),
        "keys_zero_diff_skipped": len(zero_skipped),
        "modules_loaded": len(modules),
        "bias_only_modules": len(bias_only),
        "file_dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
    }
    if fmt == "comfyui":
        source["comfyui_keys"] = "lora_down" if any(".lora_down." in k for k in sd) else "lora_A"
    if _has_image_branch(model):
        image_kv = [n for n in res.linears if n.endswith(("attn2.add_k_proj", "attn2.add_v_proj"))]
        untouched = [n for n in image_kv if n not in modules]
        cross = any(n.endswith(("attn2.to_k", "attn2.to_v")) for n in modules)
        source["image_kv_untouched"] = len(untouched)
        if cross and len(untouched) == len(image_kv):
            source["t2v_lora_on_i2v"] = True
            log.info("%s: a T2V LoRA on an I2V model: %d image K/V projections left untouched",
                     weights_path.name, len(untouched))
    lora.source = source
    return lora


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
    if format not in FORMATS:
        raise LoraError(f"LoRA format {format!r}: choose one of {', '.join(FORMATS)}")
    if comfyui_keys not in ("lora_A", "lora_down"):
        raise LoraError(f"comfyui_keys {comfyui_keys!r}: choose lora_A or lora_down")
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_lora_file(lora: LoraWeights, path: str | os.PathLike, format: str = "diffusers",
                   comfyui_keys: str = "lora_A") -> Path:
    """Write `lora` as a .safetensors file in `format` (lora_scale is not baked in); returns the weights path.

    diffusers: `transformer.<module>.lora_A/B.weight`, `.lora_B.bias`, peft config in metadata `lora_adapter_metadata`
    (what diffusers' save_lora_adapter writes). peft: `path` is a directory with adapter_model.safetensors
    (`base_model.model.` keys) and adapter_config.json. comfyui: `diffusion_model.<wan name>.lora_A/B.weight` (or
    lora_down/up with comfyui_keys="lora_down"), `.alpha`, `.diff_b`. kohya: `lora_unet_<wan_name>.lora_down/up.weight`,
    `.alpha`, `.diff_b`. Alpha None is written as alpha = rank (the same scale).
    """
    sd = lora_state_dict(lora, format, comfyui_keys)
    path = Path(path).expanduser()
    metadata = {"format": "pt"}
    if format in ("diffusers", "peft"):
        cfg = peft_config_dict(lora)
        metadata[METADATA_KEY] = json.dumps(cfg, indent=2, sort_keys=True)
    if format == "peft":
        path.mkdir(parents=True, exist_ok=True)
        _atomic_save(sd, path / "adapter_model.safetensors", metadata)
        tmp = path / ".adapter_config.json.tmp"
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        os.replace(tmp, path / "adapter_config.json")
        return path / "adapter_model.safetensors"
    _atomic_save(sd, path, metadata)
    return path
