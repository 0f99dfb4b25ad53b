"""`wanrt export` as functions: ModelSpec + LoraSpec + ExportSpec -> a validated ONNX directory.

`export_model` exports one (model, LoRA, mode); `export_ranks` one directory per rank of a rank study;
`export_experts` both of Wan2.2's experts into one artifact. All write into a temporary directory renamed at the
end, so a failed export leaves nothing that looks valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt import lora_layout
from wanrt.artifacts import atomic_output_dir, build_manifest, sha256_file, spec_hash, write_manifest
from wanrt.choices import LoraMode
from wanrt.console import StepProgress
from wanrt.dit_io import DitIO, ShapeRange, VideoShape
from wanrt.errors import BadInputError, LoraError
from wanrt.memory import release_memory
from wanrt.parse import LoraEntry
from wanrt.export.lora import (LoraWeights, apply_lora, dense_reference, lora_flops_per_token, pad_rank,
                               resolve_targets, rerank, stack_loras, synthetic_lora)
from wanrt.export import validate
from wanrt.export.finetuned import finetuned_reference
from wanrt.export.finite import check_finite_initializers
from wanrt.export.lora_formats import load_lora_file
from wanrt.export.model import ModelSpec, load_transformer, model_experts, model_geometry, preset_config
from wanrt.manifests import ExportManifest, ExpertsManifest, lora_record
from wanrt.export.onnx_export import ExportSpec, export_onnx

# A check of the saved graph by a consumer above the export layer: path -> report (manifest `trt_parse`).
Acceptance = Callable[[Path], dict[str, Any]]
NOT_CHECKED = "not checked (no acceptance check was given to export_model)"

# Shape range for real checkpoints when none is given: up to 81 frames at 720p.
CHECKPOINT_MIN, CHECKPOINT_MAX = VideoShape(1, 32, 32), VideoShape(81, 720, 1280)


@dataclass(frozen=True)
class LoraSpec:
    """Which LoRA, and how it enters the graph. No file and no rank: the base model alone.

    A stack: `file`/`rank` (the first LoRA, as before stacks existed) plus `stack` entries, each at its own
    strength, become one LoRA (`stack_loras`) that enters the graph by `mode`; `merge` entries are folded into the
    base weights first in every mode (a distill LoRA a deployment keeps), so swaps and refits never touch them.
    `max_rank` zero-pads a separate branch to that rank, room for a larger stack later."""

    file: str | None = None
    rank: int | None = None  # synthetic rank (no file) or SVD re-rank target (file of higher rank)
    targets: str = "all"
    mode: str = "merged"  # merged | separate | full
    scale: float = 1.0
    seed: int = 0
    allow_pickle: bool = False
    # mode "full" only: a real full fine-tune (checkpoint path, or synthetic[:EXPONENT]) instead of a dense
    # delta; its weights replace the model's (wanrt.export.finetuned, issue 11)
    finetuned: str | None = None
    stack: tuple[LoraEntry, ...] = ()
    merge: tuple[LoraEntry, ...] = ()
    max_rank: int | None = None

    def __post_init__(self):  # a manifest gives lists of dicts back: the same spec, typed
        for name in ("stack", "merge"):
            entries = tuple(e if isinstance(e, LoraEntry) else LoraEntry(**e) for e in getattr(self, name))
            object.__setattr__(self, name, entries)

    @property
    def enabled(self) -> bool:
        return (self.file is not None or self.rank is not None or self.mode == "full" or self.finetuned is not None
                or bool(self.stack))

    def entries(self) -> tuple[LoraEntry, ...]:
        """Every swappable LoRA of the stack, the first one (`file` or a synthetic `rank`) included."""
        first = () if self.file is None and self.rank is None else (
            LoraEntry(file=self.file, strength=self.scale) if self.file is not None
            else LoraEntry(rank=self.rank, strength=self.scale),)
        return first + self.stack


def resolve_lora(model: torch.nn.Module, spec: LoraSpec,
                 expert: str | None = None) -> tuple[LoraWeights | None, dict[str, float] | None]:
    """LoraSpec -> canonical LoraWeights (file | synthetic | SVD re-rank | stack | dense), plus re-rank energies.
    `expert`: which of Wan2.2's experts `model` is (files holding both experts give it its part)."""
    LoraMode.parse(spec.mode, "--lora-mode", LoraError)
    if not spec.enabled:
        return None, None
    if spec.finetuned is not None:  # loading a full fine-tune is applying it: its LoraWeights carry no deltas

        return finetuned_reference(model, spec), None
    energy = None
    if spec.stack:
        if spec.file is not None and spec.rank is not None:
            raise LoraError("--rank re-ranks a single --lora file; a stack keeps each LoRA's rank (--max-rank sets "
                            "the branch's)")
        entries = spec.entries()
        lora = stack_loras([entry_lora(model, e, spec, i, expert) for i, e in enumerate(entries)],
                           [e.label for e in entries])
    elif spec.file is not None:
        lora = _on_targets(load_lora_file(spec.file, model, lora_scale=spec.scale, allow_pickle=spec.allow_pickle,
                                          expert=expert), model, spec.targets)
        if spec.rank is not None and (spec.rank != lora.rank or lora.rank is None):
            lora, energy = rerank(lora, spec.rank)
    else:
        if spec.rank is None:
            raise LoraError("--lora-mode full needs --rank N or --lora FILE to size the dense delta's targets")
        lora = synthetic_lora(model, spec.rank, spec.targets, seed=spec.seed)
        lora.lora_scale = spec.scale
    if spec.mode == "full":
        lora = dense_reference(lora, seed=spec.seed)
    elif spec.mode == "separate" and spec.max_rank is not None:
        lora = pad_rank(lora, spec.max_rank)
    return lora, energy


