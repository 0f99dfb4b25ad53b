"""Parsers of the compact argument forms that commands and tools share (rank lists, FxHxW shapes, LoRA entries):
torch-free core, so a tool's argument parsing never imports the command layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from wanrt.choices import Expert
from wanrt.errors import BadInputError
from wanrt.io_contract import VideoShape, parse_video_shape


def parse_int_list(text: str | None, what: str = "--rank") -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{what} {text!r}: expected an integer or a comma list like 4,8,16") from None
    if not values:
        raise BadInputError(f"{what} is empty")
    for v in values:
        if v <= 0:
            raise BadInputError(f"{what} {v}: must be a positive integer")
    return values


def parse_shape(text: str | None, what: str) -> VideoShape | None:
    """'FRAMESxHEIGHTxWIDTH' in pixels, e.g. 81x480x832."""
    return None if text is None else parse_video_shape(text, what)


SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA of a stack: a file (or peft directory), or a seeded synthetic LoRA of `rank`, at a strength.

    Written `FILE[:STRENGTH]` or `synthetic:RANK[:STRENGTH]` on the command line; a strength multiplies the LoRA's
    own scale (alpha / r), as diffusers' `set_adapters(adapter_weights=...)` and ComfyUI's strength do. A `high:` or
    `low:` prefix gives it to one of Wan2.2's experts (`expert`); without one it goes to every expert."""

    file: str | None = None
    rank: int | None = None
    strength: float | None = 1.0  # None: not given on the command line (the command's default applies)
    expert: str | None = None  # wanrt.choices.Expert; None: every expert (or the one transformer)

    def __post_init__(self):
        if (self.file is None) == (self.rank is None):
            raise BadInputError("a LoRA entry is a file or a synthetic rank, exactly one")
        if self.strength is not None and not math.isfinite(self.strength):
            raise BadInputError(f"LoRA strength {self.strength!r}: must be a finite number")
        if self.expert is not None:
            Expert.parse(self.expert, "LoRA expert")

    @property
    def label(self) -> str:
        """What the entry is called in tables, manifests and request errors."""
        return f"{SYNTHETIC_PREFIX}{self.rank}" if self.file is None else Path(self.file).stem

    def __str__(self) -> str:
        prefix = f"{self.expert}:" if self.expert else ""
        return f"{prefix}{self.label if self.file is None else self.file}:{self.strength}"


def parse_lora_entry(text: str, what: str = "--lora", default_strength: float | None = 1.0) -> LoraEntry:
    """`[EXPERT:]FILE[:STRENGTH]` or `[EXPERT:]synthetic:RANK[:STRENGTH]`, EXPERT `high` or `low`. The strength is
    the text after the last ':' when it reads as a number, so a path that contains ':' still works."""
    text = str(text)
    expert = next((e for e in Expert.values() if text.startswith(f"{e}:")), None)
    if expert is not None:
        text = text[len(expert) + 1:]
    head, sep, tail = text.rpartition(":")
    strength = default_strength
    if sep and head and head + sep != SYNTHETIC_PREFIX and _is_float(tail):
        text, strength = head, float(tail)
    if text.startswith(SYNTHETIC_PREFIX):
        rank = text[len(SYNTHETIC_PREFIX):]
        if not rank.isdigit() or int(rank) <= 0:
            raise BadInputError(f"{what} {text!r}: synthetic:RANK takes a positive integer rank")
        return LoraEntry(rank=int(rank), strength=strength, expert=expert)
    if not text:
        raise BadInputError(f"{what} is empty")
    return LoraEntry(file=text, strength=strength, expert=expert)


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
