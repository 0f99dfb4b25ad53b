"""POST /v1/videos bodies -> (fields, image bytes), every name and text value checked by wanrt.text's rule.

Multipart (what the openai client sends) is parsed here from the raw bytes with python-multipart's parser instead of
Starlette's form reader, which decodes a field that is not valid UTF-8 as Latin-1 (a garbled prompt accepted and
run): a field's name and value are decoded as strict UTF-8 or refused with a 400 naming the field. A LoRA stack
(`loras`) comes in a form as the openai client spells a list of objects (`loras[][name]`, `loras[][scale]`) or as
one field holding JSON text; requests.parse_loras checks it either way. JSON bodies are
checked in `validate.parse_json_object` (every key and string value at any depth). The body itself is already
bounded in size and time by the app's Guard.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from starlette.requests import Request
from wanrt.runtime.serving.limits import ApiError, Limits, bad_request
from wanrt.runtime.serving.requests import parse_json_object

from wanrt.errors import BadInputError
from wanrt.text import check_text, printable

MAX_FORM_FIELDS = 32
STACK_PART = re.compile(r"loras\[\]\[(name|scale|expert)\]")  # the openai client's form spelling of a list of objects


def _image_from_json(value: Any) -> bytes:
    """JSON bodies carry the image as a data URL (or {"image_url": data URL}); nothing is fetched from the
    network."""
    if isinstance(value, dict):
        value = value.get("image_url")
    if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value[:64]:
        raise bad_request("input_reference in a JSON body must be a data:image/...;base64 URL (or upload it as "
                          "multipart); URLs are not fetched", "input_reference", "invalid_image")
    try:
        return base64.b64decode(value.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("input_reference: invalid base64", "input_reference", "invalid_image") from None


def _text(raw: bytes, what: str, param: str | None, max_bytes: int, multiline: bool = True) -> str:
    try:
        return check_text(raw, what, max_bytes, multiline)
    except BadInputError as e:
        raise bad_request(str(e), param, "invalid_text") from None


def parse_multipart(body: bytes, content_type: str, limits: Limits) -> list[tuple[str, str | bytes, bool]]:
    """[(name, value, is_file)]: text fields as checked str, file parts as bytes (at most one, bounded by
    max_image_bytes + 1 so the image check can say how far over it is)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("invalid multipart body: no boundary in Content-Type", None, "invalid_multipart")
    parts: list[dict[str, Any]] = []
    header = [b"", b""]

    def on_part_begin():
        if len(parts) >= MAX_FORM_FIELDS:
            raise bad_request(f"invalid multipart body: more than {MAX_FORM_FIELDS} parts", None, "invalid_multipart")
        parts.append({"disposition": b"", "data": bytearray()})

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        if header[0].lower() == b"content-disposition":
            parts[-1]["disposition"] = header[1]
        header[0] = header[1] = b""

    def on_part_data(data, start, end):
        part = parts[-1]
        part["data"] += data[start:end]
        if len(part["data"]) > limits.max_image_bytes + 1:
            raise ApiError(413, f"a multipart part exceeds {limits.max_image_bytes} bytes", code="body_too_large")

    try:  # the constructor refuses a boundary over 256 bytes: the same malformed body
        parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                            "on_header_value": on_header_value, "on_header_end": on_header_end,
                                            "on_part_data": on_part_data})
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise bad_request(f"invalid multipart body: {str(e)[:120]}", None, "invalid_multipart") from None
    out = []
    for part in parts:
        _, options = parse_options_header(part["disposition"])
        if b"name" not in options:
            raise bad_request("invalid multipart body: a part has no Content-Disposition name", None,
                              "invalid_multipart")
        raw_name = options[b"name"]
        name = _text(raw_name, "form field name", raw_name[:64].decode("utf-8", "backslashreplace"),
                     limits.max_key_bytes, multiline=False)
        if b"filename" in options:
            out.append((name, bytes(part["data"]), True))
        else:
            out.append((name, _text(bytes(part["data"]), name, name, limits.max_body_bytes), False))
    return out


def multipart_stack(parts: dict[str, list[str]]) -> list[dict[str, str]]:
    """`loras` as the openai client sends a list of objects in a form: `loras[][name]` once per entry, then
    `loras[][scale]` (and `loras[][expert]`) once per entry, paired by position. Scales or experts left out of some
    entries cannot be paired."""
    names = parts["name"]
    for key in ("scale", "expert"):
        if parts[key] and len(parts[key]) != len(names):
            raise bad_request(f"loras: the form gives {len(names)} names and {len(parts[key])} {key}s; give every "
                              f"entry a {key}, or send loras as one JSON field", "loras")
    return [{"name": n, **{k: parts[k][i] for k in ("scale", "expert") if parts[k]}} for i, n in enumerate(names)]


async def read_video_body(request: Request, limits: Limits) -> tuple[dict[str, Any], bytes | None]:
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        fields: dict[str, Any] = {}
        image = None
        stack: dict[str, list[str]] = {"name": [], "scale": [], "expert": []}
        for key, value, is_file in parse_multipart(await request.body(), ctype, limits):
            part = STACK_PART.fullmatch(key)
            if part is not None and not is_file:
                stack[part.group(1)].append(value)
                continue
            if key in fields or (key == "input_reference" and image is not None):
                raise bad_request(f"{printable(key)} is given twice", key)
            if is_file and key == "input_reference":
                image = value
            else:
                fields[key] = value if not is_file else None  # a file where text belongs: refused by its parser
        if any(stack.values()):
            if "loras" in fields:
                raise bad_request("loras is given twice (as a JSON field and as loras[][name] parts)", "loras")
            fields["loras"] = multipart_stack(stack)
        if "input_reference" in fields:
            image = _image_from_json(fields.pop("input_reference"))
        return fields, image
    if kind == "application/json":
        body = parse_json_object(await request.body(), limits)
        image = _image_from_json(body.pop("input_reference")) if "input_reference" in body else None
        return body, image
    raise ApiError(415, f"Content-Type {printable(kind) or '(none)'}: send multipart/form-data or application/json",
                   code="unsupported_media_type")