def entry_lora(model: torch.nn.Module, entry: LoraEntry, spec: LoraSpec, index: int = 0,
               expert: str | None = None) -> LoraWeights:
    """One stack entry at its strength: a file restricted to the spec's targets, or a synthetic LoRA on them
    (seeded seed + index, so two synthetic entries of a stack differ). `expert` as in resolve_lora."""
    if entry.expert not in (None, expert):
        raise LoraError(f"--lora {entry}: given to the {entry.expert} expert, loaded onto "
                        f"{'a one-transformer model' if expert is None else f'the {expert} expert'}")
    if entry.file is not None:
        lora = load_lora_file(entry.file, model, lora_scale=entry.strength, allow_pickle=spec.allow_pickle,
                              expert=expert)
        return _on_targets(lora, model, spec.targets)
    lora = synthetic_lora(model, entry.rank, spec.targets, seed=spec.seed + index)
    lora.lora_scale = entry.strength
    return lora


def _on_targets(lora: LoraWeights, model: torch.nn.Module, targets: str) -> LoraWeights:
    if targets == "all":
        return lora
    keep = set(resolve_targets(model, targets))
    lora = replace(lora, modules={n: m for n, m in lora.modules.items() if n in keep})
    if not lora.modules:
        raise LoraError(f"--targets {targets}: none of the LoRA's modules are in that group")
    return lora


def merge_entries_into(model: torch.nn.Module, spec: LoraSpec, expert: str | None = None) -> LoraWeights | None:
    """Fold `spec.merge` (one stack at its strengths) into the base weights in place: what the export does before
    its LoRA step and a refit does to rebuild the same base. Returns what was merged (None: nothing)."""
    if not spec.merge:
        return None
    lora = stack_loras([entry_lora(model, e, replace(spec, targets="all"), 100 + i, expert)
                        for i, e in enumerate(spec.merge)], [e.label for e in spec.merge])
    apply_lora(model, lora, "merged")
    return lora


def _shape_range(model_spec: ModelSpec, spec: ExportSpec) -> ShapeRange:
    preset = model_spec.preset
    lo = spec.min_shape or (preset.min_shape if preset else CHECKPOINT_MIN)
    hi = spec.max_shape or (preset.max_shape if preset else CHECKPOINT_MAX)
    if preset is not None:
        _check_rope_covers(preset.config, hi)
    return ShapeRange(lo, hi, spec.max_batch)


def _check_rope_covers(config: dict[str, Any], shape: VideoShape) -> None:
    """The model's RoPE table has `rope_max_seq_len` positions per axis: a range past it exports fine and fails
    later (inside a TensorRT build or at run time), so it is refused here, in pixels as the user typed it."""
    limit, patch = config.get("rope_max_seq_len", 1024), config.get("patch_size", (1, 2, 2))
    for axis, latent, p in zip(("frames", "height", "width"), shape.latent, patch):
        if latent // p > limit:
            raise BadInputError(f"--max-shape {shape}: {axis} gives {latent // p} RoPE positions, more than this "
                                f"model's {limit} (rope_max_seq_len); use a smaller --max-shape or a larger model")


