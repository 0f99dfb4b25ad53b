"""Parsers of the compact argument forms that commands and tools share (rank lists, FxHxW shapes): torch-free
core, so a tool's argument parsing never imports the command layer."""

from __future__ import annotations

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
