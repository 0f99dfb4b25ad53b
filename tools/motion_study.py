"""The rank question on a trained model (issue 22): full fine-tune vs LoRA ranks and target groups on the downstream
motion task, all from the same pretrained weights, data and step budget; each method's learning rate chosen on
validation; several seeds; `wanrt extract` of each full fine-tune at the same ranks beside the trained LoRAs; every
run scored on held-out test clips with FVD and LPIPS; each LoRA's eager latency merged and separate.

    python -m wanrt.tools.motion_study --pretrain runs/pretrain --data data/motion-down -o study --jobs 2
    (runs/ and scores/ under -o are reused on a re-run, so an interrupted study resumes; a re-run with other
    pretrained weights, clips, --steps, --test-clips or --sample-steps is refused; then motion-study.json/.md)

Protocol (every figure of the report comes from these steps):
1. lr: each method trains `--steps` steps at each rate of LR_GRID with seed 0; the rate with the lowest final
   validation loss (all validation clips, fixed noise draws: tools/train_small.validation_loss) is kept.
2. seeds: seeds 1..N-1 at the kept rate (seed 0's run is reused). A seed sets data order, noise and LoRA init.
3. extract: each full fine-tune at its kept rate, truncated SVD of its deltas at `--ranks` on all targets
   (export/extract.extract_lora: what `wanrt extract` runs), merged onto the pretrained weights. The fine-tune also
   moves norms, modulation tables and embeddings, which no LoRA carries: the report gives that energy share.
4. score: the first `--test-clips` test clips, sampled from their own first frames (runtime/motion.sample,
   `--sample-steps` Euler steps; the sampling seed is the same for every run, so runs differ by weights only):
   - LPIPS (AlexNet, runtime/metrics) per frame against the real clip, both upsampled 4x nearest-neighbour to
     128 px (at 32 px AlexNet's last features are 1x1), averaged over the frames, then over the clips;
   - FVD: I3D features (the real weights) of each clip's first 16 frames against the real test clips'. With a few
     dozen clips FVD is biased upward and noisy (the 400-d covariance has rank < N): the report puts it beside two
     floors, the real clips' halves against each other and the full fine-tune's seed-to-seed FVD.
   95% intervals over seeds: mean +- t(0.975, n - 1) s / sqrt(n).
5. latency: each LoRA of seed 0 on the trained model, eager fp32, merged (= the base and the full fine-tune) vs
   separate (export/lora.apply_lora), paired interleaved rounds on a batch of test clips: each ratio to merged
   with a bootstrap 95% CI (tools/bench_cpu_engines.time_rounds / ratio_ci), and tokens/s.
"""

from __future__ import annotations

import copy
import multiprocessing
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from diffusers import WanTransformer3DModel

from wanrt.artifacts import command_line, cpu_info, load_artifact, write_bytes_atomic, write_json, write_text_atomic
from wanrt.errors import BadInputError, WanrtError
from wanrt.export.extract import ExtractSpec, extract_lora
from wanrt.export.finetuned import ModuleWeights
from wanrt.export.lora import apply_lora, linear_modules, resolve_targets
from wanrt.export.lora_formats import load_lora_file
from wanrt.export.presets import PRESETS
from wanrt.jsonio import read_json
from wanrt.runtime.flops import LoraBranch, forward_flops
from wanrt.runtime.metrics.frames import lpips_frames
from wanrt.runtime.metrics.frechet import FVDConfig, fvd_from_features, i3d_features, split_half_floor
from wanrt.runtime.motion import FlowMatching, check_conditioning, frame_strip_png, sample
from wanrt.tools.motion_clips import KIND as CLIPS_KIND
from wanrt.tools.bench_cpu_engines import interval, ratio_ci, time_rounds
from wanrt.tools.motion_sample import load_run
from wanrt.tools.train_small import KIND, WEIGHTS, TrainConfig, load_split, save_run, train

LR_GRID = {"full": (3e-5, 1e-4, 3e-4, 1e-3), "lora": (1e-4, 3e-4, 1e-3, 3e-3)}
LPIPS_UPSAMPLE = 4
SAMPLE_SEED = 1234


@dataclass(frozen=True)
class Method:
    name: str
    method: str  # full | lora
    rank: int | None = None
    targets: str | None = None


