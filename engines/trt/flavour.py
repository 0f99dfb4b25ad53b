"""One engine API over two TensorRT flavours: datacenter `tensorrt` (10/11) and `tensorrt_rtx` (TensorRT for RTX).

Both expose the same Python API for what wanrt uses (Builder, strongly typed networks, OnnxParser, builder config,
Refitter, OnnxParserRefitter, Runtime); the differences are feature-tested here (`Flavour.has`) rather than assumed
from version numbers, and a missing feature is one EngineError naming the flavour and the alternative.

Polygraphy's TensorRT loaders import `tensorrt` or, with `POLYGRAPHY_USE_TENSORRT_RTX=1`, `tensorrt_rtx`. The pip
wheel of TensorRT-RTX installs the module as `tensorrt_rtx_bindings`; `load_flavour` aliases it as `tensorrt_rtx`
and flips Polygraphy's switch before Polygraphy's TensorRT backend is imported, so its loaders work unchanged.
One process uses one flavour (Polygraphy binds its `trt` module at import).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from wanrt.choices import Dtype, Precision
from wanrt.errors import EngineError, MissingDependencyError

# flavour -> module names to try, in order
MODULES = {"tensorrt": ("tensorrt",), "rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
FLAVOUR_CHOICES = ("auto", *MODULES)  # what load_flavour takes (the registry offers the other flavours)
# what a TensorRT engine takes: the export dtypes (strongly typed) and FP8 Q/DQ
PRECISIONS = (*Dtype.values(), Precision.FP8.value)
LABELS = {"tensorrt": "TensorRT", "rtx": "TensorRT-RTX"}
BACKEND = "trt"  # the runtime backend that runs both flavours' engines (engines/trt/runner.py)
INSTALL_HINT = ("install TensorRT-RTX with `pip install 'wanrt[rtx]'` (tensorrt-rtx-cu13-bindings + libs; parses, "
                "configures and AOT-builds without a GPU), or datacenter TensorRT with `pip install tensorrt` "
                "(needs an NVIDIA GPU to build)")

# TensorRT-RTX engines built with no explicit target run on these (TensorRT-RTX docs, "CPU-Only AOT and
# TensorRT-RTX Engines"): 8.0, 8.6, 8.9, 12.0 and later consumer parts; Hopper (9.0) and 10.x are not targets.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")
# Minimum compute capability per precision (bf16: Ampere; fp8: Ada / Hopper).
MIN_CC = {"fp32": (7, 5), "fp16": (7, 5), "bf16": (8, 0), "fp8": (8, 9)}

# Feature name -> (what it needs, human description)
FEATURES: dict[str, str] = {
    "strongly_typed": "strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED)",
    "refit": "refittable engines (BuilderFlag.REFIT)",
    "refit_individual": "individually refittable weights (BuilderFlag.REFIT_INDIVIDUAL + "
                        "INetworkDefinition.mark_weights_refittable)",
    "onnx_refitter": "refit by ONNX initializer name (OnnxParserRefitter)",
    "weight_streaming": "weight streaming (BuilderFlag.WEIGHT_STREAMING)",
    "timing_cache": "a tactic timing cache (ITimingCache; a no-op in TensorRT-RTX >= 1.2)",
    "runtime_cache": "a JIT runtime cache (IRuntimeConfig.create_runtime_cache, TensorRT-RTX)",
    "progress_monitor": "build progress callbacks (IProgressMonitor)",
    "builder_optimization_level": "builder optimization levels (IBuilderConfig.builder_optimization_level)",
    "compute_capability": "ahead-of-time target compute capabilities (IBuilderConfig.set_compute_capability)",
    "engine_validity": "plan header checks (Runtime.get_engine_validity)",
    "precision_flags": "FP16/BF16/FP8 builder flags (weakly typed networks only; unused by wanrt)",
}


@dataclass(frozen=True)
class Flavour:
    """The TensorRT module in use and what it can do."""

    name: str  # "tensorrt" | "rtx"
    trt: ModuleType = field(repr=False, compare=False)
    module_name: str
    version: str

    @property
    def label(self) -> str:
        return f"{LABELS[self.name]} {self.version}"

    # pickled by module name (a build without a GPU runs in a child process)
    def __getstate__(self):
        return {"name": self.name, "module_name": self.module_name, "version": self.version}

    def __setstate__(self, state):
        # load_flavour imports the module and binds Polygraphy to it, as in the parent process
        loaded = load_flavour(state["name"])
        for key in ("name", "trt", "module_name", "version"):
            object.__setattr__(self, key, getattr(loaded, key))

    # ------------------------------------------------------------------ feature tests
    def has(self, feature: str) -> bool:
        trt = self.trt
        flag = getattr(trt, "BuilderFlag", None)
        cfg = getattr(trt, "IBuilderConfig", None)
        if feature == "strongly_typed":
            return hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED")
        if feature == "refit":
            return hasattr(flag, "REFIT") and hasattr(trt, "Refitter")
        if feature == "refit_individual":
            return (hasattr(flag, "REFIT_INDIVIDUAL") and hasattr(trt, "Refitter")
                    and hasattr(getattr(trt, "INetworkDefinition", None), "mark_weights_refittable"))
        if feature == "onnx_refitter":
            return hasattr(trt, "OnnxParserRefitter")
        if feature == "weight_streaming":
            return hasattr(flag, "WEIGHT_STREAMING")
        if feature == "timing_cache":
            # TensorRT-RTX keeps the API but documents it as a no-op that forces a GPU query during AOT builds
            return self.name == "tensorrt" and hasattr(cfg, "create_timing_cache")
        if feature == "runtime_cache":
            return hasattr(getattr(trt, "IRuntimeConfig", None), "create_runtime_cache")
        if feature == "progress_monitor":
            return hasattr(trt, "IProgressMonitor") and hasattr(cfg, "progress_monitor")
        if feature == "builder_optimization_level":
            return hasattr(cfg, "builder_optimization_level")
        if feature == "compute_capability":
            return hasattr(cfg, "set_compute_capability") and hasattr(trt, "ComputeCapability")
        if feature == "engine_validity":
            return hasattr(getattr(trt, "Runtime", None), "get_engine_validity")
        if feature == "precision_flags":
            return all(hasattr(flag, f) for f in ("FP16", "BF16"))
        raise KeyError(feature)

    def features(self) -> dict[str, bool]:
        return {f: self.has(f) for f in FEATURES}

    def require(self, feature: str, why: str = "") -> None:
        """EngineError if `feature` is missing in this flavour (names the other flavour as the way out)."""
        if not self.has(feature):
            other = "tensorrt" if self.name == "rtx" else "rtx"
            reason = f" ({why})" if why else ""
            raise EngineError(f"{self.label} has no {FEATURES[feature]}{reason}; use --flavour {other} "
                              f"or drop the option that needs it")

    def compute_capabilities(self) -> list[str]:
        """Targets the installed TensorRT-RTX can compile for ahead of time ("8.9", "12.0", ...)."""
        if not self.has("compute_capability"):
            return []
        out = []
        for name in self.trt.ComputeCapability.__members__:
            if name.startswith("SM") and name[2:].isdigit():
                digits = name[2:]
                out.append(f"{int(digits[:-1])}.{digits[-1]}")
        return out

    def compute_capability_enum(self, cc: str):
        major, minor = cc.split(".")
        value = getattr(self.trt.ComputeCapability, f"SM{major}{minor}", None)
        if value is None:
            raise EngineError(f"{self.label} cannot target compute capability {cc}; it targets "
                              f"{', '.join(self.compute_capabilities())}"
                              + (" (Hopper/datacenter GPUs: use --flavour tensorrt)" if major in ("9", "10") else ""))
        return value

    def logger(self, severity: str = "WARNING"):
        return self.trt.Logger(getattr(self.trt.Logger, severity))

    def info(self) -> dict[str, Any]:
        return {"flavour": self.name, "module": self.module_name, "version": self.version, "label": self.label}


_LOADED: dict[str, Flavour] = {}


def _import(name: str) -> tuple[ModuleType, str] | None:
    for module_name in MODULES[name]:
        try:
            return importlib.import_module(module_name), module_name
        except ImportError:
            continue
        except OSError as e:  # a wheel whose shared libraries do not load
            raise MissingDependencyError(f"{module_name} is installed but does not load ({e}); "
                                         f"{INSTALL_HINT}") from None
    return None


def installed_flavours() -> list[str]:
    from importlib.util import find_spec

    return [n for n, mods in MODULES.items() if any(find_spec(m) is not None for m in mods)]


def gpu_info() -> dict[str, Any] | None:
    """The current CUDA device as torch sees it, or None without a usable GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(index)
        return {"index": index, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1)}
    except Exception:  # noqa: BLE001 - no driver, broken install: treat as no GPU
        return None


