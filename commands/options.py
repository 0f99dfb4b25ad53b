"""CLI argument groups shared by subcommands (Polygraphy's habit): each group is a decorator that adds its
options, and a `*_from_kwargs` function that turns them into the matching frozen spec."""

from __future__ import annotations

from typing import Callable

import click

# nothing here may import torch: every subcommand's options are declared at import, and `--help` must stay instant
from wanrt.choices import Dtype, LoraMode
from wanrt.runtime.backend_names import Backend
from wanrt.export.presets import PRESETS
from wanrt.export.targets import TARGET_GROUPS
from wanrt.commands.flags import deprecated_option

# Seeds every generator accepts (torch.Generator overflows past 2^63, numpy past 2^32): one line, exit 2 beyond.
SEED = click.IntRange(0, 2**32 - 1)


class FiniteFloat(click.ParamType):
    """A float option that refuses nan/inf (click's FLOAT takes them): a non-finite guidance or LoRA scale runs to
    the end and writes a video or engine of NaNs. The one float type every command's float options use; optional
    bounds are inclusive unless `min_open`/`max_open`."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value, param, ctx):
        import math

        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (v < self.min or (self.min_open and v == self.min)):
            self.fail(f"{v:g} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and (v > self.max or (self.max_open and v == self.max)):
            self.fail(f"{v:g} must be {'<' if self.max_open else '<='} {self.max:g}", param, ctx)
        return v

    def __repr__(self) -> str:
        return f"FiniteFloat({self.min}, {self.max})"


# any finite float (nan/inf refused); FiniteFloat(min=...) for a bounded one
FINITE_FLOAT = FiniteFloat()


class Text(click.ParamType):
    """Text for a model (a prompt) through wanrt.text's one rule, as the server checks it: an argument that is not
    valid UTF-8 (the shell passes bytes; Python holds them as lone surrogates), or holds a control character, is
    one line and exit 2, not a tokenizer's traceback."""

    name = "text"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def convert(self, value, param, ctx):
        from wanrt.text import text_problem

        try:  # the argument's bytes as the shell passed them, so bad UTF-8 is named as such
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        except UnicodeEncodeError:
            raw = value
        problem, text = text_problem(raw, self.max_bytes)
        if problem is not None:
            self.fail(problem, param, ctx)
        return text


def option_group(*decorators: Callable, section: str | None = None) -> Callable:
    """Several click options as one decorator (an argument group shared by subcommands). With `section`, `--help` of
    a SectionedCommand lists them under that heading (an inner group's own section wins)."""
    def apply(f):
        before = {id(p) for p in getattr(f, "__click_params__", ())}
        for d in reversed(decorators):
            f = d(f)
        for p in getattr(f, "__click_params__", ()):
            if id(p) not in before and section and not getattr(p, "help_section", None):
                p.help_section = section
        return f

    return apply


class SectionedCommand(click.Command):
    """`--help` with the options under headings (Polygraphy's argument groups): one flat list of 45 options tells a
    newcomer nothing. Sections come in the order of their first option; untagged options (and --help) go last."""

    def format_options(self, ctx, formatter):
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "help_section", None) or "Other options", []).append(record)
        for name in sorted(sections, key=lambda n: n == "Other options"):
            with formatter.section(name):
                formatter.write_dl(sections[name])


model_options = option_group(
    click.option("--model", "model", default="tiny", show_default=True,
                 help=f"Preset ({', '.join(PRESETS)}), a local diffusers checkpoint directory, or a hub id "
                      "(e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)."),
    click.option("--layers", type=click.IntRange(1), default=None, help="Keep only the first N transformer blocks."),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of preset weights and synthetic LoRAs."),
    # the old spelling lives with the flag it became, so every subcommand that takes --seed takes it (README)
    deprecated_option("--lora-seed", "--seed", "seed", type=SEED),
    section="Model",
)

class LoraEntryType(click.ParamType):
    """`FILE[:STRENGTH]` or `synthetic:RANK[:STRENGTH]` (wanrt.parse.parse_lora_entry): one entry of a stack; the
    strength defaults to --lora-scale, applied when the spec is made."""

    name = "FILE[:S]"

    def convert(self, value, param, ctx):
        from wanrt.errors import BadInputError
        from wanrt.parse import LoraEntry, parse_lora_entry

        if isinstance(value, LoraEntry):
            return value
        try:
            return parse_lora_entry(value, f"--{param.name}" if param is not None else "--lora", None)
        except BadInputError as e:
            self.fail(str(e), param, ctx)


