"""OpenVINO (CPU, Intel GPU) in the flavour registry (engines/registry.py): its `wanrt build` options, the
precisions this machine offers, build, load and LoRA swap.

Light at import (the registry lists flavours for `wanrt --help`): OpenVINO is imported by the methods that use it;
without it, `--flavour openvino` is one MissingDependencyError line naming the extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Callable, ClassVar

import click

from wanrt.engines.cache import engine_cache_from_root
from wanrt.engines.openvino import BACKEND, FLAVOUR, INSTALL_HINT, PRECISIONS
from wanrt.engines.openvino.lora_form import DEFAULT_FORM, FORMS
from wanrt.engines.openvino.precision import KEEP_POLICIES
from wanrt.engines.registry import LazyHooks
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest

# build options of the TensorRT flavours, at their defaults: set to anything else, refused rather than ignored
TRT_ONLY = {"profiles": (), "frames": None, "opt_level": None, "workspace_gib": None, "timing_cache": None,
            "weight_streaming": False, "compute_capability": None}

OPTIONS = (
    click.option("--ov-device", "ov_device", default="CPU", show_default=True,
                 help="openvino flavour: the OpenVINO device (CPU, GPU, GPU.1)."),
    click.option("--keep-fp32", "keep_fp32", type=click.Choice(tuple(KEEP_POLICIES)), default="wan",
                 show_default=True,
                 help="openvino bf16/int8/w8a8: what stays fp32 (wan: the timestep embedding, as Wan keeps it)."),
    click.option("--lora-form", "lora_form", type=click.Choice(FORMS), default=DEFAULT_FORM, show_default=True,
                 help="openvino, separate LoRA: the branch's graph form (shared-a: one x·A GEMM for the modules "
                      "that read the same input; the swap layout is the same)."),
)


_ENGINE, _RUNNER = "wanrt.engines.openvino.engine", "wanrt.engines.openvino.runner"


@dataclass(frozen=True)
class OpenVINOFlavour(LazyHooks):
    hooks: ClassVar[dict[str, str]] = {  # an export given to its runner is compiled once into the engine cache
        "build": f"{_ENGINE}:build_openvino_engine", "load": f"{_ENGINE}:OvEngine",
        "refit": f"{_ENGINE}:refit_openvino_engine_dir", "check_runtime": f"{_RUNNER}:check_runtime",
        "runner": f"{_RUNNER}:OvRunner", "stage_session": "wanrt.engines.openvino.stage:OvStageSession"}
    name: str = FLAVOUR
    label: str = "OpenVINO"
    backend: str = BACKEND
    backend_description: str = "OpenVINO engine (CPU / Intel GPU; fp32, bf16, int8, w8a8)"
    distributions: tuple[str, ...] = ("openvino", "nncf")
    modules: tuple[str, ...] = ("openvino",)
    extra: str = "openvino"
    offered: tuple[str, ...] = PRECISIONS
    runtime_options: tuple[str, ...] = ("threads", "precision", "ov_device", "verify")  # what its runner takes
    runtime_device: str = "cpu"  # host tensors; OpenVINO's own device is ov_device
    loads_exports: bool = True  # its runtime compiles an export once into the engine cache
    first_run_compiles: bool = False
    kernel: str = "OpenVINO FC"  # the GEMM family its MatMuls run (runtime/bench/peaks.py measures the peak)
    stage_precisions: tuple[str, ...] = ("fp32", "bf16")  # engines/openvino/stage.py (bf16 where the CPU has it)
    options: tuple[Callable, ...] = OPTIONS
    summary_columns: tuple[str, ...] = ("engine", "device", "precision", "fp32 kept", "int8", "MiB", "LoRA", "s")

    def available(self) -> str | None:
        return None if find_spec("openvino") is not None else f"the {FLAVOUR} flavour needs OpenVINO: {INSTALL_HINT}"

    def precisions(self, device: str = "CPU") -> tuple[str, ...]:
        """What `device` runs natively (OPTIMIZATION_CAPABILITIES, narrowed by $WANRT_OV_CAPABILITIES)."""
        return tuple(p for p in PRECISIONS if self.refusal(p, device) is None)

    def default_precision(self, dtype: str) -> str:  # noqa: ARG002 - the protocol's; it compiles fp32 exports
        return "fp32"

    def refusal(self, precision: str, device: str = "CPU") -> str | None:
        if precision not in PRECISIONS:
            return (f"--precision {precision}: the {FLAVOUR} flavour builds {', '.join(PRECISIONS)} (fp8 is "
                    f"TensorRT's; int8 is its CPU counterpart here)")
        if self.available() is not None:
            return self.available()
        from wanrt.engines.openvino.engine import precision_refusal, require_openvino  # onnx: with OpenVINO

        return precision_refusal(require_openvino().Core(), device, precision)

    def spec(self, kw: dict[str, Any]):
        from wanrt.engines.openvino.engine import OvEngineSpec  # onnx: with the engine module
        used = [k for k, default in TRT_ONLY.items() if kw.get(k) not in (default, None, (), False)]
        if used:
            flag = "--" + used[0].replace("_gib", "").replace("_", "-").replace("profiles", "profile")
            raise BadInputError(f"{flag} is a TensorRT option; the {FLAVOUR} flavour compiles for any shape in the "
                                f"export's range")
        precision = kw.get("precision") or "fp32"
        why = self.refusal(precision) if precision not in PRECISIONS else None
        if why is not None:
            raise BadInputError(why)
        return OvEngineSpec(precision=precision, device=kw.get("ov_device") or "CPU",
                            keep_fp32=kw.get("keep_fp32") or "wan", calib=kw.get("calib") or 8,
                            lora_form=kw.get("lora_form") or DEFAULT_FORM,
                            cache=not kw.get("no_cache"),
                            cache_dir=engine_cache_from_root(kw.get("cache_dir")))

    def spec_for(self, precision: str | None):
        from wanrt.engines.openvino.engine import OvEngineSpec  # onnx: with the engine module

        return OvEngineSpec(precision=precision or "fp32")

    def dry_run(self, onnx_dir, spec) -> list[tuple[str, str]]:
        from wanrt.engines.openvino.engine import check_precision_supported, require_openvino  # onnx + OpenVINO

        ov = require_openvino()
        caps = check_precision_supported(ov.Core(), spec.device, spec.precision)
        return [("OpenVINO", f"{ov.__version__} {spec.device} ({', '.join(caps)})"), ("export", str(onnx_dir)),
                ("precision", spec.precision), ("keep fp32", spec.keep_fp32), ("LoRA form", spec.lora_form)]

    def summary_row(self, out: str, m: EngineManifest) -> tuple[str, ...]:
        report = m.section("precision_report") or {}
        int8 = (report.get("int8") or {}).get("count")
        return (out, m.runtime["device"], m.precision, ",".join(report.get("keep_fp32") or []) or "-",
                "-" if int8 is None else str(int8), f"{m.plan_bytes / 2**20:.1f}",
                f"{m.lora.get('mode') or '-'}{' (swap)' if m.lora.get('refit') else ''}",
                f"{m.timings_s['total']:.1f}")

    def summary_caption(self, manifests: list[EngineManifest]) -> str | None:
        versions = sorted({m.runtime["version"].split("-")[0] for m in manifests})
        return f"OpenVINO {', '.join(versions)}; int8: quantized MatMuls (list in manifest.json)"

    def describe(self, manifest: EngineManifest) -> str:
        return f"OpenVINO {manifest.runtime['version']}"

    def refit_dry_run(self, *_args, **_kw) -> dict[str, str]:
        raise BadInputError("--dry-run is for TensorRT refits; an OpenVINO swap writes only the LoRA weights "
                            "(use -o DIR to keep the original)")


OPENVINO = OpenVINOFlavour()
