"""Train a small Wan-architecture I2V model on motion clips (issue 22): full fine-tune or LoRA, on the CPU.

    python -m wanrt.tools.motion_clips -o data/motion --set pretrain
    python -m wanrt.tools.train_small --data data/motion -o runs/pretrain --steps 300
    python -m wanrt.tools.train_small --data data/motion-down --init runs/pretrain -o runs/r8 --method lora --rank 8

Model: diffusers WanTransformer3DModel at a reduced config: `motion` (MODELS: the tiny preset's config at width 128)
by default, or any export/presets.py preset; `--layers` keeps the first N blocks; built from its seeded random init
or loaded from `--init` (a full-weights run of this tool). Data and
conditioning: runtime/motion.py (an exact invertible pixel <-> latent map, Wan's 16 + 4 + 16 = 36 input
channels, an image-embedding input from the first frame, a fixed text block per motion).

Objective, as Wan trains (rectified flow): u ~ U(0, 1), s = shift u / (1 + (shift - 1) u) (Wan's timestep shift),
x_t = (1 - s) x0 + s noise, target = noise - x0, timestep = 1000 s, loss = MSE over every latent. Validation loss
uses fixed noise and u per validation clip (seeded), so two runs' numbers compare. The rate is constant (as the
shipped model and the study trained) or, with `--lr-decay cosine`, falls to 0 over the run: 1,500 steps from the
shipped weights gave FVD 1627 against 1853 at a constant rate (docs/results/motion-study/lr-decay.json).

--method full trains every parameter; --method lora injects peft LoRA (rank, alpha, --targets: wanrt's groups
all | self-attn | cross-attn | image-kv | ffn, or patterns) and trains only the branch. Output (a wanrt artifact of
kind `motion-train`, written atomically): weights.safetensors (full: the whole state dict; lora: a diffusers-format
LoRA file wanrt's LoRA loaders read), losses.json (every step's loss, validation losses), manifest.json.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import safetensors.torch
import torch
from diffusers import WanTransformer3DModel
from peft import LoraConfig, inject_adapter_in_model

from wanrt.artifacts import (atomic_output_dir, build_manifest, load_artifact, write_bytes_atomic, write_json,
                             write_manifest)
from wanrt.errors import BadInputError, WanrtError
from wanrt.export.lora import LoraModule, LoraWeights, resolve_targets
from wanrt.export.lora_formats import save_lora_file
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.runtime.motion import CONDITIONING, MOTION_MODELS, FlowMatching, check_conditioning
from wanrt.tools.motion_clips import KIND as CLIPS_KIND

KIND = "motion-train"
WEIGHTS = "weights.safetensors"
METHODS = ("full", "lora")
LR_DECAYS = {"none": lambda _frac: 1.0, "cosine": lambda frac: 0.5 * (1 + math.cos(math.pi * frac))}
MODELS = MOTION_MODELS

@dataclass(frozen=True)
class TrainConfig:
    data: str
    preset: str = "motion"  # MODELS or an export/presets.py preset
    layers: int | None = None
    model_seed: int = 0
    init: str | None = None  # a `motion-train` directory with full weights
    method: str = "full"
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: str = "all"
    steps: int = 300
    batch: int = 4
    lr: float = 1e-3
    lr_decay: str = "none"  # LR_DECAYS
    shift: float = 3.0
    seed: int = 0
    val_every: int = 50
    val_clips: int = 8


def load_split(data: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips uint8 [N, T, H, W, 3], motion indices [N]) of a checked motion-clips directory."""
    manifest = load_artifact(data, kind=CLIPS_KIND)  # refuses a foreign dir, a missing or altered file
    entry = manifest["payload"]["splits"].get(split)
    if entry is None or not manifest["specs"]["counts"].get(split):
        raise BadInputError(f"--data {data}: has no {split} clips", param="data")
    clips = np.load(Path(data) / entry["clips"], allow_pickle=False)
    motions = np.load(Path(data) / entry["motions"], allow_pickle=False)
    return torch.from_numpy(clips), torch.from_numpy(motions.astype(np.int64))


def _seeded_model(config: dict[str, Any], cfg: TrainConfig) -> torch.nn.Module:
    if cfg.layers is not None:
        if not 1 <= cfg.layers <= config["num_layers"]:
            raise BadInputError(f"--layers {cfg.layers}: {cfg.preset} has {config['num_layers']} blocks",
                                param="layers")
        config = {**config, "num_layers": cfg.layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model_seed)
        return WanTransformer3DModel(**config)


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """`--model` from MODELS (seeded init) or an export/presets.py preset (wanrt's loader), then `--init`."""
    if cfg.preset in MODELS:
        model = _seeded_model(MODELS[cfg.preset], cfg)
    else:
        model = load_transformer(ModelSpec(source=cfg.preset, layers=cfg.layers, seed=cfg.model_seed))
    if cfg.init is not None:
        init = load_artifact(cfg.init, kind=KIND)
        if init["specs"]["method"] != "full":
            raise BadInputError(f"--init {cfg.init}: holds a {init['specs']['method']} run; --init takes full "
                                "weights", param="init")
        check_conditioning(init["payload"], f"--init {cfg.init}")
        model.load_state_dict(safetensors.torch.load_file(str(Path(cfg.init) / WEIGHTS)))
    return model.train().requires_grad_(True)  # load_transformer hands back a frozen model for inference


def add_lora(model: torch.nn.Module, cfg: TrainConfig) -> list[str]:
    """peft LoRA on the resolved targets; only the branch trains (B starts at zero, so the model starts as is)."""
    names = resolve_targets(model, cfg.targets)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                        target_modules=names, lora_dropout=0.0, init_lora_weights=True)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return names


