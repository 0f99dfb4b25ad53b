"""`wanrt bench --reference finetuned`: every LoRA rank measured against the full fine-tune it stands in for.

The question users bring: how rank (4, 8, 16, ...), and rank in cross-attention in particular, trades latency and
tokens/s against quality, relative to the full fine-tune. Here the sweep's LoRAs are not synthetic: for each target
set they are extracted from the fine-tune (`wanrt extract`, truncated SVD) at each rank; the `full` row is the
fine-tune itself (`--finetuned`, loaded like `--model`), the `base` row the model without it. Every backend's
outputs are compared with the fine-tune's eager fp32 outputs on the same inputs (relative L2 error), gated by
`gates.finetuned_rel_err`; with video quality, each point's videos are compared per frame (PSNR/SSIM/LPIPS) with the
fine-tune's videos of the same seeds, and FVD against them, beside the fine-tune's own seed-to-seed noise floor
(its videos with other seeds). The summary names, per target set, the smallest rank within the gate and what it costs
merged vs separate on each backend; `pareto.png` puts latency against quality distance.
"""

from __future__ import annotations

import gc
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import spec_hash
from wanrt.choices import Reference
from wanrt.dit_io import DitIO
from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.export.api import LoraSpec
from wanrt.export.extract import ExtractSpec, extract_lora
from wanrt.export.finetuned import ModuleWeights, finetuned_model
from wanrt.export.lora_formats import save_lora_file
from wanrt.runtime import backends as B, metrics
from wanrt.runtime.bench.point import PointContext, compare_with_reference
from wanrt.runtime.bench.spec import make_inputs
from wanrt.runtime.bench.video import VideoQuality
from wanrt.runtime.flops import forward_flops, lora_branches

GROUP_ORDER = ("all", "cross-attn", "self-attn", "ffn")


