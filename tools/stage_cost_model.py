"""The cost of every stage of one Wan video (issue 21), and per-video PREDICTIONS on H100/H200.

FLOPs are counted, not estimated: each stage's module is built on the meta device at its real geometry
(runtime/components.py `wan2.1`: UMT5-XXL 24 layers, CLIP ViT-H/14, the Wan2.1 VAE) and run once at the real input
size under torch's FlopCounterMode (matmuls, attention and convolutions; element-wise ops are not counted). The DiT
forward comes from tools/cpu_cost_model.py (per-op roofline). A video is: text encode (x2 with CFG), CLIP image
encode and VAE encode of the conditioning video (I2V only: every frame, the first is the image and the rest zeros),
the DiT forwards of the schedule, and the VAE decode.

GPU seconds per stage = max(FLOPs / peak, weight bytes / bandwidth) on published dense peaks, bf16 (the VAE also
at fp32: pipelines often keep it there). A roofline is a LOWER BOUND: it assumes every kernel at peak; this CPU's
measured fraction of its own matmul peak per stage (`--measured results.json` of a `wanrt bench --pipeline` run
with `--components wan2.1`) is printed beside it for scale. Everything this tool prints for a GPU is a PREDICTION.

    python -m wanrt.tools.stage_cost_model -o docs/results --measured docs/results/pipeline-14b-4step/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from wanrt.export.presets import PRESETS
from wanrt.io_contract import VideoShape
from wanrt.runtime.bench.peaks import measure_kernel
from wanrt.runtime.components import COMPONENTS
from wanrt.tools.bench_cpu_engines import finish, header, write_results
from wanrt.tools.cpu_cost_model import GPU_PEAKS, forward_ops, predict

TEXT_TOKENS, IMAGE_PX = 512, 224
# Wan2.1 I2V 480p as released, and MLPerf Inference v6.0's Wan2.2-T2V-A14B (its two experts share one geometry)
CONFIGS = {
    "wan2.1-i2v-480p": {"frames": 81, "height": 480, "width": 832, "i2v": True,
                        "schedules": {"wan-40step-cfg": (40, True), "distill-4step": (4, False)}},
    "mlperf-wan2.2-t2v-720p": {"frames": 81, "height": 720, "width": 1280, "i2v": False,
                               "schedules": {"mlperf-20step-cfg": (20, True)}},
}


def _count(build, run) -> tuple[float, int]:
    """(FLOPs of `run(module)`, parameter count) with the module built on the meta device: no memory, no time."""
    with torch.device("meta"):
        module = build().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run(module)
    return float(counter.get_total_flops()), sum(p.numel() for p in module.parameters())


def stage_flops(frames: int, height: int, width: int, i2v: bool) -> dict[str, dict[str, float]]:
    """{stage: {flops, params}} of one call of each stage at the real geometry."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    geo = COMPONENTS["wan2.1"]
    text_cfg = UMT5Config(vocab_size=256384, d_model=geo.text_dim, d_kv=geo.text_d_kv, d_ff=geo.text_d_ff,
                          num_layers=geo.text_layers, num_heads=geo.text_heads,
                          relative_attention_num_buckets=geo.text_buckets,
                          relative_attention_max_distance=geo.text_max_distance)
    ids = torch.ones(1, TEXT_TOKENS, dtype=torch.int64, device="meta")
    out = {}
    out["text"] = _count(lambda: UMT5EncoderModel(text_cfg), lambda m: m(ids))  # no mask: the same matmuls
    if i2v:
        clip_cfg = CLIPVisionConfig(hidden_size=geo.image_dim, intermediate_size=geo.clip_mlp,
                                    num_hidden_layers=geo.clip_layers, num_attention_heads=geo.clip_heads,
                                    image_size=IMAGE_PX, patch_size=14)
        px = torch.zeros(1, 3, IMAGE_PX, IMAGE_PX, device="meta")
        out["image"] = _count(lambda: CLIPVisionModel(clip_cfg),
                              lambda m: m(pixel_values=px, output_hidden_states=True))
        video = torch.zeros(1, 3, frames, height, width, device="meta")
        out["vae_encode"] = _count(lambda: AutoencoderKLWan(**geo.vae), lambda m: m._encode(video))
    latent = VideoShape(frames, height, width).latent
    z = torch.zeros(1, 16, *latent, device="meta")
    out["vae_decode"] = _count(lambda: AutoencoderKLWan(**geo.vae), lambda m: m._decode(z))
    return {k: {"flops": f, "params": p} for k, (f, p) in out.items()}


