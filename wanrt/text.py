"""Text a user hands wanrt (prompts, names, request keys): the one rule for what is accepted, checked before anything
is stored or run. Text that passes encodes to UTF-8 and back unchanged, so every later writer (SQLite, JSON
responses, logs, a terminal) takes it as is: valid UTF-8, no lone surrogates (JSON's "\\ud800" decodes to one, and
it cannot be encoded again), no control characters but tab and newlines, a bound on its UTF-8 bytes.
"""

from __future__ import annotations

import re

from wanrt.errors import BadInputError

MAX_PROMPT_BYTES = 4096  # UTF-8 bytes of a prompt or negative prompt, on the command line and over HTTP

# Unicode's Cc (C0, DEL, C1) except tab, LF and CR (browsers send a textarea's newlines as CRLF)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NEWLINE = re.compile(r"[\r\n]")


def text_problem(value: str | bytes, max_bytes: int, multiline: bool = True) -> tuple[str | None, str]:
    """(what is wrong or None, the value as str). Bytes are decoded as strict UTF-8 (which refuses encoded
    surrogates too); a str is checked for lone surrogates."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > max_bytes:
            return f"is {len(value)} bytes; the limit is {max_bytes}", ""
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return f"is not valid UTF-8 (byte {e.start})", ""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        return f"contains a lone surrogate (U+{ord(value[e.start]):04X} at character {e.start})", value
    if size > max_bytes:
        return f"is {size} bytes; the limit is {max_bytes}", value
    bad = _CONTROL.search(value) or (None if multiline else _NEWLINE.search(value))
    if bad is not None:
        return f"contains control character U+{ord(bad.group()):04X} at character {bad.start()}", value
    return None, value


def check_text(value: str | bytes, what: str, max_bytes: int, multiline: bool = True) -> str:
    """`value` as str when it is acceptable text, else one BadInputError line naming `what`."""
    problem, text = text_problem(value, max_bytes, multiline)
    if problem is not None:
        raise BadInputError(f"{what} {problem}")
    return text


def printable(value: str, limit: int = 64) -> str:
    """`value` cut to `limit` characters with anything unprintable escaped: safe to echo in an error message."""
    return value[:limit].encode("ascii", "backslashreplace").decode("ascii") if not value[:limit].isprintable() \
        else value[:limit]
