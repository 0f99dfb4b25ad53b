"""Engines of a two-expert model (Wan2.2): one engine per expert, built and refit through the flavour registry,
kept together as ONE artifact laid out as its export is (OUT/high, OUT/low, OUT/manifest.json of kind "experts").

`build_experts` builds each member export with the same flavour and spec; `refit_experts` swaps the LoRA of the
experts named (the others are copied as they are, never hard-linked: engines do not share inodes). Both write
into a temporary directory renamed at the end, and write the experts manifest last, so its `contents` seal every
member's files: a half-built or half-refit pair never looks finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from wanrt.artifacts import atomic_output_dir, build_manifest, write_manifest
from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest, ExportManifest, ExpertsManifest, lora_record


def read_experts(directory: str | os.PathLike, members: str) -> ExpertsManifest:
    """The experts manifest of `directory` (every listed file checked), whose members are of kind `members`."""
    manifest = ExpertsManifest.read(directory, check_files=True)
    if manifest.members != members:
        want = "an export (wanrt export)" if members == ExportManifest.KIND else "engines (wanrt build)"
        raise BadInputError(f"{directory}: its experts are {manifest.members} artifacts; this takes {want}")
    return manifest


def build_experts(experts_dir: str | os.PathLike, flavour, spec: Any, out: str | os.PathLike,
                  force: bool = False) -> tuple[dict[str, Any], dict[str, EngineManifest]]:
    """One engine per expert of an experts export, OUT/<expert>; returns (experts manifest, {expert: engine
    manifest})."""
    source = read_experts(experts_dir, ExportManifest.KIND)
    built: dict[str, EngineManifest] = {}
    with atomic_output_dir(out, force=force, kind=ExpertsManifest.KIND) as tmp:
        for name in source.experts:
            built[name] = flavour.build(source.member_dir(experts_dir, name), spec, tmp / name)
        manifest = _seal(tmp, source, flavour.name, built, {"export": source.specs, "engine": spec})
    return manifest, built


def refit_experts(engine_dir: str | os.PathLike, loras: dict[str, dict[str, Any]],
                  out_dir: str | os.PathLike | None = None, force: bool = False) -> tuple[dict[str, Any], dict]:
    """Swap the LoRA of the experts in `loras` ({expert: the flavour's refit options}); the other experts are
    copied unchanged. In place unless `out_dir`; returns (experts manifest, {expert: engine manifest})."""
    source = read_experts(engine_dir, EngineManifest.KIND)
    unknown = sorted(set(loras) - set(source.experts))
    if unknown:
        raise BadInputError(f"{engine_dir}: no expert {unknown[0]!r} (it holds {', '.join(source.experts)})")
    target = Path(out_dir) if out_dir is not None else Path(engine_dir)
    in_place = target.resolve() == Path(engine_dir).resolve()
    members: dict[str, EngineManifest] = {}
    with atomic_output_dir(target, force=force or in_place, kind=ExpertsManifest.KIND) as tmp:
        for name in source.experts:
            member = source.member_dir(engine_dir, name)
            if name in loras:
                members[name] = registry.of_engine_dir(member).refit(member, **loras[name], out_dir=tmp / name)
            else:
                shutil.copytree(member, tmp / name)
                members[name] = EngineManifest.read(tmp / name)
        manifest = _seal(tmp, source, source.flavour, members, source.specs)
    return manifest, {name: members[name] for name in loras}


def _seal(tmp: Path, source: ExpertsManifest, flavour: str | None, members: dict[str, EngineManifest],
          specs: dict[str, Any]) -> dict[str, Any]:
    """Write the experts manifest of engine members into `tmp`, last."""
    experts = {}
    for name, m in members.items():
        experts[name] = {"dir": name, "sha256": m.plan_sha256, "precision": m.precision,
                         "lora": lora_record({"mode": m.lora.get("mode"), **(m.lora.get("loaded") or {})})}
    payload = {"members": EngineManifest.KIND, "boundary_ratio": source.boundary_ratio, "flavour": flavour,
               "experts": experts}
    manifest = build_manifest(ExpertsManifest.KIND, specs, payload)
    write_manifest(tmp, manifest)
    return manifest
