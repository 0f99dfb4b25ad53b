"""Video quality of a sweep point: each backend generates short videos with the tiny pipeline, compared per frame
(PSNR, SSIM, LPIPS) with eager fp32's, and FVD between the sets."""

from __future__ import annotations

from typing import Any

from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.runtime import metrics
from wanrt.runtime.bench.spec import BenchSpec, SweepPoint
from wanrt.runtime.generate import GenerateSpec, generate_video
from wanrt.runtime.pipeline import build_pipeline, install_backend
from wanrt.runtime.schedule import Schedule

DEFAULT_PROMPT = "a red fox trotting through fresh snow, soft morning light"

def bench_image(height: int, width: int, seed: int):
    """A deterministic conditioning image: smooth colour gradients plus seeded texture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 7.0)], -1)
    img = np.clip(img * 0.8 + 0.2 * rng.random((height, width, 3)), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8))


class VideoQuality:
    """Generate one short video per (point, backend) with the tiny pipeline and compare with eager fp32."""

    def __init__(self, spec: BenchSpec, shape):
        self.spec, self.shape = spec, shape
        self.gen_specs = [GenerateSpec(prompt=DEFAULT_PROMPT, frames=shape.frames, height=shape.height,
                                       width=shape.width, schedule=Schedule(steps=spec.video_steps, guidance=5.0),
                                       seed=spec.seed + i)
                          for i in range(spec.video_seeds)]
        self.image = bench_image(shape.height, shape.width, spec.seed)
        self.pipe = None
        self.refs: dict[str, list] = {}
        self.videos: dict[str, list] = {}  # backend -> videos over all points (FVD sets)
        self.ref_all: list = []
        self.lpips_note: str | None = None

    def _generate(self, backend) -> list:
        if self.pipe is None:
            self.pipe = build_pipeline(backend, seed=self.spec.seed)
        else:
            install_backend(self.pipe, backend)
        return [generate_video(backend, self.image, g, pipe=self.pipe)[0] for g in self.gen_specs]

    def reference(self, point: SweepPoint, backend) -> None:
        videos = self._generate(backend)
        self.refs[point.label] = videos
        self.ref_all += videos

    def compare(self, point: SweepPoint, name: str, backend) -> dict[str, Any]:
        videos = self._generate(backend)
        self.videos.setdefault(name, []).extend(videos)
        per_video = []
        for ref, gen in zip(self.refs[point.label], videos):
            per_video.append(self._frames(ref, gen))
        psnr = [p for v in per_video for p in v["psnr"]]
        ssim = [p for v in per_video for p in v["ssim"]]
        lp = [p for v in per_video for p in (v["lpips"] or [])]
        out: dict[str, Any] = {"videos": len(videos), "frames": self.shape.frames, "steps": self.spec.video_steps,
                               "psnr": psnr, "ssim": ssim, "lpips": lp or None,
                               "psnr_min": min(psnr), "ssim_min": min(ssim), "lpips_max": max(lp) if lp else None,
                               "lpips_note": self.lpips_note}
        out["failures"] = self.spec.gates.video_failures(out["psnr_min"], out["lpips_max"])
        return out

    def _frames(self, ref, gen) -> dict[str, Any]:
        if self.lpips_note is None:
            try:
                return metrics.compare_videos(ref, gen, lpips=True)
            except MissingDependencyError as e:
                self.lpips_note = f"LPIPS not available: {e}"
            except BadInputError as e:
                self.lpips_note = f"LPIPS not available: {e}"
        return metrics.compare_videos(ref, gen, lpips=False)

    def fvd_all(self) -> dict[str, Any]:
        """FVD of each backend's videos against eager's (same points and seeds), when I3D weights exist."""
        out: dict[str, Any] = {}
        if len(self.ref_all) < 2:
            return {"available": False, "reason": "FVD needs at least 2 videos per set (raise --video-seeds or "
                                                  "sweep more points)"}
        if self.shape.frames < 9:
            return {"available": False, "reason": f"FVD needs videos of at least 9 frames (have {self.shape.frames})"}

        config = metrics.FVDConfig(clip_len=min(16, self.shape.frames))
        for name, videos in self.videos.items():
            try:
                res = metrics.fvd(self.ref_all, videos, config)
                out[name] = {"fvd": res.fvd, "noise_floor": res.noise_floor, "floor_kind": res.floor_kind,
                             "n_videos": res.n_gen_videos}
            except (MissingDependencyError, BadInputError) as e:
                return {"available": False, "reason": f"FVD not available: {e}"}
        return {"available": True, "per_backend": out, "clip_len": config.clip_len}
