"""`wanrt extract`: LoRA files of chosen ranks from a full fine-tune, by truncated SVD of each weight delta.

For each target Linear: delta = W_finetuned - W_base (fp32), its top singular triplets, and per rank r the factors
B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T (alpha = r, so scale = 1 and B A is the rank-r truncation). Reported: the
retained energy sum_{i<=r} s_i^2 / ||delta||_F^2 per module and in total (Eckart-Young: the squared relative
Frobenius error of the truncation is exactly 1 - energy), bias deltas as `diff_b`, and every other parameter the
fine-tune changed (norms, embeddings, modulation tables, Linears outside the targets), which a LoRA cannot carry;
with `keep_diff` the non-Linear ones are written as full `.diff` / `.diff_b` tensors (ComfyUI format only: that is
where such keys exist).

SVD: exact (LAPACK, float64 for matrices up to 16 M entries) unless the matrix is large (min side >= 2048, as the
14B's 5120 x 13824 FFN) and the largest rank small against it: then randomized SVD (Halko, Martinsson & Tropp 2011;
torch.svd_lowrank with `oversample` extra columns and `power_iters` subspace iterations) with an a-posteriori check
(their section 4.3): the spectral norm of the residual delta - U_k S_k V_k^T, estimated by power iteration, must
not exceed the (k+1)-th singular value estimate by more than RANDOMIZED_TOLERANCE (the exact truncation leaves
exactly s_{k+1}); a module that fails is redone with the exact SVD and the fallback is reported.

Memory: one module's base and fine-tuned weights and its delta at a time (readers stream from safetensors), plus
the factors kept for the files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from wanrt.artifacts import atomic_output_dir, build_manifest, check_output_dir, sha256_file, write_manifest
from wanrt.choices import Dtype, LoraFormat, SvdMethod
from wanrt.dit_io import TORCH_DTYPES
from wanrt.errors import BadInputError
from wanrt.export.finetuned import CheckpointWeights, ModuleWeights, check_geometry, open_finetuned, to_wan_param_name
from wanrt.export.lora import LoraModule, LoraWeights, check_rank, linear_modules, resolve_targets
from wanrt.export.lora_formats import save_lora_file
from wanrt.export.model import load_transformer

RANDOMIZED_MIN_DIM = 2048  # auto: randomized SVD at or above this smaller side ...
RANDOMIZED_MAX_FRACTION = 0.25  # ... when the largest rank + oversampling is at most this fraction of it
RANDOMIZED_TOLERANCE = 0.05  # residual spectral norm <= (1 + tol) * s_{k+1} estimate
EXACT_FLOAT64_MAX = 16 * 2**20  # entries: float64 LAPACK below, float32 above (time and memory)


@dataclass(frozen=True)
class ExtractSpec:
    finetuned: str  # a checkpoint path, or synthetic[:EXPONENT]
    ranks: tuple[int, ...]
    targets: str = "all"
    format: str = "diffusers"
    comfyui_keys: str = "lora_A"
    keep_diff: bool = False
    svd: str = "auto"
    oversample: int = 16
    power_iters: int = 4
    save_dtype: str = "fp32"
    seed: int = 0  # synthetic fine-tune seed


@dataclass
class Extraction:
    """The LoRAs of every rank and what the extraction measured."""

    loras: dict[int, LoraWeights]
    modules: dict[str, dict[str, Any]]  # per target module: shape, method, energy per rank, ...
    others: list[dict[str, Any]]  # changed parameters a LoRA cannot carry
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)  # kept full deltas (param name -> delta)
    totals: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ SVD
def _use_randomized(shape: tuple[int, int], k: int, method: str, oversample: int) -> bool:
    if method != "auto":
        return method == "randomized"
    small = min(shape)
    return small >= RANDOMIZED_MIN_DIM and k + oversample <= RANDOMIZED_MAX_FRACTION * small


def _residual_norm(delta, u, s, vh, iters: int = 10, seed: int = 0) -> float:
    """||delta - U S V^T||_2 by power iteration on R^T R (never forming R)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(delta.shape[1], 1, generator=gen, dtype=delta.dtype)

    def apply(v):
        return delta @ v - u @ (s[:, None] * (vh @ v))

    def apply_t(y):
        return delta.T @ y - vh.T @ (s[:, None] * (u.T @ y))

    norm = 0.0
    for _ in range(iters):
        x = x / x.norm().clamp_min(1e-30)
        y = apply(x)
        norm = float(y.norm())
        x = apply_t(y)
    return norm


