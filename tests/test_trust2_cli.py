"""The command line as a newcomer meets it (issue 16): every `--help` instant (no torch), help that works without
the subcommand's extra, sectioned and 80 columns wide; every old spelling the README promises accepted; bad numbers
(negative counts, nan/inf) refused in one line before any work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from wanrt.commands import main as wcli
from wanrt.commands.options import FiniteFloat

README = Path(__file__).resolve().parents[1] / "README.md"
HEAVY = ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "ray", "openvino")


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**__import__("os").environ, "COLUMNS": "80"})


# One process runs every subcommand's --help and a usage error, then reports what got imported: deterministic
# (sys.modules), not a timing assertion.
_ALL_HELP = """
import json, sys
from wanrt.commands.main import SUBCOMMANDS, cli
out = {}
for name in SUBCOMMANDS:
    for args in ([name, "--help"], [name, "--no-such-flag"]):
        try:
            cli.main(args, prog_name="wanrt")
        except SystemExit as e:
            out[" ".join(args)] = e.code
heavy = [m for m in %r if m in sys.modules]
print("RESULT " + json.dumps({"codes": out, "heavy": heavy}))
""" % (HEAVY,)


def test_every_subcommand_help_and_usage_error_import_nothing_heavy():
    r = _run(_ALL_HELP)
    result = json.loads(r.stdout.split("RESULT ")[-1])
    assert result["heavy"] == [], result["heavy"]
    for name in wcli.SUBCOMMANDS:
        assert result["codes"][f"{name} --help"] in (0, None), (name, r.stderr[-2000:])
        assert result["codes"][f"{name} --no-such-flag"] == 2, name
    help_text = r.stdout.split("RESULT ")[0]
    too_wide = [ln for ln in help_text.splitlines() if len(ln) > 80]
    assert not too_wide, too_wide


# imageio and ray look uninstalled: the README's demo environment, without [video] / [serve]
_NO_EXTRAS = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("imageio", "imageio_ffmpeg", "ray"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Hide())
from wanrt.commands.main import main
sys.argv = ["wanrt"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("name, extra, run_args", [
    ("serve", "wanrt[serve]", ["some-bundle"]),
    ("generate", "wanrt[video]", ["--image", "in.png", "--prompt", "a cat", "-o", "out.mp4"]),
])
def test_help_works_without_the_extra_and_names_it(name, extra, run_args):
    shown = _run(_NO_EXTRAS, name, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Usage: wanrt {name}") and extra in shown.stdout
    assert "--help" in shown.stdout and "--threads" in shown.stdout  # the real options, not a stub
    refused = _run(_NO_EXTRAS, name, *run_args)
    assert refused.returncode == 3
    assert len(refused.stderr.strip().splitlines()) == 1 and extra in refused.stderr


def test_export_help_is_in_sections_with_examples_in_80_columns():
    r = CliRunner().invoke(wcli.cli, ["export", "--help"], prog_name="wanrt", terminal_width=80)
    assert r.exit_code == 0, r.output
    headings = [ln[:-1] for ln in r.output.splitlines() if ln and not ln.startswith(" ") and ln.endswith(":")]
    for section in ("Model", "LoRA", "Output", "Graph and validation", "Engine", "FP8 (--precision fp8)",
                    "OpenVINO (--flavour openvino)", "Engine cache"):
        assert section in headings, headings
    assert "Options" not in headings  # nothing left in one flat list
    assert max(len(ln) for ln in r.output.splitlines()) <= 80


def test_build_says_it_builds_openvino_too():
    assert "OpenVINO" in wcli.short_help("build")


# ------------------------------------------------------------------------------------------------ old spellings
def _old_spellings() -> list[tuple[list[str], str, str]]:
    """(commands named or [], old spelling, new spelling) for every pair in the README's paragraph."""
    text = README.read_text(encoding="utf-8")
    para = text[text.index("Old spellings keep working"):]
    para = " ".join(para[:para.index("\n\n")].split())
    para = para[:para.index("One meaning changed")]
    pairs = []
    for m in re.finditer(r"(?:(\w+)'s )?`([^`]+)`(?: \(([^)]*)\))? → `([^`]+)`", para):
        owner, old, paren, new = m.groups()
        named = [owner] if owner else []
        words = [w.strip() for w in (paren or "").split(",")]
        if words and all(w in wcli.SUBCOMMANDS for w in words):
            named = words
        if not old.startswith("--"):  # "export --rank 4,8,16", "weights fetch --cache-dir DIR"
            named, old = [old[:old.index(" --")]], old[old.index(" --") + 1:]
            new = new[len(named[0]) + 1:] if new.startswith(named[0] + " ") else new  # "serve DIR": an argument
        pairs.append((named, old, new))
    return pairs


