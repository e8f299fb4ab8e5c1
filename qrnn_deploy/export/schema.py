"""The ONNX schema of the FoPool custom op (DESIGN.md section 2), registered with `onnx.defs`.

Registering the schema lets `onnx.checker.check_model(model, full_check=True)` and
`onnx.shape_inference.infer_shapes` understand our custom-op graphs; onnxruntime itself learns the
op from the custom-op library (qrnn_deploy._native), not from this schema.
"""

from __future__ import annotations

import onnx
from onnx import defs

FO_POOL_DOMAIN = "qrnn"
FO_POOL_OP = "FoPool"
FO_POOL_VERSION = 1
POOLING_GATES = {"f": 2, "fo": 3, "ifo": 4}

_DOC = """QRNN fo-pooling over time (Bradbury et al. 2017). `gates` [T, B, P*H] ([B, T, P*H] with
batch_first=1) hold the PRE-activation gates packed [Z | F | O | I] (P = 2 'f', 3 'fo', 4 'ifo');
c_t = f_t c_{t-1} + (1 - f_t) z_t ('f', 'fo') or f_t c_{t-1} + i_t z_t ('ifo'); h_t = o_t c_t
('fo', 'ifo') or c_t ('f'). `c0` [B, H] (optional, zeros) is the cell before the first processed
step; `c_last` [B, H] the cell after the last one. reverse=1 processes t = T-1..0."""


def _proto(cls, value):
    # onnx's Python inference context hands out protos; older builds handed out serialized bytes.
    return cls.FromString(value) if isinstance(value, bytes) else value


def _infer(ctx) -> None:
    """h: gates' shape with the last axis divided by P; c_last: [B, H]. Unknown stays unknown."""
    gates_type = _proto(onnx.TypeProto, ctx.get_input_type(0))
    if not gates_type.HasField("tensor_type"):
        return
    tt = gates_type.tensor_type
    pooling = "fo"
    attr = ctx.get_attribute("pooling")
    if attr is not None:
        attr = _proto(onnx.AttributeProto, attr)
        pooling = attr.s.decode() if isinstance(attr.s, bytes) else attr.s
    if pooling not in POOLING_GATES:
        raise onnx.shape_inference.InferenceError(
            f"FoPool: attribute pooling must be one of {sorted(POOLING_GATES)}, got {pooling!r}")
    batch_first = 0
    attr = ctx.get_attribute("batch_first")
    if attr is not None:
        attr = _proto(onnx.AttributeProto, attr)
        batch_first = attr.i
    P = POOLING_GATES[pooling]

    h_type = onnx.TypeProto()
    h_type.tensor_type.elem_type = tt.elem_type
    c_type = onnx.TypeProto()
    c_type.tensor_type.elem_type = tt.elem_type
    if tt.HasField("shape"):
        dims = list(tt.shape.dim)
        if len(dims) != 3:
            raise onnx.shape_inference.InferenceError(
                f"FoPool: input gates must have rank 3, got rank {len(dims)}")
        last = onnx.TensorShapeProto.Dimension()
        if dims[2].HasField("dim_value"):
            if dims[2].dim_value % P:
                raise onnx.shape_inference.InferenceError(
                    f"FoPool: last axis of gates ({dims[2].dim_value}) is not {P}*H for pooling {pooling!r}")
            last.dim_value = dims[2].dim_value // P
        for d in (dims[0], dims[1], last):
            h_type.tensor_type.shape.dim.add().CopyFrom(d)
        for d in (dims[0] if batch_first else dims[1], last):
            c_type.tensor_type.shape.dim.add().CopyFrom(d)
    if ctx.get_num_outputs() > 0:
        ctx.set_output_type(0, h_type)
    if ctx.get_num_outputs() > 1:
        ctx.set_output_type(1, c_type)


def fo_pool_schema() -> defs.OpSchema:
    """The OpSchema of qrnn::FoPool v1 (with type and shape inference)."""
    P = defs.OpSchema.FormalParameter
    Opt = defs.OpSchema.FormalParameterOption
    A = defs.OpSchema.Attribute
    AT = defs.OpSchema.AttrType
    schema = defs.OpSchema(
        FO_POOL_OP, FO_POOL_DOMAIN, FO_POOL_VERSION, _DOC,
        inputs=[P("gates", "T", "pre-activation gates [T, B, P*H] (or [B, T, P*H])"),
                P("c0", "T", "cell state before the first step [B, H]", param_option=Opt.Optional)],
        outputs=[P("h", "T", "hidden states [T, B, H] (layout of gates)"),
                 P("c_last", "T", "cell state after the last processed step [B, H]")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"],
                           "float32, float16 (fp32 arithmetic) or bfloat16")],
        attributes=[A("pooling", _default("fo"), "'f', 'fo' or 'ifo'"),
                    A("batch_first", _default(0), "1: gates and h are [B, T, ...]"),
                    A("reverse", _default(0), "1: process t = T-1..0"),
                    # Read by TensorRT's ONNX parser to find the FoPool plugin (qrnn_deploy.export.tensorrt_nodes);
                    # every other backend ignores them.
                    A("plugin_version", AT.STRING, "TensorRT plugin version (\"1\")", required=False),
                    A("plugin_namespace", AT.STRING, "TensorRT plugin namespace (\"qrnn\")", required=False)],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def _default(value) -> onnx.AttributeProto:
    # OpSchema.Attribute takes its default value as an (unnamed) AttributeProto.
    return onnx.helper.make_attribute("", value)


def register_fo_pool_schema() -> None:
    """Registers qrnn::FoPool v1 with onnx (idempotent)."""
    if defs.has(FO_POOL_OP, FO_POOL_VERSION, FO_POOL_DOMAIN):
        return
    defs.register_schema(fo_pool_schema())