def truncated_svd(delta: torch.Tensor, k: int, method: str = "auto", oversample: int = 16,
                  power_iters: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  dict[str, Any]]:
    """Top-k singular triplets of `delta` (U [out,k], S [k], Vh [k,in]) and how they were found."""
    k = min(k, *delta.shape)
    if _use_randomized(tuple(delta.shape), k, method, oversample):
        d = delta.float()
        q = min(k + oversample, *d.shape)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # svd_lowrank draws its test matrix from the global generator
        try:
            u, s, v = torch.svd_lowrank(d, q=q, niter=power_iters)
        finally:
            torch.random.set_rng_state(state)
        # the (k+1)-th estimate is what the exact truncation would leave as residual spectral norm
        next_sigma = float(s[k]) if q > k else 0.0
        u, s, vh = u[:, :k], s[:k], v[:, :k].T
        residual = _residual_norm(d, u, s, vh, seed=seed)
        bound = (1 + RANDOMIZED_TOLERANCE) * next_sigma + 1e-6 * float(s[0])
        check = {"residual_spectral_norm": residual, "sigma_k_plus_1_estimate": next_sigma,
                 "tolerance": RANDOMIZED_TOLERANCE, "passed": residual <= bound}
        info = {"method": "randomized", "oversample": oversample, "power_iters": power_iters, "check": check}
        if check["passed"]:
            return u, s, vh, info
        info["method"] = "randomized->exact"  # the check failed: the subspace was not good enough
    else:
        info = {"method": "exact"}
    d = delta.double() if delta.numel() <= EXACT_FLOAT64_MAX else delta.float()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    return u[:, :k], s[:k], vh[:k], info


# ------------------------------------------------------------------------------------------------ extraction
def check_ranks(model: nn.Module, targets: list[str], ranks: tuple[int, ...]) -> None:
    """Every rank fits every target matrix (before any work: a rank larger than a matrix is bad input)."""
    if not ranks:
        raise BadInputError("--rank is empty")
    linears = linear_modules(model)
    for name in targets:
        check_rank(name, linears[name], max(ranks))


def _kind(name: str, model_linears: set[str]) -> str:
    owner = name.rsplit(".", 1)[0]
    if owner in model_linears:
        return "linear-bias" if name.endswith(".bias") else "linear (not targeted)"
    if "norm" in name:
        return "norm"
    if "scale_shift_table" in name:
        return "modulation"
    return "embedding"


