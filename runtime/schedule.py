"""Denoising schedules, declared and checked in one place for `wanrt generate`, `wanrt bench` and the serving API.

A schedule is a step count, optionally an explicit timestep list, a flow shift and a guidance scale. The timesteps
are the schedule *before* the shift, in (0, 1000], as lightx2v's `denoising_step_list` is and as diffusers' flow
schedulers take `sigmas` (sigma = t / 1000, then the scheduler applies its shift). Guidance <= 1 means no CFG:
diffusers' `do_classifier_free_guidance` is `guidance_scale > 1`, and without it WanImageToVideoPipeline makes one
transformer call per step; with it two (conditional, then unconditional), each at batch 1.

Torch-free: the serving ingress checks a request's schedule here before anything is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from wanrt.errors import BadInputError

NUM_TRAIN_TIMESTEPS = 1000  # Wan's flow schedulers: a timestep is sigma x 1000


@dataclass(frozen=True)
class Schedule:
    """A checked schedule. `timesteps` None: the scheduler's own spacing for `steps`; `shift` None: the scheduler's
    own flow shift (the tiny pipeline's is 3, a real pipeline's is in its scheduler config)."""

    steps: int
    guidance: float
    timesteps: tuple[float, ...] | None = None
    shift: float | None = None
    recipe: str | None = None  # the recipe it came from: a label for reports, never read to run

    def __post_init__(self):
        if self.timesteps is not None:  # JSON hands back a list; the frozen spec holds a tuple
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        check_schedule(self.steps, self.guidance, self.timesteps, self.shift, self.recipe)

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    @property
    def forwards_per_step(self) -> int:
        return 2 if self.cfg else 1

    @property
    def forwards(self) -> int:
        """Transformer calls of one video, each at batch 1."""
        return self.steps * self.forwards_per_step

    @property
    def sigmas(self) -> list[float] | None:
        """The explicit timesteps as the unshifted flow sigmas a diffusers flow scheduler's `set_timesteps` takes."""
        return None if self.timesteps is None else [t / NUM_TRAIN_TIMESTEPS for t in self.timesteps]

    def describe(self) -> str:
        """'4 steps, no CFG, timesteps 1000,750,500,250, shift 5 (recipe distill-4step)'."""
        parts = [f"{self.steps} step{'s' if self.steps != 1 else ''}",
                 f"CFG {self.guidance:g}" if self.cfg else "no CFG"]
        if self.timesteps is not None:
            parts.append("timesteps " + ",".join(f"{t:g}" for t in self.timesteps))
        if self.shift is not None:
            parts.append(f"shift {self.shift:g}")
        return ", ".join(parts) + (f" (recipe {self.recipe})" if self.recipe else "")

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "guidance": self.guidance, "cfg": self.cfg, "forwards": self.forwards,
                "timesteps": None if self.timesteps is None else list(self.timesteps), "shift": self.shift,
                "recipe": self.recipe}