def _pick_auto() -> str:
    """auto: datacenter TensorRT on a Hopper/Blackwell-datacenter GPU or when it is the only one installed;
    TensorRT-RTX otherwise (it is the one that builds without a GPU)."""
    installed = installed_flavours()
    if not installed:
        raise MissingDependencyError(f"no TensorRT flavour is installed: {INSTALL_HINT}")
    if len(installed) == 1:
        return installed[0]
    gpu = gpu_info()
    if gpu is not None and gpu["compute_capability"].split(".")[0] in ("9", "10"):
        return "tensorrt"  # TensorRT-RTX does not support Hopper / datacenter Blackwell (docs/engines.md)
    return "tensorrt" if gpu is not None else "rtx"


def _bind_polygraphy(name: str, module: ModuleType) -> None:
    """Make Polygraphy's TensorRT backend import the same module (see module docstring)."""
    want_rtx = name == "rtx"
    if want_rtx:
        sys.modules.setdefault("tensorrt_rtx", module)
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
    try:
        from polygraphy import config as pconfig
    except ImportError:
        return
    if "polygraphy.backend.trt" in sys.modules and pconfig.USE_TENSORRT_RTX != want_rtx:
        raise EngineError(f"Polygraphy's TensorRT backend is already bound to "
                          f"{'TensorRT-RTX' if pconfig.USE_TENSORRT_RTX else 'TensorRT'} in this process; "
                          f"use one --flavour per process")
    pconfig.USE_TENSORRT_RTX = want_rtx


