"""`wanrt generate`: image + prompt -> mp4 with any backend as the pipeline's transformer."""

from __future__ import annotations

import click

from wanrt.commands.flags import deprecated_option
from wanrt.commands.options import (FINITE_FLOAT, SEED, FiniteFloat, Text, backend_option, device_options,
                                    experts_resident_option, lora_options, lora_spec_from_kwargs,
                                    lora_specs_by_expert, model_options, model_spec_from_kwargs, run_dtype_option)
from wanrt.console import err_console, out_console
from wanrt.errors import BadInputError
from wanrt.export.presets import PRESETS
from wanrt.parse import parse_int_list, parse_shape
from wanrt.runtime.backend_names import StageBackend
from wanrt.runtime.components import COMPONENTS, component_geometry
from wanrt.runtime.schedule import RECIPES, resolve_schedule
from wanrt.text import MAX_PROMPT_BYTES


def stages_line(stages: dict[str, float], total_s: float) -> str:
    """"stages: text 0.01 s, image 0.02 s, ... (total 1.23 s)": the keys of runtime/stages.STAGES, spoken."""
    spoken = {"vae_encode": "vae-encode"}
    parts = ", ".join(f"{spoken.get(k, k)} {v:.2f} s" for k, v in stages.items())
    return f"stages: {parts} (total {total_s:.2f} s)"


def _single_rank(kw) -> int | None:
    ranks = parse_int_list(kw.get("rank"), "--rank")
    if ranks and len(ranks) > 1:
        raise BadInputError("--rank takes one value here (use 'wanrt bench --ranks' for sweeps)")
    return ranks[0] if ranks else None


def check_components(kw) -> None:
    """--components and --text-layers, refused in one line before any model loads: they build the built-in
    pipeline's parts (not --pipeline's), and a preset's text/image widths must be the geometry's (an artifact's are
    checked when its manifest is read, still before the parts are built)."""
    if kw["pipeline"] is not None and (kw["components"] != "tiny" or kw["text_layers"] is not None):
        raise BadInputError(f"--components {kw['components']}: for the built-in pipeline; --pipeline "
                            f"{kw['pipeline']} brings its own encoders and VAE", param="components")
    config = PRESETS[kw["model"]].config if kw["artifact"] is None and kw["model"] in PRESETS else {}
    component_geometry(kw["components"], config.get("text_dim"), config.get("image_dim"), kw["text_layers"])


@click.command()
@click.option("--image", type=click.Path(dir_okay=False), required=True, help="Conditioning image (PNG/JPEG).")
@click.option("--prompt", required=True, type=Text(MAX_PROMPT_BYTES))
@click.option("--negative-prompt", default="", show_default=True, type=Text(MAX_PROMPT_BYTES))
@backend_option("eager")
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="ONNX export directory (ort) or engine directory (trt); Wan2.2: the two-expert artifact of "
                   "`wanrt export` or `wanrt build`. ort without it exports once into the cache.")
@deprecated_option("--engine", "--artifact", "artifact", type=click.Path(file_okay=False))
@model_options
@lora_options
@run_dtype_option
@click.option("--pipeline", default=None,
              help="A diffusers Wan I2V pipeline (directory or hub id) for VAE/encoders/scheduler; default: the "
                   "tiny built-in pipeline sized to the model.")
# 17 frames: the shortest video `wanrt eval` can also score with FVD (16-frame clips)
@click.option("--shape", default="17x32x32", show_default=True, help="FRAMESxHEIGHTxWIDTH in pixels.")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Denoising steps.  [default: 2, or the recipe's, or the number of --timesteps]")
@click.option("--timesteps", default=None, metavar="T1,T2,...",
              help="Explicit timesteps before the shift, strictly decreasing in (0, 1000], e.g. 1000,750,500,250.")
@click.option("--shift", type=FiniteFloat(0, min_open=True), default=None,
              help="Flow shift of the scheduler.  [default: the pipeline scheduler's, 3 for the built-in one]")
@click.option("--guidance", type=FINITE_FLOAT, default=None,
              help="Classifier-free guidance scale; <= 1 is no CFG (one forward per step).  [default: 5.0]")
@click.option("--no-cfg", is_flag=True, help="No classifier-free guidance: guidance 1, one forward per step.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="A named schedule; flags given win. " + "; ".join(f"{r.name}: {r.about}"
                                                                     for r in RECIPES.values()) + ".")
