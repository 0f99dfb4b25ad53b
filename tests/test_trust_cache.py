"""Issue 9, engine cache and manifests: the cache key hashes the bytes (item 2), entries are private copies,
read-only, verified and evicted when tampered (3), manifest paths stay inside their directory (12), and a peft
adapter directory is a valid --lora (14). One tiny export, shared by the module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from wanrt.artifacts import build_manifest, check_artifact_files, confined_path, sha256_file, write_json
from wanrt.engines.cache import ENTRY_INDEX, EngineCache
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest

TINY_PROFILE = "1x1x16x16:2x5x32x32:2x9x64x64"


@pytest.fixture(scope="module")
def peft_export(tmp_path_factory) -> Path:
    """`wanrt export --lora <peft adapter directory>`: the CLI used to refuse a directory (item 14)."""
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import ModelSpec, load_transformer

    root = tmp_path_factory.mktemp("trust-cache")
    lora = synthetic_lora(load_transformer(ModelSpec("tiny")), 4, "all", seed=3)
    save_lora_file(lora, root / "adapter", "peft")
    out = root / "export"
    r = subprocess.run([sys.executable, "-m", "wanrt", "export", "--lora", str(root / "adapter"), "--no-validate",
                        "-o", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------------------------- item 14


def test_peft_directory_is_a_lora_source(peft_export):
    m = json.loads((peft_export / "manifest.json").read_text())
    source = m["payload"]["lora"]
    assert source["format"] == "peft" and source["path"].endswith("adapter/adapter_model.safetensors")
    assert m["specs"]["lora"]["file"].endswith("adapter")
    # refit took only files (is_file()); an engine manifest carries the export's specs under specs.onnx
    from wanrt.engines.trt.refit import resolve_new_lora
    from wanrt.export.model import ModelSpec, load_transformer

    engine_manifest = EngineManifest(flavour="rtx", engine="engine.plan", plan_bytes=0, precision="fp32",
                                     lora={"mode": "merged"}, specs={"onnx": m["specs"]})
    adapter = m["specs"]["lora"]["file"]
    lora = resolve_new_lora(engine_manifest, load_transformer(ModelSpec("tiny")), lora_file=adapter)
    assert lora.rank == 4 and len(lora.modules) == 24
    with pytest.raises(BadInputError, match="LoRA file not found"):
        resolve_new_lora(engine_manifest, None, lora_file=str(peft_export / "missing"))


# ----------------------------------------------------------------------------------------------- item 2


def test_cache_key_hashes_the_onnx_bytes_not_the_recorded_sha256(peft_export, tmp_path):
    """Copying an export's manifest beside a different model.onnx used to give the same key (a stale engine)."""
    from wanrt.engines.trt.engine_spec import EngineSpec
    from wanrt.engines.trt.resolve import prepare

    spec = EngineSpec(flavour="rtx", profiles=(TINY_PROFILE,), refit="no", cache=False)
    other = tmp_path / "edited"
    shutil.copytree(peft_export, other)
    model = onnx.load(str(other / "model.onnx"))
    w = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.raw_data)
    raw = bytearray(w.raw_data)
    raw[0] ^= 0x01  # one bit of one weight
    w.raw_data = bytes(raw)
    onnx.save(model, str(other / "model.onnx"))
    assert json.loads((other / "manifest.json").read_text()) == json.loads((peft_export / "manifest.json").read_text())
    # issue 16: the edited graph no longer even reaches the key: every load checks the manifest's sha256
    with pytest.raises(BadInputError, match="model.onnx: sha256 does not match"):
        prepare(other, spec)
    m = json.loads((other / "manifest.json").read_text())  # re-sealed by hand: a new input, so a new key
    m["contents"]["model.onnx"] = {"bytes": (other / "model.onnx").stat().st_size,
                                   "sha256": sha256_file(other / "model.onnx")}
    (other / "manifest.json").write_text(json.dumps(m))
    a, b = prepare(peft_export, spec), prepare(other, spec)
    assert a.key != b.key
    assert b.onnx_sha == sha256_file(other / "model.onnx") != a.onnx_sha


# ----------------------------------------------------------------------------------------------- item 3


def _engine_dir(path: Path, key: str, plan: bytes = b"PLAN" * 1000, profile_max: int = 9) -> Path:
    path.mkdir(parents=True)
    (path / "engine.plan").write_bytes(plan)
    write_json(path / "manifest.json", build_manifest("engine", {}, {
        "flavour": "rtx", "engine": "engine.plan", "plan_bytes": len(plan), "precision": "fp16", "lora": {},
        "plan_sha256": sha256_file(path / "engine.plan"), "cache_key": key,
        "profiles": [{"frames": [1, profile_max]}]}))
    return path


