"""`wanrt extract`: LoRA files of several ranks from a full fine-tune (truncated SVD of each weight delta)."""

from __future__ import annotations

import click
from rich.table import Table

from wanrt.choices import ComfyuiKeys, Dtype, LoraFormat, SvdMethod
from wanrt.console import err_console, out_console
from wanrt.export.targets import TARGET_GROUPS  # torch-free: `extract --help` imports no torch
from wanrt.commands.options import model_options, model_spec_from_kwargs
from wanrt.parse import parse_int_list


def extract_table(manifest: dict) -> Table:
    p = manifest["payload"]
    title = "wanrt extract" + (" (SYNTHETIC fine-tune)" if p["synthetic"] else "")
    table = Table(title=title)
    for col in ("rank", "retained energy (targets)", "of all changes", "LoRA params", "file"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for r, f in p["files"].items():
        table.add_row(r, f"{f['retained_energy']:.4f}", f"{p['totals']['retained_energy_of_all_changes'][r]:.4f}",
                      f"{f['parameters']:,}", f["path"])
    return table


@click.command()
@model_options
@click.option("--finetuned", required=True,
              help="The full fine-tune: a diffusers transformer dir (sharded or not), a single .safetensors, a "
                   "ComfyUI-style checkpoint, or synthetic[:EXPONENT] (a power-law-spectrum fine-tune of --model).")
@click.option("--ranks", "--rank", "ranks", required=True,
              help="Ranks to extract, e.g. 4,8,16,32 (one file each); `--rank 16` for one.")
@click.option("--targets", default="all", show_default=True,
              help=f"Target group ({', '.join(TARGET_GROUPS)}) or comma list of module patterns.")
@click.option("--format", "fmt", type=click.Choice(LoraFormat.values()), default="diffusers",
              show_default=True, help="LoRA file format.")
@click.option("--comfyui-keys", type=click.Choice(ComfyuiKeys.values()), default="lora_A", show_default=True)
@click.option("--keep-diff", is_flag=True,
              help="Also write the changed norms/embeddings/modulation as full .diff/.diff_b tensors "
                   "(ComfyUI format).")
@click.option("--svd", type=click.Choice(SvdMethod.values()), default="auto", show_default=True,
              help="auto: randomized SVD (with an a-posteriori accuracy check) for matrices whose smaller side is "
                   ">= 2048, exact otherwise.")
@click.option("--save-dtype", type=click.Choice(Dtype.values()), default="fp32", show_default=True,
              help="dtype of the written factors.")
@click.option("--dtype", type=click.Choice(Dtype.values()), default="fp32", show_default=True,
              help="dtype a preset base is built in (checkpoints are read as stored; deltas are computed in fp32).")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="wanrt-extract", show_default=True,
              help="Output directory: lora-r<R>.safetensors per rank + manifest.json (energies, what was dropped).")
@click.option("--force", is_flag=True, help="Replace an existing extract directory.")
def extract(**kw):
    """Extract LoRAs of several ranks from a full fine-tune: truncated SVD of each delta (fine-tune - base)."""
    from wanrt.export.extract import ExtractSpec, extract_to_dir

    spec = ExtractSpec(finetuned=kw["finetuned"], ranks=tuple(parse_int_list(kw["ranks"], "--ranks")),
                       targets=kw["targets"], format=kw["fmt"], comfyui_keys=kw["comfyui_keys"],
                       keep_diff=kw["keep_diff"], svd=kw["svd"], save_dtype=kw["save_dtype"], seed=kw["seed"])
    manifest = extract_to_dir(model_spec_from_kwargs(kw), spec, kw["output"], force=kw["force"],
                              say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    out_console.print(extract_table(manifest))
    p = manifest["payload"]
    others = p["not_low_rank"]
    if others:
        kinds = sorted({o["kind"] for o in others})
        kept = sum(o["kept_as_diff"] for o in others)
        out_console.print(f"{len(others)} changed parameters outside the targets ({', '.join(kinds)}): "
                          f"{kept} kept as .diff, the rest not carried by the LoRA (see manifest.json)")
    out_console.print(f"wrote {kw['output']}/ ({len(p['files'])} LoRA files, manifest.json)")
