"""What a bench run measures: the frozen BenchSpec, its quality gates and the sweep points it expands to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from wanrt.artifacts import spec_hash
from wanrt.choices import LoraMode
from wanrt.dit_io import DitIO, check_video_shape
from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.export.api import LoraSpec
from wanrt.export.presets import PRESETS

RESULTS_SCHEMA = "wanrt.bench/1"
MODES = ("base", *LoraMode.values())  # a sweep point's mode: the no-LoRA base row, or how the LoRA enters


@dataclass(frozen=True)
class QualityGates:
    """Equal-quality thresholds (all configurable from the CLI)."""

    rel_err: tuple[tuple[str, float], ...] = (("fp32", 1e-4), ("bf16", 1e-2), ("fp16", 1e-2), ("fp8", 5e-2),
                                              ("int8", 5e-2))  # int8: OpenVINO/NNCF, the CPU's FP8 (issue 12)
    psnr_db: float = 35.0  # per-frame minimum
    lpips: float = 0.02  # per-frame maximum
    finetuned_rel_err: float = 1e-2  # --reference finetuned: max rel. error of a rank vs the full fine-tune (issue 11)

    def rel_err_for(self, precision: str) -> float:
        table = dict(self.rel_err)
        if precision not in table:
            raise BadInputError(f"no relative-error gate for precision {precision!r} (have {', '.join(table)})")
        return table[precision]

    def video_failures(self, psnr_min: float, lpips_max: float | None) -> list[str]:
        """Why a video misses the per-frame gates ([] when it meets them; LPIPS None = not measured)."""
        failures = []
        if not psnr_min >= self.psnr_db:
            failures.append(f"video PSNR {psnr_min:.2f} dB < {self.psnr_db:g} dB")
        if lpips_max is not None and not lpips_max <= self.lpips:
            failures.append(f"video LPIPS {lpips_max:.4f} > {self.lpips:g}")
        return failures


@dataclass(frozen=True)
class BenchSpec:
    model: str = "small"
    layers: int | None = None
    dtype: str = "fp32"
    frames: int | None = None  # None: the preset's default shape
    height: int | None = None
    width: int | None = None
    batch: int = 1  # per DiT forward; a CFG step is two forwards
    ranks: tuple[int, ...] = (16,)
    modes: tuple[str, ...] = ("merged",)
    targets: tuple[str, ...] = ("all",)
    backends: tuple[str, ...] = ("eager",)
    include_base: bool = True  # a no-LoRA row per bench (the cost every mode is measured against)
    repeats: int = 10  # timed denoising steps (2 forwards each)
    warmup: int = 2  # untimed steps per backend
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    lora_seed: int = 0
    gates: QualityGates = QualityGates()
    video_quality: bool = False
    video_steps: int = 2
    video_frames: int | None = None  # None: the bench shape
    video_height: int | None = None
    video_width: int | None = None
    video_seeds: int = 1  # videos per backend and point (FVD needs at least 2 per set)
    cuda_graph: bool = False
    trt_precision: str | None = None  # None: the bench dtype; fp8 builds FP8 engines (gated at fp8's tolerance)
    compile_mode: str | None = None
    peak_size: int | None = None  # matmul size of the peak measurement (default: 2048 CPU, 8192 GPU)
    engine_dir: str | None = None  # ort/trt with a single prebuilt artifact instead of exporting per point
    interleave: bool = True  # time the point's backends step by step in turn (fair under drifting load)
    retries: int = 2  # re-time a point disturbed by other work on the machine (LoadProbe)
    settle_s: float | None = None  # idle before each timed step (None: 0.1 s on CPU, 0 on GPU); see time_backend
    # issue 11 (runtime/bench/vs_finetuned.py): "finetuned" compares every point with the full fine-tune `finetuned`
    # (a checkpoint or synthetic[:EXPONENT]) and sweeps LoRAs extracted from it instead of synthetic ones
    reference: str = "eager"
    finetuned: str | None = None

    def precision_of(self, backend: str) -> str:
        """The precision `backend` runs at in this bench: --precision for an engine backend (without it, its
        flavour's default), the model dtype for eager, compile and ort. One the flavour does not build here is
        refused before any work (run._check_backends), never swapped for another."""
        flavour = registry.for_backend(backend)
        if flavour is None:
            return self.dtype
        return self.trt_precision or flavour.default_precision(self.dtype)

    def shape(self):
        preset = PRESETS.get(self.model)
        default = preset.default_shape if preset else None
        f = self.frames or (default.frames if default else None)
        h = self.height or (default.height if default else None)
        w = self.width or (default.width if default else None)
        if None in (f, h, w):
            raise BadInputError("--frames/--height/--width are required for a checkpoint (no preset default)")
        return check_video_shape(f, h, w)

    def video_shape(self):
        s = self.shape()
        return check_video_shape(self.video_frames or s.frames, self.video_height or s.height,
                                 self.video_width or s.width)


@dataclass(frozen=True)
class SweepPoint:
    """One LoRA configuration of the sweep."""

    targets: str | None  # None for the base row
    mode: str  # base | merged | separate | full
    rank: int | None  # None for base; the synthetic rank whose targets size the dense delta for full

    @property
    def label(self) -> str:
        if self.mode == "base":
            return "base"
        rank = "full" if self.mode == "full" else f"r{self.rank}"
        return f"{self.targets}/{self.mode}/{rank}"

    def lora_spec(self, seed: int):
        if self.mode == "base":
            return LoraSpec()
        return LoraSpec(rank=self.rank, targets=self.targets, mode=self.mode, seed=seed)


def sweep_points(spec: BenchSpec) -> list[SweepPoint]:
    for m in spec.modes:
        if m not in MODES[1:]:
            raise BadInputError(f"--modes {m!r}: choose from merged, separate, full")
    for r in spec.ranks:
        if r < 1:
            raise BadInputError(f"--ranks {r}: ranks are positive integers")
    points = [SweepPoint(None, "base", None)] if spec.include_base else []
    for targets in spec.targets:
        for mode in spec.modes:
            if mode == "full" and spec.reference == "finetuned" and targets != spec.targets[0]:
                continue  # a real fine-tune is one model whatever the target set: one full row (issue 11)
            if mode == "full":  # one dense delta per target set (rank only picks targets; it is irrelevant)
                points.append(SweepPoint(targets, "full", max(spec.ranks)))
                continue
            points += [SweepPoint(targets, mode, r) for r in spec.ranks]
    if not points:
        raise BadInputError("the sweep is empty (no modes and no base row)")
    return points


def default_output(spec: BenchSpec) -> str:
    """bench-results/<model>-<backends>-<precision>-<hash of every setting>: one folder per configuration, so the
    README's benches run one after another without --force, and the same command plus --resume finds its run."""
    model = spec.model if spec.model in PRESETS else "model"  # a path or hub id is in the hash, not the name
    precision = spec.trt_precision or spec.dtype
    return f"bench-results/{model}-{'+'.join(spec.backends)}-{precision}-{spec_hash(spec)[:8]}"


def make_inputs(config: dict[str, Any], shape, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded fp32 CPU inputs shared by every backend (the DiT I/O contract's dummy inputs): latents, a fixed
    mid-schedule timestep (757 of 1000), conditional and unconditional text, image."""
    return DitIO(config).dummy_inputs(batch, shape, seed, timestep=757.0, uncond=True)