@click.option("--noise-seed", type=SEED, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--fps", type=click.IntRange(1), default=16, show_default=True)
@click.option("--vae-backend", type=click.Choice(StageBackend.values()), default=StageBackend.EAGER.value,
              show_default=True, help="Where the VAE encode and decode run: diffusers' (eager), or the VAE exported "
                                      "once into the cache (keyed by its config and weights) on that backend, fp32.")
@click.option("--encoders-backend", type=click.Choice(StageBackend.values()), default=StageBackend.EAGER.value,
              show_default=True, help="Where the text (UMT5) and image (CLIP) encoders run, as --vae-backend.")
@device_options
@experts_resident_option
@click.option("--components", type=click.Choice(sorted(COMPONENTS)), default="tiny", show_default=True,
              help="The built-in pipeline's encoders and VAE: tiny, or wan2.1's real geometries from seeded weights "
                   "(VAE, CLIP ViT-H/14, UMT5-XXL; 14B presets): stage times of the real architectures.")
@click.option("--text-layers", type=click.IntRange(1), default=None,
              help="--components wan2.1: UMT5 layers to build (of 24; 24 are 18 GB in fp32).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output .mp4.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def generate(**kw):
    """Image + prompt -> mp4 with any backend as the pipeline's transformer."""
    from wanrt.export.model import model_experts
    from wanrt.runtime.experts import is_experts_artifact
    from wanrt.runtime.generate import GenerateSpec, generate as run

    shape = parse_shape(kw["shape"], "--shape")
    schedule = resolve_schedule(steps=kw["steps"], timesteps=kw["timesteps"], shift=kw["shift"],
                                guidance=kw["guidance"], no_cfg=kw["no_cfg"], recipe_name=kw["recipe"],
                                default_steps=2, default_guidance=5.0, prefix="--")
    spec = GenerateSpec(prompt=kw["prompt"], negative_prompt=kw["negative_prompt"], frames=shape.frames,
                        height=shape.height, width=shape.width, schedule=schedule, seed=kw["noise_seed"],
                        fps=kw["fps"])
    model_spec = model_spec_from_kwargs(kw)
    check_components(kw)
    # Wan2.2: an experts artifact, or a two-expert --model with a LoRA stack per expert (high:/low: prefixes)
    experts = () if is_experts_artifact(kw["artifact"]) else model_experts(model_spec).names
    if kw["experts_resident"] != "both" and not (experts or is_experts_artifact(kw["artifact"])):
        raise BadInputError("--experts-resident one: for Wan2.2's two experts (a two-expert --model or --artifact)")
    lora = {"expert_loras": lora_specs_by_expert(kw, experts, _single_rank(kw))} if experts else \
        {"lora_spec": None if is_experts_artifact(kw["artifact"]) else lora_spec_from_kwargs(kw, _single_rank(kw))}
    info = run(kw["image"], spec, kw["backend"], kw["output"], model_spec=model_spec, engine=kw["artifact"],
               device=kw["device"], pipeline=kw["pipeline"], force=kw["force"], threads=kw["threads"],
               cuda_graph=kw["cuda_graph"], say=lambda m: err_console.print(f"[dim]{m}[/dim]"),
               experts_resident=kw["experts_resident"], vae_backend=kw["vae_backend"],
               encoders_backend=kw["encoders_backend"], components=kw["components"], text_layers=kw["text_layers"],
               **lora)
    by_expert = info.get("dit_calls_by_expert")
    split = f": {', '.join(f'{e} {n}' for e, n in by_expert.items())}" if by_expert else ""
    out_console.print(f"wrote {info['output']}: {info['frames']} frames {info['height']}x{info['width']}, "
                      f"{info['dit_calls']} DiT calls{split} ({schedule.describe()}) with '{kw['backend']}' in "
                      f"{info['generate_s']:.1f} s",
                      highlight=False)
    out_console.print(stages_line(info["stages"], info["total_s"]), highlight=False)
    if kw["components"] != "tiny":
        layers = kw["text_layers"] or COMPONENTS[kw["components"]].text_layers
        err_console.print(f"note: text, image and vae ran the {kw['components']} geometry (runtime/components.py) "
                          f"from seeded weights, UMT5 with {layers} of its {COMPONENTS[kw['components']].text_layers} "
                          f"layers", highlight=False)
    loads = info.get("expert_loads")
    if loads:
        each = ", ".join(f"{x['expert']} {x['seconds']:.2f} s" for x in loads["loads"])
        out_console.print(f"expert loads: {loads['count']}, {loads['seconds']:.2f} s ({each}; resident: "
                          f"{loads['resident']})", highlight=False)
    if kw["model"] in PRESETS and kw["pipeline"] is None:
        err_console.print(f"note: the '{kw['model']}' preset and the built-in pipeline have seeded random weights, "
                          "so the video is colour noise, not your prompt: it shows the pipeline runs end to end. "
                          "Pass --model and --pipeline of a real Wan I2V checkpoint for a real video.",
                          highlight=False)
