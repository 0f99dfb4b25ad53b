"""Wan2.2's two experts (issue 19): presets and checkpoints with a high- and a low-noise transformer, a LoRA stack
per expert, one artifact holding both, engines per expert, and the pipeline switching at diffusers' boundary.

Tolerance: 1e-4 relative (max abs error / max abs reference), the I/O contract's fp32 tolerance
(wanrt.export.onnx_export.TOLERANCE), between diffusers' eager pipeline and wanrt's engines: the same function
computed by other kernels."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from wanrt.runtime.schedule import Schedule
from wanrt.artifacts import sha256_file
from wanrt.commands.main import cli
from wanrt.engines import registry
from wanrt.errors import BadInputError, LoraError
from wanrt.export.api import LoraSpec, export_experts
from wanrt.export.lora import synthetic_lora
from wanrt.export.lora_formats import load_lora_file, lora_state_dict, save_lora_file
from wanrt.export.model import Experts, ModelSpec, load_transformer, model_experts
from wanrt.export.onnx_export import TOLERANCE, ExportSpec
from wanrt.export.presets import PRESETS
from wanrt.manifests import ExpertsManifest, ExportManifest
from wanrt.parse import LoraEntry, parse_lora_entry
from wanrt.runtime.backends import EagerBackend, EngineBackend, build_transformer

TINY22 = "tiny-wan2.2"
TOL = TOLERANCE["fp32"]  # 1e-4


def _rel(got, want) -> float:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    return float((got - want).abs().max() / want.abs().max())


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------------------------ 1. presets
def test_two_expert_presets_are_two_seeded_transformers_of_one_geometry():
    high, low = (load_transformer(ModelSpec(TINY22, expert=e)) for e in ("high", "low"))
    assert dict(high.config) == dict(low.config) and not _same_weights(high, low)
    assert _same_weights(high, load_transformer(ModelSpec(TINY22, expert="high")))  # seeded: the same every time
    assert model_experts(ModelSpec(TINY22)) == Experts(("high", "low"), 0.9)
    assert model_experts(ModelSpec("tiny")) == Experts()
    with pytest.raises(BadInputError, match="has two experts"):
        load_transformer(ModelSpec(TINY22))
    with pytest.raises(BadInputError, match="has one transformer"):
        load_transformer(ModelSpec("tiny", expert="low"))


def test_wan22_preset_is_the_real_a14b_geometry():
    """Built by diffusers on the meta device: Wan2.2-I2V-A14B's experts are Wan2.1-14B's blocks with 36 input
    channels and no CLIP image branch (diffusers' conversion config: image_dim and added_kv_proj_dim null)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**PRESETS["wan2.2-i2v-a14b"].config)
    assert len(m.blocks) == 40 and tuple(m.blocks[0].attn1.to_q.weight.shape) == (5120, 5120)
    assert m.blocks[0].ffn.net[0].proj.out_features == 13824 and m.config.in_channels == 36
    assert m.condition_embedder.image_embedder is None and m.blocks[0].attn2.add_k_proj is None
    assert PRESETS["wan2.2-i2v-a14b"].experts == ("high", "low") and PRESETS["wan2.2-i2v-a14b"].boundary_ratio == 0.9


def test_a_local_wan22_pipeline_loads_each_expert_from_its_folder(tmp_path):
    pipe = tmp_path / "pipe"
    for expert, folder in (("high", "transformer"), ("low", "transformer_2")):
        load_transformer(ModelSpec(TINY22, expert=expert)).save_pretrained(pipe / folder)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline",
                                                       "boundary_ratio": 0.9}))
    assert model_experts(ModelSpec(str(pipe))) == Experts(("high", "low"), 0.9)
    low = load_transformer(ModelSpec(str(pipe), expert="low", layers=1))
    assert len(low.blocks) == 1
    want = load_transformer(ModelSpec(TINY22, expert="low"))
    assert torch.equal(low.blocks[0].attn1.to_q.weight, want.blocks[0].attn1.to_q.weight)
    with pytest.raises(BadInputError, match="has two experts"):
        load_transformer(ModelSpec(str(pipe)))
    # transformer_2 without a boundary: diffusers runs `transformer` alone, and so does wanrt
    (pipe / "model_index.json").write_text(json.dumps({"boundary_ratio": None}))
    assert model_experts(ModelSpec(str(pipe))) == Experts()


