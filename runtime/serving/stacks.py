"""LoRA stacks as the server sees them, torch-free: what a LoRA adapts and what a separate-mode branch holds
(`Footprint`), whether a stack fits a branch, and a stack's key and label.

A stack is a tuple of (LoRA name, scale) pairs in the client's order; the scale is None only for a separate-mode
engine's own exported LoRA served at the scale it was exported with. A separate-mode engine swaps a stack in as one
branch (wanrt.export.lora.stack_loras: per module, the LoRAs' ranks add up), so a stack fits an engine when every
LoRA's modules are inside the branch's, every bias delta has a bias slot, and on each module the summed rank is at
most the branch's (a smaller sum is zero-padded: exact). `wanrt pack` records both footprints in the bundle
manifest (runtime/serving/fit.py) so the ingress routes by them without loading a LoRA, ONNX or torch.

Wan2.2's experts engine (runtime/experts.py's pair) takes a stack per expert: an entry that names an expert is kept
in the stack as `NAME@EXPERT` (bundle names cannot hold '@'), one without applies to both. Stacks stay (name, scale)
pairs, so labels, the scheduler's grouping, Ray's routing ids and stored jobs carry the full per-expert stack as they
carry any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wanrt.choices import Expert
from wanrt.errors import BadInputError
from wanrt.export.targets import TARGET_GROUPS

Stack = tuple[tuple[str, float | None], ...]
GROUPS = tuple(g for g in TARGET_GROUPS if g != "all")


@dataclass(frozen=True)
class Footprint:
    """What a LoRA adapts (rank per module, modules with a bias delta) or what a separate-mode branch holds (rank per
    module, modules with a bias slot)."""

    ranks: Mapping[str, int]
    bias: frozenset[str] = field(default_factory=frozenset)

    @property
    def rank(self) -> int:
        """The largest per-module rank: what a branch must hold for this LoRA alone."""
        return max(self.ranks.values(), default=0)

    def targets(self) -> dict[str, Any]:
        """{modules: count, groups: the target groups it touches} (a module outside the blocks' groups: "other")."""
        groups = set()
        for name in self.ranks:
            parts = name.split(".", 2)
            suffix = parts[2] if len(parts) == 3 and parts[0] == "blocks" else None
            groups.add(next((g for g in GROUPS if suffix in TARGET_GROUPS[g]), "other"))
        return {"modules": len(self.ranks), "groups": [g for g in (*GROUPS, "other") if g in groups]}

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": dict(sorted(self.ranks.items())), "bias": sorted(self.bias)}

    @classmethod
    def from_dict(cls, d: Any, what: str) -> Footprint | None:
        """A footprint read from a bundle manifest (input): None when absent (packed by an older wanrt), a wrong
        type one BadInputError line."""
        if d is None:
            return None
        ranks = d.get("ranks") if isinstance(d, dict) else None
        bias = d.get("bias", []) if isinstance(d, dict) else None
        if not (isinstance(ranks, dict) and all(isinstance(k, str) and type(v) is int and v > 0
                                                for k, v in ranks.items())
                and isinstance(bias, list) and all(isinstance(b, str) for b in bias)):
            raise BadInputError(f"{what}: malformed footprint (want {{ranks: {{module: rank}}, bias: [module]}}); "
                                "repack the bundle")
        return cls(ranks=dict(ranks), bias=frozenset(bias))


def branch_footprint(section: dict[str, Any]) -> Footprint:
    """The branch of a separate-mode engine from its `lora` section (engine manifest, or lora_swap.swap_section of
    an export): module -> rank from the shape of `lora.<module>.A` ([in, r]), and the modules with a bias slot."""
    info, modules = section.get("refittable_weights") or {}, section.get("modules") or {}
    return Footprint(ranks={m: int(info[names["A"]]["shape"][1]) for m, names in modules.items()},
                     bias=frozenset(m for m, names in modules.items() if "bias" in names))


def export_branch(export_lora: dict[str, Any]) -> Footprint | None:
    """The branch from an export's `lora` payload when its rank is one number (every module padded to it or of one
    rank); None when it varies by module (the bundle's recorded footprint is then the only source)."""
    rank, initializers = export_lora.get("rank"), export_lora.get("initializers") or {}
    if type(rank) is not int or not initializers:
        return None
    return Footprint(ranks={m: rank for m in initializers},
                     bias=frozenset(m for m, names in initializers.items() if "bias" in names))


def stack_misfit(stack: Sequence[tuple[str, Footprint]], branch: Footprint) -> str | None:
    """Why the LoRAs of `stack` (name, footprint) do not fit `branch` together, in one phrase; None when they do.
    The rank check names the module that overflows most, with each LoRA's share."""
    for name, fp in stack:
        outside = sorted(set(fp.ranks) - set(branch.ranks))
        if outside:
            return (f"LoRA {name!r} adapts {len(outside)} module(s) outside its branch (e.g. {outside[0]}; the "
                    f"branch has {len(branch.ranks)} modules)")
        no_slot = sorted(fp.bias - branch.bias)
        if no_slot:
            return (f"LoRA {name!r} has bias deltas on {len(no_slot)} module(s) its graph has no LoRA bias slot for "
                    f"(e.g. {no_slot[0]})")
    sums: dict[str, int] = {}
    for _, fp in stack:
        for module, rank in fp.ranks.items():
            sums[module] = sums.get(module, 0) + rank
    over = [(s - branch.ranks[m], m) for m, s in sorted(sums.items()) if s > branch.ranks[m]]
    if not over:
        return None
    _, module = max(over, key=lambda x: x[0])
    shares = " + ".join(f"{name} {fp.ranks[module]}" for name, fp in stack if module in fp.ranks)
    need = max(sums.values())
    return (f"module {module} needs rank {sums[module]} ({shares}) and its branch has rank {branch.ranks[module]} "
            f"(a separate-mode export with --max-rank {need} holds this stack)")


def stack_of(request: dict[str, Any]) -> Stack:
    """The stack of a stored request (VideoRequest/PredictRequest as JSON): `loras`, or a job stored before stacks
    existed (`lora` + `lora_scale`, a one-entry stack)."""
    if "loras" in request:
        return tuple((str(name), None if scale is None else float(scale)) for name, scale in request["loras"] or ())
    name = request.get("lora")
    return ((name, request.get("lora_scale")),) if name else ()


def stack_label(stack: Stack) -> str | None:
    """The stack in one string (jobs' `lora` column, Ray's multiplexed model id): 'distill:1.0+style:0.8'; None for
    no LoRA. LoRA names cannot hold '+' or ':' (bundle names), so the label is unambiguous."""
    if not stack:
        return None
    return "+".join(name if scale is None else f"{name}:{scale!r}" for name, scale in stack)


def expert_entry(name: str, expert: str | None) -> str:
    """A stack entry's name: the LoRA's, with `@expert` when it applies to that expert only."""
    return name if expert is None else f"{name}@{expert}"


def split_entry(entry: str) -> tuple[str, str | None]:
    """(LoRA name, expert or None: both) of a stack entry's name."""
    name, _, expert = entry.partition("@")
    return name, expert or None


def expert_stack(stack: Stack, expert: str) -> Stack:
    """The entries of `stack` that apply to `expert` (its own and those naming no expert), as plain LoRA names."""
    out = []
    for entry, scale in stack:
        name, only = split_entry(entry)
        if only in (None, expert):
            out.append((name, scale))
    return tuple(out)


def per_expert(stack: Stack) -> bool:
    """Does any entry name an expert?"""
    return any(split_entry(entry)[1] is not None for entry, _ in stack)


def stack_objects(stack: Stack) -> list[dict[str, Any]]:
    """The stack as the API shows it: [{name, scale}], with `expert` on an entry that names one."""
    out = []
    for entry, scale in stack:
        name, expert = split_entry(entry)
        out.append({"name": name, "scale": scale, **({"expert": expert} if expert else {})})
    return out


EXPERTS = Expert.values()
