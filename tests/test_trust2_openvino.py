"""OpenVINO engines as a user or an attacker meets them (issue 16): a CPU without BF16, a blob that is not the one its
manifest describes, a corrupt ONNX, the --cache-dir rule, and an engine cache that cannot be written. Tiny preset;
the CPU's real capabilities are never assumed: "no BF16" is wanrt's own documented override."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from wanrt.commands.main import cli

NO_BF16 = {"WANRT_OV_CAPABILITIES": "FP32,INT8"}  # what OpenVINO reports on an AVX2-only Zen 2


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_rank4_exports):
    root = tmp_path_factory.mktemp("ov2")
    for name, mode in (("sep", "separate"), ("merged", "merged")):
        shutil.copytree(tiny_rank4_exports[mode], root / name)
    return root


def _env(root: Path, **extra) -> dict[str, str]:
    return {"WANRT_CACHE_DIR": str(root / "cache"), **extra}


def _one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def _build(exports, src, out, *args, env=None):
    return CliRunner().invoke(cli, ["build", str(exports / src), "--flavour", "openvino", "-o", str(out), *args],
                              env=env or _env(exports))


def test_bf16_on_a_cpu_without_it_is_refused_in_one_line(exports):
    out = exports / "bf16"
    res = _build(exports, "sep", out, "--precision", "bf16", env=_env(exports, **NO_BF16))
    assert res.exit_code == 2, res.output
    line = _one_line(res)
    assert "no BF16 support" in line and "capabilities FP32, INT8" in line and "--precision fp32 or int8" in line
    assert not out.exists()


def test_cpu_bench_tool_skips_what_the_cpu_lacks(monkeypatch):
    from wanrt.tools import bench_cpu_engines as tool

    monkeypatch.setenv("WANRT_OV_CAPABILITIES", "FP32,INT8")
    skipped = tool.skipped_backends()
    assert list(skipped) == ["ov bf16"] and "no BF16 support" in skipped["ov bf16"]
    assert tool.sweep_precision(skipped) == "fp32"  # the paired/rank sections run what the CPU has


def test_tool_rounds_rotate_and_stop_at_the_ci_or_the_budget():
    """The tools' one interleaved loop (bench_cpu_engines.time_rounds): a rotating order puts every call first in
    turn; with a check it stops at the first check where each ratio's CI half-width is <= 1 point, never past the
    budget; a call twice as slow has ratio 2 to the first."""
    import time

    from wanrt.tools import bench_cpu_engines as tool

    order: list[str] = []

    def call(label, seconds):
        return lambda: (order.append(label), time.sleep(seconds))

    calls = {"a": call("a", 0.002), "b": call("b", 0.004), "c": call("c", 0.002)}
    samples = tool.time_rounds(calls, 3, rotate=True)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"] and all(len(v) == 3 for v in samples.values())
    steady = tool.time_rounds(calls, 40, rotate=True, check=(6, 4))
    n = len(steady["a"])
    assert n in (*range(6, 40, 4), 40)  # it stops only at a check (or the budget)
    ratios, (lo, hi), half = tool.ratio_ci(steady, "b")
    assert lo <= sum(ratios) / len(ratios) <= hi and 1.5 < sum(ratios) / len(ratios) < 2.5
    assert n == 40 or (half <= 0.01 and tool.ratio_ci(steady, "c")[2] <= 0.01)  # early: both CIs within 1 point
    noisy = {"a": call("a", 0), "b": lambda: time.sleep(0.001 * (1 + len(order) % 3))}
    assert len(tool.time_rounds(noisy, 7, rotate=True, check=(3, 3))["a"]) == 7  # the budget, not a batch of 9


def _generate(exports, engine, out):
    image = exports / "in.png"
    if not image.exists():
        from PIL import Image

        Image.new("RGB", (32, 32), (90, 120, 30)).save(image)
    return CliRunner().invoke(cli, ["generate", "--image", str(image), "--prompt", "a cat", "--backend", "ov",
                                    "--artifact", str(engine), "-o", str(out)], env=_env(exports))


def _rewrite_manifest(engine: Path, blob: Path) -> None:
    """What an attacker does to make a swapped blob look consistent: size and sha256 recorded anew."""
    m = json.loads((engine / "manifest.json").read_text())
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    m["payload"].update(plan_bytes=blob.stat().st_size, plan_sha256=digest)
    if isinstance(m.get("contents"), dict) and "model.blob" in m["contents"]:
        m["contents"]["model.blob"] = {"bytes": blob.stat().st_size, "sha256": digest}
    (engine / "manifest.json").write_text(json.dumps(m))


def test_blob_that_is_not_its_manifests_is_refused_at_load(exports):
    engine, other = exports / "eng-sep", exports / "eng-merged"
    assert _build(exports, "sep", engine, "--no-cache").exit_code == 0
    assert _build(exports, "merged", other, "--no-cache").exit_code == 0
    blob = engine / "model.blob"
    good = blob.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, one byte changed
    blob.write_bytes(bytes(flipped))
    res = _generate(exports, engine, exports / "a.mp4")
    assert res.exit_code == 2 and "model.blob" in _one_line(res) and not (exports / "a.mp4").exists()

    shutil.copyfile(other / "model.blob", blob)  # another engine's blob, its manifest made to match it
    _rewrite_manifest(engine, blob)
    res = _generate(exports, engine, exports / "b.mp4")
    assert res.exit_code == 2, res.output
    assert "inputs its manifest names" in _one_line(res) and not (exports / "b.mp4").exists()


def test_corrupt_onnx_is_one_line_exit_2(exports):
    bad = exports / "corrupt"
    shutil.copytree(exports / "merged", bad)
    onnx = bad / "model.onnx"
    onnx.write_bytes(b"\x07" * onnx.stat().st_size)
    m = json.loads((bad / "manifest.json").read_text())  # a manifest that agrees with the damaged file
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
    m["payload"]["sha256"] = digest
    if isinstance(m.get("contents"), dict):
        m["contents"]["model.onnx"] = {"bytes": onnx.stat().st_size, "sha256": digest}
    (bad / "manifest.json").write_text(json.dumps(m))
    out = exports / "eng-corrupt"
    res = _build(exports, "corrupt", out, "--no-cache")
    assert res.exit_code == 2 and "model.onnx" in _one_line(res) and not out.exists()


def test_cache_dir_is_the_cache_root_for_every_flavour(exports):
    root = exports / "X"
    res = _build(exports, "sep", exports / "eng-x", "--cache-dir", str(root))
    assert res.exit_code == 0, res.output
    assert [p.name for p in root.iterdir()] == ["engines"]  # X/engines/<key>, as TensorRT's, not X/<key>
    (entry,) = (root / "engines").iterdir()
    assert (entry / "manifest.json").is_file()


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 KiB file system (tmpfs; needs root): too small for any engine."""
    if os.geteuid() != 0:
        pytest.skip("platform: a full file system needs a tmpfs mount (root)")
    path = tmp_path / "small"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("platform: mount is not permitted here")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_engine_cache_warns_and_keeps_the_engine(exports, small_fs):
    out = exports / "eng-full"
    res = _build(exports, "sep", out, "--cache-dir", str(small_fs))
    assert res.exit_code == 0, res.output  # the engine is complete: caching is best effort
    assert "warning: engine not cached" in res.output and "No space left" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.blob").stat().st_size == manifest["payload"]["plan_bytes"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory wanrt cannot write: mode 0555 for a user, a read-only tmpfs for root."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("platform: mount is not permitted here")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_cache_generate_runs_without_it(exports, read_only_dir, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    env = {**os.environ, "WANRT_CACHE_DIR": str(read_only_dir / "cache")}
    r = subprocess.run([sys.executable, "-m", "wanrt", "generate", "--image", str(tmp_path / "in.png"), "--prompt",
                        "x", "--backend", "ov", "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True,
                       env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: cache")]
    assert len(warnings) == 1 and "working without it" in warnings[0]  # one line, however many folders
    assert (tmp_path / "o.mp4").stat().st_size > 0
