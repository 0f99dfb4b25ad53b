"""Backends agree with eager on the tiny preset; each CPU backend drives the tiny pipeline end to end."""

import sys

import numpy as np
import pytest
import torch

from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.export.api import LoraSpec
from wanrt.export.model import ModelSpec
from wanrt.runtime import backends as B

TINY = ModelSpec("tiny")
LORA = LoraSpec(rank=4, targets="all", mode="separate", seed=0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One export cache for all runtime tests (exports are keyed by spec hash, so modules share them)."""
    return tmp_path_factory.getbasetemp() / "wanrt-cache"


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    # 5x32x32 video -> latent 2x4x4; batch 2 exercises the dynamic batch axis of the ONNX graph
    return (torch.randn(2, 36, 2, 4, 4, generator=g), torch.tensor([999.0, 10.0]),
            torch.randn(2, 512, 32, generator=g), torch.randn(2, 257, 16, generator=g))


@pytest.fixture(scope="module")
def eager():
    return B.backend_from_specs("eager", TINY, LORA)


@pytest.fixture(scope="module")
def ort_backend(cache_dir):
    return B.backend_from_specs("ort", TINY, LORA, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def compiled():
    return B.backend_from_specs("compile", TINY, LORA)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_registry_and_protocol(eager):
    assert set(B.REGISTRY) >= {"eager", "compile", "ort", "trt"}
    assert isinstance(eager, B.Backend)
    avail = B.available_backends("cpu")
    assert avail["eager"] is None and avail["ort"] is None
    with pytest.raises(BadInputError, match="choose one of"):
        B.create_backend("tensorflow")
    with pytest.raises(BadInputError, match="--artifact"):
        B.create_backend("ort")


def test_missing_dependencies_are_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        B.check_backend("ort")
    assert "onnxruntime" in B.available_backends()["ort"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="NVIDIA GPU"):
        B.check_backend("trt", "cuda")
    assert "NVIDIA GPU" in B.available_backends("cuda")["trt"]  # listed as disabled with the reason, not raised


def test_eager_matches_plain_transformer(eager, inputs):
    model, _ = B.build_transformer(TINY, LORA)
    with torch.inference_mode():
        want = model(hidden_states=inputs[0], timestep=inputs[1], encoder_hidden_states=inputs[2],
                     encoder_hidden_states_image=inputs[3], return_dict=False)[0]
    assert torch.equal(eager(*inputs), want)


def test_ort_agrees_with_eager(ort_backend, eager, inputs):
    out = ort_backend(*inputs)
    assert out.shape == (2, 16, 2, 4, 4) and out.dtype == torch.float32
    assert _rel(out, eager(*inputs)) <= 1e-4
    # batch 1, another shape inside the exported range (9x48x64 -> latent 3x6x8)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 36, 3, 6, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 512, 32, generator=g),
         torch.randn(1, 257, 16, generator=g))
    assert _rel(ort_backend(*x), eager(*x)) <= 1e-4
    info = ort_backend.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["sha256"]


def test_compile_agrees_with_eager(compiled, eager, inputs):
    x = tuple(t[:1] for t in inputs)
    assert _rel(compiled(*x), eager(*x)) <= 1e-4
    assert compiled.setup["compile_s"] > 0


def test_bf16_eager_within_gate(inputs):
    ref = B.backend_from_specs("eager", TINY, LORA)
    bf16 = B.backend_from_specs("eager", ModelSpec("tiny", dtype="bf16"), LORA)
    assert bf16.dtype == torch.bfloat16
    out = bf16(*inputs)
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref(*inputs)) <= 1e-2


def test_ort_refuses_bad_artifacts(tmp_path):
    with pytest.raises(BadInputError, match="not a directory"):
        B.create_backend("ort", artifact=tmp_path / "nope")
    with pytest.raises(BadInputError, match="manifest"):
        B.create_backend("ort", artifact=tmp_path)


# ------------------------------------------------------------------------------------------------ pipeline
def _png(path, h=40, w=56):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", ["eager", "compile", "ort"])
def test_tiny_pipeline_generates_video(name, request, tmp_path):
    from wanrt.runtime.generate import GenerateSpec, generate_video, load_image
    from wanrt.runtime.pipeline import BackendTransformer, encode_mp4
    from wanrt.runtime.schedule import Schedule

    backend = request.getfixturevalue({"eager": "eager", "compile": "compiled", "ort": "ort_backend"}[name])
    spec = GenerateSpec(prompt="a red fox in the snow", frames=5, height=32, width=32,
                        schedule=Schedule(steps=2, guidance=5.0), seed=3)
    frames, info = generate_video(backend, load_image(_png(tmp_path / "in.png")), spec)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() <= frames.max() <= 1.0 and np.isfinite(frames).all()
    assert info["dit_calls"] == 4  # 2 steps x CFG
    encode_mp4(frames, tmp_path / "out.mp4")
    import imageio.v3 as iio

    video = iio.imread(tmp_path / "out.mp4")
    assert video.shape == (5, 32, 32, 3)
    if name != "eager":  # same seed through eager: the same video within the backend's tolerance
        ref, _ = generate_video(request.getfixturevalue("eager"), load_image(tmp_path / "in.png"), spec)
        assert np.abs(frames - ref).max() < 1e-3
    assert isinstance(BackendTransformer(backend).dtype, torch.dtype)


def test_drop_in_keeps_pipeline_parts(eager):
    from wanrt.runtime.pipeline import BackendTransformer, build_pipeline, install_backend

    pipe = build_pipeline(eager)
    vae, scheduler, text_encoder = pipe.vae, pipe.scheduler, pipe.text_encoder
    drop = install_backend(pipe, eager)
    assert isinstance(pipe.transformer, BackendTransformer) and pipe.transformer is drop
    assert pipe.vae is vae and pipe.scheduler is scheduler and pipe.text_encoder is text_encoder
    assert pipe.transformer.config.patch_size == (1, 2, 2) and pipe.transformer.config.image_dim == 16
    assert pipe.device == torch.device("cpu")
    with pipe.transformer.cache_context("cond"):
        out = pipe.transformer(hidden_states=torch.randn(1, 36, 2, 4, 4), timestep=torch.tensor([3.0]),
                               encoder_hidden_states=torch.randn(1, 512, 32),
                               encoder_hidden_states_image=torch.randn(1, 257, 16), return_dict=False)[0]
    assert out.shape == (1, 16, 2, 4, 4)


def test_generate_cli(tmp_path, cache_dir, monkeypatch):
    from click.testing import CliRunner

    from wanrt.commands.main import cli

    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache_dir))
    png = _png(tmp_path / "in.png")
    out = tmp_path / "out.mp4"
    args = ["generate", "--image", str(png), "--prompt", "a cat", "--backend", "ort", "--rank", "4",
            "--lora-mode", "separate", "--shape", "9x48x64", "-o", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    import imageio.v3 as iio

    assert iio.imread(out).shape == (9, 48, 64, 3)
    res = CliRunner().invoke(cli, args)  # exists, no --force
    assert res.exit_code == 2 and "--force" in res.output
    res = CliRunner().invoke(cli, [*args[:-2], "--shape", "6x48x64", "-o", str(tmp_path / "b.mp4")])
    assert res.exit_code == 2 and "4k+1" in res.output


def test_no_lora_spec_is_the_base_model_on_the_export_path(cache_dir, inputs):
    """`lora_spec=None` (what expert_pair passes for an expert without LoRA) exports the base model, the same
    export as `LoraSpec()`: it reached the exporter as None and failed there with an AttributeError."""
    one_layer = ModelSpec("tiny", layers=1)
    none = B.backend_from_specs("ort", one_layer, None, cache_dir=cache_dir)
    base = B.backend_from_specs("ort", one_layer, LoraSpec(), cache_dir=cache_dir)
    eager = B.backend_from_specs("eager", one_layer, None)
    try:
        assert none.artifact == base.artifact  # one cache entry: the same spec
        assert _rel(none(*inputs), eager(*inputs)) < 1e-4
    finally:
        none.close(), base.close()
