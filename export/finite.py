"""Every exported initializer is finite: checked on the saved ONNX, always (not only when validation runs).

A NaN or Inf weight can come from anywhere upstream of the graph - a `--lora-scale nan`, a NaN `lora_alpha` in
metadata, an `.alpha` of 1e30 whose product overflows in bf16/fp16, a corrupt checkpoint - and an engine built from
it produces NaN video with exit 0. The check reads the saved bytes (embedded or external data, in chunks, so a 14B
export is scanned without loading it whole) and decides finiteness from the exponent bits of each dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wanrt.artifacts import confined_path
from wanrt.errors import BadInputError

_CHUNK = 1 << 26  # elements per read: bounded memory on multi-GB external data


def _nonfinite_count(raw: np.ndarray, data_type: int) -> int:
    """Non-finite elements of `raw` (the tensor's bytes viewed as its storage type)."""
    import onnx

    T = onnx.TensorProto
    if data_type == T.FLOAT:
        return int((~np.isfinite(raw.view(np.float32))).sum())
    if data_type == T.DOUBLE:
        return int((~np.isfinite(raw.view(np.float64))).sum())
    if data_type == T.FLOAT16:  # exponent all ones: Inf or NaN
        return int(((raw.view(np.uint16) & 0x7C00) == 0x7C00).sum())
    if data_type == T.BFLOAT16:
        return int(((raw.view(np.uint16) & 0x7F80) == 0x7F80).sum())
    if data_type == T.FLOAT8E4M3FN:  # no Inf; NaN is S.1111.111
        return int(((raw.view(np.uint8) & 0x7F) == 0x7F).sum())
    if data_type == T.FLOAT8E5M2:
        return int(((raw.view(np.uint8) & 0x7C) == 0x7C).sum())
    return 0  # integer and bool initializers are always finite


_STORAGE = {1: np.float32, 11: np.float64, 10: np.uint16, 16: np.uint16, 17: np.uint8, 19: np.uint8}


def _external_location(tensor, base: Path) -> tuple[Path, int, int | None]:
    info = {e.key: e.value for e in tensor.external_data}
    length = int(info["length"]) if "length" in info else None
    return confined_path(base, info.get("location", ""), "external data"), int(info.get("offset", 0) or 0), length


def _scan(tensor, base: Path) -> int:
    import onnx
    from onnx import numpy_helper

    storage = _STORAGE.get(tensor.data_type)
    if storage is None:
        return 0
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        path, offset, length = _external_location(tensor, base)
        itemsize = np.dtype(storage).itemsize
        count = (length if length is not None else path.stat().st_size - offset) // itemsize
        mm = np.memmap(path, dtype=storage, mode="r", offset=offset, shape=(count,))
        return sum(_nonfinite_count(np.asarray(mm[i:i + _CHUNK]), tensor.data_type) for i in range(0, count, _CHUNK))
    if tensor.raw_data:
        return _nonfinite_count(np.frombuffer(tensor.raw_data, dtype=storage), tensor.data_type)
    if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return int((~np.isfinite(numpy_helper.to_array(tensor))).sum())
    # float16/bfloat16/float8 in int32_data: the low bits carry the value's storage bits
    bits = np.asarray(tensor.int32_data, dtype=np.int64).astype(storage)
    return _nonfinite_count(bits, tensor.data_type)


def check_finite_initializers(onnx_path: str | Path) -> int:
    """Raise BadInputError naming the first non-finite initializers of a saved ONNX; return how many were checked."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    bad: list[tuple[str, int]] = []
    for init in model.graph.initializer:
        n = _scan(init, onnx_path.parent)
        if n:
            bad.append((init.name, n))
    if bad:
        shown = ", ".join(f"{name} ({n})" for name, n in bad[:3])
        raise BadInputError(f"the exported graph has {len(bad)} initializers with NaN/Inf values, e.g. {shown}: the "
                            "weights, the LoRA or its scale/alpha overflow or hold NaN in this dtype; nothing written")
    return len(model.graph.initializer)