class FinetunedReference:
    """The full fine-tune of a bench run: its outputs (computed once), the LoRAs extracted from it per target set
    and rank, and each point's LoraSpec."""

    def __init__(self, session, shape):
        spec = session.spec
        if not spec.finetuned:
            raise BadInputError("--reference finetuned needs --finetuned PATH (or synthetic[:EXPONENT])")
        self.session, self.source = session, spec.finetuned
        if session.video is not None:  # videos against the fine-tune's, with its seed-to-seed floor
            session.video = finetuned_videos(spec, session.video.shape)
        self.model_spec = replace(session.model_spec, dtype="fp32")
        session.ui.status("loading the full fine-tune")
        ft, self.info = finetuned_model(self.model_spec, self.source, seed=spec.lora_seed)
        config = self.config = dict(ft.config)
        self.feeds = DitIO(config).cfg_feeds(make_inputs(config, shape, spec.batch, spec.seed))
        self.ft_backend = B.create_backend("eager", model=ft, device=session.device)
        with torch.inference_mode():
            self.refs = [self.ft_backend(*f).float().cpu() for f in self.feeds]
        # the LoRAs: extracted from the fine-tune per target set, written once into the export cache (the ONNX
        # exports of the sweep load them like any LoRA file; the directory name is their identity)
        base = B.build_transformer(self.model_spec)[0]
        identity = spec_hash(self.model_spec, self.info, sorted(spec.ranks), sorted(spec.targets))
        self.dir = session.artifacts.root / "exports" / f"extracted-{identity}"
        self.files: dict[tuple[str, int], Path] = {}
        self.loras: dict[tuple[str, int], Any] = {}
        self.made: list[Path] = []  # what this run wrote (only that is removed at the end)
        self.energy: dict[str, dict[str, Any]] = {}
        # the fine-tune is in memory already (checked against the geometry when it was loaded): read it from there
        reader = ModuleWeights(ft, "finetuned")
        for targets in spec.targets:
            session.ui.status(f"extracting {targets} LoRAs (ranks {', '.join(map(str, spec.ranks))})")
            result = extract_lora(base, ModuleWeights(base, "base"), reader,
                                  ExtractSpec(self.source, ranks=tuple(spec.ranks), targets=targets))
            self.energy[targets] = {"retained_energy": result.totals["retained_energy"],
                                    "retained_energy_of_all_changes": result.totals["retained_energy_of_all_changes"],
                                    "not_carried": len(result.others)}
            for r, lora in result.loras.items():
                path = self.dir / f"{_slug(targets)}-r{r}.safetensors"
                if not path.is_file():  # same identity, same content: a kept earlier run's file is reused
                    save_lora_file(lora, path)  # atomic (temp + rename) inside the writer
                    self.made.append(path)
                self.files[(targets, r)] = path
                self.loras[(targets, r)] = lora
        del base, reader
        gc.collect()

    @property
    def synthetic(self) -> bool:
        return bool(self.info.get("synthetic"))

    def lora_spec(self, point):
        if point.mode == "base":
            return LoraSpec()
        if point.mode == "full":
            return LoraSpec(mode="full", finetuned=self.source, seed=self.session.spec.lora_seed)
        return LoraSpec(file=str(self.files[(point.targets, point.rank)]), mode=point.mode)

    def point_context(self, point, shape):
        """The PointContext of a sweep point: the fine-tune's outputs as refs, FLOPs of the point's own model."""
        s = self.session
        lora_spec = self.lora_spec(point)
        lora = self.loras.get((point.targets, point.rank)) if point.mode in ("merged", "separate") else None
        flops = forward_flops(self.config, shape.latent, s.spec.batch,
                              lora=lora_branches(lora) if lora is not None else None, mode=point.mode)
        if lora is not None:
            summary = {**lora.summary(), "mode": point.mode, "targets": point.targets}
        elif point.mode == "full":
            summary = {**self.info, "mode": "full", "rank": "full"}
        else:
            summary = {}
        if s.video is not None:
            s.video.reference(point, self.ft_backend)
        return PointContext(session=s, point=point, lora_spec=lora_spec, feeds=self.feeds, refs=self.refs,
                            flops=flops, lora_summary=summary)

    def quality(self, ctx, name: str, backend, precision: str) -> dict[str, Any]:
        """Distance of one backend's outputs to the fine-tune's (the gate is the rank gate, not a parity gate)."""
        gate = ctx.spec.gates.finetuned_rel_err
        reference = "full fine-tune (eager fp32)" + (" [SYNTHETIC]" if self.synthetic else "")
        return compare_with_reference(ctx, name, backend, precision, reference, gate,
                                      lambda err: f"relative error to the full fine-tune {err:.3g} > {gate:g}")

    def payload(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """results.json's `finetuned` section: what the reference was and the summary over the runs so far."""
        return {"reference": self.describe(),
                "summary": summarize_finetuned(runs, self, self.session.spec.gates.finetuned_rel_err)}

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "finetuned": self.info, "synthetic": self.synthetic,
                "extracted": {f"{t}/r{r}": str(p) for (t, r), p in self.files.items()}, "energy": self.energy}

    def close(self, keep: bool) -> None:
        self.ft_backend.close()
        if not keep:
            for p in self.made:
                p.unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass


def _slug(targets: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in targets)


