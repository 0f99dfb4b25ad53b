"""What a server can run, read from a bundle manifest (or an eager preset) without loading anything heavy.

The ingress validates requests against it (shape ranges per engine, LoRA names) and the replicas route with it:
a merged engine serves exactly its own LoRA at its scale, a separate-mode engine serves any stack of library LoRAs
whose footprints fit its branch (runtime/serving/stacks.py) by swapping its branch weights (`backend.set_loras`),
and no LoRA goes to an engine without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.export.presets import PRESETS
from wanrt.io_contract import AXES, pixel_range
from wanrt.manifests import EngineManifest, ExportManifest, ExpertsManifest, read_any
from wanrt.runtime.serving.limits import ApiError, bad_request
from wanrt.runtime.serving.stacks import (
    Footprint,
    Stack,
    branch_footprint,
    expert_stack,
    export_branch,
    per_expert,
    split_entry,
    stack_label,
    stack_misfit,
)

# The shape a request gets when it names none: the preset's own default, else Wan's 480p/81 frames clipped to the
# engine's range.
WAN_DEFAULT = (81, 480, 832)


@dataclass(frozen=True)
class EngineInfo:
    """One engine of a bundle as the router sees it."""

    name: str
    path: str | None  # absolute directory; None for an eager preset
    backend: str  # ort | ov | trt | eager
    lora: str | None  # the LoRA a merged engine serves (its name); None: base or separate
    lora_mode: str | None  # merged | separate | full | None (no LoRA)
    rank: int | None
    lora_scale: float
    latent: dict[str, tuple[int, int]] | None  # the exported/profiled range; None: server caps only (eager)
    geometry: dict[str, Any] = field(default_factory=dict)
    default_shape: tuple[int, int, int] = (5, 32, 32)
    model_source: str | None = None
    branch: Footprint | None = None  # a separate-mode engine's branch (module -> rank, bias slots); None: unknown
    # Wan2.2: ((expert, its member engine), ...) in order high, low, and where the pipeline switches; () otherwise
    experts: tuple[tuple[str, EngineInfo], ...] = ()
    boundary_ratio: float | None = None

    @property
    def swappable(self) -> bool:
        return self.lora_mode == "separate"

    def member(self, expert: str) -> EngineInfo:
        return dict(self.experts)[expert]


@dataclass
class Catalog:
    model: str  # the name clients pass as `model` (the bundle's name)
    engines: list[EngineInfo]
    loras: dict[str, dict[str, Any]]  # library: name -> {path, sha256, abspath, footprint: Footprint | None}
    pipeline: str | None = None  # diffusers pipeline for VAE/encoders; None: the tiny built-in one
    bundle: str | None = None  # the bundle directory

    def lora_names(self) -> list[str]:
        merged = [e.lora for e in self.engines if e.lora]
        own = [e.name for e in self.engines if e.swappable and not e.experts]  # an experts engine: library only
        return sorted(set(self.loras) | set(merged) | set(own))

    def route(self, lora: str | None) -> EngineInfo:
        """The engine that serves `lora` alone at its own scale (None: the base model)."""
        return self.route_stack(((lora, None),) if lora is not None else ())[0]

    def route_stack(self, stack: Stack, field: str = "lora") -> tuple[EngineInfo, Stack]:
        """(engine, the stack with every scale resolved) for a stack of (name, scale | None): no LoRA -> an engine
        without one; one LoRA at a merged engine's scale -> that engine (no swap); a separate-mode engine's own
        name alone -> that engine; library LoRAs -> the first separate-mode engine whose branch they fit. ApiError
        naming the field (`field`: "lora" or "loras") otherwise: 404 for an unknown name, 400 `stack_does_not_fit`
        saying what does not fit where."""
        if not stack:
            return self._base_engine(field), ()
        known = set(self.lora_names())
        for i, (entry, _) in enumerate(stack):
            name = split_entry(entry)[0]
            if name not in known:
                raise ApiError(404, f"LoRA {name!r} is not in this server's library (GET /v1/loras lists "
                                    f"{', '.join(sorted(known)) or 'none'})", param=_param(field, i, "name"),
                               code="lora_not_found")
        if len(stack) == 1 and not per_expert(stack):
            name, scale = stack[0]
            for e in self.engines:
                if e.lora == name and scale in (None, e.lora_scale):
                    return e, ((name, e.lora_scale),)
            for e in self.engines:
                if e.swappable and e.name == name and not e.experts:
                    return e, ((name, scale),)
        for i, (entry, scale) in enumerate(stack):
            name = split_entry(entry)[0]
            if name in self.loras:
                continue
            merged = next((e for e in self.engines if e.lora == name), None)
            if merged is not None and len(stack) == 1:
                raise bad_request(f"{_param(field, 0, 'scale')} {scale:g}: engine '{merged.name}' has its LoRA merged "
                                  f"at scale {merged.lora_scale:g}; only separate-mode engines take another scale",
                                  _param(field, 0, "scale"))
            where = f"merged into engine '{merged.name}'" if merged else f"engine '{name}''s own exported LoRA"
            raise bad_request(f"LoRA {name!r} is {where} and is served alone; only library LoRAs (GET /v1/loras) "
                              "stack", _param(field, i, "name"), "lora_not_stackable")
        resolved = tuple((name, 1.0 if scale is None else scale) for name, scale in stack)
        reasons = []
        for e in self.engines:
            if e.swappable:
                why = self._stack_misfit(e, stack)
                if why is None:
                    return e, resolved
                reasons.append(f"engine '{e.name}': {why}")
        raise bad_request(f"the LoRA stack {stack_label(resolved)} fits no engine of this server: "
                          f"{'; '.join(reasons) or 'none of its engines swaps LoRAs (separate mode)'}",
                          _param(field, 0, None), "stack_does_not_fit")

    def _base_engine(self, field: str) -> EngineInfo:
        for e in self.engines:
            if e.lora_mode is None:
                return e
        for e in self.engines:  # a separate-mode engine runs the base model with its branch zeroed
            if e.swappable:
                return e
        raise ApiError(400, f"this bundle has no engine without a LoRA; name one in `{field}` (GET /v1/loras)",
                       param=field, code="lora_required")

    def _stack_misfit(self, engine: EngineInfo, stack: Stack) -> str | None:
        """Why `stack` does not fit `engine` (None: it does). An experts engine: each expert's stack (its own
        entries and those naming no expert) must fit that expert's branch; an entry naming an expert needs one."""
        if not engine.experts:
            if per_expert(stack):
                return "it has no experts (an entry's `expert` needs a Wan2.2 experts engine)"
            return self._misfit(engine, [name for name, _ in stack])
        for expert, member in engine.experts:
            why = self._misfit(member, [name for name, _ in expert_stack(stack, expert)])
            if why is not None:
                return f"expert {expert}: {why}"
        return None

    def _misfit(self, engine: EngineInfo, names: list[str]) -> str | None:
        """Why library LoRAs `names` do not fit `engine`'s branch together (None: they fit). Without recorded
        footprints (a bundle packed by an older wanrt) only what `wanrt pack` checked then is known: one LoRA, on
        the first separate-mode engine."""
        prints = [(n, self.loras[n].get("footprint")) for n in names]
        unknown = [n for n, fp in prints if fp is None]
        if unknown or engine.branch is None:
            first = next(e for e in self.engines if e.swappable)
            if len(names) == 1 and engine is first:
                return None
            what = f"LoRA {unknown[0]!r}" if unknown else "its branch"
            return f"the ranks of {what} are not recorded in the bundle: repack it with this wanrt to stack LoRAs"
        return stack_misfit(prints, engine.branch)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "bundle": self.bundle, "pipeline": self.pipeline,
                "engines": [{"name": e.name, "backend": e.backend, "lora": e.lora, "lora_mode": e.lora_mode,
                             "rank": e.rank, "latent_range": e.latent} for e in self.engines]}

    def lora_objects(self) -> list[dict[str, Any]]:
        """GET /v1/loras: what each name is, its rank and targets, the engine that serves it alone and every
        engine it fits."""
        out = []
        for name in self.lora_names():
            info = self.loras.get(name, {})
            fits = [e for e in self.engines if e.lora == name or (e.swappable and e.name == name and not e.experts)]
            if name in self.loras:
                fits += [e for e in self.engines if e.swappable and self._stack_misfit(e, ((name, None),)) is None]
            engine = fits[0] if fits else None  # what route(name) picks: merged, else own, else the first it fits
            own = engine.branch if engine is not None and engine.swappable and engine.name == name else None
            footprint = info.get("footprint") or own
            out.append({"id": name, "object": "lora", "engine": engine.name if engine else None,
                        "served_as": None if engine is None else "merged" if engine.lora == name else "swap",
                        "rank": footprint.rank if footprint else engine.rank if engine else None,
                        "targets": footprint.targets() if footprint else None,
                        "engines": list(dict.fromkeys(e.name for e in fits)), "sha256": info.get("sha256")})
        return out