def dit_config(i2v: bool) -> dict[str, Any]:
    config = dict(PRESETS["wan2.1-i2v-14b"].config)
    if not i2v:  # Wan T2V: 16 input channels (no conditioning latents), no image embedder
        config.update(in_channels=16, image_dim=None)
    return config


def predict_video(name: str, spec: dict[str, Any], stages: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per GPU and schedule: seconds per stage (roofline) and per video. PREDICTIONS."""
    shape = VideoShape(spec["frames"], spec["height"], spec["width"])
    tokens = shape.tokens()
    rows = []
    for gpu, peaks in GPU_PEAKS.items():
        dit = predict(forward_ops(dit_config(spec["i2v"]), tokens, 1, "bf16"), peaks["bf16"], peaks["bandwidth"])
        for sched, (steps, cfg) in spec["schedules"].items():
            per = {k: max(v["flops"] / peaks["bf16"], 2 * v["params"] / peaks["bandwidth"]) for k, v in stages.items()}
            per["text"] *= 2 if cfg else 1
            per["dit"] = dit["seconds"] * steps * (2 if cfg else 1)
            vae_fp32 = {k: max(stages[k]["flops"] / peaks["fp32"], 4 * stages[k]["params"] / peaks["bandwidth"])
                        for k in stages if k.startswith("vae")}
            rows.append({"config": name, "gpu": gpu, "schedule": sched, "steps": steps, "cfg": cfg,
                         "tokens": tokens, "stages_s": per, "video_s": sum(per.values()),
                         "vae_fp32_s": vae_fp32, "label": "PREDICTION (roofline lower bound)"})
    return rows


def cpu_efficiency(measured: Path, peaks: dict[str, float]) -> dict[str, Any]:
    """Achieved FLOP/s per stage of a measured pipeline bench (its eager and compiled rows), as a fraction of this
    CPU's matmul peak at the row's precision (`peaks`: torch's fp32/bf16 GEMM, measured now); its FLOPs counted
    at the bench's own shape and UMT5 slice."""
    doc = json.loads(measured.read_text())
    p = doc["payload"]
    sh, comp = p["shape"], p["components"]
    at_shape = stage_flops(sh["frames"], sh["height"], sh["width"], True)
    at_shape["text"]["flops"] *= comp["text_layers"] / comp["text_layers_full"]  # layers scale the encoder's FLOPs
    out = {}
    for sched, s in p["schedules"].items():
        for row, r in s["rows"].items():
            peak = peaks[p["rows"][row]["precision"]]
            for stage, key in (("text", "text"), ("image", "image"), ("vae_encode", "vae_encode"),
                               ("vae_decode", "vae")):
                secs = r["stages_s"][key] / (2 if stage == "text" and s["schedule"]["cfg"] else 1)
                rate = at_shape[stage]["flops"] / secs
                out.setdefault(f"{sched}/{row}", {})[stage] = {"seconds": secs, "flops": at_shape[stage]["flops"],
                                                               "flop_per_s": rate, "of_peak": rate / peak}
    return {"measured": str(measured), "shape": sh, "components": comp, "cpu_matmul_peaks": peaks, "rows": out}


def _matmul_peak(precision: str, n: int = 2048) -> float:
    """torch's F.linear peak at `precision` on this CPU (runtime/bench/peaks.py, the kernel wanrt bench's MFU uses)."""
    return measure_kernel(f"F.linear {precision}", n, n, n)["tflops"] * 1e12


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    L = ["# Cost of every stage of a Wan video: FLOPs counted, GPU seconds PREDICTED (roofline lower bound)", "",
         f"Command: `{doc['command']}`; {m.get('cpu')}; wall {doc['seconds']:.0f} s.", "",
         "| config | stage | GFLOP per call | parameters |", "|---|---|---|---|"]
    for name, c in doc["configs"].items():
        L += [f"| {name} | {k} | {v['flops'] / 1e9:,.0f} | {v['params'] / 1e6:,.0f} M |"
              for k, v in c["stages"].items()]
    L += ["", "PREDICTIONS: max(FLOPs / bf16 peak, weight bytes / bandwidth) per stage. For the VAE this is far below "
              "what real decodes take: activation traffic, conv3d kernel efficiency and the causal chunk loop (21 "
              "sequential chunks at 81 frames) are not modelled (the issue's Wan2GP run: 77 s for one decode).", "",
          "| config | GPU | schedule | " + " | ".join(STAGE_COLUMNS) + " | video s | VAE fp32 s |",
          "|---|---|---|" + "---|" * len(STAGE_COLUMNS) + "---|---|"]
    for name, c in doc["configs"].items():
        for r in c["predictions"]:
            cells = [f"{r['stages_s'][k]:.2f}" if k in r["stages_s"] else "-" for k in STAGE_COLUMNS]
            L.append(f"| {name} | {r['gpu']} | {r['schedule']} | " + " | ".join(cells) +
                     f" | **{r['video_s']:.1f}** | {sum(r['vae_fp32_s'].values()):.1f} |")
    check = doc.get("cpu_check")
    if check:
        pk = check["cpu_matmul_peaks"]
        L += ["", f"Measured on this CPU ({check['measured']}; torch matmul peaks fp32 {pk['fp32'] / 1e9:.0f}, bf16 "
                  f"{pk['bf16'] / 1e9:.0f} GFLOP/s: F.linear 2048^3, median of 5): each stage's counted FLOPs / its "
                  "measured seconds, as a fraction of the peak at the row's precision.", "",
              "| run/row | " + " | ".join(CPU_STAGES) + " |", "|---|" + "---|" * len(CPU_STAGES)]
        for row, st in check["rows"].items():
            L.append(f"| {row} | " + " | ".join(f"{st[k]['of_peak']:.0%} ({st[k]['seconds']:.2f} s)"
                                                  for k in CPU_STAGES) + " |")
    return "\n".join(L) + "\n"


STAGE_COLUMNS = ("text", "image", "vae_encode", "dit", "vae_decode")
CPU_STAGES = ("text", "image", "vae_encode", "vae_decode")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="directory: stage-cost-model.json and .md")
    ap.add_argument("--measured", type=Path, default=None, help="a `wanrt bench --pipeline` results.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = header("stage_cost_model", argv)
    configs = {}
    for name, spec in CONFIGS.items():
        stages = stage_flops(spec["frames"], spec["height"], spec["width"], spec["i2v"])
        configs[name] = {"spec": {k: v for k, v in spec.items() if k != "schedules"}, "stages": stages,
                         "predictions": predict_video(name, spec, stages)}
        for r in configs[name]["predictions"]:
            per = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items())
            print(f"PREDICTION {name} {r['gpu']} {r['schedule']}: {r['video_s']:.1f} s per video ({per})")
    doc = {**info, "configs": configs}
    if args.measured:
        doc["cpu_check"] = cpu_efficiency(args.measured, {p: _matmul_peak(p) for p in ("fp32", "bf16")})
        for row, st in doc["cpu_check"]["rows"].items():
            print(f"measured {row}: " + ", ".join(f"{k} {v['of_peak']:.0%} of peak" for k, v in st.items()))
    finish(doc, t0)
    write_results(args.output, "stage-cost-model", doc, render(doc))


if __name__ == "__main__":
    main()