@torch.no_grad()
def extract_lora(model: nn.Module, base, finetuned, spec: ExtractSpec,
                 say: Callable[[str], None] | None = None) -> Extraction:
    """Truncated SVD of every target delta at every rank of `spec`. `model` gives module names and shapes (it may
    live on the meta device); `base` / `finetuned` are weight readers (wanrt.export.finetuned)."""
    SvdMethod.parse(spec.svd, "--svd")
    targets = resolve_targets(model, spec.targets)
    check_ranks(model, targets, spec.ranks)
    linears = linear_modules(model)
    rmax = max(spec.ranks)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    modules: dict[str, dict[str, Any]] = {}
    kept = {r: 0.0 for r in spec.ranks}
    target_energy = 0.0
    t0 = time.perf_counter()
    for i, name in enumerate(targets):
        layer = linears[name]
        delta = _delta(base, finetuned, f"{name}.weight")
        energy = float(delta.double().pow(2).sum())
        diff_b = None
        if layer.bias is not None:
            db = _delta(base, finetuned, f"{name}.bias")
            diff_b = db if bool(db.ne(0).any()) else None
        record: dict[str, Any] = {"shape": list(layer.weight.shape), "delta_energy": energy,
                                  "has_diff_b": diff_b is not None}
        if energy == 0.0:
            record.update(method="unchanged", retained_energy={str(r): 1.0 for r in spec.ranks})
            factors[name] = (delta.new_zeros(layer.out_features, rmax), delta.new_zeros(rmax, layer.in_features),
                             diff_b)
        else:
            u, s, vh, info = truncated_svd(delta, rmax, spec.svd, spec.oversample, spec.power_iters, seed=i)
            root = s.sqrt()
            factors[name] = ((u * root).float(), (root[:, None] * vh).float(), diff_b)
            s2 = s.double().pow(2)
            record.update(info)
            record["retained_energy"] = {str(r): float(s2[:r].sum() / energy) for r in spec.ranks}
            record["singular_values"] = [float(v) for v in s[: min(rmax, 64)]]
            for r in spec.ranks:
                kept[r] += float(s2[:r].sum())
        target_energy += energy
        modules[name] = record
        del delta
        if say and (i % 20 == 0 or i == len(targets) - 1):
            say(f"SVD {i + 1}/{len(targets)} {name} ({record['method']}, {time.perf_counter() - t0:.1f} s)")

    others, diffs, other_energy = _other_changes(model, base, finetuned, set(targets), set(linears), spec.keep_diff)
    dtype = TORCH_DTYPES[spec.save_dtype]
    loras = {}
    for r in spec.ranks:
        mods = {n: LoraModule(down=a[:r].to(dtype).contiguous(), up=b[:, :r].to(dtype).contiguous(),
                              alpha=float(r), diff_b=None if db is None else db.to(dtype))
                for n, (b, a, db) in factors.items()}
        loras[r] = LoraWeights(mods, source={"kind": "extracted", "finetuned": spec.finetuned, "rank": r,
                                             "targets": spec.targets,
                                             "retained_energy": kept[r] / target_energy if target_energy else 1.0})
    totals = {
        "target_modules": len(targets),
        "target_delta_energy": target_energy,
        "retained_energy": {str(r): (kept[r] / target_energy if target_energy else 1.0) for r in spec.ranks},
        # of everything the fine-tune changed: what a LoRA on these targets can carry at best
        "other_delta_energy": other_energy,
        "retained_energy_of_all_changes": {str(r): kept[r] / (target_energy + other_energy)
                                           if target_energy + other_energy else 1.0 for r in spec.ranks},
        "svd_methods": sorted({m["method"] for m in modules.values()}),
        "seconds": time.perf_counter() - t0,
    }
    return Extraction(loras=loras, modules=modules, others=others, diffs=diffs, totals=totals)


def _delta(base, finetuned, name: str) -> torch.Tensor:
    """fine-tune minus base of one parameter in fp32. The checkpoint readers refuse NaN/Inf inputs; this refuses a
    difference of finite values that overflows fp32, so no SVD, energy or report ever sees a non-finite number."""
    d = finetuned.get(name).float() - base.get(name).float()
    if not bool(torch.isfinite(d).all()):
        raise BadInputError(f"{name}: the fine-tune minus the base is not finite in float32 (weights near the "
                            "float32 range); not a fine-tune of this base")
    return d


def _other_changes(model, base, finetuned, targets: set[str], linears: set[str], keep: bool):
    """Parameters outside the target Linears that the fine-tune changed: reported, and (keep) the non-Linear ones
    returned as full deltas."""
    others, diffs, energy = [], {}, 0.0
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if owner in targets:
            continue
        d = _delta(base, finetuned, name)
        e = float(d.double().pow(2).sum())
        if e == 0.0:
            continue
        energy += e
        ref = float(base.get(name).float().norm())
        kind = _kind(name, linears)
        others.append({"name": name, "shape": list(p.shape), "kind": kind, "delta_energy": e,
                       # a parameter whose base is all zeros has no relative size: null (JSON has no Infinity)
                       "relative_delta": math.sqrt(e) / ref if ref else None,
                       "kept_as_diff": keep and owner not in linears})
        if keep and owner not in linears:
            diffs[name] = d
    return others, diffs, energy