# ------------------------------------------------------------------------------------------------ 2. LoRA per expert
def _save(lora, path, fmt):
    return save_lora_file(lora, path, fmt)


@pytest.fixture(scope="module")
def experts():
    return {e: load_transformer(ModelSpec(TINY22, expert=e)) for e in ("high", "low")}


@pytest.fixture(scope="module")
def loras(tmp_path_factory, experts):
    """A different stack per expert, in the layouts Wan2.2 LoRAs come in: on the high expert a rank-4 diffusers file
    and a rank-2 cross-attention ComfyUI file (alpha != rank); on the low expert the LOW half of a ComfyUI pair;
    and a diffusers file holding both experts under their pipeline components (`transformer.`, `transformer_2.`)."""
    tmp = tmp_path_factory.mktemp("loras")
    distill = synthetic_lora(experts["high"], 4, "all", seed=21)
    style = synthetic_lora(experts["high"], 2, "cross-attn", seed=22, relative_norm=0.2)
    for m in style.modules.values():
        m.alpha = 1.0
    low = synthetic_lora(experts["low"], 4, "all", seed=23, relative_norm=0.1)
    files = {"distill": _save(distill, tmp / "distill.safetensors", "diffusers"),
             "style": _save(style, tmp / "style_HIGH.safetensors", "comfyui"),
             "low": _save(low, tmp / "move_LOW.safetensors", "comfyui"),
             "low2": _save(synthetic_lora(experts["low"], 2, "self-attn", seed=24, relative_norm=0.2),
                           tmp / "low2.safetensors", "diffusers")}
    both = {**lora_state_dict(distill, "diffusers"),
            **{k.replace("transformer.", "transformer_2.", 1): v for k, v in lora_state_dict(low, "diffusers").items()}}
    save_file(both, str(tmp / "both.safetensors"))
    save_file({k: v for k, v in both.items() if k.startswith("transformer_2.")}, str(tmp / "only_low.safetensors"))
    return {**files, "both": tmp / "both.safetensors", "only_low": tmp / "only_low.safetensors", "tmp": tmp,
            "weights": {"distill": distill, "low": low}}


def _equal_modules(got, want) -> bool:
    return set(got.modules) == set(want.modules) and all(
        torch.equal(got.modules[n].down, want.modules[n].down) and torch.equal(got.modules[n].up, want.modules[n].up)
        for n in want.modules)


def test_a_file_holding_both_experts_gives_each_its_part(loras, experts):
    high = load_lora_file(loras["both"], experts["high"], expert="high")
    low = load_lora_file(loras["both"], experts["low"], expert="low")
    assert _equal_modules(high, loras["weights"]["distill"]) and _equal_modules(low, loras["weights"]["low"])
    assert low.source["expert_keys"] == "transformer_2." and high.source["expert"] == "high"
    # the pair convention: a one-transformer file fits either expert as is
    assert _equal_modules(load_lora_file(loras["low"], experts["low"], expert="low"), loras["weights"]["low"])


def test_a_file_for_the_wrong_expert_or_geometry_is_one_line(loras, experts, tmp_path):
    with pytest.raises(LoraError, match="only the low-noise expert's keys.*give it as low:") as e:
        load_lora_file(loras["only_low"], experts["high"], expert="high")
    assert "\n" not in str(e.value)
    with pytest.raises(LoraError, match="low-noise expert LoRA.*one transformer"):
        load_lora_file(loras["only_low"], load_transformer(ModelSpec("tiny")))
    small = synthetic_lora(load_transformer(ModelSpec("small", layers=1)), 2, "self-attn", seed=1)
    with pytest.raises(LoraError, match="do not fit|does not fit"):  # a LoRA of another geometry (dim 512, not 24)
        load_lora_file(_save(small, tmp_path / "small.safetensors", "comfyui"), experts["low"], expert="low")
    with pytest.warns(UserWarning, match="name says the high-noise expert"):  # style_HIGH onto the low expert
        load_lora_file(loras["style"], experts["low"], expert="low")


