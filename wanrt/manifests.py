"""Typed manifests: one frozen class per artifact kind that wanrt reads back (an export, an engine, a bundle, a
model's experts), the payload keys each kind must carry declared once, as its typed fields.

The JSON is what `artifacts.build_manifest` writes; the writers are unchanged and every manifest already on disk
reads as before. These classes sit on top of it: `read(dir)` goes through `artifacts.read_manifest` (the bounded
reader of wanrt.jsonio: size, depth, regular files only; schema and kind checked), `from_dict` checks that every
declared key is there with its type, and `to_dict` gives the document back as written. A manifest is input: a
missing key or a wrong type is one BadInputError line naming the file and the key, never a KeyError deep in a
reader.

A field without a default is a key every writer writes; a field with one is a key some artifacts lack (an export
without external data, an engine of one flavour but not the other). Nested sections stay plain dicts: the module
that owns a section reads it (engines/ the `lora` and `io` sections, serving a bundle's entries).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from wanrt.artifacts import MANIFEST_NAME, confined_path, load_artifact, read_manifest
from wanrt.choices import Expert
from wanrt.errors import BadInputError

M = TypeVar("M", bound="Manifest")

# annotation names -> what isinstance accepts; bool is not an int here (True is no byte count)
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "dict": (dict,), "list": (list,), "None": (type(None),), "Any": (object,)}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
               list: "a list", type(None): "null"}


def _accepts(value: Any, annotation: str) -> bool:
    """Whether `value` has the type a field's annotation (a string: `dict[str, Any] | None`) names."""
    for alt in annotation.split("|"):
        types = _TYPES[alt.strip().split("[", 1)[0]]
        if isinstance(value, types) and not (isinstance(value, bool) and bool not in types and object not in types):
            return True
    return False


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_NAMES.items() if type(value) is t), type(value).__name__)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What every manifest kind shares: the specs that made it, the file it was read from, the document."""

    KIND: ClassVar[str] = ""
    specs: dict[str, Any]
    source: str = field(default="manifest", compare=False)  # the manifest.json it came from, for error lines
    # the JSON as read: the envelope (versions, machine, contents) and payload keys no field declares
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def payload_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS]

    @classmethod
    def from_dict(cls: type[M], doc: Any, source: str | os.PathLike = "manifest") -> M:
        """The typed manifest of a parsed document; BadInputError naming `source` and the key otherwise."""
        source = str(source)

        def bad(what: str) -> BadInputError:
            return BadInputError(f"{source}: malformed {cls.KIND} manifest ({what})")

        if not isinstance(doc, dict):
            raise bad(f"a JSON {_json_type(doc)}, not an object")
        if doc.get("kind") != cls.KIND:
            raise BadInputError(f"{source}: a '{doc.get('kind')}' manifest, expected '{cls.KIND}'")
        payload, specs = doc.get("payload"), doc.get("specs", {})
        for key, value in (("payload", payload), ("specs", specs)):
            if not isinstance(value, dict):
                raise bad(f"'{key}' is {_json_type(value)}, not an object")
        values = cls._derived(payload)
        for f in cls.payload_fields():
            if f.name in payload:
                values[f.name] = payload[f.name]
            elif f.name in values:
                continue
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise bad(f"payload.{f.name} is missing")
            if f.name in values and not _accepts(values[f.name], f.type):
                raise bad(f"payload.{f.name} is {_json_type(values[f.name])}, expected {f.type}")
        manifest = cls(specs=specs, source=source, document=copy.deepcopy(doc), **values)
        manifest._check()
        return manifest

    @classmethod
    def _derived(cls, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG003 - a hook for the kinds
        """Fields an older layout kept elsewhere in the payload (EngineManifest.flavour)."""
        return {}

    def _check(self) -> None:
        """Checks across fields, beyond each field's own type (BundleManifest's entries)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: what was read, with the fields' current values (a field the document did not carry
        is written only when it differs from its default or was derived from another key)."""
        doc = copy.deepcopy(self.document) or {"kind": self.KIND, "payload": {}}
        payload = doc.setdefault("payload", {})
        derived = self._derived(payload)
        for f in self.payload_fields():
            value = getattr(self, f.name)
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if f.name in payload or (value != default and value != derived.get(f.name, default)):
                payload[f.name] = copy.deepcopy(value)
        doc["specs"] = copy.deepcopy(self.specs)
        return doc

    @classmethod
    def read(cls: type[M], directory: str | os.PathLike, check_files: bool = False) -> M:
        """The manifest of artifact `directory`, read within jsonio's bounds; `check_files`: every file it lists
        has its recorded size and sha256 too (artifacts.load_artifact: before the artifact is run)."""
        doc = (load_artifact if check_files else read_manifest)(directory, cls.KIND)
        return cls.from_dict(doc, Path(directory) / MANIFEST_NAME)

    @property
    def contents(self) -> dict[str, Any]:
        return self.document.get("contents") or {}


_BASE_FIELDS = {f.name for f in dataclasses.fields(Manifest)}


@dataclass(frozen=True, kw_only=True)
class ExportManifest(Manifest):
    """`wanrt export`: an ONNX graph with its I/O contract, geometry, LoRA and validation record."""

    KIND: ClassVar[str] = "onnx"
    geometry: dict[str, Any]
    lora: dict[str, Any]
    shape_ranges: dict[str, Any]
    onnx: str = "model.onnx"
    sha256: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    external_data: str | None = None
    initializer_bytes: int | None = None
    validation: dict[str, Any] = field(default_factory=lambda: {"skipped": True})
    trt_parse: dict[str, Any] = field(default_factory=lambda: {"parsed": None})  # the parser's acceptance record
    timings_s: dict[str, Any] = field(default_factory=dict)

    @property
    def export_specs(self) -> dict[str, Any]:
        """{model, lora, export}: the specs the graph was exported with."""
        return self.specs

    @property
    def dtype(self) -> str | None:
        """The graph's dtype (the model spec carries the export dtype)."""
        return (self.specs.get("model") or {}).get("dtype")


