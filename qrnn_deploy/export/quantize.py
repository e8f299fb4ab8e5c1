"""Weight quantization of exported graphs: int8 weights in blocks, for onnxruntime's MatMulNBits.

`quantize_graph(proto)` replaces every MatMul whose right-hand side is a float32 weight matrix
[K, N] (an initializer) by one `com.microsoft::MatMulNBits` node with 8-bit weights: each output
column is cut along K into blocks of `block_size` values, and each block keeps one float32 scale
(symmetric: q = round(w / s) in [-127, 127], s = max |w| / 127, stored as q + 128, the operator's
default zero point for 8 bits). The weights take about a quarter of their float32 size.

With `accuracy_level=4` onnxruntime's CPU kernel also quantizes the activations to int8, per row
and per block of K, and multiplies with integer dot products (AVX-512 VNNI / AVX-VNNI where the CPU
has them). Rows stay independent of each other in calls of two rows or more. A call of one row
(one stream, one step) takes another kernel that rounds differently in the last bits; where that
moves an activation across an int8 rounding boundary, the result moves by a whole int8 step (up
to about 1% of the range, measured by fuzzing). So chunked streaming equals one pass, and
batched decoding equals decoding alone, to the quantized tolerance, not exactly: greedy tokens
can differ at near-ties. Everything else in the graph (FoPool, the convolution windows,
attention, softmax) stays float32.

MatMulNBits is an onnxruntime contrib operator: quantized bundles run on onnxruntime (Python and
the C++ runtime), not on other ONNX runtimes or TensorRT.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrnn_deploy.errors import ExportError

SCHEME = "int8-block"
MS_DOMAIN = "com.microsoft"
DEFAULT_BLOCK = 128
MIN_SIZE = 16  # smaller K or N stay float (MatMulNBits needs K, N >= 16 and gains nothing below)


def quantize_weight(w: np.ndarray, block_size: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] float -> (packed uint8 [N, K_blocks, block_size], scales float32 [N, K_blocks]).

    Block b of column n holds rows b*block_size ... of w[:, n]; the last block is padded with
    zeros (padding is ignored by the operator, which reads K)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ExportError(f"quantize_weight: block_size must be a power of two >= 16, got {block_size!r}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ExportError(f"quantize_weight: expected a [K, N] matrix, got shape {list(w.shape)}")
    K, N = w.shape
    nb = -(-K // block_size)
    cols = np.zeros((N, nb * block_size), dtype=np.float32)
    cols[:, :K] = w.T
    cols = cols.reshape(N, nb, block_size)
    amax = np.abs(cols).max(axis=2)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(cols / scales[:, :, None]), -127, 127).astype(np.int16)
    return (q + 128).astype(np.uint8), scales


def dequantize_weight(packed: np.ndarray, scales: np.ndarray, K: int) -> np.ndarray:
    """The inverse of quantize_weight, up to rounding: [K, N] float32."""
    N, nb, bs = packed.shape
    w = (packed.astype(np.float32) - 128.0) * scales[:, :, None]
    return np.ascontiguousarray(w.reshape(N, nb * bs)[:, :K].T)


def quantize_graph(proto: onnx.ModelProto, block_size: int = DEFAULT_BLOCK,
                   accuracy_level: int = 4) -> tuple[onnx.ModelProto, dict]:
    """A copy of `proto` with its weight MatMuls as 8-bit MatMulNBits, and a report:
    {"scheme", "block_size", "accuracy_level", "matmuls": quantized / all MatMul nodes,
     "weight_bytes": [float32 bytes before, bytes after]}."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"quantize: block_size must be a power of two >= 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"quantize: accuracy_level must be 0-4, got {accuracy_level}")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    packed: dict = {}  # weight name -> (packed name, scales name, K, N)
    new_nodes, n_mm, n_q, before, after = [], 0, 0, 0, 0
    for node in g.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        n_mm += 1
        w_name = node.input[1]
        t: Optional[onnx.TensorProto] = inits.get(w_name)
        if t is None or t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 2 \
                or min(t.dims) < MIN_SIZE:
            new_nodes.append(node)
            continue
        if w_name not in packed:
            w = numpy_helper.to_array(t)
            K, N = w.shape
            q, s = quantize_weight(w, block_size)
            qn, sn = f"{w_name}@int8", f"{w_name}@int8_scale"
            g.initializer.extend([numpy_helper.from_array(q, qn), numpy_helper.from_array(s.reshape(-1), sn)])
            packed[w_name] = (qn, sn, K, N)
            before += w.nbytes
            after += q.nbytes + s.nbytes
        qn, sn, K, N = packed[w_name]
        new_nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], qn, sn], list(node.output),
            # Unnamed MatMuls that share a weight must not get one name (onnxruntime refuses it).
            name=f"{node.name}_q8" if node.name else f"{w_name}_q8_{n_q}",
            domain=MS_DOMAIN, K=K, N=N, bits=8, block_size=block_size, accuracy_level=accuracy_level))
        n_q += 1
    del g.node[:]
    g.node.extend(new_nodes)
    # Drop float weights nothing reads any more.
    still = {name for node in g.node for name in node.input}
    keep = [t for t in g.initializer if t.name in still]
    del g.initializer[:]
    g.initializer.extend(keep)
    if n_q and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, {"scheme": SCHEME, "block_size": block_size, "accuracy_level": accuracy_level,
                 "matmuls": [n_q, n_mm], "weight_bytes": [before, after]}


__all__ = ["SCHEME", "DEFAULT_BLOCK", "quantize_weight", "dequantize_weight", "quantize_graph"]