def test_expert_prefixes_parse_and_split_per_expert(loras):
    from wanrt.commands.options import lora_specs_by_expert

    assert parse_lora_entry("high:a.safetensors:3") == LoraEntry(file="a.safetensors", strength=3.0, expert="high")
    assert parse_lora_entry("low:synthetic:8") == LoraEntry(rank=8, expert="low")
    kw = {"model": TINY22, "lora": (parse_lora_entry(f"high:{loras['distill']}:3"), parse_lora_entry("synthetic:2"),
                                    parse_lora_entry(f"low:{loras['low']}:1.5")),
          "merge": (), "lora_scale": 1.0, "targets": "all", "lora_mode": "separate", "seed": 0, "allow_pickle": False}
    specs = lora_specs_by_expert(kw, ("high", "low"))
    assert (specs["high"].file, specs["high"].scale, specs["high"].stack) == (
        str(loras["distill"]), 3.0, (LoraEntry(rank=2),))
    assert (specs["low"].rank, specs["low"].stack) == (2, (LoraEntry(file=str(loras["low"]), strength=1.5),))
    res = CliRunner().invoke(cli, ["export", "--lora", f"high:{loras['distill']}", "-o", str(loras["tmp"] / "x")])
    assert res.exit_code == 2 and "has one transformer" in res.output and len(res.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ 3. one artifact
def _specs(loras, high_scales=(0.7, 1.3), low=("low", 0.5)):
    return {"high": LoraSpec(file=str(loras["distill"]), scale=high_scales[0], mode="separate",
                             stack=(LoraEntry(file=str(loras["style"]), strength=high_scales[1]),)),
            "low": LoraSpec(file=str(loras[low[0]]), scale=low[1], mode="separate")}


@pytest.fixture(scope="module")
def export22(loras):
    out = loras["tmp"] / "wan22"
    export_experts(ModelSpec(TINY22), _specs(loras), ExportSpec(validate=False), out, progress=False)
    return out


def test_export_writes_one_artifact_with_both_experts(export22, loras):
    m = ExpertsManifest.read(export22, check_files=True)
    assert (m.members, m.boundary_ratio, tuple(m.experts)) == ("onnx", 0.9, ("high", "low"))
    assert {f.split("/")[0] for f in m.contents} == {"high", "low"}  # the top manifest seals both members
    for name in ("high", "low"):
        member = ExportManifest.read(m.member_dir(export22, name), check_files=True)  # a normal export dir
        assert member.specs["model"]["expert"] == name and m.experts[name]["sha256"] == member.sha256
    assert [(e["label"], e["strength"], e.get("format")) for e in m.experts["high"]["lora"]["stack"]] == [
        ("distill", 0.7, "diffusers"), ("style_HIGH", 1.3, "comfyui")]
    assert [(e["label"], e["strength"]) for e in m.experts["low"]["lora"]["stack"]] == [("move_LOW", 0.5)]
    with pytest.raises(BadInputError, match="one transformer"):
        export_experts(ModelSpec("tiny"), {}, ExportSpec(validate=False), loras["tmp"] / "no", progress=False)
    assert not (loras["tmp"] / "no").exists()


def _feeds(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 36, 2, 4, 4, generator=gen), torch.tensor([500.0]), torch.randn(1, 512, 32, generator=gen))