lora_options = option_group(
    click.option("--lora", "lora", type=LoraEntryType(), multiple=True,
                 help="LoRA file (safetensors) or peft adapter directory: diffusers/peft, ComfyUI/Kijai or "
                      "musubi/kohya format, at strength :S. Repeat for a stack (one swappable branch); "
                      "synthetic:RANK[:S] adds a seeded synthetic LoRA. Wan2.2: high:FILE[:S] or low:FILE[:S] "
                      "for one expert; without a prefix, both."),
    click.option("--merge", "merge", type=LoraEntryType(), multiple=True,
                 help="A LoRA folded into the base weights in every mode (a distill LoRA the deployment keeps); "
                      "the --lora entries stay swappable. Repeatable, FILE[:S]."),
    click.option("--max-rank", type=click.IntRange(1), default=None,
                 help="separate: zero-pad each module's branch to this rank, room for a larger stack at refit."),
    click.option("--rank", "rank", default=None,
                 help="Synthetic LoRA rank (no --lora), or SVD re-rank target (--lora of higher rank)."),
    click.option("--targets", default="all", show_default=True,
                 help=f"One target set: groups ({', '.join(TARGET_GROUPS)}) and/or module patterns, joined by "
                      "',' or '+' (a union)."),
    click.option("--lora-mode", type=click.Choice(LoraMode.values()), default="merged", show_default=True,
                 help="merged: folded into W; separate: its own branch in the graph; full: dense delta reference."),
    click.option("--lora-scale", type=FINITE_FLOAT, default=1.0, show_default=True, help="LoRA strength."),
    click.option("--allow-pickle", is_flag=True, help="Allow .pt/.ckpt/.bin LoRA files (loaded weights_only)."),
    click.option("--finetuned", default=None,
                 help="With --lora-mode full: a real full fine-tune instead of a dense delta (diffusers dir, sharded "
                      "or single .safetensors, ComfyUI checkpoint; or synthetic[:EXPONENT]). See 'wanrt extract'."),
    section="LoRA",
)

dtype_option = option_group(
    click.option("--dtype", type=click.Choice(Dtype.values()), default=None,
                 help="Export precision (bf16 is what Wan is trained in).  [default: fp32; bf16 with --engine]"),
    section="Model")

# the model dtype of subcommands that run the model (bench, generate): fp32 unless asked
run_dtype_option = option_group(
    click.option("--dtype", type=click.Choice(Dtype.values()), default="fp32", show_default=True,
                 help="dtype of the model weights (and of the exports made on the way)."),
    section="Model")

# where the model runs, for every subcommand that runs it
device_options = option_group(
    click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
    click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch and the runtimes."),
    section="Device",
)


# Wan2.2's experts kept loaded: both up front, or one at a time (runtime/experts.RESIDENT; spelled here so that
# --help does not import torch)
experts_resident_option = click.option(
    "--experts-resident", type=click.Choice(("both", "one")), default="both", show_default=True,
    help="Wan2.2: keep both experts loaded, or one at a time (the open one is freed at the boundary step and the "
         "other loaded: two loads per video, each counted and timed) where the memory budget holds only one.")


def backend_option(default: str):
    """--backend, one of wanrt.choices.Backend (generate, and serve's per-replica backend)."""
    return click.option("--backend", type=click.Choice(Backend.values()), default=default, show_default=True,
                        help="Runtime backend (docs/bench.md).")


def model_spec_from_kwargs(kw):
    from wanrt.export.model import ModelSpec

    return ModelSpec(source=kw["model"], layers=kw["layers"], dtype=kw.get("dtype") or "fp32", seed=kw["seed"])


def lora_entries(kw, name: str = "lora") -> tuple:
    """The --lora (or --merge) entries with unset strengths at --lora-scale."""
    from dataclasses import replace

    scale = kw.get("lora_scale")
    scale = 1.0 if scale is None else scale
    return tuple(replace(e, strength=scale) if e.strength is None else e for e in kw.get(name) or ())


def lora_spec_from_kwargs(kw, rank: int | None = None):
    from wanrt.errors import BadInputError
    from wanrt.export.api import LoraSpec

    tagged = [e for e in (*(kw.get("lora") or ()), *(kw.get("merge") or ())) if e.expert is not None]
    if tagged:
        raise BadInputError(f"--lora {tagged[0]}: the {tagged[0].expert}: prefix names one of Wan2.2's experts; "
                            f"--model {kw.get('model')} has one transformer")
    entries = lora_entries(kw)
    first, rest = (entries[0], entries[1:]) if entries else (None, ())
    if rank is not None and first is not None and (rest or first.rank is not None):
        raise BadInputError("--rank re-ranks a single --lora file; a stack keeps each LoRA's rank (--max-rank sets "
                            "the branch's)")
    # '+' and ',' both join a target set (bench sweeps several sets with --target-sets): one syntax everywhere
    return LoraSpec(file=first.file if first else None, rank=first.rank if first and first.rank else rank,
                    targets=kw["targets"].replace("+", ","), mode=kw["lora_mode"],
                    scale=first.strength if first else kw["lora_scale"], seed=kw["seed"],
                    allow_pickle=kw["allow_pickle"], finetuned=kw.get("finetuned"), stack=rest,
                    merge=lora_entries(kw, "merge"), max_rank=kw.get("max_rank"))


def lora_specs_by_expert(kw, experts: tuple[str, ...], rank: int | None = None) -> dict:
    """{expert: LoraSpec} of a two-expert model: each expert's spec holds the --lora/--merge entries prefixed with
    its name (prefix dropped) and the unprefixed ones, in command-line order."""
    from dataclasses import replace

    from wanrt.errors import BadInputError

    if kw.get("finetuned"):
        raise BadInputError("--finetuned: a full fine-tune replaces one transformer's weights, and a two-expert "
                            "model has two; not supported for Wan2.2's experts")

    def mine(entries, expert):
        return tuple(replace(e, expert=None) for e in entries or () if e.expert in (None, expert))

    return {e: lora_spec_from_kwargs({**kw, "lora": mine(kw.get("lora"), e), "merge": mine(kw.get("merge"), e)},
                                     rank) for e in experts}