def _validation_shapes(model_spec: ModelSpec, shapes: ShapeRange) -> list[tuple[int, VideoShape]]:
    """Two different shapes (and both batch sizes) inside the range: the preset's, else the two smallest."""
    preset = model_spec.preset
    pair = preset.validate_shapes if preset else (VideoShape(1, 32, 32), VideoShape(5, 32, 48))
    chosen = []
    for shape in pair:
        clamp = VideoShape(*(min(max(v, lo), hi) for v, lo, hi in zip(
            (shape.frames, shape.height, shape.width), vars(shapes.min_shape).values(),
            vars(shapes.max_shape).values())))
        chosen.append(clamp)
    return [(1, chosen[0]), (min(2, shapes.max_batch), chosen[1])]


def _lora_payload(lora: LoraWeights | None, spec: LoraSpec, model, energy) -> dict[str, Any]:
    if lora is None:
        return {"enabled": False, "mode": None}
    payload: dict[str, Any] = {"enabled": True, "mode": spec.mode, "targets": spec.targets, **lora.summary(),
                               "flops_per_token": lora_flops_per_token(lora, spec.mode, model)}
    if spec.mode == "separate":
        payload["initializers"] = {name: lora_layout.initializer_names(name, m.diff_b is not None)
                                   for name, m in lora.modules.items()}
    else:
        payload["merged_weights"] = {name: f"{name}.weight" for name in lora.names()}
    if energy is not None:
        payload["retained_energy"] = energy
    return payload


