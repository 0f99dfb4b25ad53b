"""The pipeline's parts other than the DiT, built inline from seeded weights: tokenizer, UMT5 text encoder, CLIP
image encoder (with its processor), Wan VAE and scheduler. Nothing is downloaded.

Two geometries, as data:
- `tiny` (the default): every part sized to the transformer's text/image dims, one or two layers, so any preset runs
  end to end in seconds; its stage times say nothing about a real Wan video.
- `wan2.1`: the architectures Wan2.1/2.2 I2V ship (issue 21: stage times on this CPU are the real parts' times):
  AutoencoderKLWan's defaults (base_dim 96, z_dim 16, dim_mult 1,2,4,4: the Wan2.1 VAE, also Wan2.2 A14B's), CLIP
  ViT-H/14 (1280 wide, 32 layers, 16 heads, MLP 5120, 224 px: 257 tokens; diffusers reads its penultimate hidden
  state) and UMT5-XXL (4096 wide, 24 layers, 64 heads x 64, gated-GELU FFN 10240, 32 buckets up to distance 128).
  Only for a transformer of text dim 4096 and image dim 1280 (the 14B presets, sliced or not). Two departures, both
  stated in every result: the vocabulary is the byte tokenizer's (262 rows, not 256,384: a lookup costs the same,
  and the full table is 4.2 GB fp32), and `text_layers` may slice UMT5 (24 layers are 18 GB fp32, more than this
  24 GiB machine holds beside the rest); its time is then per layer, and scales by 24 / text_layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wanrt.errors import BadInputError

TINY_VAE = {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True]}


@dataclass(frozen=True)
class ComponentGeometry:
    """Encoder and VAE sizes; a None width follows the transformer's (text_dim, image_dim)."""

    name: str
    vae: dict[str, Any]
    text_layers: int
    text_heads: int
    text_d_kv: int | None  # None: max(8, text_dim // heads)
    text_d_ff: int | None  # None: 2 x text_dim
    text_buckets: int
    text_max_distance: int
    clip_layers: int
    clip_heads: int | None  # None: 2 if image_dim is even, else 1
    clip_mlp: int | None  # None: 2 x image_dim
    text_dim: int | None = None  # the transformer's, required when set
    image_dim: int | None = None


COMPONENTS = {g.name: g for g in (
    ComponentGeometry("tiny", vae=TINY_VAE, text_layers=1, text_heads=2, text_d_kv=None, text_d_ff=None,
                      text_buckets=8, text_max_distance=32, clip_layers=2, clip_heads=None, clip_mlp=None),
    ComponentGeometry("wan2.1", vae={}, text_layers=24, text_heads=64, text_d_kv=64, text_d_ff=10240,
                      text_buckets=32, text_max_distance=128, clip_layers=32, clip_heads=16, clip_mlp=5120,
                      text_dim=4096, image_dim=1280),
)}


def component_geometry(name: str, text_dim: int | None, image_dim: int | None, text_layers: int | None = None):
    """The geometry `name` for a transformer of these dims (refused in one line where it does not fit; text_dim
    None: not known yet), with UMT5 sliced to `text_layers` when given."""
    if name not in COMPONENTS:
        raise BadInputError(f"--components {name!r}: choose from {', '.join(COMPONENTS)}", param="components")
    geo = COMPONENTS[name]
    if geo.text_dim is not None and text_dim is not None and (text_dim, image_dim) != (geo.text_dim, geo.image_dim):
        raise BadInputError(f"--components {name}: its encoders give text {geo.text_dim} / image {geo.image_dim} "
                            f"wide embeddings; this transformer takes {text_dim} / {image_dim} (use a 14B preset)",
                            param="components")
    if text_layers is not None and not 1 <= text_layers <= geo.text_layers:
        raise BadInputError(f"--text-layers {text_layers}: 1 to {geo.text_layers} for --components {name}",
                            param="text_layers")
    return geo, text_layers or geo.text_layers


def byte_tokenizer():
    """A T5-style tokenizer built inline: one token per UTF-8 byte, `</s>` appended, `<pad>` = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        pre_tokenizers.Split("", "isolated"),
    ])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def build_components(text_dim: int, image_dim: int | None, seed: int = 0, name: str = "tiny",
                     text_layers: int | None = None) -> dict[str, Any]:
    """Every part but the transformer, from seeded weights (the same seed gives the same parts)."""
    import torch  # lazy: `wanrt bench --help` lists COMPONENTS without loading torch
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    geo, layers = component_geometry(name, text_dim, image_dim, text_layers)
    tokenizer = byte_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**geo.vae).eval()
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=text_dim, d_kv=geo.text_d_kv or max(8, text_dim // geo.text_heads),
            d_ff=geo.text_d_ff or 2 * text_dim, num_layers=layers, num_heads=geo.text_heads,
            relative_attention_num_buckets=geo.text_buckets, relative_attention_max_distance=geo.text_max_distance,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
        image_encoder = image_processor = None
        if image_dim is not None:
            image_encoder = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=image_dim, intermediate_size=geo.clip_mlp or 2 * image_dim,
                num_hidden_layers=geo.clip_layers,
                num_attention_heads=geo.clip_heads or (2 if image_dim % 2 == 0 else 1), image_size=224,
                patch_size=14, projection_dim=image_dim)).eval()
            try:  # the PIL processor: same output, no torchvision needed
                from transformers import CLIPImageProcessorPil as processor_cls
            except ImportError:  # older transformers; importing the name there is what warns without torchvision
                from transformers import CLIPImageProcessor as processor_cls
            image_processor = processor_cls(crop_size=224, size={"shortest_edge": 224})
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": tiny_scheduler(),
            "image_encoder": image_encoder, "image_processor": image_processor}


def tiny_scheduler(shift: float = 3.0):
    """The built-in pipeline's scheduler: Wan 2.1 480p settings, UniPC on flow sigmas with shift 3."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=shift)
