"""The command list: fast (no torch import), disabled subcommands listed with the reason and refused before any work,
`wanrt weights` alone prints its help."""

from __future__ import annotations

import subprocess
import sys
import time

from wanrt.commands import main as cli

# A meta-path finder that makes imageio look uninstalled (as in the README's demo environment, without [video]).
_NO_IMAGEIO = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("imageio", "imageio_ffmpeg"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Hide())
"""


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_help_lists_commands_without_importing_torch():
    code = """
import sys, time
t0 = time.perf_counter()
from wanrt.commands.main import cli
try:
    cli(["--help"])
except SystemExit:
    pass
print(f"SECONDS {time.perf_counter() - t0:.3f}")
print("TORCH", "torch" in sys.modules)
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    for name in cli.SUBCOMMANDS:
        assert f"  {name} " in r.stdout, name
    assert "TORCH False" in r.stdout
    seconds = float(r.stdout.split("SECONDS ")[1].split()[0])
    # 2.5 s when listing imported every command module (torch, diffusers); ~0.05 s now, slack for a busy machine
    assert seconds < 1.0, seconds
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_every_subcommand_has_a_listed_summary():
    for name in cli.SUBCOMMANDS:
        assert cli.short_help(name), f"no docstring found for {name} without importing it"


def test_missing_optional_dependency_disables_the_subcommand_before_work():
    prelude = _NO_IMAGEIO + "from wanrt.commands.main import main\nsys.argv = ['wanrt'] + sys.argv[1:]\nmain()\n"
    listing = _run(prelude, "--help")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.strip().startswith("generate"))
    assert "disabled" in line and "imageio" in line
    t0 = time.perf_counter()
    r = _run(prelude, "generate", "--image", "in.png", "--prompt", "a cat", "-o", "out.mp4")
    seconds = time.perf_counter() - t0
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == ["error: 'wanrt generate' is disabled: needs imageio: pip install "
                                             "'wanrt[video]'"]
    assert seconds < 10  # refused at once: no model, no pipeline (the whole run took minutes before)


def test_missing_requirement_reports_what_to_install(monkeypatch):
    monkeypatch.setitem(cli.REQUIRES, "bench", ((("no_such_module_wanrt",), "pip install something"),))
    assert cli.missing_requirement("bench") == "needs no_such_module_wanrt: pip install something"
    assert cli.missing_requirement("presets") is None


def test_group_without_subcommand_prints_its_help():
    r = subprocess.run([sys.executable, "-m", "wanrt", "weights"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: wanrt weights") and "fetch" in r.stdout and "error" not in r.stderr


def test_expected_third_party_notices_are_dropped_and_others_kept(caplog):
    import logging

    from wanrt.quiet import quiet_expected_notices

    quiet_expected_notices()
    log = logging.getLogger("modelopt.onnx")
    with caplog.at_level(logging.INFO, logger="modelopt.onnx"):
        log.error("Failed to get GPU count: NVML Shared Library Not Found")  # what a CPU-only FP8 build logged
        log.error("Failed to quantize node X")  # a real problem still shows
    assert [r.getMessage() for r in caplog.records] == ["Failed to quantize node X"]