def export_model(model_spec: ModelSpec, lora_spec: LoraSpec, export_spec: ExportSpec, out_dir: str | Path,
                 force: bool = False, progress: bool | None = None,
                 acceptance: Acceptance | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export one (model, LoRA, mode) to `out_dir` atomically; returns the manifest. `acceptance`: a check of the
    saved graph by a consumer (wanrt.engines.trt.acceptance.tensorrt_acceptance), recorded as `trt_parse`. `say`: gets
    a line per step where no progress bar shows."""
    with atomic_output_dir(out_dir, force=force, kind="onnx") as tmp:  # refuses a bad out_dir before any work
        return _export_into(model_spec, lora_spec, export_spec, tmp, progress, acceptance, say)


def export_ranks(model_spec: ModelSpec, lora_spec: LoraSpec, export_spec: ExportSpec, ranks: list[int],
                 out_dir: str | Path, force: bool = False, progress: bool | None = None,
                 acceptance: Acceptance | None = None) -> list[dict[str, Any]]:
    """One export per rank side by side (out_dir/r4, r8, ...): how the rank study is prepared. All or nothing."""
    manifests = []
    with atomic_output_dir(out_dir, force=force, kind="onnx") as tmp:  # refuses a bad out_dir before any work
        for rank in ranks:
            sub = tmp / f"r{rank}"
            sub.mkdir()
            manifests.append(_export_into(model_spec, replace(lora_spec, rank=rank), export_spec, sub, progress,
                                          acceptance))
    return manifests


def export_experts(model_spec: ModelSpec, lora_specs: dict[str, LoraSpec], export_spec: ExportSpec,
                   out_dir: str | Path, force: bool = False, progress: bool | None = None,
                   acceptance: Acceptance | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A two-expert model (Wan2.2) as ONE artifact: out_dir/high and out_dir/low, each a complete validated export
    of its expert with its own LoRA spec (`lora_specs[expert]`), and out_dir/manifest.json (kind "experts": the
    boundary, each expert's folder, ONNX sha256 and LoRA stack), written last. All or nothing."""
    experts = model_experts(model_spec)
    if not experts.names:
        raise BadInputError(f"--model {model_spec.source} has one transformer; export it with export_model")
    with atomic_output_dir(out_dir, force=force, kind=ExpertsManifest.KIND) as tmp:  # refuses a bad out_dir first
        members = {}
        for name in experts.names:
            (tmp / name).mkdir()
            members[name] = _export_into(replace(model_spec, expert=name), lora_specs[name], export_spec, tmp / name,
                                         progress, acceptance, say)
        payload = {"members": ExportManifest.KIND, "boundary_ratio": experts.boundary_ratio,
                   "experts": {name: {"dir": name, "sha256": m["payload"]["sha256"],
                                      "lora": lora_record(m["payload"]["lora"])} for name, m in members.items()}}
        manifest = build_manifest(ExpertsManifest.KIND, {"model": model_spec, "lora": lora_specs,
                                                         "export": export_spec}, payload)
        write_manifest(tmp, manifest)  # last: it lists (and hashes) every file of both members
    return manifest


def _export_into(model_spec: ModelSpec, lora_spec: LoraSpec, export_spec: ExportSpec, directory: Path,
                 progress: bool | None, acceptance: Acceptance | None,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The export's six steps into `directory` (numbered below), then the manifest. Kept as one function on
    purpose: the order of loads and frees is what bounds peak memory on the 14B geometry."""
    steps = ["load model", "LoRA", "reference outputs", "trace + save ONNX", "validate", "TensorRT parse"]
    model_spec = replace(model_spec, dtype=export_spec.dtype)
    t_start = time.perf_counter()
    shapes = _shape_range(model_spec, export_spec)  # before any load: a range the model cannot take is bad input
    title = f"export {model_spec.source}" + (f" ({model_spec.expert} expert)" if model_spec.expert else "")
    with StepProgress(title, steps, enabled=progress, say=say) as step:
        # 1. model
        step("load model")
        model = load_transformer(model_spec)
        release_memory()
        geometry = model_geometry(model)
        # 2. LoRA
        step("LoRA")
        merged_in = merge_entries_into(model, lora_spec, model_spec.expert)
        lora, energy = resolve_lora(model, lora_spec, model_spec.expert)
        if lora is not None:
            apply_lora(model, lora, lora_spec.mode)
        lora_payload = _lora_payload(lora, lora_spec, model, energy)
        if merged_in is not None:
            lora_payload["merged_in"] = merged_in.source["stack"]
        del merged_in
        config = DitIO(geometry, model_spec.torch_dtype, shapes)
        # 3. eager references before export, so the model can be freed before ORT loads the graph
        references = []
        if export_spec.validate:
            step("reference outputs")
            references = validate.reference_outputs(model, config, _validation_shapes(model_spec, shapes))
        # 4. trace and save
        step("trace + save ONNX")
        onnx_path = directory / "model.onnx"
        export_info = export_onnx(model, config, onnx_path, opset=export_spec.opset,
                                  external_data=export_spec.external_data, progress=step.detail)
        check_finite_initializers(onnx_path)  # always: NaN/Inf weights never reach an artifact (issue 9)
        del model, lora
        release_memory()
        # 5. validate (tiers: names, axes, shapes, values)
        validation: dict[str, Any] = {"skipped": True}
        if export_spec.validate:
            step("validate")
            validation = _validation_record(validate.validate_onnx(onnx_path, config, references,
                                                                   export_spec.dtype))
        del references
        release_memory()
        # 6. TensorRT acceptance (parser only; no GPU needed), when the caller brings the check
        step("TensorRT parse")
        trt_parse = acceptance(onnx_path) if acceptance is not None else {"parsed": None, "reason": NOT_CHECKED}
    payload = {
        "onnx": onnx_path.name,
        "external_data": export_info["external_data"],
        "sha256": sha256_file(onnx_path),
        "initializer_bytes": export_info["initializer_bytes"],
        **_io_record(config),
        "geometry": geometry,
        "lora": lora_payload,
        "validation": validation,
        "trt_parse": trt_parse,
        "timings_s": {**step.times, "total": time.perf_counter() - t_start},
    }
    specs = {"model": model_spec, "lora": lora_spec, "export": export_spec}
    if model_spec.is_preset:
        payload["model_config_hash"] = spec_hash(preset_config(model_spec))
    manifest = build_manifest("onnx", specs, payload)
    write_manifest(directory, manifest)  # last: it lists every file written above
    return manifest


def _io_record(config: DitIO) -> dict[str, Any]:
    """The manifest's view of the I/O contract: inputs at the smallest shape, outputs, dynamic axes, ranges."""
    shapes = config.shapes
    return {
        "inputs": [{"name": n, "shape": list(s), "dtype": str(config.input_dtype(n)).replace("torch.", "")}
                   for n, s in config.input_shapes(batch=1, shape=shapes.min_shape).items()],
        "outputs": [{"name": n, "dtype": str(config.dtype).replace("torch.", "")} for n in config.output_names],
        "dynamic_axes": {n: sorted(a) for n, a in config.dynamic_shapes().items()},
        "shape_ranges": {"batch": [1, shapes.max_batch], "min": vars(shapes.min_shape), "max": vars(shapes.max_shape),
                         "latent": shapes.latent},
    }


def _validation_record(report: validate.ValidationReport) -> dict[str, Any]:
    """What the manifest keeps of a validation. It exists only when every tier passed (a failure raises)."""
    return {"skipped": False, "tolerance": report.tolerance, "evaluated_as": report.evaluated_as,
            "tiers": report.tiers, "max_rel": report.max_rel, "checks": report.checks}
