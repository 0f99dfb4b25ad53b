"""Model sources: a built-in preset with seeded random weights, a local diffusers checkpoint, or a hub id.

All three end in the same `WanTransformer3DModel`, cast the same way (`_keep_in_fp32_modules` stay fp32), so a real
checkpoint goes through exactly the code path the tests exercise on presets.

A model with two experts (Wan2.2 A14B: `model_experts`) is loaded one expert at a time (`ModelSpec.expert`): a
preset's expert is its seed plus the expert's offset, a checkpoint's is `transformer/` (high) or `transformer_2/`
(low), its boundary the pipeline's `model_index.json` `boundary_ratio`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from wanrt.choices import Expert
from wanrt.dit_io import TORCH_DTYPES
from wanrt.errors import BadInputError, ModelSourceError, NetworkError
from wanrt.export.presets import PRESETS, Preset
from wanrt.jsonio import read_json
from wanrt.manifests import EngineManifest, ExportManifest

# where each expert lives in a diffusers Wan2.2 pipeline (WanImageToVideoPipeline's `transformer`/`transformer_2`)
EXPERT_SUBFOLDERS = {Expert.HIGH.value: "transformer", Expert.LOW.value: "transformer_2"}

@dataclass(frozen=True)
class ModelSpec:
    """Where the transformer comes from and how it is cut and cast."""

    source: str = "tiny"  # preset name, local directory, or hub id
    layers: int | None = None  # keep the first N blocks (timing on one GPU, slices on small machines)
    dtype: str = "fp32"
    seed: int = 0  # presets only
    expert: str | None = None  # which of a two-expert model's transformers (model_experts); None: the one

    @property
    def is_preset(self) -> bool:
        return self.source in PRESETS

    @property
    def preset(self) -> Preset | None:
        return PRESETS.get(self.source)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


@dataclass(frozen=True)
class Experts:
    """A model's experts: none (one transformer), or Wan2.2's high and low with the pipeline's boundary."""

    names: tuple[str, ...] = ()
    boundary_ratio: float | None = None


def model_experts(spec: ModelSpec) -> Experts:
    """The experts of `spec`'s source: a preset's, or a local pipeline's with `transformer_2/` (boundary from its
    model_index.json), or a hub id's whose model_index.json is in the hub cache (no network: an uncached hub id
    loads `transformer/` alone, as before experts existed)."""
    if spec.is_preset:
        return Experts(spec.preset.experts, spec.preset.boundary_ratio)
    path = Path(spec.source).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not (path / EXPERT_SUBFOLDERS[Expert.LOW] / "config.json").is_file():
            return Experts()
    else:
        index = _cached_hub_file(spec.source, "model_index.json")
        if index is None:
            return Experts()
    doc = read_json(index) if Path(index).is_file() else {}
    ratio = doc.get("boundary_ratio") if isinstance(doc, dict) else None
    if ratio is None:
        return Experts()  # transformer_2 without a boundary: diffusers runs `transformer` alone, so does wanrt
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ModelSourceError(f"{index}: boundary_ratio {ratio!r} is not a number between 0 and 1")
    return Experts(Expert.values(), float(ratio))


def _cached_hub_file(source: str, name: str) -> Path | None:
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(source, name)
    return Path(hit) if isinstance(hit, str) else None


def check_expert(spec: ModelSpec, experts: Experts | None = None) -> None:
    """`spec.expert` names one of the model's experts, and a two-expert model is loaded one expert at a time."""
    experts = model_experts(spec) if experts is None else experts
    if spec.expert is None and experts.names:
        raise BadInputError(f"--model {spec.source} has two experts ({', '.join(experts.names)}), one transformer "
                            f"each: `wanrt export` writes both into one artifact (build, refit and generate take "
                            f"it); this runs one transformer")
    if spec.expert is not None and spec.expert not in experts.names:
        if not experts.names:
            raise BadInputError(f"expert {spec.expert!r}: --model {spec.source} has one transformer (the high:/low: "
                                f"experts are Wan2.2's)")
        raise BadInputError(f"expert {spec.expert!r}: choose one of {', '.join(experts.names)}")