def test_engines_build_per_expert_and_refit_touches_only_the_expert_named(export22, loras, tmp_path):
    """OpenVINO fp32 engines of both experts from one export; `refit` of low swaps only its LoRA: the high
    expert's files stay byte for byte, the low one computes the eager model with its new LoRA."""
    flavour = registry.get("openvino")
    engines = tmp_path / "engines"
    res = CliRunner().invoke(cli, ["build", str(export22), "--flavour", "openvino", "--no-cache", "-o", str(engines)])
    assert res.exit_code == 0, res.output
    manifest = ExpertsManifest.read(engines, check_files=True)
    assert (manifest.members, manifest.flavour, manifest.boundary_ratio) == ("engine", "openvino", 0.9)
    before = {f: sha256_file(engines / "high" / f) for f in ("model.blob", "lora.safetensors", "manifest.json")}
    high_out = EngineBackend(flavour, engines / "high")(*_feeds())
    res = CliRunner().invoke(cli, ["refit", str(engines), "--lora", f"low:{loras['low2']}:0.9"])
    assert res.exit_code == 0 and "wanrt refit (low)" in res.output, res.output
    assert {f: sha256_file(engines / "high" / f) for f in before} == before  # the high expert untouched
    assert torch.equal(EngineBackend(flavour, engines / "high")(*_feeds()), high_out)
    m = ExpertsManifest.read(engines, check_files=True)  # resealed: the low member's new files are listed
    assert [(e["label"], e["strength"]) for e in m.experts["low"]["lora"]["stack"]] == [("low2", 0.9)]
    eager = build_transformer(ModelSpec(TINY22, expert="low"),
                              LoraSpec(file=str(loras["low2"]), scale=0.9, mode="separate"))[0]
    assert _rel(EngineBackend(flavour, engines / "low")(*_feeds()), EagerBackend(eager)(*_feeds())) <= TOL
    # generate takes the pair: each expert runs its steps (3 steps with CFG: 6 forwards between them)
    from PIL import Image

    from wanrt.runtime.generate import GenerateSpec, generate

    Image.new("RGB", (56, 40), (200, 80, 30)).save(tmp_path / "in.png")
    spec = GenerateSpec(prompt="a fox", schedule=Schedule(steps=3, guidance=5.0))
    info = generate(tmp_path / "in.png", spec, "ov", tmp_path / "v.mp4", engine=str(engines))
    calls = info["dit_calls_by_expert"]
    assert (tmp_path / "v.mp4").stat().st_size > 0 and sum(calls.values()) == 6 and min(calls.values()) > 0


# ------------------------------------------------------------------------------------------------ 4. the pipeline
def _diffusers_reference(pipe, loras, strengths):
    """The outside reference: diffusers' WanImageToVideoPipeline with its own transformers (transformer = high,
    transformer_2 = low, boundary_ratio 0.9) and the LoRAs loaded by diffusers (the low one with
    load_into_transformer_2=True), with wanrt's pipeline's VAE, text encoder and a fresh scheduler of its config."""
    from diffusers import WanImageToVideoPipeline

    high, low = (load_transformer(ModelSpec(TINY22, expert=e)) for e in ("high", "low"))
    ref = WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                  scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config),
                                  transformer=high, transformer_2=low, boundary_ratio=0.9)
    for name, into_2 in (("distill", False), ("style", False), ("low", True)):
        # the path, as a user loads a file: diffusers' converters and the peft config from its metadata
        ref.load_lora_weights(str(loras[name]), adapter_name=name, load_into_transformer_2=into_2)
    ref.transformer.set_adapters(["distill", "style"], weights=list(strengths[:2]))
    ref.transformer_2.set_adapters(["low"], weights=[strengths[2]])
    ref.set_progress_bar_config(disable=True)
    return ref


def _count_calls(module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # two adapters on one transformer
def test_two_expert_pipeline_through_engines_matches_diffusers_with_transformer_2(export22, loras):
    """wanrt's two exports (ONNX Runtime, fp32), a different LoRA stack on each expert, as the drop-in of
    WanImageToVideoPipeline: the same denoised latents as diffusers' own two-expert pipeline within the fp32
    tolerance, and the switch at the same step (forwards counted per expert)."""
    from PIL import Image

    from wanrt.runtime.experts import expert_pair
    from wanrt.runtime.pipeline import build_pipeline, dit_calls, run_pipeline

    image = Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255)
                            .to(torch.uint8).numpy())
    run = {"prompt": "a fox", "frames": 5, "height": 32, "width": 32, "schedule": Schedule(steps=3, guidance=5.0),
           "seed": 7, "output_type": "latent"}
    pair = expert_pair("ort", artifact=export22)
    pipe = build_pipeline(pair)
    assert pipe.config.boundary_ratio == 0.9 and pipe.transformer_2 is not None
    got, _ = run_pipeline(pipe, image, **run)
    ref = _diffusers_reference(pipe, loras, (0.7, 1.3, 0.5))
    counts = {"high": _count_calls(ref.transformer), "low": _count_calls(ref.transformer_2)}
    want, _ = run_pipeline(ref, image, **run)
    assert _rel(got, want) <= TOL
    timesteps = ref.scheduler.timesteps
    high_steps = int((timesteps >= 0.9 * ref.scheduler.config.num_train_timesteps).sum())
    assert 0 < high_steps < len(timesteps)  # the schedule crosses the boundary
    assert dit_calls(pipe) == {"high": counts["high"][0], "low": counts["low"][0]} == {
        "high": 2 * high_steps, "low": 2 * (len(timesteps) - high_steps)}  # CFG: two forwards a step
    ref.disable_lora()  # the same pipeline without its LoRAs: the stacks visibly change the result
    assert _rel(run_pipeline(ref, image, **run)[0], want) > 1e-3
    pair.close()