def _args(spelling: str, tmp: Path) -> list[str]:
    """`--flag VALUE` as typed, with the placeholder values filled in."""
    fill = {"N": "2", "DIR": str(tmp), "1..N": "1..2"}
    parts = spelling.split()
    flag_values = {"--trt": "auto", "--flavour": "auto", "--modes": "merged", "--lora-modes": "merged",
                   "--lora-seed": "7", "--seed": "7", "--trt-precision": "fp16", "--precision": "fp16"}
    if not parts[0].startswith("--"):  # an argument (serve DIR)
        return [fill.get(p, p) for p in parts]
    if len(parts) == 1:
        return [parts[0], flag_values.get(parts[0], str(tmp))]
    return [parts[0]] + [fill.get(p, p) for p in parts[1:]]


def _base(path: str, tmp: Path) -> list[str]:
    """What each command requires before it parses (arguments and required options)."""
    return {"build": [str(tmp)], "refit": [str(tmp)], "pack": ["-o", str(tmp / "b")],
            "generate": ["--image", "x.png", "--prompt", "p", "-o", "o.mp4"],
            "eval": ["--ref", str(tmp), "--gen", str(tmp)],
            "extract": ["--finetuned", "synthetic", "--ranks", "4"]}.get(path, [])


def _command(path: str) -> click.Command:
    words = path.split()
    cmd = wcli.cli.get_command(None, words[0])
    for w in words[1:]:
        cmd = cmd.get_command(None, w)
    return cmd


def _parse(path: str, args: list[str]) -> dict | None:
    try:
        return _command(path).make_context(f"wanrt {path}", list(args)).params
    except click.UsageError:
        return None


def _visible(path: str, flag: str) -> bool:
    return any(flag in p.opts and not getattr(p, "hidden", False) for p in _command(path).params)


def test_readme_lists_every_old_spelling_the_code_keeps():
    from wanrt.commands.flags import DEPRECATED

    listed = {old.split()[0] for _, old, _ in _old_spellings()}
    for old in DEPRECATED:
        assert next(w for w in old.split() if w.startswith("--")) in listed, old


def test_every_old_spelling_in_the_readme_is_accepted_wherever_its_new_spelling_is(tmp_path, capsys):
    pairs = _old_spellings()
    assert len(pairs) >= 10, pairs  # the paragraph was found and read
    runner = CliRunner()
    for named, old, new in pairs:
        old_args, new_args = _args(old, tmp_path), _args(new, tmp_path)
        old_flag, new_flag = old.split()[0], new.split()[0]
        commands = named or [c for c in wcli.SUBCOMMANDS if _parse(c, _base(c, tmp_path) + new_args) is not None]
        assert commands, f"{old}: no subcommand takes {new}"
        for path in commands:
            if _visible(path, old_flag):
                # an old meaning of a flag that still exists (export --rank 4,8,16, bench --targets a,b): the
                # command reinterprets the value; run it, stopped by a later bad input so nothing heavy runs
                stop = {"export": ["--opset", "18", "--min-shape", "9x48x64", "--max-shape", "5x32x32"],
                        "bench": ["--backends", "no-such-backend"]}[path]
                r = runner.invoke(wcli.cli, [path, *old_args, *stop], prog_name="wanrt")
                assert r.exit_code == 2 and "deprecated" in r.output and new_flag in r.output, (old, r.output)
                continue
            capsys.readouterr()
            got = _parse(path, _base(path, tmp_path) + old_args)
            err = capsys.readouterr().err
            assert got is not None, f"wanrt {path} refuses {old}"
            assert got == _parse(path, _base(path, tmp_path) + new_args), (path, old)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"warning: {old_flag} is deprecated"), (path, old, err)
            assert new_flag in lines[0]


