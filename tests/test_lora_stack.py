"""LoRA stacks (issue 18): several LoRAs at their strengths as one branch, against diffusers' own stacking
(`load_lora_weights` twice + `set_adapters(adapter_weights=...)`), and changed by a swap without a rebuild.

Tolerances: 1e-4 relative (max abs error / max abs reference) between diffusers eager and wanrt's exports (fp32, the
same function computed by other kernels); 1e-5 between a swapped engine and a fresh export of the new stack (same
graph, same arithmetic: only the LoRA tensors' source differs)."""

from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import WanImageToVideoPipeline

from wanrt.commands.main import cli
from wanrt.dit_io import VideoShape
from wanrt.errors import BadInputError, LoraError
from wanrt.export.api import LoraSpec, export_model, resolve_lora
from wanrt.export.lora import pad_rank, stack_loras, synthetic_lora
from wanrt.export.lora_formats import load_lora_file, save_lora_file
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.export.onnx_export import ExportSpec
from wanrt.parse import LoraEntry, parse_lora_entry
from wanrt.runtime.backends import OrtBackend
from wanrt.runtime.flops import forward_flops, lora_branches
from wanrt.tools.bench_lora_stack import write_stack

PARITY_TOL, SWAP_TOL = 1e-4, 1e-5


def _inputs(model, seed=0):
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, c.in_channels, 1, 4, 4, generator=gen), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 512, c.text_dim, generator=gen),
                encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=gen), return_dict=False)


def _rel(got, want) -> float:
    got, want = torch.as_tensor(np.asarray(got)), torch.as_tensor(np.asarray(want))
    return float((got - want).abs().max() / want.abs().max())


