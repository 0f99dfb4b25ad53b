"""Issue 16, artifacts as a user or attacker meets them: --force never deletes dot-entries (item 1), a swapped
model.onnx is refused on load (2), verify sees dot-names and never opens a FIFO, prints bounded output and says
when hashes were not checked (3, 14, 17), safetensors outputs honour the umask (5), one bounded JSON reader and a
NaN-refusing writer (13), a SIGKILLed writer's lock is swept (16), a shard-index traversal names the index (17).
One tiny export, shared by the module."""

from __future__ import annotations

import json
import math
import os
import shutil
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from wanrt.artifacts import check_output_dir, command_line, read_manifest, write_json
from wanrt.commands.main import cli as main
from wanrt.errors import BadInputError


def wanrt(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "wanrt", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def one_error_line(out: str) -> str:
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in out and len(errors) == 1, out[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust2-artifacts") / "export"
    r = wanrt("export", "--rank", "4", "--no-validate", "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def bundle(export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust2-bundle") / "bundle"
    r = CliRunner().invoke(main, ["pack", "-o", str(out), "--artifact", f"base={export}"])
    assert r.exit_code == 0, r.output
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------- item 1
def test_force_leaves_a_project_folder_with_dot_entries_untouched(export, tmp_path):
    """`wanrt export --force -o project` where project holds an export plus .git/ and .env: refused, all kept."""
    project = _copy(export, tmp_path / "project")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / ".env").write_text("SECRET=1\n")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    r = wanrt("export", "--rank", "4", "--no-validate", "--force", "-o", str(project), timeout=120)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert ".env" in line and ".git" in line and "nothing was touched" in line
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert (project / ".env").read_text() == "SECRET=1\n"
    # the same export without the user's files is wanrt's own and may be replaced
    shutil.rmtree(project / ".git")
    (project / ".env").unlink()
    assert check_output_dir(project, force=True, kind="onnx") == project


# ----------------------------------------------------------------------------------------------- item 2
def test_a_swapped_model_onnx_is_refused_before_it_runs(export, tmp_path):
    """Another graph under the export's manifest (same size, other bytes): generate --artifact refuses it in one
    line before writing a video."""
    from PIL import Image

    swapped = _copy(export, tmp_path / "swapped")
    onnx = swapped / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    r = wanrt("generate", "--backend", "ort", "--artifact", str(swapped), "--image", str(tmp_path / "in.png"),
              "--prompt", "a cat", "-o", str(tmp_path / "out.mp4"), timeout=240)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "model.onnx" in one_error_line(r.stderr) and "sha256" in r.stderr
    assert not (tmp_path / "out.mp4").exists()


# ----------------------------------------------------------------------------------------------- items 3, 14, 17
def test_verify_reports_dot_files_fifos_and_bounds_its_output(bundle, tmp_path):
    b = _copy(bundle, tmp_path / "b")
    runner = CliRunner()
    r = runner.invoke(main, ["verify", "--no-hashes", str(b)])
    assert r.exit_code == 0 and "hashes not checked" in r.output and "hashes match" not in r.output
    (b / "engines/base/.plugins").mkdir()
    (b / "engines/base/.plugins/.lib.so").write_bytes(b"\x7fELF")
    (b / "engines/base/.model.onnx.data").write_bytes(b"x")
    os.mkfifo(b / "engines/base/pipe")
    for i in range(500):
        (b / "engines/base" / f"junk{i:03d}").write_bytes(b"")
    t0 = time.monotonic()
    r = runner.invoke(main, ["verify", str(b)])
    assert time.monotonic() - t0 < 60  # a FIFO is never opened
    assert r.exit_code == 2
    assert ".plugins/.lib.so" in r.output and ".model.onnx.data" in r.output and "pipe" in r.output
    assert "... and " in r.output and len(r.output.splitlines()) < 80


def test_malformed_or_deep_bundle_manifest_is_one_line(bundle, tmp_path):
    b = _copy(bundle, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["payload"]["engines"] = "base"
    (b / "manifest.json").write_text(json.dumps(m))
    r = wanrt("verify", str(b), timeout=60)
    assert r.returncode == 2 and "malformed bundle manifest" in one_error_line(r.stderr)
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    r = wanrt("verify", str(b), timeout=60)
    assert r.returncode == 2 and "nested deeper" in one_error_line(r.stderr)


# ----------------------------------------------------------------------------------------------- item 5
def test_safetensors_outputs_honour_the_umask(tmp_path):
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import ModelSpec, load_transformer

    lora = synthetic_lora(load_transformer(ModelSpec("tiny")), 4, "all", seed=1)
    old = os.umask(0o022)
    try:
        path = save_lora_file(lora, tmp_path / "l.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors alone writes 0600


# ----------------------------------------------------------------------------------------------- item 13
def test_deep_lora_metadata_and_nan_writes(export, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from wanrt.export.lora_formats import METADATA_KEY

    lora = tmp_path / "deep.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.zeros((4, 24), np.float32),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": np.zeros((24, 4), np.float32)}, str(lora),
              metadata={METADATA_KEY: "[" * 100_000 + "]" * 100_000})
    r = wanrt("pack", "-o", str(tmp_path / "b"), "--artifact", f"base={export}", "--lora", f"x={lora}",
              timeout=60)
    assert "RecursionError" not in r.stderr and "Traceback" not in r.stderr
    # metadata too deep to be a peft config is read (bounded) and ignored like unparsable metadata
    assert "ignoring unparsable" in r.stderr, r.stderr[-2000:]
    with pytest.raises(BadInputError, match=r"payload\.score is not a finite number"):
        write_json(tmp_path / "m.json", {"payload": {"score": math.nan}})
    assert not (tmp_path / "m.json").exists()


# ----------------------------------------------------------------------------------------------- item 16
def test_a_sigkilled_writers_lock_is_taken_over(tmp_path):
    code = ("import sys, time; from wanrt.artifacts import claim_output_dir\n"
            f"with claim_output_dir({str(tmp_path / 'out')!r}):\n    print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    lock = tmp_path / ".out.lock"
    assert lock.exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    from wanrt.artifacts import atomic_output_dir, build_manifest, write_manifest

    with atomic_output_dir(tmp_path / "other", kind="onnx") as tmp:  # any later writer beside it sweeps it
        write_manifest(tmp, build_manifest("onnx", {}, {}))
    assert not lock.exists()
    with atomic_output_dir(tmp_path / "out", kind="onnx") as tmp:
        write_manifest(tmp, build_manifest("onnx", {}, {}))
    assert read_manifest(tmp_path / "out")["contents"] == {}


# ----------------------------------------------------------------------------------------------- item 17
def test_shard_index_traversal_names_the_index(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    index = ckpt / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"blocks.0.attn1.to_q.weight": "../../etc/passwd"}}))
    r = wanrt("extract", "--finetuned", str(ckpt), "--rank", "4", "-o", str(tmp_path / "x"), timeout=120)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert index.name in line and "outside" in line and "manifest.json" not in line


def test_command_line_is_the_command_that_can_be_pasted_back():
    """Every result records its command through command_line: shell-quoted, so an argument with a space (a bench's
    `--targets "ov bf16,ort fp32"`) comes back as one argument."""
    argv = ["--targets", "ov bf16,ort fp32", "--rounds", "10,40", "-o", "it's/here"]
    line = command_line(argv, "wanrt.tools.bench_lora_forms")
    assert line.startswith("python -m wanrt.tools.bench_lora_forms --targets 'ov bf16,ort fp32' --rounds 10,40 -o ")
    assert shlex.split(line) == ["python", "-m", "wanrt.tools.bench_lora_forms", *argv]
