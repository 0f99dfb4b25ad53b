"""The Wan2.1 VAE decoder through ORT and OpenVINO against diffusers' eager decode, on the real geometry (issue 21).

    python -m wanrt.tools.bench_vae -o docs/results        # ~10 min on 2 cores
    python -m wanrt.tools.bench_vae -o docs/results --rss-only --rss-shape 2x60x104   # 480x832: ~15 GB untiled

`AutoencoderKLWan()`'s default config is the real Wan2.1 VAE (base_dim 96, z_dim 16; seeded weights). Parity: every
frame's PSNR (on [0, 1]) and max |out - ref| / max |ref| against `vae.decode(latents)` fp32; speed: one timed decode
per backend after a warm-up chunk (2 shared cores: single runs, same shape, same process). Peak RSS: each decode in a
fresh child process (VmHWM reset after the sessions are built, so their transient build peak is apart), untiled and
with diffusers' default tiles (256 px, stride 192) through the same chunk graphs; RSS after loading beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanrt.artifacts import command_line, library_versions, machine_info, write_json
from wanrt.engines.sessions import stage_backends
from wanrt.engines.vae import TileSpec, VaeDecoder
from wanrt.export.vae import export_vae_decoder
from wanrt.runtime.metrics.frames import psnr

PSNR_GATE_DB = 35.0
REL_ERR_GATE = 1e-3  # fp32 re-ordering of the same arithmetic; measured ~1e-5


def wan21_vae(seed: int = 0, **config):
    from diffusers import AutoencoderKLWan  # lazy: diffusers is heavy and only this tool needs it

    torch.manual_seed(seed)
    return AutoencoderKLWan(**config).eval()


def latents(z_dim: int, frames: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, z_dim, frames, h, w, generator=g).numpy()


def parity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Min frame PSNR (dB, [-1, 1] video mapped to [0, 1]) and max |out - ref| / max |ref| over one sample."""
    def frames(v):
        return np.clip((v[0].transpose(1, 2, 3, 0) + 1) / 2, 0, 1)
    per_frame = psnr(frames(ref), frames(out))
    return {"psnr_min_db": min(per_frame), "rel_err": float(np.abs(out - ref).max() / np.abs(ref).max())}


def _timed(fn) -> tuple[Any, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def run_parity(vae, export_dir: Path, shape: tuple[int, int, int], threads: int | None) -> list[dict[str, Any]]:
    z = latents(vae.config.z_dim, *shape)
    with torch.no_grad():
        vae.decode(torch.from_numpy(z[:, :, :1, :4, :4]))  # warm-up
        ref, eager_s = _timed(lambda: vae.decode(torch.from_numpy(z)).sample.numpy())
    rows = [{"backend": "eager (diffusers, fp32)", "seconds": eager_s, "psnr_min_db": None, "rel_err": None}]
    for backend in stage_backends():
        dec = VaeDecoder(export_dir, backend, threads)
        dec.decode(z[:, :, :1, :4, :4])
        out, s = _timed(lambda dec=dec: dec.decode(z))
        q = parity(ref, out)
        rows.append({"backend": f"{backend} fp32", "seconds": s, "speedup_vs_eager": eager_s / s, **q,
                     "gate": q["psnr_min_db"] >= PSNR_GATE_DB and q["rel_err"] <= REL_ERR_GATE})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(export_dir: str, backend: str, tiled: bool, shape: list[int]) -> dict[str, Any]:
    """Peak RSS of one decode: the high-water mark is reset after loading (clear_refs 5), so session building's
    transient peak does not hide the decode's. Not ru_maxrss: a forked child inherits the parent's (the eager VAE's)
    high-water mark in it."""
    dec = VaeDecoder(export_dir, backend)
    z = latents(dec.z_dim, *shape)
    load_peak = _status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    loaded = _status_mib("VmRSS")
    _, s = _timed(lambda: dec.decode(z, tile=TileSpec() if tiled else None))
    return {"backend": backend, "tiled": tiled, "latent_fhw": shape, "load_peak_rss_mib": load_peak,
            "rss_after_load_mib": loaded, "decode_peak_rss_mib": _status_mib("VmHWM"), "seconds": s}


def run_rss(export_dir: Path, backend: str, shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    rows = []
    for tiled in (False, True):
        cmd = [sys.executable, "-m", "wanrt.tools.bench_vae", "--rss-child", json.dumps(
            {"export_dir": str(export_dir), "backend": backend, "tiled": tiled, "shape": list(shape)})]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:  # killed for memory, most likely: recorded, not fatal to the other variant
            rows.append({"backend": backend, "tiled": tiled, "latent_fhw": list(shape), "returncode": r.returncode,
                         "error": (r.stderr.strip().splitlines() or ["(no output)"])[-1]})
        else:
            rows.append(json.loads(r.stdout))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--parity-shape", default="2x16x16", help="latent FxHxW for parity and speed")
    ap.add_argument("--rss-shape", default="2x40x40", help="latent FxHxW for peak RSS, untiled vs tiled")
    ap.add_argument("--rss-backend", default="ort", choices=stage_backends())
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rss-only", action="store_true", help="skip parity and speed; write vae-rss-FxHxW-cpu.json")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        a = json.loads(args.rss_child)
        print(json.dumps(rss_child(a["export_dir"], a["backend"], a["tiled"], a["shape"])))
        return 0
    pshape = tuple(int(x) for x in args.parity_shape.split("x"))
    rshape = tuple(int(x) for x in args.rss_shape.split("x"))
    vae = wan21_vae()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir, _ = export_vae_decoder(vae, Path(tmp) / "vae", latent_hw=(8, 8))
        result = {"command": command_line(), "machine": machine_info(), "versions": library_versions(),
                  "vae": "AutoencoderKLWan() default config = Wan2.1 VAE geometry, seeded weights (seed 0)",
                  "decoder_params_m": sum(p.numel() for p in vae.decoder.parameters()) / 1e6}
        if not args.rss_only:
            result.update(gates={"psnr_min_db": PSNR_GATE_DB, "rel_err": REL_ERR_GATE}, parity_latent_fhw=list(pshape),
                          parity=run_parity(vae, export_dir, pshape, args.threads))
        del vae
        result["rss_latent_fhw"] = list(rshape)
        result["rss"] = run_rss(export_dir, args.rss_backend, rshape)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"vae-rss-{args.rss_shape}-cpu.json" if args.rss_only else "vae-decode-cpu.json"
    write_json(args.out / name, result)
    print(json.dumps(result.get("parity") or result["rss"], indent=1))
    return 0 if all(r.get("gate", True) for r in result.get("parity", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
