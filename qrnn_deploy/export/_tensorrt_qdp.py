"""The `tensorrt.plugin` definition of qrnn::FoPool (shape function, autotune, aot_impl).

No `from __future__ import annotations` here, on purpose: tensorrt.plugin reads the decorated
functions' annotations as objects (`issubclass(annotation, TensorDesc)`, `typing.get_origin(ret)
is tuple`), and postponed annotations would be strings it refuses. Written against the
documented tensorrt.plugin API of TensorRT 10.x; TensorRT is not installed on our machines, so
this has run only against a stand-in that checks the same annotations (tests/test_tensorrt_aot.py).
"""

from typing import List, Tuple

from qrnn_deploy.export.tensorrt_aot import PLUGIN_ID, POOLING_P, kernel_name, launch_params


def _pooling(value) -> str:
    # The ONNX parser hands string attributes over with their terminating NUL.
    return str(value).rstrip("\x00")


def define_plugin(trt, trtp, ptx: str) -> None:
    """Registers PLUGIN_ID with `trtp` (the tensorrt.plugin module), its AOT implementation
    launching `ptx` (compile_ptx's output)."""
    TensorDesc = trtp.TensorDesc

    @trtp.register(PLUGIN_ID)
    def _desc(gates: TensorDesc, c0: TensorDesc, pooling: str, batch_first: int,
              reverse: int) -> Tuple[TensorDesc, TensorDesc]:
        # New shape-expression tuples: TensorDesc.like() shares the input's ShapeExprs object,
        # so editing its copy in place would change the input's shape too.
        d = gates.shape_expr
        H = d[2] // POOLING_P[_pooling(pooling)]
        B = d[0] if batch_first else d[1]
        return trtp.from_shape_expr((d[0], d[1], H), dtype=gates.dtype), trtp.from_shape_expr((B, H), dtype=gates.dtype)

    @trtp.autotune(PLUGIN_ID)
    def _autotune(gates: TensorDesc, c0: TensorDesc,
                  outputs: Tuple[TensorDesc, TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(gates: TensorDesc, c0: TensorDesc, pooling: str, batch_first: int, reverse: int,
             outputs: Tuple[TensorDesc, TensorDesc],
             tactic: int) -> Tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        pooling = _pooling(pooling)
        dims = gates.shape_expr
        T, B = (dims[1], dims[0]) if batch_first else (dims[0], dims[1])
        H = dims[2] // POOLING_P[pooling]
        spec = launch_params(T, B, H, pooling, bool(batch_first), bool(reverse))
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = spec.grid
        params.block_x, params.block_y, params.block_z = spec.block
        params.shared_mem = spec.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in spec.extra_args])
        dtype = "float16" if gates.dtype == trt.float16 else "float32"
        return kernel_name(dtype, True).encode(), ptx.encode(), params, extra
