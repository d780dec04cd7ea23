"""INT8 for detectors: the decode tail stays float.

A detector's raw head ends in arithmetic on its last convolutions' outputs: distances to boxes
against anchors, strides, sigmoid scores, one concatenation of boxes and scores. ORT's QDQ
quantizer would quantize every one of those ops to 8 bits with one scale each (measured on
YOLOv8n: detection agreement 0 %, max |diff| 138 output steps), while the simulated INT8 model
that is the artifact's reference quantizes layer outputs only. :func:`float_tail` names the
nodes between the graph's outputs and the last weighted layers on every path, which the
exporter keeps float; the weighted layers (all the network's compute) stay int8.
"""

from __future__ import annotations

from typing import Any

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def float_tail(proto: Any) -> list[str]:
    """Names of the nodes reached walking back from the graph outputs without passing a
    weighted layer (Conv, MatMul, Gemm): the decode a detector's head ends in."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    stack = [o.name for o in proto.graph.output]
    seen: set[str] = set()
    tail: list[str] = []
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in WEIGHTED_OPS:
            continue
        seen.add(node.name)
        tail.append(node.name)
        stack.extend(node.input)
    return tail


__all__ = ["WEIGHTED_OPS", "float_tail"]