def exported_model_spec(manifest: ExportManifest | EngineManifest) -> ModelSpec:
    """The model an export (or the export an engine was built from) was traced from, in the graph's dtype."""
    spec = ModelSpec(**manifest.export_specs.get("model", {}))
    return replace(spec, dtype=manifest.dtype or spec.dtype)


def _is_kept_fp32(name: str, keep: tuple[str, ...]) -> bool:
    return any(k in name.split(".") for k in keep)


def cast_keep_fp32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but keep `_keep_in_fp32_modules` (RoPE, time embedder, norms, modulation table) in fp32,
    as diffusers' from_pretrained(torch_dtype=...) does: Wan's modulation and norms overflow or drift in fp16.
    Kept tensors are never round-tripped through `dtype`."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        target = torch.float32 if dtype != torch.float32 and _is_kept_fp32(name, keep) else dtype
        if tensor.dtype != target:
            tensor.data = tensor.data.to(target)
    return model


@contextlib.contextmanager
def _cast_linears_as_built(dtype: torch.dtype) -> Iterator[None]:
    """Patch: cast each Linear to `dtype` right after its own initialisation, except inside the time embedder
    (kept in fp32).

    Reason: a bf16 preset would otherwise exist in fp32 first (2x its final size at peak: 4.2 GB for the 14B
    2-block slice, against 2.0 GB exported). Initialisation order and RNG draws are unchanged, so the weights equal
    a cast of the fp32 preset bit for bit (tested). Reverted on exit.
    """
    from diffusers.models.embeddings import TimestepEmbedding

    linear_init, timestep_init = torch.nn.Linear.__init__, TimestepEmbedding.__init__
    inside_kept = [0]

    def linear_init_then_cast(self, *args, **kwargs):
        linear_init(self, *args, **kwargs)
        if not inside_kept[0]:
            for p in self.parameters(recurse=False):
                p.data = p.data.to(dtype)

    def timestep_init_in_fp32(self, *args, **kwargs):
        inside_kept[0] += 1
        try:
            timestep_init(self, *args, **kwargs)
        finally:
            inside_kept[0] -= 1

    if dtype != torch.float32:
        torch.nn.Linear.__init__, TimestepEmbedding.__init__ = linear_init_then_cast, timestep_init_in_fp32
    try:
        yield
    finally:
        torch.nn.Linear.__init__, TimestepEmbedding.__init__ = linear_init, timestep_init


def _truncate_blocks(model: torch.nn.Module, layers: int) -> None:
    total = len(model.blocks)
    if not 1 <= layers <= total:
        raise BadInputError(f"--layers {layers}: the model has {total} blocks")
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:layers])
    model.register_to_config(num_layers=layers)


def preset_config(spec: ModelSpec) -> dict[str, Any]:
    config = dict(spec.preset.config)
    if spec.layers is not None:
        if not 1 <= spec.layers <= config["num_layers"]:
            raise BadInputError(f"--layers {spec.layers}: preset {spec.source} has {config['num_layers']} blocks")
        config["num_layers"] = spec.layers
    return config


def _resolve_checkpoint(source: str, expert: str | None = None) -> tuple[str, dict[str, Any]]:
    """A local pipeline dir (with transformer/, and transformer_2/ for Wan2.2's low expert), a transformer dir, or
    a hub id (cached or downloadable)."""
    path = Path(source).expanduser()
    subfolder = EXPERT_SUBFOLDERS[expert or Expert.HIGH]
    if path.exists():
        if expert is not None:
            if not (path / subfolder / "config.json").is_file():
                raise ModelSourceError(f"{source}: no {subfolder}/config.json (the {expert}-noise expert)")
            return str(path), {"subfolder": subfolder}
        if (path / "transformer" / "config.json").is_file():
            return str(path), {"subfolder": "transformer"}
        if (path / "config.json").is_file():
            return str(path), {}
        raise ModelSourceError(f"{source}: neither a diffusers checkpoint (config.json) nor a pipeline (transformer/)")
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ModelSourceError(f"--model {source!r}: not a preset ({', '.join(PRESETS)}), a directory, or a hub id")
    return source, {"subfolder": subfolder}