def _param(field: str, index: int, key: str | None) -> str:
    """The request field an error names: `lora` / `lora_scale`, or `loras` / `loras[i].name` / `loras[i].scale`."""
    if field == "lora":
        return "lora_scale" if key == "scale" else "lora"
    return field if key is None else f"{field}[{index}].{key}"


def _default_shape(source: str | None, latent: dict[str, Any] | None) -> tuple[int, int, int]:
    if source in PRESETS:
        s = PRESETS[source].default_shape
        shape = (s.frames, s.height, s.width)
    else:
        shape = WAN_DEFAULT
    if latent:  # clip into the range, in pixel units
        bounds = pixel_range(latent)
        shape = tuple(min(max(v, bounds[axis][0]), bounds[axis][1]) for v, axis in zip(shape, AXES))
    return shape


def engine_info(name: str, directory: Path, manifest: ExportManifest | EngineManifest,
                lora: str | None = None) -> EngineInfo:
    """EngineInfo from an export or engine manifest (an engine's LoRA is its `lora` section: the mode it was built
    with, and what its export carried under `loaded`)."""
    if isinstance(manifest, EngineManifest):
        backend = registry.get(manifest.flavour).backend
        section = manifest.lora or {}
        mode = section.get("mode")
        export_lora = {**(section.get("loaded") or {}), "mode": mode, "enabled": bool(mode)}
    else:
        backend, export_lora = "ort", manifest.lora
    mode = export_lora.get("mode") if export_lora.get("enabled") else None
    latent = {k: (int(v[0]), int(v[1])) for k, v in (manifest.shape_ranges.get("latent") or {}).items()} or None
    source = (manifest.export_specs.get("model") or {}).get("source")
    branch = None
    if mode == "separate":  # an engine's refittable weights have the exact shapes; an export's payload its rank
        swap = manifest.lora if isinstance(manifest, EngineManifest) else {}
        branch = branch_footprint(swap) if swap.get("refittable_weights") else export_branch(export_lora)
    return EngineInfo(name=name, path=str(directory), backend=backend, lora=(lora or name) if mode in ("merged", "full")
                      else None, lora_mode=mode, rank=export_lora.get("rank") if mode else None,
                      lora_scale=float(export_lora.get("lora_scale", 1.0)), latent=latent,
                      geometry=manifest.geometry or {}, default_shape=_default_shape(source, latent),
                      model_source=source, branch=branch)


