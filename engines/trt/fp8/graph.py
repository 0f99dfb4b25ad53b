"""ONNX graph plumbing for the FP8 pass: load/save past 2 GB, the float32 twin, dtypes, producers, node insertion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def load_model(path: str | os.PathLike):
    return onnx.load(str(path), load_external_data=True)


def save_model(model, path: str | os.PathLike) -> None:
    path = Path(path)
    big = not fits_protobuf(model) or model.ByteSize() > 2**31 - 2**26
    if big:
        data = path.name + ".data"
        if (path.parent / data).exists():
            (path.parent / data).unlink()
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                  size_threshold=1024)
    else:
        onnx.save(model, str(path))


def fits_protobuf(model) -> bool:
    """False for models over protobuf's 2 GB limit (ByteSize raises), which are saved with external data."""
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf refuses > 2 GB
        return False


def copy_model(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _float_types():
    return {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}


def widen_model_to_fp32(model):
    """A float32 twin: bf16/fp16 initializers, constants, Casts and graph I/O widened; names unchanged."""
    model = onnx.ModelProto.FromString(model.SerializeToString()) if fits_protobuf(model) else copy_model(model)
    low = _float_types()
    f32 = onnx.TensorProto.FLOAT
    g = model.graph
    for i, init in enumerate(g.initializer):
        if init.data_type in low:
            new = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            g.initializer[i].CopyFrom(new)
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in low:
                attr.i = f32
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in low:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type in low:
            v.type.tensor_type.elem_type = f32
    del g.value_info[:]
    return model


def graph_dtype(model) -> str:
    """The export precision of a graph, from its first floating input other than `timestep`."""
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    for v in model.graph.input:
        if v.name != "timestep" and v.type.tensor_type.elem_type in names:
            return names[v.type.tensor_type.elem_type]
    return "fp32"


def value_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model) if fits_protobuf(model) else model
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def producers_of(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def insert_before_consumers(model, before: dict, new_inits: list) -> None:
    """Put each list of new Q/DQ nodes right before the node (by name) that consumes them, so the graph stays
    topologically sorted; add their initializers; Q/DQ with float8 needs opset 19."""
    graph = model.graph
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    ensure_opset(model, 19)


def ensure_opset(model, version: int = 19) -> None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < version:
            op.version = version
