"""Q/DQ nodes: wanrt's own insertion pass (per-tensor activations, per-channel weights), the ORT-simulatable
rewrite, and the transplant of a float32 twin's Q/DQ pairs into the source-precision graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wanrt.engines.trt.fp8.graph import insert_before_consumers, producers_of, value_types
from wanrt.engines.trt.fp8.selection import weight_source
from wanrt.errors import EngineError

FP8_MAX = 448.0  # largest finite float8 e4m3fn
_MOVE_OPS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Flatten",
             "Gather", "Expand")


def _fp8_zero(name: str, n: int | None):
    dims = [] if n is None else [n]
    return onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT8E4M3FN, dims, [0] * (n or 1))


def insert_qdq(model32, chosen: dict[str, dict[str, Any]], amax: dict[str, float], per_channel: bool = True):
    """Q/DQ on the chosen MatMuls: activations per tensor, weights per output channel (axis 1 of B [in, out])
    or per tensor."""
    g = model32.graph
    producers = producers_of(model32)
    inits = {i.name: i for i in g.initializer}
    nodes_by_name = {n.name: n for n in g.node}
    new_nodes: dict[str, list[Any]] = {}  # insert before the consumer
    new_inits = []
    act_done: dict[str, str] = {}
    for name, info in chosen.items():
        node = nodes_by_name[name]
        # activation: one Q/DQ pair per tensor, shared by its quantized consumers
        a = info["activation"]
        if a not in act_done:
            scale = max(amax.get(a, 0.0), 1e-12) / FP8_MAX
            s_name, z_name, q_out, dq_out = f"{a}_fp8_scale", f"{a}_fp8_zero", f"{a}_fp8_q", f"{a}_fp8_dq"
            new_inits += [numpy_helper.from_array(np.array(scale, np.float32), s_name), _fp8_zero(z_name, None)]
            new_nodes.setdefault(name, []).extend([
                helper.make_node("QuantizeLinear", [a, s_name, z_name], [q_out], name=f"{a}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{a}_DequantizeLinear")])
            act_done[a] = dq_out
        node.input[0] = act_done[a]
        # weight: value of the B input (initializer through its Transposes), per output channel
        b = info["weight_input"]
        weight, chain = weight_source(model32, b, producers, set(inits))
        w = numpy_helper.to_array(inits[weight]).astype(np.float32)
        for step in chain:
            if step.op_type == "Transpose":
                perm = next((list(a.ints) for a in step.attribute if a.name == "perm"), None)
                w = np.transpose(w, perm)
            elif step.op_type == "Reshape":
                w = w.reshape(numpy_helper.to_array(inits[step.input[1]]) if step.input[1] in inits else w.shape)
        if w.ndim != 2:
            continue
        s_name, z_name = f"{b}_fp8_scale", f"{b}_fp8_zero"
        if per_channel:
            ch_amax = np.maximum(np.abs(w).max(axis=0), 1e-12)
            new_inits += [numpy_helper.from_array((ch_amax / FP8_MAX).astype(np.float32), s_name),
                          _fp8_zero(z_name, w.shape[1])]
            axis = {"axis": 1}
        else:
            new_inits += [numpy_helper.from_array(np.array(max(np.abs(w).max(), 1e-12) / FP8_MAX, np.float32), s_name),
                          _fp8_zero(z_name, None)]
            axis = {}
        q_out, dq_out = f"{b}_fp8_q", f"{b}_fp8_dq"
        new_nodes.setdefault(name, []).extend([
            helper.make_node("QuantizeLinear", [b, s_name, z_name], [q_out], name=f"{b}_QuantizeLinear", **axis),
            helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{b}_DequantizeLinear",
                             **axis)])
        node.input[1] = dq_out
    insert_before_consumers(model32, new_nodes, new_inits)
    return model32


def make_simulatable(model):
    """ONNX Runtime refuses float8 into anything but DequantizeLinear; TensorRT-side quantizers sometimes move fp8
    through Transpose/Reshape before the DQ. Insert a DQ right after such Q outputs and turn the now-float DQs
    downstream into Identity: the same values, in a graph ORT runs. Returns (model, number of rewrites)."""
    g = model.graph
    q_nodes = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for k, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, k))
    rewrites = 0
    floated: set[str] = set()
    inserted = []
    for t, q in q_nodes.items():
        bad = [(n, k) for n, k in consumers.get(t, []) if n.op_type != "DequantizeLinear"]
        if not bad:
            continue
        dq_out = f"{t}_sim_dq"
        inserted.append((q, helper.make_node("DequantizeLinear", [t, *q.input[1:]], [dq_out], name=f"{t}_sim_dq",
                                             **{a.name: a.i for a in q.attribute if a.name == "axis"})))
        for n, k in bad:
            n.input[k] = dq_out
            if n.op_type in _MOVE_OPS:
                floated.update(n.output)
            rewrites += 1
    changed = True
    while changed:  # float now flows where fp8 did: downstream DQs become Identity
        changed = False
        for n in g.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in floated:
                n.op_type = "Identity"
                del n.input[1:]
                del n.attribute[:]
                floated.update(n.output)
                changed = True
            elif n.op_type in _MOVE_OPS and any(i in floated for i in n.input) and not set(n.output) <= floated:
                floated.update(n.output)
                changed = True
    if inserted:
        order = []
        after = {id(q): dq for q, dq in inserted}
        for n in g.node:
            order.append(n)
            if id(n) in after:
                order.append(after[id(n)])
        del g.node[:]
        g.node.extend(order)
    return model, rewrites


def transplant_qdq(q32, source):
    """The Q/DQ pairs of the fp32 quantized twin, inserted into the source graph (see module docstring, step 5):
    same tensors, same consumers, each scale cast to the dtype the quantized tensor has in the source, so bf16 stays
    bf16 and the keep-in-fp32 parts stay fp32. Whatever else a quantizer changed in the twin is not carried over."""
    f32 = onnx.TensorProto.FLOAT
    g32 = q32.graph
    init32 = {i.name: i for i in g32.initializer}
    producers32 = producers_of(q32)
    src_types = value_types(source)
    g = source.graph
    src_nodes = {n.name: n for n in g.node}
    new_inits, before = [], {}
    made: dict[tuple[str, str], str] = {}
    pairs = 0
    for dq in g32.node:
        if dq.op_type != "DequantizeLinear":
            continue
        q = producers32.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        x = q.input[0]
        consumers = [(n, k) for n in g32.node for k, t in enumerate(n.input) if t == dq.output[0]]
        want = src_types.get(x, f32)
        key = (x, q.input[1])
        for node32, k in consumers:
            target = src_nodes.get(node32.name)
            if target is None or k >= len(target.input) or target.input[k] != x:
                raise EngineError(f"the quantizer rewired '{node32.name}' in a way wanrt cannot carry over to the "
                                  f"{'bf16' if want == onnx.TensorProto.BFLOAT16 else 'source'} graph; "
                                  f"use --fp8-backend wanrt")
            if key not in made:
                tag = f"{x}_fp8_{len(made)}"
                scale = numpy_helper.to_array(init32[q.input[1]]).astype(np.float32)
                if want != f32:
                    scale = scale.astype(onnx.helper.tensor_dtype_to_np_dtype(want))
                zero = onnx.TensorProto()
                zero.CopyFrom(init32[q.input[2]])
                zero.name = f"{tag}_zero"
                new_inits += [numpy_helper.from_array(scale, f"{tag}_scale"), zero]
                axis = {a.name: a.i for a in q.attribute if a.name == "axis"}
                before.setdefault(target.name, []).extend([
                    helper.make_node("QuantizeLinear", [x, f"{tag}_scale", f"{tag}_zero"], [f"{tag}_q"],
                                     name=f"{tag}_QuantizeLinear", **axis),
                    helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zero"], [f"{tag}_dq"],
                                     name=f"{tag}_DequantizeLinear", **axis)])
                made[key] = f"{tag}_dq"
                pairs += 1
            target.input[k] = made[key]
    insert_before_consumers(source, before, new_inits)
    return source, pairs
