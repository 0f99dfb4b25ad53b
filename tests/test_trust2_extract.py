"""`wanrt extract` on fine-tunes a user or an attacker can hand it: NaN/Inf anywhere (a target Linear, or a norm
outside the targets), integer or complex weights. Each is one line on stderr, exit 2, nothing written; and what
extract does write is strict JSON (no bare NaN/Infinity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from wanrt.export.model import ModelSpec, load_transformer


@pytest.fixture(scope="module")
def tiny_state():
    return {n: p.detach().clone() for n, p in load_transformer(ModelSpec("tiny")).named_parameters()}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _extract(finetuned: str, out: Path):
    from wanrt.commands.main import cli

    return CliRunner().invoke(cli, ["extract", "--model", "tiny", "--finetuned", finetuned, "--rank", "2",
                                    "-o", str(out)])


def _refused(r, out: Path, *needles: str) -> None:
    # progress lines (SVD i/n) may come first: the values are checked as each tensor streams in
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert len(errors) == 1 and r.output.strip().splitlines()[-1] == errors[0], r.output
    assert "Traceback" not in r.output and all(n in errors[0] for n in needles), errors[0]
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("name, value", [
    ("blocks.0.attn1.to_q.weight", float("nan")),  # a target: was a LinAlgError traceback
    ("blocks.1.ffn.net.2.weight", float("inf")),  # a target
    ("blocks.0.norm2.weight", float("nan")),  # outside the targets: was carried into the report as NaN
    ("condition_embedder.time_proj.bias", float("-inf")),  # a Linear outside the targets
])
def test_non_finite_finetune_is_one_line_naming_the_tensor(tiny_state, tmp_path, name, value):
    state = dict(tiny_state)
    state[name] = state[name].clone()
    state[name].view(-1)[3] = value
    ft = _save(state, tmp_path / "ft.safetensors")
    out = tmp_path / "out"
    _refused(_extract(str(ft), out), out, name, "NaN" if value != value else "Inf")


@pytest.mark.parametrize("dtype", [torch.int8, torch.complex64])
def test_non_float_finetune_is_refused(tiny_state, tmp_path, dtype):
    state = dict(tiny_state)
    name = "blocks.0.attn1.to_k.weight"
    state[name] = (state[name] * 10).to(dtype)
    ft = _save(state, tmp_path / "ft.safetensors")
    out = tmp_path / "out"
    _refused(_extract(str(ft), out), out, name, "I8" if dtype == torch.int8 else "C64")


def test_manifest_is_strict_json(tmp_path):
    """The synthetic fine-tune changes norm2.bias, which is all zeros in the base: its relative delta used to be
    written as a bare `Infinity`, which strict JSON readers (jq, JavaScript) reject."""
    out = tmp_path / "out"
    r = _extract("synthetic", out)
    assert r.exit_code == 0, r.output

    def refuse(token):
        raise AssertionError(f"manifest.json holds {token}")

    manifest = json.loads((out / "manifest.json").read_text(), parse_constant=refuse)
    zero_base = [o for o in manifest["payload"]["not_low_rank"] if o["name"] == "blocks.0.norm2.bias"]
    assert zero_base and zero_base[0]["relative_delta"] is None and zero_base[0]["delta_energy"] > 0