@dataclass(frozen=True, kw_only=True)
class EngineManifest(Manifest):
    """`wanrt build` (any flavour): a compiled engine file, the export it came from and its LoRA/refit section."""

    KIND: ClassVar[str] = "engine"
    flavour: str
    engine: str
    plan_bytes: int
    precision: str
    lora: dict[str, Any]
    onnx: dict[str, Any] = field(default_factory=dict)  # {dir, sha256, dtype, geometry, shape_ranges} of its export
    io: dict[str, Any] = field(default_factory=dict)  # {tensor name: {shape, dtype, ...}} as the flavour records it
    plan_sha256: str | None = None
    cache_key: str | None = None
    timings_s: dict[str, Any] = field(default_factory=dict)
    refits: list[dict[str, Any]] = field(default_factory=list)  # one record per `wanrt refit` since the build

    @classmethod
    def _derived(cls, payload: dict[str, Any]) -> dict[str, Any]:
        # engines that do not write `flavour` at the top name it in their runtime section ({flavour, module,
        # version, label}); the first section that does is the one
        named = [v["flavour"] for v in payload.values() if isinstance(v, dict) and isinstance(v.get("flavour"), str)]
        return {"flavour": named[0]} if "flavour" not in payload and named else {}

    @property
    def runtime(self) -> dict[str, Any]:
        """The runtime section of the flavour that built it (its version, and for some a label): the payload
        entry named by the flavour, or the one naming it."""
        payload = self.document.get("payload", {})
        own = payload.get(self.flavour)
        if isinstance(own, dict):
            return own
        return next((v for v in payload.values() if isinstance(v, dict) and v.get("flavour") == self.flavour), {})

    @property
    def label(self) -> str:
        """What built it, for tables: the runtime's label, else its flavour and version."""
        r = self.runtime
        return r.get("label") or f"{self.flavour} {r.get('version', '')}".strip()

    @property
    def export_specs(self) -> dict[str, Any]:
        """{model, lora, export}: the specs its ONNX was exported with."""
        return self.specs.get("onnx") or {}

    @property
    def dtype(self) -> str | None:
        return self.onnx.get("dtype")

    @property
    def geometry(self) -> dict[str, Any]:
        return self.onnx.get("geometry") or {}

    @property
    def shape_ranges(self) -> dict[str, Any]:
        return self.onnx.get("shape_ranges") or {}

    def section(self, key: str, default: Any = None) -> Any:
        """A flavour-specific payload section (`default` when this engine has none): read by that flavour's code."""
        return self.document.get("payload", {}).get(key, default)