def lora_weights(model: torch.nn.Module, names: list[str], cfg: TrainConfig) -> LoraWeights:
    """The trained branch in wanrt's canonical form (down A [r, in], up B [out, r], alpha)."""
    alpha = float(cfg.alpha if cfg.alpha is not None else cfg.rank)
    modules = {}
    for name in names:
        layer = model.get_submodule(name)
        modules[name] = LoraModule(down=layer.lora_A["default"].weight.detach().clone(),
                                   up=layer.lora_B["default"].weight.detach().clone(), alpha=alpha)
    return LoraWeights(modules, source={"trained": "tools/train_small.py", "targets": cfg.targets})


@torch.no_grad()
def validation_loss(fm: FlowMatching, clips: torch.Tensor, motions: torch.Tensor, seed: int) -> float:
    """Mean loss over the clips at fixed (seeded) noise and u: the same draws on every call and every run."""
    noise, u = fm.draw(clips, torch.Generator().manual_seed(seed + 7919))
    was_training = fm.model.training
    fm.model.eval()
    losses = [fm.loss(clips[i:i + 4], motions[i:i + 4], noise[i:i + 4], u[i:i + 4]).item() * len(clips[i:i + 4])
              for i in range(0, len(clips), 4)]
    fm.model.train(was_training)
    return sum(losses) / len(clips)


def train(cfg: TrainConfig, log=print) -> tuple[torch.nn.Module, list[str] | None, dict[str, Any]]:
    """Run the loop; returns (model, LoRA target names or None, the losses record)."""
    if cfg.lr_decay not in LR_DECAYS:
        raise BadInputError(f"--lr-decay {cfg.lr_decay!r}: choose one of {', '.join(LR_DECAYS)}", param="lr_decay")
    if cfg.method not in METHODS:
        raise BadInputError(f"--method {cfg.method!r}: choose one of {', '.join(METHODS)}", param="method")
    if cfg.steps < 1 or cfg.batch < 1 or not (math.isfinite(cfg.lr) and cfg.lr > 0) or cfg.shift <= 0:
        raise BadInputError("--steps, --batch, --lr and --shift must be positive", param="steps")
    clips, motions = load_split(cfg.data, "train")
    val_clips, val_motions = load_split(cfg.data, "validation")
    val_clips, val_motions = val_clips[:cfg.val_clips], val_motions[:cfg.val_clips]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    names = add_lora(model, cfg) if cfg.method == "lora" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    # cosine: the rate falls to 0 by the last step, so the weights settle instead of ending mid-jitter at full rate
    decay = LR_DECAYS[cfg.lr_decay]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: decay(k / cfg.steps))
    fm = FlowMatching(model, cfg.shift)
    generator = torch.Generator().manual_seed(cfg.seed)
    record: dict[str, Any] = {"train": [], "lr": [],
                              "validation": [[0, validation_loss(fm, val_clips, val_motions, cfg.seed)]],
                              "trainable_parameters": sum(p.numel() for p in trainable)}
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(clips), (cfg.batch,), generator=generator)
        noise, u = fm.draw(clips[idx], generator)
        loss = fm.loss(clips[idx], motions[idx], noise, u)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        record["lr"].append(scheduler.get_last_lr()[0])  # the rate this step took
        scheduler.step()
        record["train"].append(loss.item())
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = validation_loss(fm, val_clips, val_motions, cfg.seed)
            record["validation"].append([step, val])
            log(f"step {step}: train {np.mean(record['train'][-cfg.val_every:]):.4f} validation {val:.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    record["seconds"] = time.perf_counter() - start
    return model, names, record


def save_run(out: Path, cfg: TrainConfig, model: torch.nn.Module, names: list[str] | None, record: dict[str, Any],
             force: bool = False) -> None:
    with atomic_output_dir(out, force=force, kind=KIND) as tmp:
        if names is None:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            write_bytes_atomic(tmp / WEIGHTS, safetensors.torch.save(state))
        else:
            save_lora_file(lora_weights(model, names, cfg), tmp / WEIGHTS, "diffusers")
        write_json(tmp / "losses.json", record)
        payload = {"weights": WEIGHTS, "losses": "losses.json", "trainable_parameters": record["trainable_parameters"],
                   "final_validation": record["validation"][-1][1], "lora_targets": names,
                   "conditioning": CONDITIONING}
        write_manifest(tmp, build_manifest(KIND, asdict(cfg), payload))


@click.command()
@click.option("--data", required=True, type=click.Path(), help="a motion-clips directory (tools/motion_clips.py)")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path))
@click.option("--model", "preset", default="motion", show_default=True,
              help="motion (width 128, see MODELS) or an export/presets.py preset")
@click.option("--layers", type=int, default=None, help="keep the first N blocks")
@click.option("--init", type=click.Path(), default=None, help="start from a full-weights motion-train run")
@click.option("--method", type=click.Choice(METHODS), default="full", show_default=True)
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
@click.option("--targets", default="all", show_default=True)
@click.option("--steps", type=int, default=300, show_default=True)
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-decay", type=click.Choice(list(LR_DECAYS)), default="none", show_default=True,
              help="the rate over the run: none (constant) or cosine (to 0 at the last step)")
@click.option("--shift", type=float, default=3.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-every", type=int, default=50, show_default=True)
@click.option("--val-clips", type=int, default=8, show_default=True, help="validation clips scored")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads (a shared machine)")
@click.option("--force", is_flag=True)
def main(out, threads, force, **options):
    """Train the small I2V model on motion clips; write weights, losses and a manifest."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(**options)
    try:
        model, names, record = train(cfg)
        save_run(out, cfg, model, names, record, force)
    except WanrtError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}: validation {record['validation'][0][1]:.4f} -> {record['validation'][-1][1]:.4f}")


if __name__ == "__main__":
    main()
