"""Prebuilt bundles: engines + a LoRA library in one directory whose manifest holds the sha256 of every file.

    BUNDLE/manifest.json            kind "bundle": payload {name, engines, loras, files: {relpath: sha256}, sizes};
                                    a separate-mode engine's entry has its branch and a LoRA's entry its rank and
                                    footprint (`footprint`: {ranks: {module: rank}, bias: [module]}, stacks.py)
    BUNDLE/engines/<name>/...       an export (ONNX, for ort/ov) or engine directory (TensorRT/OpenVINO), as built;
                                    or a Wan2.2 experts artifact (<name>/high, <name>/low: one engine to clients,
                                    its entry has `experts` {expert: {rank, footprint}} and `boundary_ratio`)
    BUNDLE/loras/<name>/<file>      a LoRA file (safetensors) [+ its adapter_config.json]

An engine's name is the LoRA it serves when its LoRA is merged ("base" or any name when it has none); a
separate-mode engine serves every stack of library LoRAs that fits its branch by swapping. `verify_bundle` checks
that every path stays inside the bundle (no absolute paths, `..` or symlinks out), that every file matches its hash
and no file was added, and that this machine can run each engine (ONNX Runtime, OpenVINO on a CPU, TensorRT on a
GPU).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from wanrt.runtime.serving.catalog import Catalog, EngineInfo, engine_info, experts_info
from wanrt.runtime.serving.fit import library_fit
from wanrt.runtime.serving.stacks import Footprint, expert_entry

from wanrt.artifacts import (
    CONTENTS_KEY,
    MANIFEST_NAME,
    atomic_output_dir,
    build_manifest,
    check_artifact_files,
    check_output_dir,
    confined_path,
    sha256_file,
    write_manifest,
)
from wanrt.engines import registry
from wanrt.errors import BadInputError, WanrtError
from wanrt.manifests import BundleManifest, EngineManifest, ExportManifest, ExpertsManifest, read_any

BUNDLE_KIND = BundleManifest.KIND
ARTIFACT_KINDS = (ExportManifest, EngineManifest, ExpertsManifest)  # what --artifact takes (experts: Wan2.2's pair)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LORA_SUFFIXES = (".safetensors",)


def _check_name(name: str, what: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise BadInputError(f"{what} name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no leading "
                            "punctuation)")
    return name


def _regular_files(directory: Path) -> list[Path]:
    """Every file under `directory`, dot-names included; a symlink or special file is refused (a bundle carries
    bytes, not links). Never opens anything."""
    out = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                raise BadInputError(f"{p}: a symlink; a bundle holds regular files only")
        for name in files:
            p = Path(root) / name
            if not p.is_file():
                raise BadInputError(f"{p}: not a regular file")
            out.append(p)
    return sorted(out)


def _artifact_files(directory: Path, manifest: ExportManifest | EngineManifest | ExpertsManifest) -> list[Path]:
    """What pack copies of an export/engine: its manifest and exactly the files the manifest lists (after checking
    their sha256), never a `.env` or `.git/` of the user's that sits beside them. A manifest from before wanrt
    listed its files: its non-dot files."""
    if CONTENTS_KEY in manifest.document:
        check_artifact_files(directory, manifest.document)
        return sorted([directory / MANIFEST_NAME, *(directory / rel for rel in manifest.contents)])
    return [p for p in _regular_files(directory) if not any(part.startswith(".") for part in
                                                            p.relative_to(directory).parts)]


def pack_bundle(out: str | os.PathLike, engines: list[tuple[str, str]], loras: list[tuple[str, str]],
                name: str | None = None, force: bool = False,
                say: Callable[[str], None] | None = None) -> BundleManifest:
    """Copy engines (name, dir) and LoRA files (name, path) into a new bundle at `out`; returns its manifest."""
    from wanrt.export.lora_formats import check_lora_source  # lazy: torch, kept out of the serve driver

    say = say or (lambda _m: None)
    if not engines:
        raise BadInputError("pack needs at least one --engine NAME=DIR")
    names = [_check_name(n, "engine") for n, _ in engines] + [_check_name(n, "LoRA") for n, _ in loras]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInputError(f"name {dupes[0]!r} is used twice (engine and LoRA names share one namespace)")
    checked = []
    for ename, directory in engines:
        checked.append((ename, Path(directory), read_any(directory, *ARTIFACT_KINDS)))
    lora_sources = []
    for lname, path in loras:
        weights, config = check_lora_source(path)
        if weights.suffix not in LORA_SUFFIXES:
            raise BadInputError(f"--lora {lname}={path}: bundles carry safetensors LoRAs only")
        lora_sources.append((lname, weights, config))
    # a library LoRA no engine can take would fail every request naming it: refused now instead
    branches, prints = library_fit(_fit_members(checked), [(lname, Path(path)) for lname, path in loras])
    out = check_output_dir(out, force, kind=BUNDLE_KIND)
    with atomic_output_dir(out, force=force, kind=BUNDLE_KIND) as tmp:
        entries, lora_entries = [], []
        for ename, directory, manifest in checked:
            say(f"engine {ename}: {directory}")
            for src in _artifact_files(directory, manifest):
                dst = tmp / "engines" / ename / src.relative_to(directory)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            info = _engine_info(ename, tmp / "engines" / ename, manifest)
            entries.append({"name": ename, "path": f"engines/{ename}", "kind": manifest.KIND,
                            "backend": info.backend, "lora_mode": info.lora_mode, "rank": info.rank,
                            **({"footprint": branches[ename].to_dict()} if ename in branches else {}),
                            **_experts_entry(ename, info, branches)})
        for lname, weights, config in lora_sources:
            say(f"LoRA {lname}: {weights}")
            dst_dir = tmp / "loras" / lname
            dst_dir.mkdir(parents=True)
            shutil.copyfile(weights, dst_dir / weights.name)
            if config is not None:
                shutil.copyfile(config, dst_dir / config.name)
            lora_entries.append({"name": lname, "path": f"loras/{lname}/{weights.name}",
                                 "sha256": sha256_file(dst_dir / weights.name), "rank": prints[lname].rank,
                                 "footprint": prints[lname].to_dict()})
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in _regular_files(tmp)}
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in _regular_files(tmp)}
        manifest = build_manifest(BUNDLE_KIND, {"bundle": {"engines": [list(e) for e in engines],
                                                          "loras": [list(x) for x in loras]}},
                                  {"name": _check_name(name or Path(out).name, "bundle"), "engines": entries,
                                   "loras": lora_entries, "files": files, "sizes": sizes})
        write_manifest(tmp, manifest)
    return BundleManifest.from_dict(manifest, Path(out) / MANIFEST_NAME)


def _fit_members(checked: list[tuple[str, Path, Any]]) -> list[tuple[str, Path, ExportManifest | EngineManifest]]:
    """The artifacts library_fit tries LoRAs on: an experts artifact as its two members (`NAME@EXPERT`), each with
    its own branch; the others as they are."""
    out = []
    for ename, directory, manifest in checked:
        if isinstance(manifest, ExpertsManifest):
            for expert in manifest.experts:
                member = manifest.member_dir(directory, expert)
                out.append((expert_entry(ename, expert), member, read_any(member, manifest.member_class)))
        else:
            out.append((ename, directory, manifest))
    return out


def _experts_entry(ename: str, info: EngineInfo, branches: dict[str, Footprint]) -> dict[str, Any]:
    """An experts engine's bundle entry fields: its experts (each one's rank and recorded branch) and boundary."""
    if not info.experts:
        return {}
    experts = {}
    for expert, member in info.experts:
        branch = branches.get(expert_entry(ename, expert))
        experts[expert] = {"rank": member.rank, **({"footprint": branch.to_dict()} if branch else {})}
    return {"experts": experts, "boundary_ratio": info.boundary_ratio}


# ------------------------------------------------------------------------------------------------ verify
def _runtime_problem(backend: str) -> str | None:
    """Why this machine cannot run an engine of `backend`, or None (the backend registry's own check: ONNX Runtime
    installed, OpenVINO on this CPU, TensorRT with a GPU). Loading then checks the engine's manifest against the
    exact runtime version."""
    from wanrt.runtime.backends import check_backend  # lazy: torch + ORT, kept out of the serve driver

    flavour = registry.for_backend(backend)
    device = flavour.runtime_device if flavour is not None else "cpu"
    try:
        check_backend(backend, device)
    except WanrtError as e:
        return str(e)
    return None


def _engine_info(name: str, directory: Path, manifest: ExportManifest | EngineManifest | ExpertsManifest | None = None,
                 branches: dict[str, Footprint] | None = None) -> EngineInfo:
    """catalog.engine_info (experts_info for a Wan2.2 experts artifact, with each expert's recorded `branches`) on
    a manifest that is input (read from `directory` unless given): a field of the wrong type is one line, not a
    traceback."""
    manifest = manifest or read_any(directory, *ARTIFACT_KINDS)
    try:
        if isinstance(manifest, ExpertsManifest):
            return experts_info(name, directory, manifest, branches)
        return engine_info(name, directory, manifest)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        raise BadInputError(f"{directory / MANIFEST_NAME}: malformed manifest ({type(e).__name__}: "
                            f"{str(e)[:100]})") from None


def _walk_bundle(bundle: Path, problems: list[str]) -> set[str]:
    """Every regular file under the bundle (dot-names included), by lstat only: a symlink is not followed and a
    FIFO, socket or device is a finding, never opened (opening a FIFO blocks forever)."""
    found: set[str] = set()
    stack = [bundle]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            problems.append(f"{d.relative_to(bundle)}: unreadable ({e.strerror or e})")
            continue
        for e in entries:
            rel = Path(e.path).relative_to(bundle).as_posix()
            if e.is_symlink():
                problems.append(f"{rel}: a symlink; a bundle holds regular files only")
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif e.is_file(follow_symlinks=False):
                found.add(rel)
            else:
                problems.append(f"{rel}: not a regular file (a FIFO, socket or device); a bundle holds files only")
    return found


def verify_bundle(bundle: str | os.PathLike, hashes: bool = True) -> dict[str, Any]:
    """A report {"ok", "problems", "engines", "loras", "files", "bytes", "hashes"}; every problem is one line. A
    bundle is exactly its manifest: a file it does not list (dot-names included) is a problem, like a missing or
    changed one. Nothing but regular files is opened, and the manifest is read within jsonio's bounds."""
    bundle = Path(bundle)
    manifest = BundleManifest.read(bundle)
    files, sizes = manifest.files, manifest.sizes
    problems: list[str] = []
    on_disk = _walk_bundle(bundle, problems) - {MANIFEST_NAME}
    for rel, want in sorted(files.items()):
        try:
            path = confined_path(bundle, rel, "bundle file")
        except BadInputError as e:
            problems.append(str(e))
            continue
        if rel not in on_disk:
            if not any(p.startswith(f"{rel}:") for p in problems):
                problems.append(f"{rel}: missing or not a regular file")
            continue
        size = path.stat().st_size
        if rel in sizes and size != sizes[rel]:  # no need to read a file whose size already differs
            problems.append(f"{rel}: {'sha256 does not match the manifest: ' if hashes else ''}{size} bytes, "
                            f"packed {sizes[rel]} (changed since `wanrt pack`)")
        elif hashes and sha256_file(path) != want:
            problems.append(f"{rel}: sha256 does not match the manifest (changed since `wanrt pack`)")
    for rel in sorted(on_disk - set(files)):
        problems.append(f"{rel}: not in the manifest (added after `wanrt pack`)")
    engines = []
    for entry in manifest.engines:
        row = {"name": entry["name"], "backend": entry.get("backend"), "runtime": None}
        try:
            directory = confined_path(bundle, entry["path"], "engine directory")
            info = _engine_info(entry["name"], directory)
            row.update(backend=info.backend, lora_mode=info.lora_mode, rank=info.rank)
            row["runtime"] = _runtime_problem(info.backend)
        except BadInputError as e:
            problems.append(f"engine {entry['name']!r}: {e}")
        engines.append(row)
    for entry in manifest.loras:
        try:
            confined_path(bundle, entry["path"], "LoRA file")
        except BadInputError as e:
            problems.append(f"LoRA {entry['name']!r}: {e}")
    runnable = [e for e in engines if e["runtime"] is None]
    if engines and not runnable:
        problems.append("no engine of this bundle can run here: " + "; ".join(
            f"{e['name']}: {e['runtime']}" for e in engines if e["runtime"]))
    return {"ok": not problems, "problems": problems, "engines": engines, "hashes": hashes,
            "loras": [e["name"] for e in manifest.loras], "files": len(files),
            "bytes": sum(sizes.values())}


# ------------------------------------------------------------------------------------------------ load
def load_catalog(path: str | os.PathLike, verify: bool = True, pipeline: str | None = None) -> Catalog:
    """A bundle (verified unless told otherwise), or a single export/engine directory, as a Catalog."""
    path = Path(path)
    manifest = read_any(path)
    if not isinstance(manifest, BundleManifest):
        name = _check_name(path.resolve().name if NAME_RE.fullmatch(path.resolve().name) else "engine", "engine")
        check_artifact_files(path, manifest.document)  # at start-up, not at the first request
        info = _engine_info(name, path.resolve(), manifest)
        return Catalog(model=name, engines=[info], loras={}, pipeline=pipeline, bundle=None)
    if verify:
        report = verify_bundle(path)
        if report["problems"]:
            more = f" (and {len(report['problems']) - 1} more; run `wanrt verify {path}`)" \
                if len(report["problems"]) > 1 else ""
            raise BadInputError(f"{path}: {report['problems'][0]}{more}")
    engines = []
    for entry in manifest.engines:
        directory = confined_path(path, entry["path"], "engine directory")
        experts = entry.get("experts") if isinstance(entry.get("experts"), dict) else {}
        info = _engine_info(entry["name"], directory, branches={
            x: fp for x, e in experts.items()
            if (fp := Footprint.from_dict(e.get("footprint") if isinstance(e, dict) else None,
                                          f"{path}: engine {entry['name']!r} expert {x}")) is not None})
        branch = Footprint.from_dict(entry.get("footprint"), f"{path}: engine {entry['name']!r}")
        engines.append(replace(info, branch=branch) if branch is not None else info)
    loras = {}
    for entry in manifest.loras:
        loras[entry["name"]] = {"path": entry["path"], "sha256": entry.get("sha256"),
                                "abspath": str(confined_path(path, entry["path"], "LoRA file")),
                                "footprint": Footprint.from_dict(entry.get("footprint"),
                                                                 f"{path}: LoRA {entry['name']!r}")}
    return Catalog(model=manifest.name, engines=engines, loras=loras, pipeline=pipeline, bundle=str(path.resolve()))