@dataclass(frozen=True, kw_only=True)
class BundleManifest(Manifest):
    """`wanrt pack`: engines and a LoRA library with the sha256 and size of every file."""

    KIND: ClassVar[str] = "bundle"
    name: str
    files: dict[str, str]  # relpath -> sha256
    # {name, path, kind, backend, lora_mode, rank[, footprint: its branch when separate-mode and the library is not
    # empty]}; {name, path, sha256[, rank, footprint]} (runtime/serving/stacks.py reads the footprints)
    engines: list[dict[str, Any]] = field(default_factory=list)
    loras: list[dict[str, Any]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # relpath -> bytes

    def _check(self) -> None:
        def bad(what: str) -> BadInputError:
            return BadInputError(f"{self.source}: malformed bundle manifest ({what}); not a bundle written by "
                                 "`wanrt pack`")

        if not self.files:
            raise bad("payload.files is empty")
        if not all(isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef")
                   for v in self.files.values()):
            raise bad("payload.files must map relative paths to sha256 hex digests")
        if not all(type(v) is int and v >= 0 for v in self.sizes.values()):
            raise bad("payload.sizes must map relative paths to byte counts")
        for key in ("engines", "loras"):
            if not all(isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("path"), str)
                       for e in getattr(self, key)):
                raise bad(f"payload.{key} must be a list of {{name, path}} objects")


@dataclass(frozen=True, kw_only=True)
class ExpertsManifest(Manifest):
    """A model with experts (Wan2.2's high- and low-noise transformers), from `wanrt export` or `wanrt build`: one
    member artifact per expert in its own folder (each a complete export or engine with its own manifest), the
    boundary where the pipeline switches, and each expert's folder, main-file sha256 and LoRA stack. Written last,
    so its `contents` seal every member's files too."""

    KIND: ClassVar[str] = "experts"
    members: str  # the members' kind: "onnx" (wanrt export) or "engine" (wanrt build)
    boundary_ratio: float  # the high expert runs timesteps >= boundary_ratio x 1000 (diffusers' rule)
    experts: dict[str, Any]  # expert -> {dir, sha256, lora}
    flavour: str | None = None  # engines: the flavour that built them

    def _check(self) -> None:
        def bad(what: str) -> BadInputError:
            return BadInputError(f"{self.source}: malformed experts manifest ({what})")

        if self.members not in (ExportManifest.KIND, EngineManifest.KIND):
            raise bad(f"payload.members {self.members!r} is not 'onnx' or 'engine'")
        if not 0 < self.boundary_ratio < 1:
            raise bad(f"payload.boundary_ratio {self.boundary_ratio!r} is not between 0 and 1")
        if tuple(self.experts) != Expert.values():
            raise bad(f"payload.experts names {sorted(self.experts)}, expected {', '.join(Expert.values())}")
        for name, entry in self.experts.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("dir"), str) and entry.get("dir")):
                raise bad(f"payload.experts.{name} has no folder ('dir')")

    def member_dir(self, directory: str | os.PathLike, expert: str) -> Path:
        """The folder of `expert`'s member artifact, confined to `directory`."""
        return confined_path(directory, self.experts[expert]["dir"], f"expert {expert} folder", self.source)

    @property
    def member_class(self) -> type[Manifest]:
        return ExportManifest if self.members == ExportManifest.KIND else EngineManifest