# ------------------------------------------------------------------------------------------------ summary
def summarize_finetuned(runs: list[dict[str, Any]], reference: FinetunedReference, gate: float) -> dict[str, Any]:
    """Per target set: the quality curve over rank (eager fp32 distance), whether it improves monotonically, the
    smallest rank within the gate, and per backend its latency merged vs separate against base and full."""
    ok = [r for r in runs if r.get("status") == "ok"]

    def lat(r):
        return r["latency"]["forward"]["median_ms"]

    def find(backend, mode, targets=None, rank=None):
        return next((r for r in ok if r["backend"] == backend and r["mode"] == mode
                     and (targets is None or r["targets"] == targets) and (rank is None or r["rank"] == rank)), None)

    backends = sorted({r["backend"] for r in ok})
    out: dict[str, Any] = {"gate_rel_err": gate, "synthetic": reference.synthetic, "targets": {}}
    for targets in sorted({r["targets"] for r in ok if r["targets"]}, key=_group_key):
        curve = sorted((r["rank"], r["quality"]["rel_err_max"]) for r in ok
                       if r["targets"] == targets and r["mode"] == "merged" and r["backend"] == "eager")
        errs = [e for _, e in curve]
        entry: dict[str, Any] = {
            "quality_vs_rank_eager_merged": [{"rank": k, "rel_err": e,
                                              "retained_energy": reference.energy.get(targets, {})
                                              .get("retained_energy", {}).get(str(k))} for k, e in curve],
            "monotonic": all(b < a for a, b in zip(errs, errs[1:])) if len(errs) > 1 else None,
            "per_backend": {}}
        for be in backends:
            # within the gate: the forward distance, and with --video-quality the per-frame gates and FVD floor
            within = sorted(r["rank"] for r in ok if r["targets"] == targets and r["backend"] == be
                            and r["mode"] in ("merged", "separate") and not r["quality"]["failures"])
            base, full = find(be, "base"), find(be, "full")  # one full row: the fine-tune has no target set
            row: dict[str, Any] = {"smallest_rank_within_gate": within[0] if within else None,
                                   "base_ms": lat(base) if base else None, "full_ms": lat(full) if full else None,
                                   "base_rel_err": base["quality"]["rel_err_max"] if base else None,
                                   "full_rel_err": full["quality"]["rel_err_max"] if full else None}
            if within:
                for mode in ("merged", "separate"):
                    r = find(be, mode, targets, within[0])
                    if r:
                        row[mode] = {"ms": lat(r), "tokens_per_s": r["tokens_per_s"]["forward"],
                                     "rel_err": r["quality"]["rel_err_max"],
                                     "vs_base": lat(r) / lat(base) if base else None,
                                     "vs_full": lat(r) / lat(full) if full else None}
            entry["per_backend"][be] = row
        out["targets"][targets] = entry
    out["pareto"] = _pareto_front(ok)
    return out


def _group_key(t: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(t) if t in GROUP_ORDER else len(GROUP_ORDER), t)


