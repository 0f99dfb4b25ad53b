"""Typed manifests (wanrt.manifests) on real artifacts: an export, an OpenVINO engine and a bundle of the tiny preset
read back to exactly the JSON wanrt wrote; a missing key or a wrong type is one line naming the file and the key;
jsonio's size and depth bounds apply to every read."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from click.testing import CliRunner

from tests.serve_helpers import serve_artifacts  # noqa: F401 - the session fixture
from wanrt.errors import BadInputError
from wanrt.manifests import BundleManifest, EngineManifest, ExportManifest, read_any


@pytest.fixture(scope="module")
def engine_dir(serve_artifacts, tmp_path_factory):  # noqa: F811 - the fixture imported above
    from wanrt.commands.main import cli

    out = tmp_path_factory.mktemp("manifests") / "engine"
    r = CliRunner().invoke(cli, ["build", str(serve_artifacts["separate"]), "--flavour", "openvino",
                                 "--precision", "fp32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _doc(directory):
    return json.loads((directory / "manifest.json").read_text())


@pytest.mark.parametrize("cls, where", [(ExportManifest, "separate"), (BundleManifest, "bundle"),
                                        (EngineManifest, "engine")])
def test_round_trip_is_the_json_wanrt_wrote(serve_artifacts, engine_dir, cls, where):  # noqa: F811
    directory = engine_dir if where == "engine" else serve_artifacts[where]
    doc = _doc(directory)
    m = cls.read(directory, check_files=True)
    assert m.to_dict() == doc and cls.from_dict(doc).to_dict() == doc
    assert type(read_any(directory)) is cls and m.source == str(directory / "manifest.json")
    for f in cls.payload_fields():  # every field is the payload key of its name, as written
        if f.name in doc["payload"]:
            assert getattr(m, f.name) == doc["payload"][f.name], f.name
    changed = dataclasses.replace(m, specs={"x": 1})
    assert changed.to_dict() == {**doc, "specs": {"x": 1}} and changed != m


def test_what_readers_get(serve_artifacts, engine_dir):  # noqa: F811
    export = ExportManifest.read(serve_artifacts["separate"])
    assert export.lora["mode"] == "separate" and export.onnx == "model.onnx" and export.geometry["num_layers"] == 1
    engine = EngineManifest.read(engine_dir)
    assert engine.flavour == "openvino" and engine.precision == "fp32" and engine.plan_bytes > 0
    assert engine.geometry == export.geometry and engine.shape_ranges == export.shape_ranges
    assert engine.export_specs == export.specs and engine.runtime["version"] and engine.label.startswith("openvino")
    bundle = BundleManifest.read(serve_artifacts["bundle"])
    assert bundle.name == "wan-tiny" and [e["name"] for e in bundle.engines] == ["style-a", "sep"]
    assert set(bundle.files) == set(bundle.sizes) and [x["name"] for x in bundle.loras] == ["style-b"]


def test_flavour_named_in_a_runtime_section():
    """Engines that keep their flavour inside their runtime section ({flavour, module, version, label}) read with
    `flavour` set, and write back without a top-level key they never had."""
    doc = {"schema": 1, "kind": "engine", "specs": {}, "payload": {
        "engine": "engine.plan", "plan_bytes": 4, "precision": "bf16", "lora": {},
        "trt": {"flavour": "rtx", "module": "tensorrt_rtx", "version": "1.2", "label": "TensorRT-RTX 1.2"}}}
    m = EngineManifest.from_dict(doc)
    assert m.flavour == "rtx" and m.label == "TensorRT-RTX 1.2" and m.runtime["version"] == "1.2"
    assert "flavour" not in m.to_dict()["payload"] and m.to_dict() == doc


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("key, value, expected", [
    ("plan_bytes", None, "payload.plan_bytes is missing"),
    ("plan_bytes", "12", "payload.plan_bytes is a string, expected int"),
    ("plan_bytes", True, "payload.plan_bytes is a boolean, expected int"),
    ("lora", [], "payload.lora is a list, expected dict"),
    ("cache_key", 3, "payload.cache_key is an integer, expected str | None"),
])
def test_malformed_engine_manifest_is_one_line_naming_the_key(engine_dir, tmp_path, key, value, expected):
    d = tmp_path / "e"
    shutil.copytree(engine_dir, d)
    doc = _doc(d)
    if value is None:
        del doc["payload"][key]
    else:
        doc["payload"][key] = value
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError) as e:
        EngineManifest.read(d)
    assert _one_line(e).startswith(f"{d / 'manifest.json'}: malformed engine manifest") and expected in str(e.value)


def test_wrong_kind_payload_and_bundle_entries(serve_artifacts):  # noqa: F811
    doc = _doc(serve_artifacts["separate"])
    with pytest.raises(BadInputError, match="a 'onnx' manifest, expected 'engine'"):
        EngineManifest.from_dict(doc, "x/manifest.json")
    with pytest.raises(BadInputError, match="'payload' is a list, not an object"):
        ExportManifest.from_dict({**doc, "payload": []})
    with pytest.raises(BadInputError, match="payload.geometry is missing"):
        ExportManifest.from_dict({**doc, "payload": {k: v for k, v in doc["payload"].items() if k != "geometry"}})
    bundle = _doc(serve_artifacts["bundle"])
    for key, value, expected in [("engines", "base", "payload.engines is a string"),
                                 ("engines", [{"name": "x"}], "payload.engines must be a list of {name, path}"),
                                 ("files", {"a": "not a digest"}, "payload.files must map"),
                                 ("sizes", {"a": -1}, "payload.sizes must map")]:
        with pytest.raises(BadInputError, match="malformed bundle manifest") as e:
            BundleManifest.from_dict({**bundle, "payload": {**bundle["payload"], key: value}}, "b/manifest.json")
        assert expected in _one_line(e)
    with pytest.raises(BadInputError, match="not 'engine'"):
        read_any(serve_artifacts["bundle"], EngineManifest)


def test_reads_are_bounded_by_jsonio(serve_artifacts, tmp_path):  # noqa: F811
    d = tmp_path / "deep"
    shutil.copytree(serve_artifacts["separate"], d)
    (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadInputError, match="nested deeper") as e:
        ExportManifest.read(d)
    _one_line(e)
    doc = _doc(serve_artifacts["separate"])
    doc["payload"]["padding"] = "x" * (17 << 20)  # over jsonio's 16 MiB
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match="more than wanrt reads") as e:
        ExportManifest.read(d)
    _one_line(e)