_STACK_KEYS = ("label", "strength", "kind", "rank", "format", "sha256", "path", "seed", "expert_keys")


def lora_record(lora: dict[str, Any] | None) -> dict[str, Any]:
    """What an experts manifest keeps of one member's LoRA: mode, rank and the stack (each LoRA's label, strength
    and source: kind, rank, format, sha256, path), plus what --merge folded in; from an export's `lora` section or
    an engine's `loaded` record."""
    lora = lora or {}
    if not lora.get("enabled"):
        return {"enabled": False}
    stack = lora.get("stack") or [{"label": Path(lora["path"]).stem if lora.get("path") else lora.get("kind"),
                                   "strength": lora.get("lora_scale"), **lora}]
    record = {"enabled": True, "mode": lora.get("mode"), "rank": lora.get("rank"),
              "stack": [{k: e[k] for k in _STACK_KEYS if e.get(k) is not None} for e in stack]}
    if lora.get("merged_in"):
        record["merged_in"] = [{k: e[k] for k in _STACK_KEYS if e.get(k) is not None} for e in lora["merged_in"]]
    return record


@dataclass(frozen=True, kw_only=True)
class VaeDecoderManifest(Manifest):
    """export/vae.py: the Wan VAE decoder as two chunk graphs with the causal cache explicit (engines/vae.py runs
    them). Not in KINDS: `read_any` callers expect the DiT's artifacts; VAE readers ask for this kind by name."""

    KIND: ClassVar[str] = "vae-decoder"
    z_dim: int
    n_cache: int
    cache_shapes: list[list[int]]  # at trace_latent_hw; the last two axes scale with the latent's h, w
    trace_latent_hw: list[int]
    vae_config: dict[str, Any]
    opset: int
    first: str = "first.onnx"  # latent frame 0 -> frames, cache.out.*
    step: str = "step.onnx"  # latent frame i > 0, cache.in.* -> frames, cache.out.*


@dataclass(frozen=True, kw_only=True)
class VaeEncoderManifest(VaeDecoderManifest):
    """export/vae.py: the encoder's chunk graphs, laid out as the decoder's: pixel frame 0 -> moments, cache.out.*;
    the next 4 pixel frames, cache.in.* -> moments, cache.out.* (moments: mean and log-variance, 2 x z_dim)."""

    KIND: ClassVar[str] = "vae-encoder"


@dataclass(frozen=True, kw_only=True)
class EncoderManifest(Manifest):
    """export/encoders.py: the pipeline's text (UMT5) or image (CLIP) encoder as one static-shape graph. Not in
    KINDS, as the VAE's: its readers ask for it by name."""

    KIND: ClassVar[str] = "encoder"
    encoder: str  # "text" or "image"
    inputs: list[str]
    output: str
    input_shapes: list[list[int]]
    opset: int
    config: dict[str, Any]
    parameters: int
    model: str = "model.onnx"


KINDS: dict[str, type[Manifest]] = {c.KIND: c for c in (ExportManifest, EngineManifest, BundleManifest,
                                                         ExpertsManifest)}


def read_any(directory: str | os.PathLike, *kinds: type[Manifest], check_files: bool = False) -> Manifest:
    """The typed manifest of `directory`, whichever of `kinds` (default: all) it is; another kind is one line."""
    kinds = kinds or tuple(KINDS.values())
    doc = (load_artifact if check_files else read_manifest)(directory)
    cls = KINDS.get(doc.get("kind"))
    if cls not in kinds:
        wanted = " or ".join(f"'{k.KIND}'" for k in kinds)
        raise BadInputError(f"{directory}: a '{doc.get('kind')}' artifact, not {wanted}")
    return cls.from_dict(doc, Path(directory) / MANIFEST_NAME)
