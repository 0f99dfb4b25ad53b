"""`wanrt extract` and `--finetuned`: exactness of the SVD extraction, energies, file round trips through every
format wanrt reads, the real checkpoint layouts (diffusers, sharded, ComfyUI, bf16), and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from wanrt.errors import LoraError, ModelSourceError
from wanrt.export.extract import ExtractSpec, extract_lora, extract_to_dir, truncated_svd
from wanrt.export.finetuned import (CheckpointWeights, ModuleWeights, SyntheticFinetune, SyntheticWeights,
                                   check_geometry, load_finetuned_into, to_wan_param_name, wan_keys_to_diffusers)
from wanrt.export.lora import TARGET_GROUPS, linear_modules, merge_lowrank_into
from wanrt.choices import LoraFormat
from wanrt.export.lora_formats import load_lora_file
from wanrt.export.model import ModelSpec, load_transformer

TINY = ModelSpec("tiny")


def finetune_of(synthetic: SyntheticFinetune, spec: ModelSpec = TINY) -> torch.nn.Module:
    """The synthetic fine-tune of a preset as a model of its own."""
    model = load_transformer(spec)
    load_finetuned_into(model, SyntheticWeights(ModuleWeights(model), model, synthetic))
    return model


def deltas(base, ft) -> dict[str, torch.Tensor]:
    b = dict(base.named_parameters())
    return {n: p.detach().float() - b[n].detach().float() for n, p in ft.named_parameters()}


@pytest.fixture(scope="module")
def saved_finetune(tmp_path_factory):
    """A fine-tune saved by the test in diffusers layout (sharded), as users have them."""
    ft = finetune_of(SyntheticFinetune(exponent=0.5, seed=3))
    path = tmp_path_factory.mktemp("ft") / "transformer"
    ft.save_pretrained(path, max_shard_size="40KB")
    assert len(list(path.glob("*.safetensors"))) > 1  # really sharded
    return path, ft


def test_exactly_rank_r_finetune_is_recovered_at_rank_r():
    base = load_transformer(TINY)
    ft = finetune_of(SyntheticFinetune(rank=3, seed=1))
    result = extract_lora(base, ModuleWeights(base), ModuleWeights(ft), ExtractSpec("exact", ranks=(3,)))
    d = deltas(base, ft)
    lora = result.loras[3]
    assert len(lora.modules) == 2 * len(TARGET_GROUPS["all"])  # every block Linear of both blocks
    for name, m in lora.modules.items():
        want = d[f"{name}.weight"]
        err = (m.delta() - want).norm() / want.norm()
        assert err < 1e-6, (name, float(err))  # fp32 precision
        assert abs(result.modules[name]["retained_energy"]["3"] - 1.0) < 1e-6
        assert torch.allclose(m.diff_b, d[f"{name}.bias"], atol=1e-7)


def test_retained_energy_is_the_sum_of_kept_squared_singular_values():
    base = load_transformer(TINY)
    ft = finetune_of(SyntheticFinetune(exponent=0.3, seed=2))
    ranks = (1, 4, 12)
    result = extract_lora(base, ModuleWeights(base), ModuleWeights(ft), ExtractSpec("s", ranks=ranks))
    d = deltas(base, ft)
    kept_total, energy_total = {r: 0.0 for r in ranks}, 0.0
    for name, record in result.modules.items():
        delta = d[f"{name}.weight"].double()
        s2 = torch.linalg.svdvals(delta).pow(2)
        energy_total += float(s2.sum())
        for r in ranks:
            kept_total[r] += float(s2[:r].sum())
            assert record["retained_energy"][str(r)] == pytest.approx(float(s2[:r].sum() / s2.sum()), abs=1e-9)
            # Eckart-Young: the truncation's squared relative Frobenius error is exactly 1 - energy
            resid = (delta - result.loras[r].modules[name].delta().double()).pow(2).sum() / s2.sum()
            assert float(resid) == pytest.approx(1 - record["retained_energy"][str(r)], abs=1e-5)
    for r in ranks:
        assert result.totals["retained_energy"][str(r)] == pytest.approx(kept_total[r] / energy_total, abs=1e-9)
    energies = [result.totals["retained_energy"][str(r)] for r in ranks]
    assert energies == sorted(energies) and energies[-1] < 1.0
    # the changed norms are reported, not silently dropped
    assert {o["kind"] for o in result.others} == {"norm"}


def test_randomized_svd_matches_exact_on_a_decaying_spectrum():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(600, 400, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(1600, 400, generator=gen, dtype=torch.float64))
    s = torch.arange(1, 401, dtype=torch.float64) ** -0.8
    delta = ((u * s) @ v.T).float()
    _, s_rand, _, info = truncated_svd(delta, 16, method="randomized")
    _, s_exact, _, exact_info = truncated_svd(delta, 16, method="exact")
    assert info["method"] == "randomized" and info["check"]["passed"] and exact_info["method"] == "exact"
    total = float(delta.double().pow(2).sum())
    e_rand, e_exact = float(s_rand.double().pow(2).sum()) / total, float(s_exact.pow(2).sum()) / total
    assert abs(e_rand - e_exact) < 1e-3 * e_exact
    assert torch.allclose(s_rand.double(), s_exact, rtol=1e-2)


@pytest.mark.parametrize("fmt", LoraFormat.values())
def test_extracted_files_load_back_and_merge_to_the_finetune(saved_finetune, tmp_path, fmt):
    path, ft = saved_finetune
    out = tmp_path / "lora"
    manifest = extract_to_dir(TINY, ExtractSpec(str(path), ranks=(2, 24), format=fmt), out)
    payload = manifest["payload"]
    assert payload["finetuned"]["layout"] == "diffusers" and len(payload["finetuned"]["files"]) > 1
    base = load_transformer(TINY)
    d = deltas(base, ft)
    for r in (2, 24):
        model = load_transformer(TINY)
        lora = load_lora_file(out / payload["files"][str(r)]["path"], model)
        assert lora.source["format"] == fmt and lora.rank == r
        layers = linear_modules(model)
        for name, m in lora.modules.items():
            merge_lowrank_into(layers[name], m)
            want = d[f"{name}.weight"]
            got = layers[name].weight.detach() - dict(base.named_parameters())[f"{name}.weight"].detach()
            predicted = 1 - payload["modules"][name]["retained_energy"][str(r)]
            measured = float((got - want).double().pow(2).sum() / want.double().pow(2).sum())
            assert measured == pytest.approx(predicted, abs=2e-5), name
            assert torch.allclose(layers[name].bias - dict(base.named_parameters())[f"{name}.bias"],
                                  d[f"{name}.bias"], atol=1e-6)


def test_comfyui_bf16_checkpoint_reads_like_the_model(saved_finetune, tmp_path):
    from safetensors.torch import save_file

    _, ft = saved_finetune
    sd = {f"model.diffusion_model.{to_wan_param_name(n)}": p.detach().to(torch.bfloat16).contiguous()
          for n, p in ft.named_parameters()}
    sd["first_stage_model.decoder.conv.weight"] = torch.zeros(2)  # an all-in-one file also holds the VAE
    save_file(sd, tmp_path / "wan_ft_bf16.safetensors")
    reader = CheckpointWeights(tmp_path / "wan_ft_bf16.safetensors")
    assert reader.layout == "comfyui" and reader.dtypes() == ["bf16"]
    model = load_transformer(TINY)
    check_geometry(model, reader, sliced=False)
    info = load_finetuned_into(model, reader)
    assert info["finetuned_parameters"] == len(sd) - 1
    for (name, p), q in zip(model.named_parameters(), ft.parameters()):
        assert torch.equal(p, q.detach().to(torch.bfloat16).float()), name
    # the name map is diffusers' converter run backwards: every name round-trips
    names = [n for n, _ in ft.named_parameters()]
    assert wan_keys_to_diffusers(to_wan_param_name(n) for n in names) == {n: to_wan_param_name(n) for n in names}


def test_full_mode_loads_the_finetune_through_the_model_path(saved_finetune):
    from wanrt.export.api import LoraSpec
    from wanrt.runtime.backends import build_transformer

    path, ft = saved_finetune
    model, summary = build_transformer(TINY, LoraSpec(mode="full", finetuned=str(path)))
    assert summary["finetuned_parameters_changed"] > 0
    for p, q in zip(model.parameters(), ft.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(LoraError, match="--lora-mode full"):
        build_transformer(TINY, LoraSpec(mode="merged", finetuned=str(path)))


def _cli(args, tmp_path):
    from wanrt.commands.main import cli

    return CliRunner().invoke(cli, ["extract", *args, "-o", str(tmp_path / "out")])


def _nothing_written(tmp_path):
    return not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(saved_finetune, tmp_path):
    path, _ = saved_finetune
    # rank larger than a matrix (tiny's attention is 24 x 24)
    r = _cli(["--model", "tiny", "--finetuned", str(path), "--ranks", "4,32"], tmp_path)
    assert r.exit_code == 2 and "rank 32 exceeds" in r.output and len(r.output.strip().splitlines()) == 1
    assert _nothing_written(tmp_path)
    # a LoRA file as --finetuned
    lora_dir = tmp_path / "lora"
    extract_to_dir(TINY, ExtractSpec(str(path), ranks=(2,)), lora_dir)
    r = _cli(["--model", "tiny", "--finetuned", str(lora_dir / "lora-r2.safetensors"), "--rank", "2"], tmp_path)
    assert r.exit_code == 2 and "a LoRA file" in r.output and len(r.output.strip().splitlines()) == 1
    assert _nothing_written(tmp_path)
    # a fine-tune of another geometry (FFN 48 instead of 32)
    other = load_transformer(TINY)
    from diffusers import WanTransformer3DModel

    config = {**dict(other.config), "ffn_dim": 48}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    WanTransformer3DModel(**config).save_pretrained(tmp_path / "other")
    r = _cli(["--model", "tiny", "--finetuned", str(tmp_path / "other"), "--rank", "2"], tmp_path)
    assert r.exit_code == 2 and "another geometry" in r.output and len(r.output.strip().splitlines()) == 1
    assert _nothing_written(tmp_path)
    # --keep-diff outside the ComfyUI format
    r = _cli(["--model", "tiny", "--finetuned", str(path), "--rank", "2", "--keep-diff"], tmp_path)
    assert r.exit_code == 2 and "--format comfyui" in r.output
    assert _nothing_written(tmp_path)


def test_keep_diff_writes_comfyui_diff_keys(saved_finetune, tmp_path):
    from safetensors import safe_open

    path, _ = saved_finetune
    manifest = extract_to_dir(TINY, ExtractSpec(str(path), ranks=(2,), format="comfyui", keep_diff=True),
                              tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "lora-r2.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"diffusion_model.blocks.0.norm3.diff", "diffusion_model.blocks.0.norm3.diff_b"} <= keys
    kept = [o for o in manifest["payload"]["not_low_rank"] if o["kept_as_diff"]]
    assert len(kept) == 4  # norm2 (Wan norm3) weight + bias in both blocks


def test_bad_finetuned_sources_are_model_source_errors(tmp_path):
    model = load_transformer(TINY)
    with pytest.raises(ModelSourceError, match="no such file"):
        CheckpointWeights(tmp_path / "missing")
    (tmp_path / "ft.ckpt").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="pickle"):
        CheckpointWeights(tmp_path / "ft.ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelSourceError, match="not a readable safetensors"):
        CheckpointWeights(tmp_path / "bad.safetensors")
    assert Path(tmp_path / "bad.safetensors").exists() and model is not None


def test_checkpoint_base_streams_from_disk_and_slices(saved_finetune, tmp_path):
    """--model a checkpoint directory: the base is read tensor by tensor too (a meta-device skeleton gives names and
    shapes), with the same energies as the in-memory preset; --layers keeps the first blocks of both."""
    from wanrt.export.extract import open_base

    path, _ = saved_finetune
    load_transformer(TINY).save_pretrained(tmp_path / "base")
    skeleton, reader = open_base(ModelSpec(str(tmp_path / "base")))
    assert next(skeleton.parameters()).is_meta and isinstance(reader, CheckpointWeights)
    spec = ExtractSpec(str(path), ranks=(4,))
    streamed = extract_to_dir(ModelSpec(str(tmp_path / "base")), spec, tmp_path / "a")["payload"]
    in_memory = extract_to_dir(TINY, spec, tmp_path / "b")["payload"]
    assert streamed["totals"]["retained_energy"]["4"] == pytest.approx(in_memory["totals"]["retained_energy"]["4"],
                                                                       abs=1e-9)
    sliced = extract_to_dir(ModelSpec(str(tmp_path / "base"), layers=1), spec, tmp_path / "c")["payload"]
    assert {n.split(".")[1] for n in sliced["modules"]} == {"0"}
