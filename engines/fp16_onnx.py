"""An fp16 copy of a model's ONNX graph, for builders that take precision from the graph itself
(TensorRT strongly typed networks: the only kind TensorRT 11 builds).

The network runs in fp16; what must stay fp32 stays fp32:

- the tile memories (``MEMORY_SCOPES``): their distance ``|z|^2 - 2 z.b + |b|^2`` cancels badly in
  fp16, and their masks use constants (1e6) beyond fp16's range;
- the output head (``engines.quantize.output_head_nodes``: the last convolution of the map and what
  follows it), whose small probabilities fp16 would round;
- ``Constant`` nodes, and the ``roi``/``scales`` inputs of ``Resize`` (fp32 by the ONNX spec).

Inputs and outputs stay fp32, so callers feed and read the same arrays as with the fp32 graph.
A ``Cast`` is placed wherever a tensor crosses between the two regions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16
_FP32_INPUT_SLOTS = {"Resize": {1, 2}}  # (op type -> input indices that the spec keeps in fp32)
_H = "__fp16"  # suffix of a tensor's fp16 twin


def fp32_nodes(model, memory_scopes: tuple[str, ...]) -> set[str]:
    """Names of the nodes kept in fp32: tile memories, output head, constants."""
    from engines.quantize import output_head_nodes

    head = set(output_head_nodes(model))
    return {n.name for n in model.graph.node
            if n.name.startswith(memory_scopes) or n.name in head or n.op_type == "Constant"}


def to_fp16(model, keep_fp32: set[str]):
    """A copy of ``model`` whose nodes not named in ``keep_fp32`` compute in fp16."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    elem: dict[str, int] = {}
    for v in [*g.input, *g.output, *g.value_info]:
        elem[v.name] = v.type.tensor_type.elem_type
    inits = {i.name: i for i in g.initializer}
    for name, init in inits.items():
        elem[name] = init.data_type
    half = [n for n in g.node if n.name not in keep_fp32]
    half_ids = {id(n) for n in half}

    def half_slots(node) -> list[int]:
        skip = _FP32_INPUT_SLOTS.get(node.op_type, set())
        return [i for i, t in enumerate(node.input) if t and i not in skip and elem.get(t) == FLOAT]

    # which float tensors fp16 nodes read, and which fp32 nodes / graph outputs read
    read_half: set[str] = set()
    read_full: set[str] = {o.name for o in g.output}
    for n in g.node:
        slots = half_slots(n) if id(n) in half_ids else []
        for i, t in enumerate(n.input):
            if not t:
                continue
            (read_half if i in slots else read_full).add(t)
    produced_half = {o for n in half for o in n.output if elem.get(o) == FLOAT}

    new_inits, casts_up_front = [], []
    for name, init in inits.items():
        if name in read_half and init.data_type == FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float16)
            new_inits.append(numpy_helper.from_array(arr, name + _H))
    keep_inits = [i for i in g.initializer if i.name in read_full or i.name not in read_half]

    def cast(src: str, dst: str, to: int):
        return helper.make_node("Cast", [src], [dst], name=f"{dst}/Cast", to=to)

    for v in g.input:
        if v.name in read_half and elem.get(v.name) == FLOAT:
            casts_up_front.append(cast(v.name, v.name + _H, FLOAT16))
    nodes = list(casts_up_front)
    for n in g.node:
        if id(n) in half_ids:
            for i in half_slots(n):
                n.input[i] = n.input[i] + _H
            for j, o in enumerate(n.output):
                if o in produced_half:
                    n.output[j] = o + _H
            if n.op_type == "Cast":
                for a in n.attribute:
                    if a.name == "to" and a.i == FLOAT:
                        a.i = FLOAT16
            nodes.append(n)
            for o in n.output:  # fp32 readers of an fp16 result get it cast back
                base = o[: -len(_H)] if o.endswith(_H) else None
                if base is not None and base in read_full:
                    nodes.append(cast(o, base, FLOAT))
        else:
            nodes.append(n)
            for o in n.output:  # fp16 readers of an fp32 result get it cast down
                if o in read_half and elem.get(o) == FLOAT:
                    nodes.append(cast(o, o + _H, FLOAT16))
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def fp16_model_bytes(onnx_path: str | Path) -> bytes:
    """The fp16 graph of ``onnx_path`` (a model folder's fp32 ``model.onnx``), serialised."""
    import onnx

    from engines.artifact import MEMORY_SCOPES

    model = onnx.load(str(onnx_path))
    return to_fp16(model, fp32_nodes(model, MEMORY_SCOPES)).SerializeToString()
