"""Silence third-party notices for situations wanrt expects, so a successful run prints only its own lines.

Each filter names one message and why it is expected; everything else from those libraries still shows. Nothing is
imported here: filters attach to logger names and warning texts before the libraries load.
"""

from __future__ import annotations

import logging
import warnings

# (logger name, message start): expected, so not shown
_LOG_NOISE = (
    # transformers, when diffusers' Wan I2V pipeline imports CLIPImageProcessor without torchvision: wanrt never
    # needs torchvision (the PIL processor gives the same output) and builds the PIL one itself
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision"),
    # ModelOpt's ONNX calibrator asks NVML for GPUs on every FP8 quantization and logs ERROR on a CPU-only machine,
    # then calibrates on the CPU as asked: the FP8 build succeeds
    ("modelopt.onnx", "Failed to get GPU count"),
)

# warning texts (regex) that are expected
_WARNING_NOISE = (
    # huggingface_hub, when diffusers passes its retired argument while loading a hub id: ignored by hf_hub anyway
    r".*`local_dir_use_symlinks` argument is deprecated",
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def quiet_expected_notices() -> None:
    """Install the filters (idempotent)."""
    by_logger: dict[str, list[str]] = {}
    for name, start in _LOG_NOISE:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(tuple(starts)))
    for pattern in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
