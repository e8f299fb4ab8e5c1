"""FoPool nodes that TensorRT's ONNX parser maps to the FoPool plugin.

The parser looks an unknown node up in its plugin registry by op type ("FoPool"), with the
version and namespace taken from the node attributes `plugin_version` and `plugin_namespace`;
the node attributes the plugin creator lists as its fields (pooling, batch_first, reverse) are
handed over as plugin fields (a string with its terminating NUL). The same
nodes still run in onnxruntime with the custom-op library (it ignores the two attributes) and
pass the ONNX checker (the qrnn::FoPool schema declares them as optional).

Without the plugin, the portable variant (`--fo-pool portable`: Split/Tanh/Sigmoid, an If and a
Scan of Mul/Add) is TensorRT's no-plugin path: TensorRT 10 parses If as a conditional and Scan as a
loop, so it builds, but the recurrence runs one step per loop iteration with no fusion of the gate
activations; use the plugin (C++ library or AOT) for speed.
"""

from __future__ import annotations

import onnx

from qrnn_deploy.export.schema import FO_POOL_DOMAIN, FO_POOL_OP

PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "qrnn"
PLUGIN_ATTRS = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def tensorrt_node_attrs() -> dict:
    """Extra FoPool node attributes for `export_bundle(..., node_attrs=...)`."""
    return dict(PLUGIN_ATTRS)


def add_plugin_attrs(model: onnx.ModelProto) -> int:
    """Adds (or corrects) plugin_version / plugin_namespace on every qrnn::FoPool node, in place,
    including nodes inside subgraphs. Returns the number of FoPool nodes."""
    count = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal count
        for node in graph.node:
            if node.op_type == FO_POOL_OP and node.domain == FO_POOL_DOMAIN:
                count += 1
                keep = [a for a in node.attribute if a.name not in PLUGIN_ATTRS]
                del node.attribute[:]
                node.attribute.extend(keep)
                for k, v in PLUGIN_ATTRS.items():
                    node.attribute.append(onnx.helper.make_attribute(k, v))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        visit(sub)

    visit(model.graph)
    return count
