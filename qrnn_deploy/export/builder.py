"""A small ONNX graph builder over `onnx.helper`: unique names, initializers, typed inputs/outputs.

We write graphs directly (not through torch.onnx.export) so that names, custom nodes and
dynamic dims are exactly the bundle contract (qrnn_deploy/bundle.py).
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max
ELEM_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
              "bool": TensorProto.BOOL}


class GraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one (sub)graph.

    Subgraphs (If branches, Scan bodies) are made with `sub()`: they share the name counter, so
    names never clash with the outer scope they may read from.
    """

    def __init__(self, name: str, counter: Optional[itertools.count] = None):
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self._count = counter if counter is not None else itertools.count()
        self._consts: dict = {}

    def sub(self, name: str) -> "GraphBuilder":
        return GraphBuilder(name, self._count)

    def fresh(self, hint: str) -> str:
        return f"{hint}__{next(self._count)}"

    # -- values ---------------------------------------------------------------------------------

    def weight(self, hint: str, array: np.ndarray) -> str:
        """An initializer holding `array` (float arrays are stored as float32)."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self.fresh(hint)
        # np.array, not np.ascontiguousarray: the latter turns a 0-d scalar into shape [1].
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (shared when asked twice): int64 by default, as shape/axes inputs need."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight("const", array)
        return self._consts[key]

    # -- nodes ----------------------------------------------------------------------------------

    def node(self, op: str, inputs: Sequence[str], outputs=1, domain: str = "", name: Optional[str] = None,
             **attrs):
        """Adds a node. `outputs` is a count (fresh names) or a list of names. Returns the output
        name (one output) or the list of names."""
        if isinstance(outputs, int):
            outputs = [self.fresh(op.lower()) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name or self.fresh(op),
                                           domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # -- graph I/O ------------------------------------------------------------------------------

    def add_input(self, name: str, dtype: str, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ELEM_TYPES[dtype], shape))
        return name

    def add_output(self, name: str, dtype: str, shape) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, ELEM_TYPES[dtype], shape))
        return name

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)


def make_model(graph: onnx.GraphProto, opset: int, custom_domains: Sequence[tuple[str, int]] = (),
               doc: str = "") -> onnx.ModelProto:
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in custom_domains]
    # The oldest IR version that carries the opset: newer IR than needed locks out older runtimes.
    ir = helper.find_min_ir_version_for(imports[:1], ignore_unknown=True)
    model = helper.make_model(graph, opset_imports=imports, producer_name="qrnn-deploy", ir_version=ir,
                              doc_string=doc)
    return model