HUB_PROBE_TIMEOUT_S = 5.0


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_unreachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers at all (any HTTP status), else the reason. One short probe instead of the hub
    client's retries (31 s and 14 lines on an unreachable host, then a misleading 'no config.json')."""
    import urllib.error
    import urllib.request

    url = f"{endpoint or hub_endpoint()}/api/whoami-v2"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) or type(e).__name__
    return None


def _hub_access(repo_id: str, subfolder: str | None) -> dict[str, Any]:
    """from_pretrained kwargs for a hub id: local_files_only when the hub is off (HF_HUB_OFFLINE or unreachable)
    and a cached copy exists; otherwise one true line (NetworkError, exit 4) before the hub client retries."""
    from huggingface_hub import try_to_load_from_cache

    config = f"{subfolder}/config.json" if subfolder else "config.json"
    cached = isinstance(try_to_load_from_cache(repo_id, config), str)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        if not cached:
            raise ModelSourceError(f"--model {repo_id}: HF_HUB_OFFLINE=1 and no cached copy; download it once with "
                                   "network, or pass a local checkpoint directory")
        return {"local_files_only": True}
    why = hub_unreachable()
    if why is None:
        return {}
    if cached:
        print(f"warning: {hub_endpoint()} unreachable ({why}); using the cached copy of {repo_id}", file=sys.stderr)
        return {"local_files_only": True}
    raise NetworkError(f"--model {repo_id}: cannot reach the model hub at {hub_endpoint()} ({why}) and there is no "
                       "cached copy; check the network/HF_ENDPOINT, or pass a local checkpoint directory")


def load_transformer(spec: ModelSpec) -> torch.nn.Module:
    """ModelSpec -> WanTransformer3DModel in eval mode, on CPU, in spec.dtype."""
    from diffusers import WanTransformer3DModel

    if spec.dtype not in TORCH_DTYPES:
        raise BadInputError(f"--dtype {spec.dtype}: choose one of {', '.join(TORCH_DTYPES)}")
    check_expert(spec)
    if spec.is_preset:
        # 1. build in fp32 from a fixed seed so a preset is the same model on every machine (each expert its own)
        with torch.random.fork_rng(devices=[]), _cast_linears_as_built(spec.torch_dtype):
            torch.manual_seed(spec.seed + spec.preset.expert_seeds.get(spec.expert, 0))
            model = WanTransformer3DModel(**preset_config(spec))
    else:
        # 1. same class, real weights; offline with no local copy is one clear error
        name, kwargs = _resolve_checkpoint(spec.source, spec.expert)
        if not Path(name).exists():
            kwargs.update(_hub_access(name, kwargs.get("subfolder")))
        try:
            # loaded straight in the target dtype: diffusers keeps _keep_in_fp32_modules in fp32 itself
            model = WanTransformer3DModel.from_pretrained(name, torch_dtype=spec.torch_dtype, **kwargs)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or kwargs.get("local_files_only")
            hint = " (offline, and the local copy is incomplete)" if offline else ""
            raise ModelSourceError(f"cannot load {spec.source!r}{hint}: {str(e).splitlines()[0]}") from None
        if spec.layers is not None:
            _truncate_blocks(model, spec.layers)
    # 2. one cast path for every source
    cast_keep_fp32(model, spec.torch_dtype)
    return model.eval().requires_grad_(False)


def model_geometry(model: torch.nn.Module) -> dict[str, Any]:
    """The few config numbers export, FLOP counting and benchmarks need."""
    c = model.config
    return {
        "num_layers": len(model.blocks),
        "heads": c.num_attention_heads,
        "head_dim": c.attention_head_dim,
        "dim": c.num_attention_heads * c.attention_head_dim,
        "ffn_dim": c.ffn_dim,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "text_dim": c.text_dim,
        "image_dim": c.image_dim,
        "patch_size": tuple(c.patch_size),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