def _pareto_front(ok: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per backend: the points no other point beats on both latency and distance to the fine-tune."""
    front: dict[str, list[str]] = {}
    for be in sorted({r["backend"] for r in ok}):
        pts = [(r["latency"]["forward"]["median_ms"], r["quality"]["rel_err_max"], r["point"]) for r in ok
               if r["backend"] == be]
        keep = [p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q[:2] != p[:2] for q in pts)]
        front[be] = [p[2] for p in sorted(keep)]
    return front


# ------------------------------------------------------------------------------------------------ report + chart
def render_finetuned_section(payload: dict[str, Any]) -> list[str]:
    """report.md section: rank vs the full fine-tune."""
    f = payload.get("finetuned")
    if not f:
        return []
    s = f["summary"]
    src = f["reference"]["finetuned"]
    lines = ["## Rank vs the full fine-tune", ""]
    if s["synthetic"]:
        lines += [f"**SYNTHETIC fine-tune** ({src.get('label')}: {src.get('spectrum')}, delta = "
                  f"{src.get('relative_norm')} x ||W|| per block Linear, bias and norm deltas; see "
                  "docs/rank-study.md). Quality numbers say how a decaying spectrum truncates, not how a real "
                  "fine-tune does; point --finetuned at a real checkpoint for that.", ""]
    else:
        lines += [f"Fine-tune: `{src.get('path')}` ({src.get('layout')}, {', '.join(src.get('dtypes', []))}).", ""]
    lines += [f"LoRAs extracted from it by truncated SVD (`wanrt extract`); quality = relative L2 error of each "
              f"forward against the fine-tune's eager fp32 outputs on the same inputs; gate <= {s['gate_rel_err']:g}.",
              "", "| targets | rank | retained energy (targets / all changes) | rel. error vs full (eager, merged) | "
              "eager merged ms | eager separate ms |", "|---|---:|---:|---:|---:|---:|"]
    energy = f["reference"].get("energy", {})

    def ms(targets, mode, rank):
        r = next((r for r in payload["runs"] if r.get("status") == "ok" and r["backend"] == "eager"
                  and r["targets"] == targets and r["mode"] == mode and r["rank"] == rank), None)
        return "-" if r is None else f"{r['latency']['forward']['median_ms']:.1f}"

    for targets, e in s["targets"].items():
        for q in e["quality_vs_rank_eager_merged"]:
            of_all = energy.get(targets, {}).get("retained_energy_of_all_changes", {}).get(str(q["rank"]))
            kept = "-" if q["retained_energy"] is None else f"{q['retained_energy']:.4f} / {_fmt(of_all, 4)}"
            lines.append(f"| {targets} | {q['rank']} | {kept} | {q['rel_err']:.3e} | {ms(targets, 'merged', q['rank'])}"
                         f" | {ms(targets, 'separate', q['rank'])} |")
    lines += ["", "| targets | monotonic | backend | smallest rank within gate | merged ms (x base) | separate ms "
              "(x base) | base ms / rel. error | full ms |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for targets, e in s["targets"].items():
        for be, row in e["per_backend"].items():
            def cell(mode, row=row):
                m = row.get(mode)
                return "-" if not m else f"{m['ms']:.1f} ({m['vs_base']:.3f}x)" if m.get("vs_base") else \
                    f"{m['ms']:.1f}"
            base = "-" if row["base_ms"] is None else f"{row['base_ms']:.1f} / {row['base_rel_err']:.3e}"
            full = "-" if row["full_ms"] is None else f"{row['full_ms']:.1f}"
            rank = row["smallest_rank_within_gate"] or "none"
            lines.append(f"| {targets} | {e['monotonic']} | {be} | {rank} | {cell('merged')} | {cell('separate')} | "
                         f"{base} | {full} |")
    lines += _video_lines(payload)
    lines += ["", "Pareto front (no other point is both faster and closer to the fine-tune): "
              + "; ".join(f"{be}: {', '.join(pts)}" for be, pts in s["pareto"].items()), "",
              "![latency vs distance to the full fine-tune](pareto.png)", "",
              "![quality and latency against rank](quality_vs_rank.png)", ""]
    return lines


def _video_lines(payload: dict[str, Any]) -> list[str]:
    vids = [r for r in payload["runs"] if r.get("status") == "ok" and r["quality"].get("video")]
    if not vids:
        return []
    floor = vids[0]["quality"]["video"].get("noise_floor") or {}
    lines = ["", "Videos against the fine-tune's (same seeds). Its own seed-to-seed floor: PSNR "
             f"{_fmt(floor.get('psnr_mean'))} dB, SSIM {_fmt(floor.get('ssim_mean'), 3)}, LPIPS "
             f"{_fmt(floor.get('lpips_mean'), 4)} ({floor.get('what', '')}).", "",
             "| point | backend | PSNR min (dB) | SSIM min | LPIPS max | FVD | FVD floor (seed-pair) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in vids:
        v = r["quality"]["video"]
        f = v.get("fvd") or {}
        fvd = _fmt(f.get("fvd"), 2) if f.get("available") else f.get("reason", "-")
        lines.append(f"| {r['point']} | {r['backend']} | {_fmt(v['psnr_min'])} | {_fmt(v['ssim_min'], 3)} | "
                     f"{_fmt(v.get('lpips_max'), 4)} | {fvd} | {_fmt(f.get('noise_floor'), 2)} |")
    return lines


def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def write_pareto(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """pareto.png: per backend, forward latency against relative error to the full fine-tune, one point per
    rank x target set x mode (labelled with the rank), base and full as references, the gate as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    p = results["payload"]
    f = p.get("finetuned")
    if not f:
        return []
    ok = [r for r in p["runs"] if r.get("status") == "ok"]
    backends = sorted({r["backend"] for r in ok})
    targets = sorted({r["targets"] for r in ok if r["targets"]}, key=_group_key)
    gate = f["summary"]["gate_rel_err"]
    # the full fine-tune's own eager distance is 0: drawn at the bottom of the log axis, just below the data
    positive = [r["quality"]["rel_err_max"] for r in ok if r["quality"]["rel_err_max"] > 0]
    floor = min([gate, *positive]) / 3
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 5), squeeze=False)
    for ax, be in zip(axes[0], backends):
        for i, tg in enumerate(targets):
            for mode, marker, ls in (("merged", "o", "-"), ("separate", "s", "--")):
                pts = sorted((r["rank"], r["latency"]["forward"]["median_ms"], r["quality"]["rel_err_max"])
                             for r in ok if r["backend"] == be and r["targets"] == tg and r["mode"] == mode)
                if not pts:
                    continue
                ax.plot([q[1] for q in pts], [max(q[2], floor) for q in pts], marker=marker, linestyle=ls,
                        color=f"C{i}", label=f"{tg} {mode}", markersize=5)
                for rank, x, y in pts:
                    ax.annotate(str(rank), (x, max(y, floor)), textcoords="offset points", xytext=(3, 3), fontsize=6)
        for mode, marker, color in (("base", "X", "black"), ("full", "*", "gold")):
            for r in (r for r in ok if r["backend"] == be and r["mode"] == mode):
                y = max(r["quality"]["rel_err_max"], floor)
                ax.plot(r["latency"]["forward"]["median_ms"], y, marker=marker, color=color, markersize=13,
                        markeredgecolor="black", linestyle="none",
                        label=mode + (" (error 0: at the axis floor)" if r["quality"]["rel_err_max"] <= 0 else ""))
        ax.axhline(gate, color="red", linestyle=":", label=f"gate {gate:g}")
        ax.set_yscale("log")
        ax.set_xlabel("forward latency (ms, median)")
        ax.set_ylabel("relative error vs the full fine-tune")
        ax.set_title(f"backend: {be}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    spec = results["specs"]["bench"]
    tag = " - SYNTHETIC fine-tune" if f["summary"]["synthetic"] else ""
    fig.suptitle(f"rank vs full fine-tune: {spec['model']} {spec['dtype']} on {p['device']}{tag}")
    fig.tight_layout()
    path = out_dir / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, _quality_vs_rank(plt, ok, targets, gate, floor, out_dir, fig_title=f"{spec['model']}{tag}")]


