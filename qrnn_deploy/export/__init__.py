"""PyTorch -> ONNX: streaming graphs of the qrnn_deploy.nn models, FoPool as a custom op or with
standard operators (portable), verification, and the bundle (DESIGN.md sections 2-4).

Arrows: cli -> export -> nn. Modules:
- schema.py     the qrnn::FoPool ONNX schema (checker and shape inference on our graphs)
- builder.py    a small onnx.helper graph builder
- nodes.py      the one place FoPool is written into a graph (custom node or standard ops)
- graphs.py     layers and whole models as streaming graphs
- verify.py     onnxruntime vs PyTorch, chunked vs whole (at export, or of a bundle already written)
- reference.py  FoPool for onnx.reference.ReferenceEvaluator
- exporter.py   export_bundle
"""

from qrnn_deploy.export.exporter import DEFAULT_OPSET, export_bundle, resolve_vocab
from qrnn_deploy.export.graphs import model_graphs
from qrnn_deploy.export.nodes import VARIANTS, emit_fo_pool
from qrnn_deploy.export.schema import register_fo_pool_schema
from qrnn_deploy.export.verify import verify_bundle, verify_graphs

__all__ = ["export_bundle", "resolve_vocab", "model_graphs", "emit_fo_pool", "register_fo_pool_schema",
           "verify_graphs", "verify_bundle", "VARIANTS", "DEFAULT_OPSET"]