def load_flavour(choice: str = "auto") -> Flavour:
    """The TensorRT flavour to use: `tensorrt`, `rtx`, or `auto`. MissingDependencyError names what to install."""
    if choice not in FLAVOUR_CHOICES:  # another registered flavour (engines/registry.py) builds and loads those
        raise EngineError(f"--flavour {choice}: this step needs a TensorRT flavour ({', '.join(FLAVOUR_CHOICES)})")
    name = _pick_auto() if choice == "auto" else choice
    if name in _LOADED:
        return _LOADED[name]
    other_loaded = [n for n in _LOADED if n != name]
    if other_loaded:
        raise EngineError(f"{LABELS[other_loaded[0]]} is already in use in this process; one flavour per process")
    found = _import(name)
    if found is None:
        raise MissingDependencyError(f"--flavour {name}: {MODULES[name][0]} is not installed; {INSTALL_HINT}")
    module, module_name = found
    _bind_polygraphy(name, module)
    flavour = Flavour(name=name, trt=module, module_name=module_name, version=str(getattr(module, "__version__", "?")))
    _LOADED[name] = flavour
    return flavour


def polygraphy_trt():
    """Polygraphy's TensorRT backend (`polygraphy.backend.trt`), bound to the loaded flavour, quiet."""
    try:
        from polygraphy.backend import trt as ptrt
        from polygraphy.logger import G_LOGGER
    except ImportError as e:
        raise MissingDependencyError(f"polygraphy is not installed ({e}); pip install 'wanrt[rtx]'") from None
    G_LOGGER.module_severity = G_LOGGER.ERROR
    return ptrt


def check_precision_supported(precision: str, compute_capability: str, flavour: Flavour | None = None) -> None:
    """EngineError when a GPU (or AOT target) cannot run `precision` (bf16 needs SM 8.0+, fp8 SM 8.9+)."""
    need = MIN_CC.get(precision)
    if need is None:
        return
    major, minor = (int(v) for v in compute_capability.split("."))
    if (major, minor) < need:
        raise EngineError(f"precision {precision} needs compute capability {need[0]}.{need[1]} or newer; "
                          f"the target is {compute_capability}" + (f" ({flavour.label})" if flavour else ""))
