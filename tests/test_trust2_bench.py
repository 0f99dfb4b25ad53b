"""`wanrt bench` as a newcomer meets it (issue 16): a device or precision the machine lacks is refused before any
work in one line, default outputs of different benches never collide, and each backend's MFU is taken against the
peak of its own kernel. Tiny preset, one point, eager (+ OpenVINO fp32): seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from wanrt.commands.main import cli

QUICK = ["bench", "--model", "tiny", "--ranks", "1", "--lora-modes", "merged", "--no-base", "--repeats", "1",
         "--warmup", "0", "--retries", "0", "--settle", "0", "--peak-size", "64"]


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    return {"WANRT_CACHE_DIR": str(tmp_path / "cache"), **extra}


def _one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU (this one has CUDA)")
def test_cuda_on_a_cpu_only_machine_is_refused_before_any_work(tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(cli, [*QUICK, "--device", "cuda", "-o", str(out)], env=_env(tmp_path))
    assert res.exit_code in (2, 3), res.output  # 3: the CUDA build of torch is what is missing
    assert "cuda" in _one_line(res).lower() and not out.exists() and not (tmp_path / "cache").exists()


def test_ov_precision_the_cpu_lacks_is_refused_up_front(tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(cli, [*QUICK, "--backends", "eager,ort,ov", "--precision", "bf16", "-o", str(out)],
                             env=_env(tmp_path, WANRT_OV_CAPABILITIES="FP32,INT8"))  # an AVX2-only CPU
    assert res.exit_code == 2, res.output
    line = _one_line(res)
    assert "no BF16 support" in line and "capabilities FP32, INT8" in line  # what the CPU offers
    assert not out.exists() and not (tmp_path / "cache").exists()  # no sweep, no export


def test_default_outputs_of_two_benches_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for ranks in ("1", "2"):  # the README's benches, one after another, without -o or --force
        res = CliRunner().invoke(cli, [*QUICK, "--backends", "eager", "--ranks", ranks], env=_env(tmp_path))
        assert res.exit_code == 0, res.output
    runs = sorted((tmp_path / "bench-results").iterdir())
    assert len(runs) == 2 and all((r / "results.json").is_file() for r in runs)
    assert all(r.name.startswith("tiny-eager-fp32-") for r in runs)


def test_mfu_is_taken_against_each_backends_own_kernel(tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(cli, [*QUICK, "--backends", "eager,ov", "--precision", "fp32", "-o", str(out)],
                             env=_env(tmp_path))
    assert res.exit_code == 0, res.output
    p = json.loads((out / "results.json").read_text())["payload"]
    kernels = {r["backend"]: r["peak_kernel"] for r in p["runs"]}
    assert kernels == {"eager": "F.linear fp32", "ov": "OpenVINO FC fp32"}
    for r in p["runs"]:
        peak = p["peak"]["kernels"][r["peak_kernel"]]
        assert peak["tflops"] == max(peak["tflops"], peak["end"]["tflops"]) > 0
        assert r["mfu"] == pytest.approx(r["tflops"] / peak["tflops"])
