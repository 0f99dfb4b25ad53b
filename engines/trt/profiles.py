"""Optimization profiles from named shape presets or explicit min/opt/max, in the video terms users think in.

A profile is min/opt/max of batch (CFG runs 2), pixel frames (4k+1), height and width (multiples of 16); it becomes
TensorRT min/opt/max shapes per graph input: latents [B, C, F, H, W] in latent units, timestep [B], text [B, 512, D],
image [B, 257, D]. Profiles are checked against the ONNX export's own range before any build starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from wanrt.dit_io import VAE_STRIDE

from wanrt.errors import BadInputError

Triple = tuple[int, int, int]

# name -> (height, width); frames and batch come from --frames / --batch
SHAPE_PRESETS: dict[str, tuple[int, int]] = {
    "480p": (480, 832),
    "480p-portrait": (832, 480),
    "720p": (720, 1280),
    "720p-portrait": (1280, 720),
}
DEFAULT_FRAMES = (17, 81, 81)  # --frames 17..81, opt at 81 (Wan's default clip)
DEFAULT_BATCH = (1, 2, 2)  # CFG: conditional + unconditional in one call


def _triple(lo: int, opt: int, hi: int, what: str) -> Triple:
    if not lo <= opt <= hi:
        raise BadInputError(f"{what}: need min <= opt <= max, got {lo}, {opt}, {hi}")
    return (lo, opt, hi)


def parse_range(text: str | int | Sequence[int], what: str) -> Triple:
    """'17..81' (opt = max), '17..49..81', '81' (fixed), or a sequence of 1-3 ints."""
    if isinstance(text, int):
        return (text, text, text)
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", "").split("..")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise BadInputError(f"{what} {text!r}: expected N, MIN..MAX or MIN..OPT..MAX") from None
    else:
        values = [int(v) for v in text]
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 2:
        return _triple(values[0], values[1], values[1], what)
    if len(values) == 3:
        return _triple(values[0], values[1], values[2], what)
    raise BadInputError(f"{what} {text!r}: expected N, MIN..MAX or MIN..OPT..MAX")


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile in pixel space (min, opt, max) per axis."""

    name: str
    batch: Triple = DEFAULT_BATCH
    frames: Triple = DEFAULT_FRAMES
    height: Triple = (480, 480, 480)
    width: Triple = (832, 832, 832)

    def __post_init__(self):
        for axis in ("batch", "frames", "height", "width"):
            lo, opt, hi = getattr(self, axis)
            _triple(lo, opt, hi, f"profile {self.name} {axis}")
        for v in self.frames:
            if v < 1 or (v - 1) % VAE_STRIDE[0]:
                raise BadInputError(f"profile {self.name}: frames {v} must be 4k+1 (1, 5, ..., 81)")
        for axis in ("height", "width"):
            for v in getattr(self, axis):
                if v < 16 or v % 16:
                    raise BadInputError(f"profile {self.name}: {axis} {v} must be a positive multiple of 16")
        if self.batch[0] < 1:
            raise BadInputError(f"profile {self.name}: batch must be >= 1")

    # --------------------------------------------------------------------- latent space
    @staticmethod
    def latent_frames(frames: int) -> int:
        return (frames - 1) // VAE_STRIDE[0] + 1

    def latent(self) -> dict[str, Triple]:
        return {"F": tuple(self.latent_frames(f) for f in self.frames),
                "H": tuple(h // VAE_STRIDE[1] for h in self.height),
                "W": tuple(w // VAE_STRIDE[2] for w in self.width)}

    def input_shapes(self, templates: dict[str, Sequence[int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """{input: (min, opt, max)} from the network's input shapes (-1 = dynamic). `latents` gets [B, C, F, H, W];
        every other input has its batch at axis 0 and static remaining axes."""
        lat = self.latent()
        out = {}
        for name, template in templates.items():
            shapes = []
            for i in range(3):
                dims = list(template)
                if name == "latents":
                    dims[0], dims[2], dims[3], dims[4] = self.batch[i], lat["F"][i], lat["H"][i], lat["W"][i]
                else:
                    dims[0] = self.batch[i]
                if any(d < 0 for d in dims):
                    raise BadInputError(f"input {name} {list(template)} has dynamic axes besides batch; "
                                        f"wanrt profiles only know the Wan inputs")
                shapes.append(tuple(int(d) for d in dims))
            out[name] = tuple(shapes)
        return out

    def contains(self, batch: int, latent_fhw: tuple[int, int, int]) -> bool:
        lat = self.latent()
        if not self.batch[0] <= batch <= self.batch[2]:
            return False
        return all(lat[a][0] <= v <= lat[a][2] for a, v in zip("FHW", latent_fhw))

    def describe(self) -> str:
        def r(t):
            return str(t[0]) if t[0] == t[2] else f"{t[0]}..{t[2]} (opt {t[1]})"
        return (f"{self.name}: batch {r(self.batch)}, frames {r(self.frames)}, height {r(self.height)}, "
                f"width {r(self.width)}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "batch": list(self.batch), "frames": list(self.frames),
                "height": list(self.height), "width": list(self.width),
                "latent": {k: list(v) for k, v in self.latent().items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProfileSpec:
        return cls(d["name"], tuple(d["batch"]), tuple(d["frames"]), tuple(d["height"]), tuple(d["width"]))


def export_profile(shape_ranges: dict[str, Any]) -> ProfileSpec:
    """The whole range an ONNX export accepts (its manifest's shape_ranges), opt at the maximum."""
    lo, hi = shape_ranges["min"], shape_ranges["max"]
    b = shape_ranges.get("batch", [1, 2])
    return ProfileSpec("export", batch=(b[0], b[1], b[1]), frames=(lo["frames"], hi["frames"], hi["frames"]),
                       height=(lo["height"], hi["height"], hi["height"]), width=(lo["width"], hi["width"], hi["width"]))


def _parse_explicit(text: str, name: str, batch: Triple | None) -> ProfileSpec:
    """'MIN:OPT:MAX' with each 'BxFRAMESxHxW' (or 'FRAMESxHxW', batch from --batch); one shape = fixed."""
    parts = text.split(":")
    if len(parts) not in (1, 3):
        raise BadInputError(f"--profile {text!r}: expected a preset ({', '.join(SHAPE_PRESETS)}, export) or "
                            f"MIN:OPT:MAX with each BxFRAMESxHxW")
    if len(parts) == 1:
        parts = parts * 3
    dims = []
    for p in parts:
        try:
            values = [int(v) for v in p.lower().split("x")]
        except ValueError:
            raise BadInputError(f"--profile {text!r}: {p!r} is not BxFRAMESxHxW") from None
        if len(values) == 3:
            values = [None, *values]
        if len(values) != 4:
            raise BadInputError(f"--profile {text!r}: {p!r} is not BxFRAMESxHxW")
        dims.append(values)
    cols = list(zip(*dims))
    bt = (batch or DEFAULT_BATCH) if cols[0][0] is None else tuple(cols[0])
    return ProfileSpec(name, batch=bt, frames=tuple(cols[1]), height=tuple(cols[2]), width=tuple(cols[3]))


def resolve_profiles(names: Iterable[str], frames: str | None = None, batch: str | None = None,
                     shape_ranges: dict[str, Any] | None = None) -> tuple[ProfileSpec, ...]:
    """CLI words -> ProfileSpecs. `names`: presets (480p, 720p, ...), `export` (the ONNX's range) or explicit
    MIN:OPT:MAX; empty: `export` if shape_ranges is known, else 480p. --frames/--batch apply to presets."""
    frames_t = parse_range(frames, "--frames") if frames else None
    batch_t = parse_range(batch, "--batch") if batch else None
    names = list(names) or (["export"] if shape_ranges else ["480p"])
    out = []
    for i, name in enumerate(names):
        if name in SHAPE_PRESETS:
            h, w = SHAPE_PRESETS[name]
            spec = ProfileSpec(name, batch=batch_t or DEFAULT_BATCH, frames=frames_t or DEFAULT_FRAMES,
                               height=(h, h, h), width=(w, w, w))
        elif name == "export":
            if shape_ranges is None:
                raise BadInputError("--profile export needs the ONNX manifest's shape range")
            spec = export_profile(shape_ranges)
            if frames_t or batch_t:
                spec = ProfileSpec("export", batch=batch_t or spec.batch, frames=frames_t or spec.frames,
                                   height=spec.height, width=spec.width)
        else:
            spec = _parse_explicit(name, f"custom{i}", batch_t)
        out.append(spec)
    names_seen = [p.name for p in out]
    if len(set(names_seen)) != len(names_seen):
        raise BadInputError(f"--profile given twice: {', '.join(names_seen)}")
    return tuple(out)


def check_against_export(profiles: Sequence[ProfileSpec], shape_ranges: dict[str, Any]) -> None:
    """BadInputError when a profile asks for shapes the ONNX was not exported for."""
    lo, hi = shape_ranges["min"], shape_ranges["max"]
    bmax = shape_ranges.get("batch", [1, 2])[1]
    for p in profiles:
        if p.batch[2] > bmax:
            raise BadInputError(f"profile {p.describe()}: batch up to {p.batch[2]}, the ONNX accepts 1..{bmax}")
        for axis in ("frames", "height", "width"):
            t = getattr(p, axis)
            if t[0] < lo[axis] or t[2] > hi[axis]:
                raise BadInputError(f"profile {p.name}: {axis} {t[0]}..{t[2]} is outside the ONNX export's range "
                                    f"{lo[axis]}..{hi[axis]} (re-export with --min-shape/--max-shape)")


def select_profile(profiles: Sequence[ProfileSpec], batch: int, latent_fhw: tuple[int, int, int]) -> int:
    """Index of the first profile that holds the shape; BadInputError listing the allowed ranges otherwise."""
    for i, p in enumerate(profiles):
        if p.contains(batch, latent_fhw):
            return i
    f, h, w = latent_fhw
    allowed = "; ".join(
        f"{p.describe()} [latent F {p.latent()['F'][0]}..{p.latent()['F'][2]}, H {p.latent()['H'][0]}.."
        f"{p.latent()['H'][2]}, W {p.latent()['W'][0]}..{p.latent()['W'][2]}]" for p in profiles)
    raise BadInputError(f"input batch {batch}, latent F x H x W {f}x{h}x{w} is outside this engine's profiles: "
                        f"{allowed}")