def _ort(directory, inputs) -> torch.Tensor:
    backend = OrtBackend(directory)
    return backend(inputs["hidden_states"], inputs["timestep"], inputs["encoder_hidden_states"],
                   inputs["encoder_hidden_states_image"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two LoRA files of different formats, ranks and targets: a rank-8 'distill' on every target in diffusers
    format, a rank-4 'style' on cross-attention in ComfyUI format with alpha != rank."""
    tmp = tmp_path_factory.mktemp("stack")
    model = load_transformer(ModelSpec("tiny"))
    distill = synthetic_lora(model, 8, "all", seed=11)
    style = synthetic_lora(model, 4, "cross-attn", seed=12, relative_norm=0.2)
    for m in style.modules.values():
        m.alpha = 2.0
    return {"distill": save_lora_file(distill, tmp / "distill.safetensors", "diffusers"),
            "style": save_lora_file(style, tmp / "style.safetensors", "comfyui"), "tmp": tmp}


def _diffusers_stack(files, strengths) -> torch.Tensor:
    """The outside reference: diffusers loads each file (its own converters) and stacks them by set_adapters."""
    model = load_transformer(ModelSpec("tiny"))
    for name in ("distill", "style"):
        state = WanImageToVideoPipeline.lora_state_dict(str(files[name]))
        WanImageToVideoPipeline.load_lora_into_transformer(state, transformer=model, adapter_name=name)
    model.set_adapters(["distill", "style"], weights=list(strengths))
    with torch.no_grad():
        return model(**_inputs(model))[0]


def _spec(files, strengths, mode, **kw) -> LoraSpec:
    return LoraSpec(file=str(files["distill"]), scale=strengths[0], mode=mode,
                    stack=(LoraEntry(file=str(files["style"]), strength=strengths[1]),), **kw)


@pytest.fixture(scope="module")
def exports(files):
    out = {}
    for mode in ("merged", "separate"):
        out[mode] = files["tmp"] / mode
        export_model(ModelSpec("tiny"), _spec(files, (0.6, 1.2), mode), ExportSpec(validate=False), out[mode],
                     progress=False)
    return out


def test_merged_and_separate_stacks_match_diffusers_set_adapters(files, exports):
    want = _diffusers_stack(files, (0.6, 1.2))
    base = load_transformer(ModelSpec("tiny"))
    with torch.no_grad():
        assert _rel(base(**_inputs(base))[0], want) > 1e-3  # the stack visibly changes the output
    for mode, directory in exports.items():
        assert _rel(_ort(directory, _inputs(base)), want) <= PARITY_TOL, mode


def test_strength_change_and_fewer_loras_by_swap_equal_a_fresh_export(files, exports):
    model = load_transformer(ModelSpec("tiny"))
    backend = OrtBackend(exports["separate"])
    distill = load_lora_file(files["distill"], model, lora_scale=1.0)
    style = load_lora_file(files["style"], model, lora_scale=0.3)
    backend.set_loras([distill, style], ["distill", "style"])
    fresh = files["tmp"] / "fresh"
    export_model(ModelSpec("tiny"), _spec(files, (1.0, 0.3), "separate"), ExportSpec(validate=False), fresh,
                 progress=False)
    inputs = _inputs(model)
    run = (inputs["hidden_states"], inputs["timestep"], inputs["encoder_hidden_states"],
           inputs["encoder_hidden_states_image"])
    assert _rel(backend(*run), _ort(fresh, inputs)) <= SWAP_TOL
    backend.set_loras([style], ["style"])  # fewer LoRAs: zero branches where the style has none
    only_style = files["tmp"] / "only-style"
    export_model(ModelSpec("tiny"), LoraSpec(file=str(files["style"]), scale=0.3, mode="separate"),
                 ExportSpec(validate=False), only_style, progress=False)
    assert _rel(backend(*run), _ort(only_style, inputs)) <= SWAP_TOL


def test_merge_keeps_a_lora_in_the_base_while_the_branch_swaps(files, tmp_path):
    """--merge distill + --lora style separate: the same function as merging both; a refit of the style's
    strength rebuilds the base with the distill folded in."""
    model = load_transformer(ModelSpec("tiny"))
    inputs = _inputs(model)
    mixed = tmp_path / "mixed"
    spec = LoraSpec(file=str(files["style"]), scale=1.2, mode="separate",
                    merge=(LoraEntry(file=str(files["distill"]), strength=0.6),))
    manifest = export_model(ModelSpec("tiny"), spec, ExportSpec(validate=False), mixed, progress=False)
    assert [e["label"] for e in manifest["payload"]["lora"]["merged_in"]] == ["distill"]
    assert set(manifest["payload"]["lora"]["initializers"]) == set(
        n for n in manifest["payload"]["lora"]["initializers"] if ".attn2." in n)  # only the style's modules
    assert _rel(_ort(mixed, inputs), _diffusers_stack(files, (0.6, 1.2))) <= PARITY_TOL


def test_stack_maths_and_rank_budget(tiny_model):
    a = synthetic_lora(tiny_model, 4, "all", seed=1)
    b = synthetic_lora(tiny_model, 2, "cross-attn", seed=2)
    a.lora_scale, b.lora_scale = 0.5, 2.0
    stacked = stack_loras([a, b], ["a", "b"])
    name = "blocks.0.attn2.to_k"
    assert stacked.modules[name].rank == 6 and stacked.modules["blocks.0.attn1.to_q"].rank == 4
    want = a.modules[name].delta(0.5) + b.modules[name].delta(2.0)
    torch.testing.assert_close(stacked.delta(name), want, rtol=1e-5, atol=1e-6)
    assert [e["strength"] for e in stacked.source["stack"]] == [0.5, 2.0]
    padded = pad_rank(stacked, 8)
    assert padded.modules[name].rank == 8
    torch.testing.assert_close(padded.delta(name), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(LoraError, match="exceeds --max-rank 5"):
        pad_rank(stacked, 5)
    spec = LoraSpec(rank=4, mode="separate", stack=(LoraEntry(rank=2, strength=0.5),), max_rank=16)
    lora, _ = resolve_lora(tiny_model, spec)
    assert lora.ranks == {16}


def test_entry_syntax():
    assert parse_lora_entry("a/b.safetensors:0.6") == LoraEntry(file="a/b.safetensors", strength=0.6)
    assert parse_lora_entry("C:/x/b.safetensors") == LoraEntry(file="C:/x/b.safetensors")  # ':' in a path
    assert parse_lora_entry("synthetic:64:1.5") == LoraEntry(rank=64, strength=1.5)
    for bad in ("synthetic:0", "synthetic:x", ""):
        with pytest.raises(BadInputError):
            parse_lora_entry(bad)
    assert LoraSpec(stack=[{"file": "x", "rank": None, "strength": 2.0}]).stack == (LoraEntry(file="x", strength=2.0),)


def test_cli_refuses_a_rerank_of_a_stack_and_names_the_output_by_its_loras(files, tmp_path):
    res = CliRunner().invoke(cli, ["export", "--lora", f"{files['distill']}:0.5", "--lora", "synthetic:4",
                                   "--rank", "2", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "a stack keeps each LoRA's rank" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    res = CliRunner().invoke(cli, ["export", "--lora", "missing.safetensors:0.5", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "missing.safetensors" in res.output and not (tmp_path / "y").exists()


def test_openvino_refit_cli_changes_strengths_without_recompiling(files, exports, tmp_path):
    """`wanrt refit ENGINE --lora a:S --lora b:S` on an OpenVINO engine: the blob is the same bytes, the output is a
    fresh export's of the new stack (same engine arithmetic, fp32)."""
    from wanrt.engines.openvino.engine import OvEngine, OvEngineSpec, build_openvino_engine

    spec = OvEngineSpec(precision="fp32", cache_dir=str(tmp_path / "cache"))
    engine = tmp_path / "engine"
    build_openvino_engine(exports["separate"], spec, engine)
    new = tmp_path / "new"
    res = CliRunner().invoke(cli, ["refit", str(engine), "--lora", f"{files['distill']}:1.0", "--lora",
                                   f"{files['style']}:0.3", "-o", str(new)])
    assert res.exit_code == 0, res.output
    assert (new / "model.blob").read_bytes() == (engine / "model.blob").read_bytes()
    loaded = json.loads((new / "manifest.json").read_text())["payload"]["lora"]["loaded"]
    assert [e["strength"] for e in loaded["stack"]] == [1.0, 0.3]
    fresh = tmp_path / "fresh"
    export_model(ModelSpec("tiny"), _spec(files, (1.0, 0.3), "separate"), ExportSpec(validate=False), fresh,
                 progress=False)
    build_openvino_engine(fresh, spec, tmp_path / "fresh-engine")
    feeds = {k: v.numpy() for k, v in _feeds().items()}
    assert _rel(OvEngine(new).infer(feeds), OvEngine(tmp_path / "fresh-engine").infer(feeds)) <= SWAP_TOL
    res = CliRunner().invoke(cli, ["refit", str(engine), "--lora", "synthetic:16", "-o", str(tmp_path / "big")])
    assert res.exit_code == 2 and "exceeds the engine's rank" in res.output and not (tmp_path / "big").exists()


def _feeds() -> dict[str, torch.Tensor]:
    i = _inputs(load_transformer(ModelSpec("tiny")))
    return {"latents": i["hidden_states"], "timestep": i["timestep"], "text": i["encoder_hidden_states"],
            "image": i["encoder_hidden_states_image"]}


def test_stack_bench_flop_shares_add_up_by_rank(tmp_path):
    """tools/bench_lora_stack's FLOP share per deployment: a stack is one branch of the summed rank, so its share is
    the distill's plus the style's (branch FLOPs are linear in rank), and merged-all has none."""
    spec, shape = ModelSpec("tiny"), VideoShape(5, 32, 32)
    files, shares = write_stack(spec, Namespace(distill_rank=8, style_rank=4, style_targets="cross-attn"), shape,
                                tmp_path)
    model = load_transformer(spec)
    distill = forward_flops(model.config, shape.latent, lora=lora_branches(load_lora_file(files["distill"], model)),
                            mode="separate")["lora_share"]
    assert shares["merged-all"] == 0.0 and 0 < shares["distill merged + style separate"] < distill
    assert shares["all separate"] == pytest.approx(distill + shares["distill merged + style separate"], rel=1e-12)