def study_methods(ranks: tuple[int, ...], group_rank: int, groups: tuple[str, ...]) -> list[Method]:
    """Full fine-tune; LoRA at every rank on all targets and on cross-attention; one rank on each other group."""
    return ([Method("full", "full")] + [Method(f"r{r}-all", "lora", r, "all") for r in ranks]
            + [Method(f"r{r}-cross-attn", "lora", r, "cross-attn") for r in ranks]
            + [Method(f"r{group_rank}-{g}", "lora", group_rank, g) for g in groups])


def run_name(m: Method, lr: float, seed: int) -> str:
    return f"{m.name}-lr{lr:g}-s{seed}"


# ------------------------------------------------------------------------------------------------ scoring
def _upsampled(clip: np.ndarray) -> np.ndarray:
    return clip.repeat(LPIPS_UPSAMPLE, axis=1).repeat(LPIPS_UPSAMPLE, axis=2)


def score_model(model: torch.nn.Module, shift: float, data: str, clips: int, steps: int) -> dict[str, Any]:
    """Sample the first `clips` test clips from their first frames; LPIPS per clip and I3D features."""
    real, motions = load_split(data, "test")
    real, motions = real[:clips], motions[:clips]
    fake = sample(FlowMatching(model, shift), real[:, 0], motions, real.shape[1], steps,
                  torch.Generator().manual_seed(SAMPLE_SEED)).numpy()
    return score_clips(real.numpy(), fake)