def experts_info(name: str, directory: Path, manifest: ExpertsManifest,
                 branches: dict[str, Footprint] | None = None) -> EngineInfo:
    """EngineInfo of a Wan2.2 experts artifact (export or engines): one engine to the router, whose members are
    each expert's EngineInfo (with its recorded branch from `branches`, when given). Backend, range and shape are
    the high expert's (both are exported over one range); it swaps when both experts do."""
    members = []
    for expert in manifest.experts:
        member_dir = manifest.member_dir(directory, expert)
        info = engine_info(f"{name}@{expert}", member_dir, read_any(member_dir, manifest.member_class))
        branch = (branches or {}).get(expert)
        members.append((expert, replace(info, branch=branch) if branch is not None else info))
    high = members[0][1]
    modes = {m.lora_mode for _, m in members}
    if len(modes) > 1 or not modes <= {None, "separate"}:  # a merged LoRA would be served as the base model
        raise BadInputError(f"{directory}: its experts' LoRA modes are {sorted(map(str, modes))}; a server takes "
                            "an experts artifact whose experts both have no LoRA or both a separate-mode one")
    return replace(high, name=name, path=str(directory), lora=None, branch=None, experts=tuple(members),
                   boundary_ratio=manifest.boundary_ratio)


def eager_catalog(model_source: str, geometry: dict[str, Any]) -> Catalog:
    """An eager preset: no engine range, so only the server's caps bound a request."""
    info = EngineInfo(name="eager", path=None, backend="eager", lora=None, lora_mode=None, rank=None,
                      lora_scale=1.0, latent=None, geometry=geometry,
                      default_shape=_default_shape(model_source, None), model_source=model_source)
    return Catalog(model=model_source, engines=[info], loras={})