# ------------------------------------------------------------------------------------------------ numbers
def _all_params():
    for name in wcli.SUBCOMMANDS:
        cmd = wcli.cli.get_command(None, name)
        subs = cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]
        for sub in subs:
            for p in sub.params:
                yield f"{name} {sub.name}", p


def test_every_number_option_is_bounded_or_finite():
    """No bare int (a negative thread count was a traceback) and no float that takes nan/inf (a nan guidance
    wrote a video of NaNs): every float option is the one FiniteFloat type."""
    for where, p in _all_params():
        if isinstance(p.type, click.types.FloatParamType) or p.type is click.FLOAT:
            pytest.fail(f"{where} {p.opts}: a float that accepts nan/inf; use wanrt.commands.options.FiniteFloat")
        if type(p.type) is click.types.IntParamType and not p.is_flag:
            pytest.fail(f"{where} {p.opts}: an integer without a range; use click.IntRange")
    assert any(isinstance(p.type, FiniteFloat) for _, p in _all_params())


@pytest.mark.parametrize("args, flag", [
    (["generate", "--guidance", "nan"], "--guidance"),
    (["generate", "--guidance", "inf"], "--guidance"),
    (["generate", "--lora-scale", "-inf"], "--lora-scale"),
    (["generate", "--threads", "-3"], "--threads"),
    (["generate", "--steps", "0"], "--steps"),
    (["generate", "--fps", "-1"], "--fps"),
    (["bench", "--gate-psnr", "nan"], "--gate-psnr"),
    (["bench", "--settle", "inf"], "--settle"),
    (["bench", "--threads", "0"], "--threads"),
    (["export", "--layers", "-1"], "--layers"),
    (["export", "--lora-scale", "nan"], "--lora-scale"),
    (["refit", "ENGINE", "--lora-scale", "inf"], "--lora-scale"),
    (["eval", "--ref", "REF", "--gen", "REF", "--batch-size", "0"], "--batch-size"),
])
def test_bad_number_is_one_line_exit_2_and_writes_nothing(tmp_path, args, flag):
    args = [str(tmp_path) if a in ("ENGINE", "REF") else a for a in args]
    out = tmp_path / "out.mp4"
    if args[0] == "generate":
        args += ["--image", str(tmp_path / "in.png"), "--prompt", "a cat", "-o", str(out)]
    r = subprocess.run([sys.executable, "-m", "wanrt", *args], capture_output=True, text=True, timeout=120,
                       check=False, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], r.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ wording
def test_a_missing_lora_reads_the_same_in_export_and_refit(tmp_path):
    from wanrt.engines.trt.refit import check_new_lora
    from wanrt.errors import LoraError

    missing = tmp_path / "nope.safetensors"
    runner = CliRunner()
    export = runner.invoke(wcli.cli, ["export", "--lora", str(missing), "-o", str(tmp_path / "x")], prog_name="wanrt")
    with pytest.raises(LoraError) as refit:
        check_new_lora(str(missing), None, None)
    expected = f"LoRA file not found: {missing}"
    assert expected in export.output and export.exit_code == 2
    assert str(refit.value) == expected
    assert not (tmp_path / "x").exists()
