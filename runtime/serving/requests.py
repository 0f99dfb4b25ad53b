"""Request bodies -> checked requests, before anything is allocated.

Every field is parsed from text or JSON with an explicit type and range (multipart sends everything as text), an
unknown field is an error (OpenAI answers "Unknown parameter"), and sizes are checked against the engine that will
serve the request. Images are checked from their header (bytes, format, pixel count) before any pixel is decoded;
/v1/predict tensors from their .npy header (dtype, shape, so the batch comes from the tensor itself) before any
array is read. Shapes and ranges come from the torch-free half of the DiT I/O contract (wanrt.io_contract),
whose refusals name their axis in `param`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from wanrt.errors import BadInputError
from wanrt.io_contract import DitSignature, VideoShape, check_latent_range, check_video_shape
from wanrt.runtime.schedule import Schedule, resolve_schedule
from wanrt.runtime.serving.catalog import Catalog, EngineInfo
from wanrt.runtime.serving.limits import ApiError, Limits, bad_request
from wanrt.runtime.serving.stacks import EXPERTS, Stack, expert_entry, split_entry, stack_of
from wanrt.text import printable, text_problem

VIDEO_FIELDS = {"prompt", "negative_prompt", "model", "seconds", "size", "input_reference", "lora", "lora_scale",
                "loras", "steps", "timesteps", "shift", "guidance", "recipe", "seed", "frames", "fps"}
PREDICT_FIELDS = {"frames", "height", "width", "batch", "seed", "timestep", "format", "inputs", "lora", "loras"}
STACK_KEYS = {"name", "scale", "expert"}  # an entry of `loras` (expert: Wan2.2's high or low; absent: both)
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}
UINT64_MAX = 2**64 - 1
_INT_RE = re.compile(r"[+-]?\d{1,20}")
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")
# the contract's axes (BadInputError.param) -> the request field a client fixes: /v1/videos sets height and width
# through `size`; /v1/predict has a field per axis
VIDEO_SHAPE_PARAMS = {"frames": "frames", "height": "size", "width": "size"}
PREDICT_SHAPE_PARAMS = {"frames": "frames", "height": "height", "width": "width"}


@dataclass(frozen=True)
class VideoRequest:
    """A checked POST /v1/videos body: everything a replica needs, nothing it must re-check."""

    prompt: str
    negative_prompt: str
    model: str
    engine: str  # the catalog engine that serves it
    loras: Stack  # (name, scale) in the client's order, scales resolved (None: an engine's own LoRA as exported)
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    fps: int
    seconds: str  # echoed to clients as given (or frames / fps)
    size: str  # echoed as given ("832x480": width x height)
    # the rest of the schedule (steps and guidance above); defaults so jobs stored before them still load
    timesteps: tuple[float, ...] | None = None  # explicit, before the shift
    shift: float | None = None  # None: the pipeline scheduler's
    recipe: str | None = None  # the recipe named, already resolved into the fields above

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoRequest:
        """From the job store's JSON; a job stored before stacks (`lora`, `lora_scale`) is a one-entry stack."""
        rest = {k: v for k, v in d.items() if k not in ("lora", "lora_scale")}
        return cls(**{**rest, "loras": stack_of(d)})

    def schedule(self) -> Schedule:
        return Schedule(steps=self.steps, guidance=self.guidance, timesteps=self.timesteps, shift=self.shift,
                        recipe=self.recipe)


# ------------------------------------------------------------------------------------------------ scalars
def parse_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad_request(f"{name} must be an integer", name)
    if isinstance(value, str):
        text = value.strip()
        if not _INT_RE.fullmatch(text):
            raise bad_request(f"{name} must be an integer, got {value[:40]!r}", name)
        value = int(text)
    if not lo <= value <= hi:
        raise bad_request(f"{name} {value} is out of range {lo}..{hi}", name)
    return value