# ------------------------------------------------------------------------------------------------ 5. the predictions
def test_memory_and_step_split_behind_the_reported_predictions():
    """The numbers the report rests on: the A14B expert's parameter count (diffusers' model of the preset's config),
    the activation estimate's FFN phase at 720p (3 L D + 2 L F + text K/V + fp32 RoPE, bf16), and the steps each
    expert runs at Wan2.2's schedules (diffusers' UniPC flow sigmas)."""
    from wanrt.tools import bench_experts as tool
    from wanrt.tools.cpu_cost_model import activation_bytes

    memory = tool.memory()
    assert memory["parameters_per_expert"] == 14_288_901_184  # 26.6 GiB in bf16
    L, D, F = 75_600, 5120, 13824
    want = (3 * L * D + 2 * L * F + 2 * 512 * D) * 2 + 2 * L * 128 * 4
    got = activation_bytes(PRESETS["wan2.2-i2v-a14b"].config, L, batch=1, precision="bf16")
    assert got["peak_phase"] == "ffn" and got["bytes"] == want
    assert tool.high_steps(40, 5.0, 0.9) == 15 and tool.high_steps(20, 12.0, 0.875) == 13


# ------------------------------------------------------------------------------------------------ 6. one resident
def test_one_expert_resident_reproduces_both_with_one_backend_alive_and_two_loads_a_video(export22, tmp_path):
    """ONNX Runtime fp32, 3 steps with CFG (the schedule crosses the boundary): with one expert resident the video
    is the both-resident one within 1e-6, at most one expert backend is ever alive (weak references to every
    backend the loader made: a closed but referenced one counts), and the loads are as runtime/experts.py states:
    high when the pair is made, low at the boundary, then high and low again in every later video."""
    from PIL import Image

    from wanrt.runtime.experts import expert_pair
    from wanrt.runtime.generate import GenerateSpec, generate_video

    image = Image.new("RGB", (56, 40), (200, 80, 30))
    spec = GenerateSpec(prompt="a fox", schedule=Schedule(steps=3, guidance=5.0), seed=3)
    both = expert_pair("ort", artifact=export22)
    want, timing = generate_video(both, image, spec)
    assert both.loads()["count"] == 2 and both.loads()["peak_alive"] == 2 and timing["expert_loads_in_video"] == {
        "resident": "both", "count": 0, "seconds": 0, "loads": [], "peak_alive": 2}
    both.close()
    one = expert_pair("ort", artifact=export22, resident="one")
    assert [x["expert"] for x in one.loader.loads] == ["high"] and one.loader.alive() == 1
    videos = [generate_video(one, image, spec) for _ in range(2)]
    for got, t in videos:
        assert _rel(got, want) <= 1e-6 and t["dit_calls_by_expert"] == timing["dit_calls_by_expert"]
    assert [t["expert_loads_in_video"]["count"] for _, t in videos] == [1, 2]
    loads = one.loads()
    assert [x["expert"] for x in loads["loads"]] == ["high", "low", "high", "low"]
    assert loads["peak_alive"] == 1 and all(x["seconds"] > 0 for x in loads["loads"])
    one.close()
    assert one.loader.alive() == 0
    with pytest.raises(BadInputError, match="--experts-resident 'some'"):
        expert_pair("ort", artifact=export22, resident="some")
    image.save(tmp_path / "in.png")
    res = CliRunner().invoke(cli, ["generate", "--backend", "ort", "--artifact", str(export22), "--image",
                                   str(tmp_path / "in.png"), "--prompt", "fox", "--shape", "5x32x32", "--steps",
                                   "3", "--experts-resident", "one", "-o", str(tmp_path / "v.mp4")])
    assert res.exit_code == 0 and "expert loads: 2," in res.output and "resident: one" in res.output, res.output
