"""`wanrt generate --components`: the built-in pipeline's encoders and VAE in Wan2.1's real geometries (seeded
weights, runtime/components.py) on the 14B preset's one-block slice, and the refusals that come before any model
loads."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

from wanrt.commands.main import cli
from wanrt.runtime import generate as G

IMAGE = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))


def _generate(tmp_path, *args):
    IMAGE.save(tmp_path / "in.png")
    return CliRunner().invoke(cli, ["generate", "--image", str(tmp_path / "in.png"), "--prompt", "a fox",
                                    "--shape", "5x32x32", "-o", str(tmp_path / "out.mp4"), *args])


def test_real_geometries_run_end_to_end_on_the_14b_slice(tmp_path, monkeypatch, keep_built_pipelines):
    """--components wan2.1 --text-layers 1: the pipeline's parts are Wan2.1's (UMT5 4096 wide with one of its 24
    layers, CLIP ViT-H/14 at 1280 x 32 layers, the Wan VAE at base_dim 96), and the video is written (~1 min)."""
    built = keep_built_pipelines(G)
    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "cache"))
    res = _generate(tmp_path, "--model", "wan2.1-i2v-14b", "--layers", "1", "--components", "wan2.1",
                    "--text-layers", "1", "--steps", "1", "--no-cfg")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.mp4").stat().st_size > 0
    (pipe,) = built
    text, image, vae = pipe.text_encoder.config, pipe.image_encoder.config, pipe.vae.config
    assert (text.d_model, text.num_layers, text.num_heads, text.d_ff) == (4096, 1, 64, 10240)
    assert (image.hidden_size, image.num_hidden_layers, image.intermediate_size) == (1280, 32, 5120)
    assert (vae.base_dim, vae.z_dim, list(vae.dim_mult)) == (96, 16, [1, 2, 4, 4])


def test_refused_before_any_model_loads(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(G, "backend_from_specs", no_model)
    for args, why in ((["--model", "tiny", "--components", "wan2.1"], "this transformer takes 32 / 16"),
                      (["--model", "wan2.1-i2v-14b", "--layers", "1", "--components", "wan2.1", "--text-layers",
                        "25"], "--text-layers 25: 1 to 24"),
                      (["--model", "tiny", "--components", "wan2.1", "--pipeline", "some/pipeline"],
                       "brings its own encoders and VAE")):
        res = _generate(tmp_path, *args)
        assert res.exit_code != 0 and why in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out.mp4").exists()