# ------------------------------------------------------------------------------------------------ sources + files
def open_base(model_spec) -> tuple[nn.Module, Any]:
    """(module skeleton, base weight reader). A local checkpoint streams (the skeleton lives on the meta device:
    names and shapes, no memory); a preset is built (its weights exist only by construction), as is a hub id."""
    path = Path(model_spec.source).expanduser()
    if not model_spec.is_preset and path.is_dir():
        from diffusers import WanTransformer3DModel

        root = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
        if not (root / "config.json").is_file():
            raise BadInputError(f"--model {model_spec.source}: no config.json (a diffusers transformer directory)")
        config = WanTransformer3DModel.load_config(str(root))
        with torch.device("meta"):
            model = WanTransformer3DModel.from_config(config)
        if model_spec.layers is not None:
            if not 1 <= model_spec.layers <= len(model.blocks):
                raise BadInputError(f"--layers {model_spec.layers}: the model has {len(model.blocks)} blocks")
            model.blocks = nn.ModuleList(list(model.blocks)[: model_spec.layers])
        reader = CheckpointWeights(root, option="--model")
        check_geometry(model, reader, sliced=model_spec.layers is not None)
        return model, reader
    model = load_transformer(model_spec)
    return model, ModuleWeights(model, "base")


def extract_to_dir(model_spec, spec: ExtractSpec, out_dir: str | Path, force: bool = False,
                   say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`wanrt extract`: every check before any work, then one LoRA file per rank and manifest.json, written
    atomically (nothing is left behind on failure)."""
    LoraFormat.parse(spec.format, "--format")
    if spec.keep_diff and spec.format != "comfyui":
        raise BadInputError("--keep-diff writes full .diff tensors, which only the ComfyUI format has: add "
                            "--format comfyui")
    Dtype.parse(spec.save_dtype, "--save-dtype")
    check_output_dir(out_dir, force, kind=EXTRACT_KIND)
    model, base = open_base(model_spec)
    check_ranks(model, resolve_targets(model, spec.targets), spec.ranks)
    finetuned = open_finetuned(spec.finetuned, model, base=base, seed=spec.seed,
                               sliced=model_spec.layers is not None)
    result = extract_lora(model, base, finetuned, spec, say)
    extra = _diff_keys(result.diffs, spec.save_dtype) if spec.keep_diff else None
    files = {}
    with atomic_output_dir(out_dir, force=force, kind=EXTRACT_KIND) as tmp:
        for r, lora in result.loras.items():
            name = f"lora-r{r}" if spec.format == "peft" else f"lora-r{r}.safetensors"
            weights = save_lora_file(lora, tmp / name, spec.format, spec.comfyui_keys, extra=extra)
            rel = weights.relative_to(tmp)
            files[str(r)] = {"path": str(rel), "sha256": sha256_file(weights), "parameters": lora.parameter_count(),
                             "retained_energy": result.totals["retained_energy"][str(r)]}
        payload = {"finetuned": finetuned.describe(), "files": files, "totals": result.totals,
                   "modules": result.modules, "not_low_rank": result.others,
                   "synthetic": bool(finetuned.describe().get("synthetic"))}
        manifest = build_manifest(EXTRACT_KIND, {"model": model_spec, "extract": spec}, payload)
        write_manifest(tmp, manifest)
    return manifest


EXTRACT_KIND = "lora-extract"


def _diff_keys(diffs: dict[str, torch.Tensor], save_dtype: str) -> dict[str, torch.Tensor]:
    """Full deltas keyed as ComfyUI/Kijai write them: `diffusion_model.<wan module>.diff` (weights, tables) and
    `.diff_b` (biases)."""
    out = {}
    for name, d in diffs.items():
        wan = to_wan_param_name(name)
        stem, _, leaf = wan.rpartition(".")
        if leaf == "bias":
            key = f"diffusion_model.{stem}.diff_b"
        elif leaf == "weight":
            key = f"diffusion_model.{stem}.diff"
        else:  # a bare parameter (modulation tables)
            key = f"diffusion_model.{wan}.diff"
        out[key] = d.to(TORCH_DTYPES[save_dtype])
    return out