def check_schedule(steps: Any, guidance: Any, timesteps: Sequence[Any] | None, shift: Any,
                   recipe_name: str | None = None, prefix: str = "") -> None:
    """Every rule of a schedule, each refusal one line whose `param` names the field (steps, timesteps, shift,
    guidance) and whose text names it as the caller spells it (`prefix` "--" for flags, "" for request fields)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BadInputError(f"{prefix}steps {steps!r}: must be an integer of at least 1", param="steps")
    if not _finite(guidance):
        raise BadInputError(f"{prefix}guidance {guidance!r}: must be a finite number", param="guidance")
    if shift is not None and not (_finite(shift) and shift > 0):
        raise BadInputError(f"{prefix}shift {shift!r}: must be a finite number above 0", param="shift")
    if timesteps is None:
        return
    what = f"{prefix}timesteps" + (f" (recipe {recipe_name})" if recipe_name else "")
    if not timesteps:
        raise BadInputError(f"{what} is empty", param="timesteps")
    for t in timesteps:
        if not _finite(t) or not 0 < t <= NUM_TRAIN_TIMESTEPS:
            raise BadInputError(f"{what}: {t!r} is outside (0, {NUM_TRAIN_TIMESTEPS}]", param="timesteps")
    for a, b in zip(timesteps, timesteps[1:]):
        if not b < a:
            raise BadInputError(f"{what} {_text(timesteps)}: must be strictly decreasing ({b:g} after {a:g})",
                                param="timesteps")
    if len(timesteps) != steps:
        raise BadInputError(f"{prefix}steps {steps} disagrees with {what} {_text(timesteps)} ({len(timesteps)} "
                            "values)", param="steps")


@dataclass(frozen=True)
class Recipe:
    """A named schedule: what a user types one flag for."""

    name: str
    steps: int
    guidance: float
    about: str
    timesteps: tuple[float, ...] | None = None
    shift: float | None = None

    def schedule(self) -> Schedule:
        return Schedule(steps=self.steps, guidance=self.guidance, timesteps=self.timesteps, shift=self.shift,
                        recipe=self.name)


RECIPES = {r.name: r for r in (
    # lightx2v's step-distill LoRAs / models for Wan2.1 I2V (configs/distill/wan21/wan_i2v_distill_lora_4step_cfg.json:
    # denoising_step_list [1000, 750, 500, 250], sample_shift 5, enable_cfg false)
    Recipe("distill-4step", steps=4, guidance=1.0, timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0,
           about="a step-distill LoRA (lightx2v): 4 steps at timesteps 1000,750,500,250, shift 5, no CFG"),
    # Wan2.1 I2V as its paper runs it (sample_steps 40, sample_guide_scale 5); the shift stays the pipeline's
    Recipe("wan-40step-cfg", steps=40, guidance=5.0,
           about="Wan2.1 as released: 40 steps with CFG 5 (two forwards a step), the pipeline's shift"),
)}


def recipe(name: str, prefix: str = "") -> Recipe:
    if name not in RECIPES:
        raise BadInputError(f"{prefix}recipe {name!r}: choose from {', '.join(RECIPES)}", param="recipe")
    return RECIPES[name]


def parse_timesteps(value: str | Sequence[Any], max_count: int | None = None, prefix: str = "") -> tuple[float, ...]:
    """'1000,750,500,250' (a flag, a form field) or a JSON list of numbers -> floats, checked by the Schedule.
    `max_count` bounds the list before any value is converted (the server's step limit)."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise BadInputError(f"{prefix}timesteps must be a list of numbers like 1000,750,500,250", param="timesteps")
    if not items:
        raise BadInputError(f"{prefix}timesteps is empty", param="timesteps")
    if max_count is not None and len(items) > max_count:
        raise BadInputError(f"{prefix}timesteps has {len(items)} values; the limit is {max_count} steps",
                            param="timesteps")
    out = []
    for v in items:
        try:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError
            out.append(float(v))
        except ValueError:
            raise BadInputError(f"{prefix}timesteps: {str(v)[:40]!r} is not a number", param="timesteps") from None
    return tuple(out)


def resolve_schedule(*, steps: int | None = None, timesteps: str | Sequence[Any] | None = None,
                     shift: float | None = None, guidance: float | None = None, no_cfg: bool = False,
                     recipe_name: str | None = None, default_steps: int, default_guidance: float,
                     max_steps: int | None = None, prefix: str = "") -> Schedule:
    """The schedule a command or request asks for. A recipe fills what is not given; a value given wins, and the
    result is checked as a whole (so `--recipe distill-4step --steps 8` is refused: 8 steps, 4 timesteps).
    `no_cfg` (the CLI's --no-cfg) is guidance 1; with a guidance above 1 as well, the two disagree and are refused.
    `prefix` spells the fields in refusals: "--" for flags, "" for request fields."""
    base = recipe(recipe_name, prefix) if recipe_name else None
    if no_cfg and guidance is not None and guidance > 1.0:
        raise BadInputError(f"--no-cfg disagrees with --guidance {guidance:g} (no CFG is guidance <= 1)",
                            param="guidance")
    ts = parse_timesteps(timesteps, max_steps, prefix) if timesteps is not None else base.timesteps if base else None
    from_recipe = base is not None and timesteps is None and ts is not None
    if guidance is None:
        guidance = 1.0 if no_cfg else base.guidance if base else default_guidance
    if steps is None:
        steps = len(ts) if ts is not None else base.steps if base else default_steps
    if max_steps is not None and steps > max_steps:
        raise BadInputError(f"{prefix}steps {steps} is over this server's limit {max_steps}", param="steps")
    shift = shift if shift is not None else base.shift if base else None
    check_schedule(steps, guidance, ts, shift, recipe_name if from_recipe else None, prefix)
    return Schedule(steps=steps, guidance=guidance, timesteps=ts, shift=shift, recipe=recipe_name)


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _text(ts: Sequence[float]) -> str:
    shown = ",".join(f"{t:g}" for t in ts[:8])
    return shown + (",..." if len(ts) > 8 else "")
