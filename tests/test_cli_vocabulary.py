"""One flag vocabulary: every subcommand that takes a flag gives it the same name, meaning and default; old
spellings still work for one release, each with one deprecation line. Parsing only (click contexts): fast."""

from __future__ import annotations

import importlib
from pathlib import Path

import click
import pytest

from wanrt.commands import main as cli
from wanrt.commands.flags import VOCABULARY


def _commands() -> dict[str, click.Command]:
    out = {}
    for name, (module, attr) in cli.SUBCOMMANDS.items():
        cmd = getattr(importlib.import_module(module), attr)
        if isinstance(cmd, click.Group):
            out.update({f"{name} {sub}": c for sub, c in cmd.commands.items()})
        else:
            out[name] = cmd
    return out


def _option(cmd: click.Command, flag: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts and not p.hidden), None)


def _params(cmd: click.Command, args: list[str], name: str = "wanrt") -> dict:
    ctx = cmd.make_context(name, list(args))  # click consumes the list it parses
    return ctx.params


def test_each_vocabulary_flag_has_one_default_everywhere():
    commands = _commands()
    seen = {}
    for flag, (_, default) in VOCABULARY.items():
        for cname, cmd in commands.items():
            opt = _option(cmd, flag)
            if opt is None or default is None:
                continue
            value = opt.get_default(click.Context(cmd), call=True)
            if value is None:  # resolved later from other flags (e.g. bench's --targets from --target-sets)
                continue
            seen.setdefault(flag, []).append(cname)
            assert value == default, f"{cname} {flag} defaults to {value!r}, the vocabulary says {default!r}"
    # the checks above ran where it matters: --model on every command that loads a model, bench included
    assert {"export", "bench", "generate"} <= set(seen["--model"])


def test_old_names_are_hidden_and_flags_mean_one_thing():
    commands = _commands()
    for cname, cmd in commands.items():
        visible = {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts}
        for old in ("--trt", "--modes", "--lora-seed", "--trt-precision", "--artifacts", "--max-batch"):
            assert old not in visible, f"{cname} still shows {old}"
        engine = _option(cmd, "--engine")
        assert engine is None or engine.is_flag, f"{cname}: --engine is a directory (use --artifact)"
        batch = _option(cmd, "--batch")
        if batch is not None and cname != "bench":
            assert batch.type == click.STRING or isinstance(batch.type, click.types.StringParamType), cname
    assert _option(commands["bench"], "--artifact") and _option(commands["generate"], "--artifact")
    assert _option(commands["build"], "--flavour") and _option(commands["export"], "--flavour")


@pytest.mark.parametrize("cname, args, key, value", [
    ("build", ["ONNX", "--trt", "rtx"], "flavour", "rtx"),
    ("export", ["--max-batch", "1"], "batch", "1..1"),
    ("bench", ["--modes", "full"], "lora_modes", "full"),
    ("bench", ["--lora-seed", "3"], "seed", 3),
    ("bench", ["--trt-precision", "fp8"], "precision", "fp8"),
    ("bench", ["--artifacts", "somewhere"], "cache_dir", "somewhere"),
    ("bench", ["--engine", "some/dir"], "artifact", "some/dir"),
    ("generate", ["--image", "x.png", "--prompt", "p", "-o", "x.mp4", "--engine", "d"], "artifact", "d"),
    ("weights fetch", ["--cache-dir", "w"], "cache_dir", Path("w")),
])
def test_deprecated_spelling_still_works_with_one_line(cname, args, key, value, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ONNX").mkdir()
    params = _params(_commands()[cname], args)
    assert params[key] == value
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {args[-2]} is deprecated"), err


def test_new_spellings(capfd, tmp_path):
    commands = _commands()
    assert _params(commands["build"], [str(tmp_path), "--flavour", "rtx"])["flavour"] == "rtx"
    assert _params(commands["bench"], ["--rank", "16"])["ranks"] == "16"
    assert _params(commands["bench"], ["--lora-mode", "separate"])["lora_modes"] == "separate"
    assert _params(commands["bench"], ["--backend", "ort"])["backends"] == "ort"
    assert capfd.readouterr().err == ""  # new names: no deprecation line


def _sweep(args: list[str]) -> tuple[dict, dict]:
    from wanrt.commands.bench import _bench_sweep, bench

    with bench.make_context("bench", list(args)) as ctx:
        params = dict(ctx.params)
        return _bench_sweep(params), params


def test_bench_sweep_defaults_study_and_target_sets(capfd):
    short, params = _sweep([])
    assert short == {"ranks": (4, 16), "modes": ("merged", "separate"), "targets": ("all",)}
    assert params["model"] == "tiny"
    study, params = _sweep(["--study"])
    assert study == {"ranks": (4, 8, 16, 64), "modes": ("merged", "separate", "full"),
                     "targets": ("all", "cross-attn")}
    assert params["model"] == "small"
    assert _sweep(["--study", "--model", "tiny", "--ranks", "8"])[1]["model"] == "tiny"  # flags given win
    assert _sweep(["--study", "--ranks", "8"])[0]["ranks"] == (8,)
    # one target set takes the same syntax as on export (a union); a sweep repeats --target-sets
    assert _sweep(["--targets", "self-attn+ffn"])[0]["targets"] == ("self-attn,ffn",)
    sets = _sweep(["--target-sets", "all", "--target-sets", "self-attn,ffn"])[0]["targets"]
    assert sets == ("all", "self-attn,ffn")
    assert capfd.readouterr().err == ""
    # bench's old list-of-sets meaning of --targets works for one release, with one line
    assert _sweep(["--targets", "all,cross-attn"])[0]["targets"] == ("all", "cross-attn")
    assert capfd.readouterr().err.count("deprecated") == 1


def test_export_targets_accept_the_bench_join():
    from wanrt.commands.options import lora_spec_from_kwargs

    kw = {"lora_file": None, "targets": "self-attn+ffn", "lora_mode": "merged", "lora_scale": 1.0, "seed": 0,
          "allow_pickle": False}
    assert lora_spec_from_kwargs(kw, 16).targets == "self-attn,ffn"


def test_export_default_output_names_the_export():
    from wanrt.commands.export import default_output

    kw = {"model": "tiny", "layers": None, "rank": "16", "ranks": None, "lora_file": None, "lora_mode": "merged",
          "dtype": None}
    assert str(default_output(kw)) == "wanrt-out/tiny-r16-merged-fp32"
    kw.update(model="/models/Wan2.1-I2V-14B-480P-Diffusers/", layers=2, rank=None, ranks="4,8", dtype="bf16",
              lora_mode="separate")
    assert str(default_output(kw)) == "wanrt-out/Wan2.1-I2V-14B-480P-Diffusers-l2-r4-8-separate-bf16"