def score_clips(real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
    """LPIPS of each clip against its real one (mean over frames) and the I3D features of the clips."""
    lpips = [float(np.mean(lpips_frames(_upsampled(r), _upsampled(f)))) for r, f in zip(real, fake)]
    features, _ = i3d_features(list(fake), FVDConfig())
    return {"lpips": lpips, "features": features.tolist(), "samples": fake[:4]}


def _write_score(path: Path, record: dict[str, Any]) -> None:
    write_bytes_atomic(path.with_suffix(".png"), frame_strip_png(list(record.pop("samples")), scale=2))
    write_json(path, record)


def train_job(out: str, data: str, pretrain: str, preset: str, shift: float, m: Method, lr: float, seed: int,
              steps: int) -> str:
    """Train one run unless it exists (at the pretrained run's flow shift); one process, one thread."""
    torch.set_num_threads(1)
    name = run_name(m, lr, seed)
    run = Path(out) / "runs" / name
    if not (run / "manifest.json").is_file():
        cfg = TrainConfig(data=data, preset=preset, init=pretrain, method=m.method, rank=m.rank or 8,
                          targets=m.targets or "all", steps=steps, lr=lr, shift=shift, seed=seed, val_every=steps,
                          val_clips=16)
        model, names, record = train(cfg, log=lambda _line: None)
        save_run(run, cfg, model, names, record)
    return name


def final_validation(out: Path, name: str) -> float:
    return load_artifact(out / "runs" / name, kind=KIND)["payload"]["final_validation"]


def score_job(out: str, data: str, name: str, test_clips: int, sample_steps: int) -> str:
    """Score one trained run unless it is scored."""
    torch.set_num_threads(1)
    score = Path(out) / "scores" / f"{name}.json"
    if not score.is_file():
        model, cfg = load_run(Path(out) / "runs" / name)
        _write_score(score, {"run": name, **score_model(model, cfg.shift, data, test_clips, sample_steps)})
    return name


def extract_job(out: str, data: str, pretrain: str, full_run: str, ranks: tuple[int, ...], test_clips: int,
                sample_steps: int) -> str:
    """SVD of one full fine-tune at every rank (all targets), each merged onto the pretrained weights and scored."""
    torch.set_num_threads(1)
    base, cfg = load_run(pretrain)
    finetuned, _ = load_run(Path(out) / "runs" / full_run)
    extraction = extract_lora(base, ModuleWeights(base, "pretrained"), ModuleWeights(finetuned, full_run),
                              ExtractSpec(finetuned=full_run, ranks=ranks, targets="all"))
    for r, lora in extraction.loras.items():
        score = Path(out) / "scores" / f"extract-r{r}-{full_run}.json"
        if not score.is_file():
            model = apply_lora(copy.deepcopy(base), lora, "merged")
            _write_score(score, {"run": f"extract-r{r}-{full_run}", "totals": extraction.totals,
                                 **score_model(model, cfg.shift, data, test_clips, sample_steps)})
    return full_run


def base_job(out: str, data: str, pretrain: str, test_clips: int, sample_steps: int) -> str:
    """The pretrained model itself on the downstream test clips (no fine-tune), and the real clips' features."""
    torch.set_num_threads(1)
    score = Path(out) / "scores" / "pretrained.json"
    if not score.is_file():
        model, cfg = load_run(pretrain)
        _write_score(score, {"run": "pretrained", **score_model(model, cfg.shift, data, test_clips, sample_steps)})
    real = Path(out) / "scores" / "real.json"
    if not real.is_file():
        clips = load_split(data, "test")[0][:test_clips].numpy()
        write_json(real, {"features": i3d_features(list(clips), FVDConfig())[0].tolist()})
    return "pretrained"


def summarize(out: Path, methods: list[Method], best: dict[str, float], seeds: int,
              ranks: tuple[int, ...]) -> dict[str, Any]:
    """Per method and per extracted rank: LPIPS and FVD over seeds; the floors."""
    real = np.asarray(read_json(out / "scores" / "real.json")["features"])
    n = len(real)
    owners = np.arange(n)

    def scored(names: list[str]) -> dict[str, Any]:
        recs = [read_json(out / "scores" / f"{nm}.json") for nm in names]
        return {"runs": names, "lpips": interval([statistics.fmean(r["lpips"]) for r in recs]),
                "fvd": interval([fvd_from_features(real, np.asarray(r["features"])) for r in recs]),
                "final_validation": [final_validation(out, nm) if (out / "runs" / nm).is_dir() else None
                                     for nm in names],
                "trainable_parameters": (load_artifact(out / "runs" / names[0], kind=KIND)["payload"]
                                         ["trainable_parameters"] if (out / "runs" / names[0]).is_dir() else None)}

    rows = {}
    for m in methods:
        rows[m.name] = {**asdict(m), "lr": best[m.name], **scored([run_name(m, best[m.name], s) for s in range(seeds)])}
    full = [run_name(methods[0], best["full"], s) for s in range(seeds)]
    extracted = {str(r): scored([f"extract-r{r}-{f}" for f in full]) for r in ranks}
    for r in ranks:
        totals = read_json(out / "scores" / f"extract-r{r}-{full[0]}.json")["totals"]
        extracted[str(r)]["retained_energy_of_targets"] = totals["retained_energy"][str(r)]
        extracted[str(r)]["retained_energy_of_all_changes"] = totals["retained_energy_of_all_changes"][str(r)]
    feats = [np.asarray(read_json(out / "scores" / f"{f}.json")["features"]) for f in full]
    seed_pairs = [fvd_from_features(feats[i], feats[j]) for i in range(len(feats)) for j in range(i + 1, len(feats))]
    return {"methods": rows, "extracted": extracted, "pretrained": scored(["pretrained"]),
            "floors": {"real_split_half_fvd": split_half_floor(real, owners),
                       "full_seed_to_seed_fvd": seed_pairs}}


def flop_share(config: dict[str, Any], latent: tuple[int, int, int], rank: int, targets: str, text_tokens: int,
               image_tokens: int) -> float:
    """Separate-branch FLOPs over the base forward's (runtime/flops.py), for `rank` on `targets` of a model of this
    config (built on the meta device: names and shapes only)."""
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    linears = linear_modules(model)
    branches = {n: LoraBranch(linears[n].in_features, linears[n].out_features, rank)
                for n in resolve_targets(model, targets)}
    return forward_flops(config, latent, lora=branches, mode="separate", text_tokens=text_tokens,
                         image_tokens=image_tokens)["lora_share"]


def measure_latency(out: Path, pretrain: str, data: str, methods: list[Method], best: dict[str, float],
                    rounds: int, batch: int) -> dict[str, Any]:
    """Eager forward of each seed-0 LoRA, separate, against the merged (= base) model, interleaved rounds."""
    torch.set_num_threads(2)
    base, cfg = load_run(pretrain)
    clips, motions = load_split(data, "test")
    clips, motions = clips[:batch], motions[:batch]
    fm = FlowMatching(base, cfg.shift)
    x = torch.randn(batch, 16, clips.shape[1], clips.shape[2] // 2, clips.shape[3] // 2,
                    generator=torch.Generator().manual_seed(0))
    s = torch.full((batch,), 0.5)
    calls = {"merged": base}
    for m in methods[1:]:
        run = out / "runs" / run_name(m, best[m.name], 0)
        calls[m.name] = apply_lora(copy.deepcopy(base), load_lora_file(run / WEIGHTS, base), "separate")

    def forward(model):
        fm.model = model
        with torch.no_grad():
            fm.velocity(x, s, clips, motions)

    fns = {label: (lambda mod=mod: forward(mod)) for label, mod in calls.items()}
    for f in fns.values():
        f()
    samples = time_rounds(fns, rounds, rotate=True)
    tokens = batch * clips.shape[1] * (clips.shape[2] // 4) * (clips.shape[3] // 4)
    result = {"batch": batch, "tokens": tokens, "rounds": rounds, "threads": 2, "rows": {}}
    wan = PRESETS["wan2.1-i2v-14b"]
    wan_latent = (21, 60, 104)  # 81 frames at 480x832 through the VAE's (4, 8, 8) stride: 32,760 tokens
    latent = (clips.shape[1], clips.shape[2] // 2, clips.shape[3] // 2)
    # the context the model reads (runtime/motion.FixedEmbeddings): 512 text tokens and 1 + (H/2)(W/2) image tokens
    text_tokens = fm.embeddings.text_tokens(motions[:1]).shape[1]
    image_tokens = fm.embeddings.image(clips[:1, 0]).shape[1]
    by_name = {m.name: m for m in methods}
    for label in calls:
        median = statistics.median(samples[label])
        row = {"median_ms": median * 1e3, "tokens_per_s": tokens / median}
        if label != "merged":
            ratios, (lo, hi), _ = ratio_ci(samples, label)
            m = by_name[label]
            row["separate_over_merged"] = {"mean": statistics.fmean(ratios), "ci95": [lo, hi]}
            row["flop_share"] = flop_share(dict(base.config), latent, m.rank, m.targets, text_tokens, image_tokens)
            row["flop_share_wan14b_480p"] = flop_share(dict(wan.config), wan_latent, m.rank, m.targets, 512, 257)
        result["rows"][label] = row
    return result


# ------------------------------------------------------------------------------------------------ report
def _fmt(iv: dict[str, Any], digits: int) -> str:
    if iv["ci95"] is None:
        return f"{iv['mean']:.{digits}f}"
    lo, hi = iv["ci95"]
    return f"{iv['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def report_md(result: dict[str, Any]) -> str:
    s, lat = result["summary"], result["latency"]
    lines = [f"# The rank question on a trained model (issue 22): `{result['command']}`", "",
             f"Machine: {result['cpu']['model']} ({', '.join(result['cpu']['isa']) or 'no listed ISA flags'}), "
             f"torch {torch.__version__}. Pretrained: `{result['pretrain']}`; downstream data: `{result['data']}`; "
             f"{result['steps']} steps per run, {result['seeds']} seeds, {result['test_clips']} test clips sampled "
             f"with {result['sample_steps']} Euler steps. Intervals: 95% over seeds (t). Latency: eager fp32, "
             f"{lat['threads']} threads, batch {lat['batch']} ({lat['tokens']} tokens), {lat['rounds']} interleaved "
             "rounds; separate/merged with a bootstrap 95% CI; merged = the base = the full fine-tune's cost.", "",
             "| method | trained params | lr | validation loss (seeds) | LPIPS | FVD | separate / merged "
             "| FLOP share: here, 14B 480p | tokens/s separate |", "|---|---|---|---|---|---|---|---|---|"]
    merged = lat["rows"]["merged"]
    for name, row in s["methods"].items():
        val = ", ".join(f"{v:.4f}" for v in row["final_validation"])
        lr = lat["rows"].get(name)
        ratio = (f"{lr['separate_over_merged']['mean']:.3f} [{lr['separate_over_merged']['ci95'][0]:.3f}, "
                 f"{lr['separate_over_merged']['ci95'][1]:.3f}]" if lr else "1 (no branch)")
        tps = f"{(lr or merged)['tokens_per_s']:.0f}"
        share = f"{lr['flop_share']:.1%}, {lr['flop_share_wan14b_480p']:.2%}" if lr else "0"
        lines.append(f"| {name} | {row['trainable_parameters']:,} | {row['lr']:g} | {val} | {_fmt(row['lpips'], 4)} "
                     f"| {_fmt(row['fvd'], 1)} | {ratio} | {share} | {tps} |")
    p = s["pretrained"]
    lines += [f"| pretrained, no fine-tune | 0 | | | {_fmt(p['lpips'], 4)} | {_fmt(p['fvd'], 1)} | 1 | 0 | "
              f"{merged['tokens_per_s']:.0f} |", "",
              "`wanrt extract` of the full fine-tunes (SVD on all targets, merged onto the pretrained weights):", "",
              "| rank | energy kept, of targets | of all changes | LPIPS | FVD |", "|---|---|---|---|---|"]
    for r, row in s["extracted"].items():
        lines.append(f"| {r} | {row['retained_energy_of_targets']:.3f} | {row['retained_energy_of_all_changes']:.3f} "
                     f"| {_fmt(row['lpips'], 4)} | {_fmt(row['fvd'], 1)} |")
    fl = s["floors"]
    pairs = ", ".join(f"{v:.1f}" for v in fl["full_seed_to_seed_fvd"]) or "(one seed)"
    lines += ["", f"Floors: FVD between the two halves of the real test clips {fl['real_split_half_fvd']:.1f}; "
              f"the full fine-tune's seed-to-seed FVD {pairs}.", ""]
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Pareto: FVD (mean, 95% CI over seeds) against separate/merged latency, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in result["summary"]["methods"].items():
        lat = result["latency"]["rows"].get(name, {}).get("separate_over_merged", {"mean": 1.0})["mean"]
        fvd, ci = row["fvd"]["mean"], row["fvd"]["ci95"]
        err = [[fvd - ci[0]], [ci[1] - fvd]] if ci else None
        ax.errorbar(lat, fvd, yerr=err, fmt="o" if row["method"] == "lora" else "s", capsize=3)
        ax.annotate(name, (lat, fvd), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("eager latency, separate / merged (trained model)")
    ax.set_ylabel("FVD to the real test clips (lower is better)")
    ax.set_title("Full fine-tune vs LoRA on the downstream motion task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the study
def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"{option} {text!r}: comma-separated integers", param=option) from None
    if not values or min(values) < 1:
        raise BadInputError(f"{option} {text!r}: positive integers", param=option)
    return values


def claim_out(out: Path, pretrain: dict[str, Any], data: dict[str, Any], opts: dict[str, Any]) -> None:
    """What the runs and scores under `out` are functions of: its pretrained weights and clips (by sha256), steps,
    test clips and sampling steps. A resume with other settings is refused, never mixed into the old results."""
    settings = {"pretrain": pretrain["contents"][WEIGHTS]["sha256"],
                "data": {name: f["sha256"] for name, f in sorted(data["contents"].items())},
                **{k: opts[k] for k in ("steps", "test_clips", "sample_steps")}}
    path = out / "study-settings.json"
    if path.is_file():
        held = read_json(path)
        if held != settings:
            changed = ", ".join(k for k in settings if held.get(k) != settings[k])
            raise BadInputError(f"-o {out}: holds a study with other {changed}; use another -o", param="out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def run_study(opts: dict[str, Any], say=print) -> dict[str, Any]:
    out = Path(opts["out"])
    pretrain = str(opts["pretrain"])
    pretrained = load_artifact(pretrain, kind=KIND)  # refuses a foreign or altered directory first
    specs = pretrained["specs"]
    if specs["method"] != "full":
        raise BadInputError(f"--pretrain {pretrain}: a full-weights run is needed", param="pretrain")
    check_conditioning(pretrained["payload"], f"--pretrain {pretrain}")  # before any job, not inside one
    load_split(opts["data"], "test"), load_split(opts["data"], "validation")
    ranks = _parse_ints(opts["ranks"], "--ranks")
    groups = tuple(g for g in opts["groups"].split(",") if g)
    methods = study_methods(ranks, opts["group_rank"], groups)
    claim_out(out, pretrained, load_artifact(opts["data"], kind=CLIPS_KIND), opts)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    common = dict(out=str(out), data=opts["data"], pretrain=pretrain, preset=specs["preset"], shift=specs["shift"],
                  steps=opts["steps"])
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(opts["jobs"], mp_context=ctx) as pool:
        def wait(futures):
            for f in futures:
                say(f"  done {f.result()} ({time.perf_counter() - t0:.0f} s)")

        say(f"1. learning rates: {len(methods)} methods x {len(LR_GRID['lora'])} rates, seed 0")
        wait([pool.submit(train_job, m=m, lr=lr, seed=0, **common) for m in methods for lr in LR_GRID[m.method]])
        best = {m.name: min(LR_GRID[m.method], key=lambda lr: final_validation(out, run_name(m, lr, 0)))
                for m in methods}
        say(f"2. seeds 1..{opts['seeds'] - 1} at the kept rates")
        wait([pool.submit(train_job, m=m, lr=best[m.name], seed=s, **common)
              for m in methods for s in range(1, opts["seeds"])])
        say("3. scores: the pretrained model, every kept run, the extractions of the full fine-tunes")
        scoring = dict(test_clips=opts["test_clips"], sample_steps=opts["sample_steps"])
        futures = [pool.submit(base_job, str(out), opts["data"], pretrain, **scoring)]
        futures += [pool.submit(extract_job, str(out), opts["data"], pretrain, run_name(methods[0], best["full"], s),
                                ranks, **scoring) for s in range(opts["seeds"])]
        futures += [pool.submit(score_job, str(out), opts["data"], run_name(m, best[m.name], s), **scoring)
                    for m in methods for s in range(opts["seeds"])]
        wait(futures)
    say("4. latency")
    latency = measure_latency(out, pretrain, opts["data"], methods, best, opts["latency_rounds"], 4)
    return {"command": command_line(), "cpu": cpu_info(),
            "platform": platform.platform(), "torch": torch.__version__, "pretrain": pretrain,
            "pretrain_specs": specs, "data": opts["data"], "steps": opts["steps"], "seeds": opts["seeds"],
            "test_clips": opts["test_clips"], "sample_steps": opts["sample_steps"], "lr_grid": LR_GRID,
            "lr_search": {m.name: {f"{lr:g}": final_validation(out, run_name(m, lr, 0)) for lr in LR_GRID[m.method]}
                          for m in methods},
            "best_lr": best, "latency": latency, "summary": summarize(out, methods, best, opts["seeds"], ranks),
            "seconds": time.perf_counter() - t0}


@click.command()
@click.option("--pretrain", required=True, type=click.Path(), help="the pretrained full-weights motion-train run")
@click.option("--data", required=True, type=click.Path(), help="the downstream motion-clips directory")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="work dir (runs/, scores/, report)")
@click.option("--ranks", default="4,8,16,64", show_default=True, help="LoRA ranks on all targets and on cross-attn")
@click.option("--groups", default="self-attn,ffn", show_default=True, help="other target groups, at --group-rank")
@click.option("--group-rank", type=int, default=16, show_default=True)
@click.option("--steps", type=int, default=150, show_default=True, help="training steps of every run")
@click.option("--seeds", type=click.IntRange(1, 6), default=3, show_default=True)
@click.option("--test-clips", type=click.IntRange(4, 4096), default=32, show_default=True)
@click.option("--sample-steps", type=click.IntRange(1, 200), default=12, show_default=True)
@click.option("--latency-rounds", type=click.IntRange(2, 10000), default=60, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="processes, one thread each")
def main(**opts):
    """Full fine-tune vs LoRA ranks on the downstream motion task: train, score, extract, time; write the report."""
    try:
        result = run_study(opts)
    except WanrtError as e:
        sys.exit(f"error: {e}")
    except BrokenProcessPool:  # a worker killed (a signal, the kernel's OOM killer): not bad input, and resumable
        sys.exit(f"error: a study worker died (killed, or out of memory); the finished runs under {opts['out']} are "
                 f"kept: rerun the same command to resume")
    out = Path(opts["out"])
    write_json(out / "motion-study.json", result)
    write_text_atomic(out / "motion-study.md", report_md(result))
    write_plot(result, out / "motion-study-pareto.png")
    print(f"wrote {out / 'motion-study.json'}, motion-study.md and motion-study-pareto.png")


if __name__ == "__main__":
    main()