def test_cache_entries_are_private_read_only_copies(tmp_path, capsys):
    cache, key = EngineCache(tmp_path / "cache"), "k" * 16
    built = _engine_dir(tmp_path / "built", key)
    cache.store(key, built)
    entry = cache.path(key)
    assert (entry / ENTRY_INDEX).is_file()
    assert all(f.stat().st_mode & 0o222 == 0 for f in entry.iterdir())  # read-only entry
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert cache.fetch(key, out1) is not None and cache.fetch(key, out2) is not None
    for name in ("engine.plan", "manifest.json"):
        inodes = {(d / name).stat().st_ino for d in (entry, out1, out2, built)}
        assert len(inodes) == 4 and (out1 / name).stat().st_nlink == 1  # copies, never hard links
    assert not (out1 / ENTRY_INDEX).exists()
    # truncating one output's plan and widening its profile touch neither the cache nor a sibling
    (out1 / "engine.plan").write_bytes(b"PL")
    m = json.loads((out1 / "manifest.json").read_text())
    m["payload"]["profiles"][0]["frames"] = [1, 81]
    (out1 / "manifest.json").write_text(json.dumps(m))
    assert (out2 / "engine.plan").read_bytes() == (entry / "engine.plan").read_bytes() == b"PLAN" * 1000
    assert cache.lookup(key).section("profiles")[0]["frames"] == [1, 9]
    assert capsys.readouterr().err == ""


def test_a_tampered_cache_entry_is_evicted_with_one_line(tmp_path, capsys):
    cache, key = EngineCache(tmp_path / "cache"), "t" * 16
    cache.store(key, _engine_dir(tmp_path / "built", key))
    manifest = cache.path(key) / "manifest.json"
    os.chmod(manifest, 0o644)  # someone edits the entry itself (profiles widened): sha256 no longer matches
    m = json.loads(manifest.read_text())
    m["payload"]["profiles"][0]["frames"] = [1, 81]
    manifest.write_text(json.dumps(m))
    assert cache.fetch(key, tmp_path / "out") is None  # a miss: the caller rebuilds
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "failed verification (manifest.json changed" in lines[0] and "evicted" in lines[0]
    assert not cache.path(key).exists() and not (tmp_path / "out").exists()
    cache.store(key, _engine_dir(tmp_path / "rebuilt", key))  # the rebuild is stored again, intact
    assert cache.lookup(key).section("profiles")[0]["frames"] == [1, 9]


def test_a_truncated_cache_plan_is_evicted(tmp_path, capsys):
    cache, key = EngineCache(tmp_path / "cache"), "p" * 16
    cache.store(key, _engine_dir(tmp_path / "built", key))
    plan = cache.path(key) / "engine.plan"
    os.chmod(plan, 0o644)
    plan.write_bytes(b"PLAN")
    assert cache.lookup(key) is None and "engine.plan changed" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- item 12


@pytest.mark.parametrize("field, value", [("onnx", "../../../../../../etc/hostname"), ("onnx", "/etc/hostname"),
                                          ("external_data", "../outside.data")])
def test_manifest_paths_are_confined(peft_export, tmp_path, field, value):
    from wanrt.engines.onnx_dir import read_onnx_dir
    from wanrt.runtime.backends import OrtBackend

    d = tmp_path / "exp"
    shutil.copytree(peft_export, d)
    (tmp_path / "outside.data").write_bytes(b"x")
    m = json.loads((d / "manifest.json").read_text())
    m["payload"][field] = value
    (d / "manifest.json").write_text(json.dumps(m))
    for load in (OrtBackend, read_onnx_dir):  # ONNX Runtime's backend and the engine builder's reader
        with pytest.raises(BadInputError, match="outside the artifact directory"):
            load(d)


def test_engine_plan_path_is_confined(tmp_path):
    d = _engine_dir(tmp_path / "engine", "e" * 16)
    m = json.loads((d / "manifest.json").read_text())
    m["payload"]["engine"] = "../../../etc/hostname"
    with pytest.raises(BadInputError, match="outside the artifact directory"):
        check_artifact_files(d, m)  # what every engine load runs first
    (d / "link.plan").symlink_to("/etc/hostname")  # a symlink out is outside too
    with pytest.raises(BadInputError, match="outside"):
        confined_path(d, "link.plan")
    assert confined_path(d, "engine.plan") == (d / "engine.plan").resolve()
