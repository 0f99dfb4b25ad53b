"""TensorRT and TensorRT-RTX in the flavour registry (engines/registry.py): one implementation, two names.

Light at import (the registry lists flavours for `wanrt --help`): TensorRT, torch and the build modules are imported
by the methods that use them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from wanrt.engines.cache import engine_cache_from_root
from wanrt.engines.trt.flavour import BACKEND, INSTALL_HINT, LABELS, MIN_CC, MODULES, PRECISIONS, gpu_info
from wanrt.engines.registry import LazyHooks
from wanrt.errors import BadInputError, WanrtError
from wanrt.manifests import EngineManifest

if TYPE_CHECKING:  # onnx and torch come with the spec's FP8 part: loaded when a build runs
    from wanrt.engines.trt.engine_spec import EngineSpec


@dataclass(frozen=True)
class TensorRTFlavour(LazyHooks):
    hooks: ClassVar[dict[str, str]] = {  # `load`: TRTEngine; `runner`: torch tensors in and out, CUDA graphs on request
        "build": "wanrt.engines.trt.build:build_engine_from_onnx_dir", "load": "wanrt.engines.trt.engine:TRTEngine",
        "refit": "wanrt.engines.trt.refit:refit_engine_dir", "check_runtime": "wanrt.engines.trt.runner:check_runtime",
        "runner": "wanrt.engines.trt.runner:TrtRunner"}
    name: str
    distributions: tuple[str, ...]
    backend: str = BACKEND
    backend_description: str = "TensorRT engine (wanrt.engines.trt.engine), CUDA only"
    extra: str = "rtx"
    offered: tuple[str, ...] = PRECISIONS
    runtime_options: tuple[str, ...] = ("cuda_graph", "verify")  # what its runner takes
    runtime_device: str = "cuda"  # what its runner takes tensors on
    loads_exports: bool = False  # its runtime needs an engine directory (`wanrt build` first)
    first_run_compiles: bool = True  # shapes set up (TensorRT-RTX: kernels compiled) on the first run
    kernel: str = "F.linear"  # the GEMM family its MatMuls run (runtime/bench/peaks.py measures the peak)
    stage_precisions: tuple[str, ...] = ()  # no VAE/encoder engines yet: those stages run on ort or ov
    options: tuple[Callable, ...] = ()  # its options are `wanrt build`'s engine group (commands/build.py)
    summary_columns: tuple[str, ...] = ("engine", "TensorRT", "precision", "MiB", "LoRA", "refit", "s")

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def modules(self) -> tuple[str, ...]:
        return MODULES[self.name]

    def available(self) -> str | None:
        return None if any(find_spec(m) is not None for m in self.modules) else \
            f"--flavour {self.name}: {self.modules[0]} is not installed; {INSTALL_HINT}"

    def precisions(self) -> tuple[str, ...]:
        """What the build GPU runs (bf16: SM 8.0+, fp8: SM 8.9+); without one, every precision an ahead-of-time
        build can target."""
        gpu = gpu_info()
        if gpu is None:
            return PRECISIONS
        cc = tuple(int(v) for v in gpu["compute_capability"].split("."))
        return tuple(p for p in PRECISIONS if cc >= MIN_CC.get(p, (0, 0)))

    def default_precision(self, dtype: str) -> str:
        return dtype  # strongly typed: the export's dtype

    def refusal(self, precision: str) -> str | None:
        if precision not in PRECISIONS:
            return f"--precision {precision}: TensorRT engines take {', '.join(PRECISIONS)}"
        here = self.precisions()
        if precision not in here:
            need = ".".join(map(str, MIN_CC[precision]))
            return (f"--precision {precision} needs compute capability {need} or newer; this GPU runs "
                    f"{', '.join(here)}")
        return None

    def spec(self, kw: dict[str, Any]) -> EngineSpec:
        """`wanrt build` / `wanrt export --engine` options -> EngineSpec (flavour stays as asked: auto picks later)."""
        from wanrt.engines.trt.engine_spec import EngineSpec  # onnx + torch (its FP8 part): loaded when a build runs
        from wanrt.engines.trt.fp8.quantize import Fp8Spec  # the same

        ccs = tuple(c.strip() for c in (kw.get("compute_capability") or "").split(",") if c.strip())
        for cc in ccs:
            parts = cc.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise BadInputError(f"--compute-capability {cc!r}: expected MAJOR.MINOR like 8.9")
        fp8 = Fp8Spec(calib=kw["calib"], keep_blocks=kw["keep_blocks"], backend=kw["fp8_backend"],
                      tolerance=kw["fp8_tolerance"], calib_data=kw["calib_data"], calib_shape=kw["calib_shape"],
                      check=not kw["no_fp8_check"])
        return EngineSpec(flavour=kw["flavour"], precision=kw["precision"], profiles=tuple(kw["profiles"]),
                          frames=kw["frames"], batch=kw["batch"], opt_level=kw["opt_level"],
                          workspace_gib=kw["workspace_gib"], timing_cache=kw["timing_cache"],
                          weight_streaming=kw["weight_streaming"], refit=kw["refit"], compute_capabilities=ccs, fp8=fp8,
                          cache=not kw["no_cache"], cache_dir=engine_cache_from_root(kw.get("cache_dir")),
                          progress=kw.get("progress"))

    def spec_for(self, precision: str | None) -> EngineSpec:
        from wanrt.engines.trt.engine_spec import EngineSpec  # onnx + torch (its FP8 part): loaded when a build runs

        return EngineSpec(precision=precision, progress=False)

    def dry_run(self, onnx_dir, spec: EngineSpec) -> list[tuple[str, str]]:
        """Parse and configure without building: one (setting, value) per row."""
        from wanrt.engines.trt.build import configure_from_onnx_dir  # TensorRT: loaded when a build runs

        with tempfile.TemporaryDirectory(prefix="wanrt-dry-") as work:
            resolved, configured = configure_from_onnx_dir(onnx_dir, spec, work)
            flags = ", ".join(k for k, v in configured.flags().items() if v) or "-"
            return [("TensorRT", resolved.flavour.label), ("precision", resolved.precision),
                    ("targets", ",".join(resolved.targets) or "(the build GPU)"),
                    ("layers", str(configured.network.num_layers)),
                    ("profiles", "\n".join(p.describe() for p in resolved.profiles)),
                    ("builder flags (GPU)", flags), ("real build here", _predict_build(resolved, spec))]

    def summary_row(self, out: str, m: EngineManifest) -> tuple[str, ...]:
        err = (m.section("fp8") or {}).get("check", {}).get("relative_error")
        precision = m.precision + (f" (rel err {max(err.values()):.2g})" if err else "")
        return (out, m.label, precision, f"{m.plan_bytes / 2**20:.1f}", m.lora["mode"] or "-",
                m.lora["refit"] or "no", f"{m.timings_s['total']:.0f}")

    def summary_caption(self, manifests: list[EngineManifest]) -> str | None:  # noqa: ARG002 - the protocol's
        return None

    def describe(self, manifest: EngineManifest) -> str:
        return manifest.label

    def refit_dry_run(self, engine_dir, lora_file=None, rank=None, scale=None, seed=None,
                      allow_pickle=False, stack=()) -> dict[str, str]:
        """The new weights computed and checked against the engine (no GPU): what `refit --dry-run` prints."""
        from wanrt.engines.trt.refit import prepare_refit  # torch: loaded with a LoRA

        manifest, weights, lora = prepare_refit(engine_dir, lora_file, rank, scale, seed, allow_pickle, stack=stack)
        section = manifest.lora
        ranks = {w["shape"][1] for n, w in section["refittable_weights"].items() if n.endswith(".A")}
        return {"engine": str(engine_dir), "mode": section["mode"], "weights": str(len(weights)),
                "LoRA rank": str(lora.rank), "engine rank": ",".join(map(str, sorted(ranks))) or "-"}


def _predict_build(resolved, spec: EngineSpec) -> str:
    """What the build without --dry-run will do on this machine: the dry run configures for the build GPU, so it
    must also say when the real build is refused here, and which refit mode `--refit auto` will really pick."""
    from wanrt.engines.trt.resolve import cpu_build_blocker, resolve_refit  # TensorRT: loaded when a build runs

    blocker = cpu_build_blocker(resolved)
    if blocker is not None:
        return f"refused: {blocker}"
    try:
        kind = resolve_refit(spec, resolved.refit_names, resolved.precision, resolved.flavour, resolved.gpu,
                             dry_run=False)
    except WanrtError as e:
        return f"refused: {e}"
    where = resolved.gpu["name"] if resolved.gpu else "the CPU (no GPU: ahead of time)"
    if kind:
        return f"builds on {where}; refittable ({kind}, {len(resolved.refit_names['weights'])} LoRA weights)"
    why = " (--refit auto: no GPU to compile a refittable engine)" if resolved.refit_names["weights"] else ""
    return f"builds on {where}; not refittable{why}"


TENSORRT = TensorRTFlavour("tensorrt", distributions=("tensorrt",), extra="trt")
RTX = TensorRTFlavour("rtx", distributions=("tensorrt-rtx-cu13-bindings", "tensorrt_rtx"))