def parse_float(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad_request(f"{name} must be a number", name)
    if isinstance(value, str):
        if len(value) > 64:
            raise bad_request(f"{name} must be a number", name)
        try:
            value = float(value)
        except ValueError:
            raise bad_request(f"{name} must be a number, got {value[:40]!r}", name) from None
    value = float(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
    if not math.isfinite(value):
        raise bad_request(f"{name} must be finite", name)
    if not lo <= value <= hi:
        raise bad_request(f"{name} {value:g} is out of range {lo:g}..{hi:g}", name)
    return value


def parse_text(name: str, value: Any, limits: Limits, required: bool = False, catalog: Catalog | None = None,
               max_chars: int | None = None) -> str:
    if value is None or value == "":
        if required:
            raise bad_request(f"{name} is required (a non-empty string)", name, "missing_required_parameter")
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string", name)
    if max_chars is not None and len(value) > max_chars:
        raise bad_request(f"{name} is longer than {max_chars} characters", name)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limits.max_prompt_bytes:
        raise bad_request(f"{name} is {size} bytes; the limit is {limits.max_prompt_bytes}", name, "too_long")
    problem, _ = text_problem(value, limits.max_prompt_bytes)
    if problem is not None:
        raise bad_request(f"{name} {problem}", name, "invalid_text")
    if catalog is not None:
        tokens = count_tokens(value, catalog)
        if tokens > limits.max_prompt_tokens:
            raise bad_request(f"{name} is {tokens} tokens; the text encoder takes {limits.max_prompt_tokens}",
                              name, "too_long")
    return value


_TOKENIZERS: dict[str, Any] = {}


def count_tokens(text: str, catalog: Catalog) -> int:
    """Tokens the pipeline's text encoder sees. The tiny pipeline's tokenizer is one token per UTF-8 byte plus
    `</s>`; a real pipeline's tokenizer is loaded once (it is small and needs no torch)."""
    if catalog.pipeline is None:
        return len(text.encode("utf-8", "surrogatepass")) + 1
    tok = _TOKENIZERS.get(catalog.pipeline)
    if tok is None:
        from transformers import AutoTokenizer

        tok = _TOKENIZERS[catalog.pipeline] = AutoTokenizer.from_pretrained(catalog.pipeline, subfolder="tokenizer")
    return len(tok(text, add_special_tokens=True).input_ids)


def parse_lora(value: Any) -> str | None:
    """A LoRA name (None: the base model); bounded, since an unknown name is echoed in the 404."""
    if value in ("", None):
        return None
    if not isinstance(value, str) or len(value) > 128:
        raise bad_request("lora must be a LoRA name (GET /v1/loras)", "lora")
    return value


def parse_loras(value: Any, limits: Limits) -> Stack:
    """`loras`: a JSON list (a JSON body's value, or one text field of a multipart form) of {name, scale[,
    expert]}; the scale may be left out (None: the LoRA's own), the expert too (both of Wan2.2's experts). Every
    entry is checked before anything is routed: a bounded count, names (bounded, each once per expert), experts and
    finite scales within max_lora_scale, each refusal naming its entry."""
    if isinstance(value, str):
        value = parse_json(value.encode("utf-8", "surrogatepass"), limits, "loras")
    if not isinstance(value, list):
        raise bad_request('loras must be a list of {"name", "scale"} objects', "loras")
    if len(value) > limits.max_stack:
        raise bad_request(f"loras has {len(value)} entries; this server stacks at most {limits.max_stack}", "loras",
                          "too_many_loras")
    stack: list[tuple[str, float | None]] = []
    for i, entry in enumerate(value):
        where = f"loras[{i}]"
        if not isinstance(entry, dict):
            raise bad_request(f'{where} must be an object {{"name", "scale"}}', where)
        unknown = sorted(set(entry) - STACK_KEYS)
        if unknown:
            raise bad_request(f"Unknown parameter: '{where}.{unknown[0]}'", f"{where}.{unknown[0]}",
                              "unknown_parameter")
        name = entry.get("name")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise bad_request(f"{where}.name must be a LoRA name (GET /v1/loras)", f"{where}.name")
        expert = entry.get("expert")
        if expert in ("", None):
            expert = None
        elif expert not in EXPERTS:
            raise bad_request(f"{where}.expert must be one of {', '.join(EXPERTS)} (Wan2.2's experts; leave it out "
                              "for both)", f"{where}.expert")
        # the same LoRA may go to each expert once (e.g. distill at 3 on high, 1.5 on low), never twice to one
        if any(name == n and None in (expert, e) or (name, expert) == (n, e)
               for n, e in (split_entry(x) for x, _ in stack)):
            raise bad_request(f"{where}.name: LoRA {name!r} is in the stack twice", f"{where}.name",
                              "duplicate_lora")
        raw = entry.get("scale")
        scale = None if raw in (None, "") else parse_float(f"{where}.scale", raw, -limits.max_lora_scale,
                                                           limits.max_lora_scale)
        stack.append((expert_entry(name, expert), scale))
    return tuple(stack)


def parse_stack(fields: dict[str, Any], catalog: Catalog, limits: Limits) -> tuple[EngineInfo, Stack]:
    """The request's LoRAs -> (engine, stack): `loras`, or `lora` + `lora_scale` (a one-entry stack), routed by
    the catalog (a stack that fits no engine is a 400 naming what does not fit)."""
    if fields.get("loras") is not None:
        given = sorted(k for k in ("lora", "lora_scale") if fields.get(k) not in (None, ""))
        if given:
            raise bad_request(f"give either loras (a stack) or lora/lora_scale (one LoRA), not both ({given[0]})",
                              "loras")
        return catalog.route_stack(parse_loras(fields["loras"], limits), "loras")
    lora = parse_lora(fields.get("lora"))
    scale = None
    if fields.get("lora_scale") not in (None, ""):
        scale = parse_float("lora_scale", fields["lora_scale"], -limits.max_lora_scale, limits.max_lora_scale)
        if lora is None:
            raise bad_request("lora_scale is the strength of `lora`: name a LoRA too", "lora_scale")
    return catalog.route_stack(((lora, scale),) if lora is not None else ())


# ------------------------------------------------------------------------------------------------ shapes
def check_shape(engine: EngineInfo, frames: int, height: int, width: int, limits: Limits,
                params: Mapping[str, str] = VIDEO_SHAPE_PARAMS) -> None:
    """The server's caps first (cheap, and the only bound an eager engine has), then the DiT I/O contract: the
    VAE/patch grid (frames 4k+1, sizes multiples of 16) and the engine's exported range. `params` maps the axis an
    error names to the request's field."""
    if frames > limits.max_frames:
        raise bad_request(f"frames {frames} exceeds this server's limit {limits.max_frames}", params["frames"])
    if height * width > limits.max_pixels:
        raise bad_request(f"{width}x{height} exceeds this server's limit of {limits.max_pixels} pixels",
                          params["height"])
    try:
        shape = check_video_shape(frames, height, width)
    except BadInputError as e:
        raise bad_request(str(e), params[e.param]) from None
    try:
        check_latent_range(shape, engine.latent)
    except BadInputError as e:
        raise bad_request(f"engine '{engine.name}': {e}", params[e.param], "outside_engine_profile") from None


def parse_size(value: Any) -> tuple[int, int]:
    """OpenAI's `size` is WIDTHxHEIGHT ("832x480")."""
    if not isinstance(value, str) or not _SIZE_RE.fullmatch(value.strip()):
        raise bad_request(f"size must be WIDTHxHEIGHT like 832x480, got {str(value)[:40]!r}", "size")
    w, h = _SIZE_RE.fullmatch(value.strip()).groups()
    return int(w), int(h)


# ------------------------------------------------------------------------------------------------ videos
def parse_video_request(fields: dict[str, Any], catalog: Catalog, limits: Limits) -> VideoRequest:
    """A POST /v1/videos body (form fields or JSON, without the image) -> VideoRequest."""
    unknown = sorted(set(fields) - VIDEO_FIELDS)
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'", unknown[0], "unknown_parameter")
    prompt = parse_text("prompt", fields.get("prompt"), limits, required=True, catalog=catalog)
    negative = parse_text("negative_prompt", fields.get("negative_prompt"), limits, catalog=catalog)
    model = fields.get("model") or catalog.model
    if not isinstance(model, str) or model not in (catalog.model, "wanrt"):
        raise ApiError(404, f"model {str(model)[:80]!r} is not served here (this server serves "
                            f"{catalog.model!r})", param="model", code="model_not_found")
    engine, loras = parse_stack(fields, catalog, limits)
    fps = parse_int("fps", fields.get("fps", 16), 1, limits.max_fps)
    f0, h0, w0 = engine.default_shape
    width, height = parse_size(fields["size"]) if fields.get("size") not in (None, "") else (w0, h0)
    seconds = fields.get("seconds")
    if fields.get("frames") not in (None, ""):
        frames = parse_int("frames", fields["frames"], 1, limits.max_frames)
    elif seconds not in (None, ""):
        secs = parse_float("seconds", seconds, 0.0, limits.max_frames / fps)
        frames = 4 * round(secs * fps / 4) + 1  # the nearest length the VAE can make
    else:
        frames = f0
    check_shape(engine, frames, height, width, limits)
    schedule = parse_schedule(fields, engine, limits)
    seed = parse_int("seed", fields.get("seed", 0), 0, UINT64_MAX)
    return VideoRequest(prompt=prompt, negative_prompt=negative, model=model, engine=engine.name, loras=loras,
                        frames=frames, height=height, width=width, steps=schedule.steps,
                        guidance=schedule.guidance, seed=seed, fps=fps,
                        seconds=str(seconds) if seconds not in (None, "") else f"{frames / fps:g}",
                        size=str(fields.get("size") or f"{width}x{height}"), timesteps=schedule.timesteps,
                        shift=schedule.shift, recipe=schedule.recipe)


def parse_schedule(fields: dict[str, Any], engine: EngineInfo, limits: Limits) -> Schedule:
    """steps, timesteps, shift, guidance and recipe -> one checked Schedule (runtime/schedule.py, the rules
    `wanrt generate` follows), every refusal a 400 naming its field; the step count is bounded before a
    timestep list is read."""
    def given(name: str) -> Any:
        return None if fields.get(name) in (None, "") else fields[name]

    steps = given("steps")
    steps = None if steps is None else parse_int("steps", steps, 1, limits.max_steps)
    guidance = given("guidance")
    guidance = None if guidance is None else parse_float("guidance", guidance, 0.0, limits.max_guidance)
    shift = given("shift")
    shift = None if shift is None else parse_float("shift", shift, 0.0, math.inf)
    name = given("recipe")
    if name is not None and (not isinstance(name, str) or len(name) > 64):
        raise bad_request("recipe must be a recipe name", "recipe")
    try:
        return resolve_schedule(steps=steps, timesteps=given("timesteps"), shift=shift, guidance=guidance,
                                recipe_name=name, default_steps=2 if engine.model_source == "tiny" else 30,
                                default_guidance=5.0, max_steps=limits.max_steps)
    except BadInputError as e:
        raise bad_request(str(e), e.param) from None


def check_image(data: bytes, limits: Limits) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, read from its header; the pixels are decoded only when the
    header passes (a decompression bomb is refused by its declared size)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"input_reference is {len(data)} bytes; the limit is {limits.max_image_bytes}",
                       param="input_reference", code="image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if fmt not in IMAGE_FORMATS:
                raise bad_request(f"input_reference: {fmt} images are not accepted (PNG, JPEG, WEBP)",
                                  "input_reference", "invalid_image")
            if w * h > limits.max_image_pixels:
                raise ApiError(413, f"input_reference is {w}x{h} pixels; the limit is {limits.max_image_pixels}",
                               param="input_reference", code="image_too_large")
            im.load()  # bounded now: decode once so a truncated/corrupt file fails here, not in a replica
    except Image.DecompressionBombError as e:  # PIL's own guard, for sizes far beyond ours
        raise ApiError(413, f"input_reference: {str(e)[:120]}", param="input_reference",
                       code="image_too_large") from None
    except UnidentifiedImageError:  # its text is "cannot identify image file <_io.BytesIO object at 0x...>"
        raise bad_request("input_reference: not a PNG, JPEG or WEBP image", "input_reference",
                          "invalid_image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise bad_request(f"input_reference: not a readable image ({str(e)[:120]})", "input_reference",
                          "invalid_image") from None
    return fmt, w, h


# ------------------------------------------------------------------------------------------------ JSON
def json_depth_ok(raw: bytes, max_depth: int) -> bool:
    """True when no array/object nests deeper than `max_depth` (strings skipped), checked before json.loads so
    a deeply nested body costs a linear scan, not recursion."""
    depth, in_str, escape = 0, False, False
    for b in raw:
        if in_str:
            if escape:
                escape = False
            elif b == 0x5C:  # backslash
                escape = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes, limits: Limits) -> dict[str, Any]:
    """A JSON object body; NaN/Infinity literals, 5000-digit integers and deep nesting are 400s, not crashes."""
    obj = parse_json(raw, limits)
    if not isinstance(obj, dict):
        raise bad_request("the body must be a JSON object", None, "invalid_json")
    return obj


def parse_json(raw: bytes, limits: Limits, param: str | None = None) -> Any:
    """Any JSON value (a body, or a field that carries JSON as text), bounded and text-checked like a body; a
    refusal names `param`."""
    if not json_depth_ok(raw, limits.max_json_depth):
        raise bad_request(f"JSON nested deeper than {limits.max_json_depth} levels", param, "invalid_json")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise bad_request(f"{param + ': ' if param else ''}invalid JSON: {str(e)[:160]}", param,
                          "invalid_json") from None
    check_json_text(obj, limits)
    return obj


def check_json_text(obj: Any, limits: Limits) -> None:
    """Every key and string value of a parsed body, at any depth, passes wanrt.text's rule (a lone surrogate from
    a "\\ud800" escape, control characters, oversized keys): 400 naming where, before any field is read. Iterative;
    the depth is bounded before parsing anyway."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{printable(key)}" if path else printable(key)
                problem, _ = text_problem(key, limits.max_key_bytes, multiline=False)
                if problem is not None:
                    raise bad_request(f"parameter name {where!r} {problem}", where, "invalid_text")
                stack.append((value, where))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
        elif isinstance(node, str):
            problem, _ = text_problem(node, limits.max_body_bytes)
            if problem is not None:
                raise bad_request(f"{path} {problem}", path, "invalid_text")


# ------------------------------------------------------------------------------------------------ predict
@dataclass(frozen=True)
class PredictRequest:
    """POST /v1/predict, checked: either seeded inputs of a shape, or given arrays (still base64 .npy)."""

    engine: str
    loras: Stack
    batch: int
    frames: int
    height: int
    width: int
    seed: int
    timestep: float
    format: str
    inputs: dict[str, str]  # name -> base64 .npy, headers already checked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_shapes(engine: EngineInfo, batch: int, frames: int, height: int, width: int) -> dict[str, tuple]:
    """The DiT's input shapes for a batch and video shape, from the I/O contract and the engine's geometry."""
    return DitSignature(engine.geometry).input_shapes(batch, VideoShape(frames, height, width))


def npy_header(name: str, text: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a base64 .npy from its header alone."""
    import numpy as np

    if not isinstance(text, str):
        raise bad_request(f"inputs.{name} must be a base64 .npy string", f"inputs.{name}")
    try:
        head = base64.b64decode(text[:512 + (-512 % 4)] if len(text) > 512 else text, validate=True)
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)  # the header only; the data is not touched
    except (ValueError, binascii.Error, EOFError) as e:
        raise bad_request(f"inputs.{name}: not a base64 .npy array ({str(e)[:80]})", f"inputs.{name}") from None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4) or dtype.hasobject or fortran:
        raise bad_request(f"inputs.{name}: float16/float32 C-order array expected, got {dtype}", f"inputs.{name}")
    return tuple(int(s) for s in shape), str(dtype)