def _quality_vs_rank(plt, ok, targets, gate, floor, out_dir: Path, fig_title: str) -> Path:
    """quality_vs_rank.png: distance to the fine-tune against rank per target set (eager, merged), and beside it
    the latency of the same ranks merged and separate (eager), base and full as lines."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    eager = [r for r in ok if r["backend"] == "eager"] or ok
    for i, tg in enumerate(targets):
        pts = sorted((r["rank"], r["quality"]["rel_err_max"]) for r in eager if r["targets"] == tg
                     and r["mode"] == "merged")
        left.plot([q[0] for q in pts], [max(q[1], floor) for q in pts], "-o", color=f"C{i}", label=tg)
        for mode, ls in (("merged", "-o"), ("separate", "--s")):
            lat = sorted((r["rank"], r["latency"]["forward"]["median_ms"]) for r in eager if r["targets"] == tg
                         and r["mode"] == mode)
            right.plot([q[0] for q in lat], [q[1] for q in lat], ls, color=f"C{i}", label=f"{tg} {mode}")
    for mode, ls in (("base", "-."), ("full", ":")):
        for r in (r for r in eager if r["mode"] == mode):
            left.axhline(max(r["quality"]["rel_err_max"], floor), color="gray", linestyle=ls, label=mode)
            right.axhline(r["latency"]["forward"]["median_ms"], color="gray", linestyle=ls, label=mode)
    left.axhline(gate, color="red", linestyle=":", label=f"gate {gate:g}")
    for ax, ylabel in ((left, "relative error vs the full fine-tune"), (right, "forward latency (ms, median)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    left.set_yscale("log")
    fig.suptitle(f"quality and latency against rank ({eager[0]['backend']}): {fig_title}")
    fig.tight_layout()
    path = out_dir / "quality_vs_rank.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_reference_spec(spec) -> None:
    """--reference values and their companions, before any work."""
    Reference.parse(spec.reference, "--reference")
    if spec.reference == "finetuned" and not spec.finetuned:
        raise BadInputError("--reference finetuned needs --finetuned PATH (or synthetic[:EXPONENT])")
    if spec.reference == "eager" and spec.finetuned and "full" not in spec.modes:
        raise BadInputError("--finetuned is the full row (--lora-modes ...,full) or the reference (--reference "
                            "finetuned); add one of them")
    if spec.reference == "finetuned" and spec.engine_dir:
        raise BadInputError("--reference finetuned sweeps extracted LoRAs; it cannot use one prebuilt --engine")
    if not math.isfinite(spec.gates.finetuned_rel_err) or spec.gates.finetuned_rel_err <= 0:
        raise BadInputError("--gate-finetuned must be a positive number")


# ------------------------------------------------------------------------------------------------ videos
def finetuned_videos(spec, shape):
    """The video-quality helper for --reference finetuned (a VideoQuality whose reference is the fine-tune)."""
    class FinetunedVideos(VideoQuality):
        """The fine-tune's videos are generated once (seeds s..s+k-1), plus a second set with the next k seeds:
        the fine-tune's own seed-to-seed noise floor (per frame, paired by index, and FVD). Every point x backend is
        compared per frame with the first set (same seeds) and by FVD against it, beside that floor."""

        def __init__(self):
            super().__init__(spec, shape)
            k = spec.video_seeds
            self.floor_specs = [replace(g, seed=spec.seed + k + i) for i, g in enumerate(self.gen_specs)]
            self.ft_videos: list | None = None
            self.floor: dict[str, Any] | None = None
            self.per_point: dict[str, dict[str, Any]] = {}

        def reference(self, point, backend) -> None:
            if self.ft_videos is None:
                self.ft_videos = self._generate(backend)
                specs, self.gen_specs = self.gen_specs, self.floor_specs
                try:
                    self.floor_videos = self._generate(backend)
                finally:
                    self.gen_specs = specs
                frames = [self._frames(a, b) for a, b in zip(self.ft_videos, self.floor_videos)]
                self.floor = {"psnr_mean": _mean([v for f in frames for v in f["psnr"]]),
                              "ssim_mean": _mean([v for f in frames for v in f["ssim"]]),
                              "lpips_mean": _mean([v for f in frames for v in (f["lpips"] or [])]),
                              "what": f"the fine-tune with seeds {[g.seed for g in self.floor_specs]} against "
                                      f"seeds {[g.seed for g in self.gen_specs]}, per frame"}
                self.ref_all = list(self.ft_videos)
            self.refs[point.label] = self.ft_videos

        def compare(self, point, name: str, backend) -> dict[str, Any]:
            out = super().compare(point, name, backend)
            out["noise_floor"] = self.floor
            videos = self.videos[name][-len(self.gen_specs):]
            out["fvd"] = self._fvd(videos)
            if out["fvd"].get("available") and not out["fvd"]["within_floor"]:
                out["failures"].append(f"FVD {out['fvd']['fvd']:.2f} above the fine-tune's seed-to-seed floor "
                                       f"{out['fvd']['noise_floor']:.2f}")
            self.per_point[f"{point.label}/{name}"] = {"fvd": out["fvd"], "psnr_min": out["psnr_min"],
                                                       "lpips_max": out["lpips_max"]}
            return out

        def _fvd(self, videos) -> dict[str, Any]:
            if len(videos) < 2 or self.shape.frames < 9:
                return {"available": False, "reason": "FVD needs >= 2 videos (--video-seeds) of >= 9 frames"}
            try:
                res = metrics.fvd(self.ft_videos, videos, metrics.FVDConfig(clip_len=min(16, self.shape.frames)),
                                  floor_videos=self.floor_videos)
            except (MissingDependencyError, BadInputError) as e:
                return {"available": False, "reason": f"FVD not available: {e}"}
            return {"available": True, "fvd": res.fvd, "noise_floor": res.noise_floor, "floor_kind": res.floor_kind,
                    "within_floor": res.noise_floor is not None and res.fvd <= res.noise_floor}

        def fvd_all(self) -> dict[str, Any]:
            # not pooled per backend as with --reference eager: each point has its own FVD against the fine-tune
            return {"available": False, "reason": "with --reference finetuned, FVD is per point against the full "
                    "fine-tune's videos: see 'Rank vs the full fine-tune'", "per_point": self.per_point}

    return FinetunedVideos()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
