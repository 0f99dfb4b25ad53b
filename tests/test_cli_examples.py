"""The README's first engine example as a user types it, on a machine without a GPU: `wanrt export --rank 16` (no -o)
then `wanrt build` of that directory builds; `--dry-run` predicts what the real build does here; `wanrt refit` on
the result names the real cause (auto chose a non-refittable engine, no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

def _wanrt(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANRT_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "wanrt", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def cpu_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU (the CPU-only builder; tests/test_engines_gpu.py builds on one)")


def test_export_then_build_on_a_cpu(tmp_path, cpu_only):
    r = _wanrt(tmp_path, "export", "--rank", "16", "--no-validate")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "wanrt-out" / "tiny-r16-merged-fp32"
    assert f"output: {out.relative_to(tmp_path)}" in r.stderr and (out / "model.onnx").is_file()
    # the local builder cannot take opset 23, so the export picked 18 and said so
    assert json.loads((out / "manifest.json").read_text())["specs"]["export"]["opset"] == 18
    assert "opset 18" in r.stderr

    dry = _wanrt(tmp_path, "build", str(out), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "not refittable" in " ".join(dry.stdout.split())  # what the real build below does

    built = _wanrt(tmp_path, "build", str(out))
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = json.loads((out / "engine" / "manifest.json").read_text())
    assert manifest["payload"]["lora"]["refit"] is None and manifest["payload"]["gpu"] is None

    refit = _wanrt(tmp_path, "refit", str(out / "engine"), "--rank", "8")
    assert refit.returncode == 2
    line = refit.stderr.strip()
    assert "\n" not in line and "built without a GPU" in line and "--refit yes" not in line, line


def test_build_refuses_an_opset_23_export_up_front(tmp_path, cpu_only):
    r = _wanrt(tmp_path, "export", "--rank", "4", "--opset", "23", "--no-validate", "-o", "o23")
    assert r.returncode == 0, r.stderr[-2000:]
    dry = _wanrt(tmp_path, "build", "o23", "--dry-run")
    assert dry.returncode == 0 and "refused" in dry.stdout and "--opset 18" in " ".join(dry.stdout.split())
    built = _wanrt(tmp_path, "build", "o23")
    assert built.returncode == 2 and "opset 23" in built.stderr and "--opset 18" in built.stderr
    assert not (tmp_path / "o23" / "engine").exists()