def parse_predict_request(body: dict[str, Any], catalog: Catalog, limits: Limits) -> PredictRequest:
    unknown = sorted(set(body) - PREDICT_FIELDS)
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'", unknown[0], "unknown_parameter")
    fmt = body.get("format", "stats")
    if fmt not in ("stats", "npy"):
        raise bad_request("format must be 'stats' or 'npy'", "format")
    engine, loras = parse_stack(body, catalog, limits)
    given = body.get("inputs")
    given = {} if given is None else given  # [] or "" is a wrong type, not "no inputs"
    if not isinstance(given, dict):
        raise bad_request("inputs must be an object of base64 .npy arrays", "inputs")
    unknown = sorted(set(given) - {"latents", "timestep", "text", "image"})
    if unknown:
        raise bad_request(f"unknown inputs: {', '.join(unknown)}", "inputs")
    headers = {k: npy_header(k, v) for k, v in given.items()}
    f0, h0, w0 = engine.default_shape
    if "latents" in headers:
        shape = headers["latents"][0]
        if len(shape) != 5:
            raise bad_request(f"inputs.latents: want [B, C, F, H, W], got {list(shape)}", "inputs.latents")
        batch = shape[0]  # the batch is the tensor's, whatever a `batch` field says
        video = VideoShape.from_latent(shape[2:])
        frames, height, width = video.frames, video.height, video.width
    else:
        batch = parse_int("batch", body.get("batch", 1), 1, limits.max_batch)
        frames = parse_int("frames", body.get("frames", f0), 1, limits.max_frames)
        height = parse_int("height", body.get("height", h0), 16, 16 * 1024)
        width = parse_int("width", body.get("width", w0), 16, 16 * 1024)
    if not 1 <= batch <= limits.max_batch:
        raise bad_request(f"batch {batch} (from inputs.latents) is out of range 1..{limits.max_batch}", "inputs")
    check_shape(engine, frames, height, width, limits, PREDICT_SHAPE_PARAMS)
    want = predict_shapes(engine, batch, frames, height, width)
    for name, (shape, _) in headers.items():
        if name not in want:
            raise bad_request(f"inputs.{name}: this model has no {name} input", f"inputs.{name}")
        if shape != want[name]:
            raise bad_request(f"inputs.{name}: shape {list(shape)}, want {list(want[name])}", f"inputs.{name}")
    return PredictRequest(engine=engine.name, loras=loras, batch=batch, frames=frames, height=height, width=width,
                          seed=parse_int("seed", body.get("seed", 0), 0, UINT64_MAX),
                          timestep=parse_float("timestep", body.get("timestep", 500.0), 0.0, 1000.0),
                          format=fmt, inputs=dict(given))
