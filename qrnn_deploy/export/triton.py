"""A Triton Inference Server model repository from a bundle (`qrnn-deploy export --triton DIR`).

One Triton model per graph of the bundle, served with the sequence batcher and **implicit state**:
every carried state of the graph (conv_state_{l} / c_state_{l}, DESIGN.md section 3) is a
`sequence_batching.state` entry whose next value is the graph output `<name>_out`, zero at the
start of each sequence, so a client sends only its tokens chunk by chunk with a sequence id and
Triton carries the state between requests and batches concurrent sequences (the graphs are
batch-first, so Triton's batch axis is the graph's B).

Backends:
- "onnxruntime": the bundle's ONNX graph; a custom-FoPool bundle needs the custom-op library on
  the server (`model_operations.op_library_filename`), a portable bundle needs nothing;
- "tensorrt": the engine `qrnn-deploy build-engine` wrote for that graph (manifest `engines`),
  built with `--plugin aot` (the default), which embeds FoPool's kernel. An engine built with
  `--plugin library` is refused: Triton's TensorRT backend loads plugin libraries with dlopen
  and registers nothing, and libqrnn_trt_plugin.so (an IPluginV3 library) registers its creator
  only when TensorRT's loadLibrary asks for it (`model_operations` is for ONNX models only).
  An engine with several optimization profiles (decode: one step; chunks) lists them all in its
  instance group, so Triton picks one per request's shape (by default it would use only the first).

Pure Python: reads the manifest, writes text and copies files; no torch, no Triton.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from qrnn_deploy.bundle import Manifest, load_manifest
from qrnn_deploy.errors import ExportError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}
BACKENDS = ("onnxruntime", "tensorrt")


def _dims(shape: list, where: str) -> list[int]:
    """Triton dims of a bundle shape: the leading batch axis "B" is Triton's, symbols become -1."""
    if not shape or shape[0] != "B":
        raise ExportError(f"{where}: shape {shape} is not batch-first ([B, ...]); Triton needs the batch axis first")
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _dims_text(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _dtype(dtype: str, where: str) -> str:
    try:
        return TRITON_TYPES[dtype]
    except KeyError:
        raise ExportError(f"{where}: dtype {dtype!r} has no Triton type") from None


def model_config(manifest: Manifest, role: str, name: str, backend: str = "onnxruntime", max_batch_size: int = 8,
                 op_library: Optional[str] = None, kind: str = "KIND_GPU", idle_seconds: int = 60,
                 max_queue_delay_us: int = 1000) -> str:
    """config.pbtxt text for graph `role` of the bundle (see the module docstring)."""
    if backend not in BACKENDS:
        raise ExportError(f"Triton backend must be one of {BACKENDS}, got {backend!r}")
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be >= 1 (Triton batches sequences along B), got {max_batch_size}")
    g = manifest.graphs[role]
    profiles = 1
    if backend == "tensorrt":
        eng = manifest.engines.get(role)
        profiles = max(1, len(eng.profiles)) if eng is not None else 1
    lines = [f'name: "{name}"']
    if backend == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "tensorrt"', 'platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    lines.append(f"max_batch_size: {max_batch_size}")
    for section, tensors in (("input", g.inputs), ("output", g.outputs)):
        lines.append(f"{section} [")
        entries = []
        for t in tensors:
            where = f"graph {role!r} {section} {t.name}"
            entries.append(f'  {{\n    name: "{t.name}"\n    data_type: {_dtype(t.dtype, where)}\n'
                           f'    dims: {_dims_text(_dims(t.shape, where))}\n  }}')
        lines.append(",\n".join(entries))
        lines.append("]")
    lines += ["sequence_batching {", f"  max_sequence_idle_microseconds: {idle_seconds * 1_000_000}",
              "  oldest {", f"    max_candidate_sequences: {max_batch_size * 4}",
              f"    preferred_batch_size: [ {max_batch_size} ]", f"    max_queue_delay_microseconds: {max_queue_delay_us}",
              "  }"]
    for s in g.states:
        where = f"graph {role!r} state {s.name}"
        state_dims = _dims(s.shape, where)
        if any(d < 0 for d in state_dims):  # zero initial states are made at a fixed size
            raise ExportError(f"{where}: shape {s.shape} has a symbolic axis besides B; Triton's zero initial "
                              "state needs fixed dimensions")
        dt, dims = _dtype(s.dtype, where), _dims_text(state_dims)
        lines += ["  state {", f'    input_name: "{s.name}"', f'    output_name: "{s.output}"',
                  f"    data_type: {dt}", f"    dims: {dims}",
                  "    initial_state {", f"      data_type: {dt}", f"      dims: {dims}", "      zero_data: true",
                  f'      name: "{s.name}_zeros"', "    }", "  }"]
    lines.append("}")
    profile = ("\n    profile: [ " + ", ".join(f'"{i}"' for i in range(profiles)) + " ]") if profiles > 1 else ""
    lines += ["instance_group [", f"  {{\n    count: 1\n    kind: {kind}{profile}\n  }}", "]"]
    if op_library:
        lines += ["model_operations {", f'  op_library_filename: "{op_library}"', "}"]
    return "\n".join(lines) + "\n"


def write_model_repository(bundle_dir, repo_dir, backend: str = "onnxruntime", max_batch_size: int = 8,
                           op_library: Optional[str] = None, prefix: str = "qrnn_", kind: str = "KIND_GPU") -> list[Path]:
    """Writes `repo_dir/<prefix><role>/{config.pbtxt, 1/model.onnx|model.plan}` for every graph.

    op_library: path (on the Triton server) of libqrnn_ort.so (onnxruntime backend, custom FoPool):
    required there, ignored where nothing needs it. Returns the config paths. Raises BundleError /
    ExportError with what to do.
    """
    bundle_dir, repo_dir = Path(bundle_dir), Path(repo_dir)
    m = load_manifest(bundle_dir)
    needs_library = False
    if backend == "onnxruntime":
        needs_library = m.fo_pool == "custom"
    elif backend == "tensorrt":
        missing = [r for r in m.graphs if r not in m.engines]
        if missing:
            raise ExportError(f"{bundle_dir}: no TensorRT engine for graph(s) {missing}; build them first with "
                              f"`qrnn-deploy build-engine {bundle_dir}`")
        if m.fo_pool == "custom" and any(m.engines[r].plugin == "library" for r in m.graphs):
            raise ExportError(f"{bundle_dir}: engines built with --plugin library cannot be served by Triton (its "
                              "TensorRT backend dlopens plugin libraries without registering an IPluginV3 "
                              "creator); rebuild them with `qrnn-deploy build-engine --plugin aot`, which embeds "
                              "the kernel")
    else:
        raise ExportError(f"Triton backend must be one of {BACKENDS}, got {backend!r}")
    if needs_library and not op_library:
        raise ExportError("this bundle's FoPool needs libqrnn_ort.so on the Triton server: pass its path there "
                          "(--triton-op-library PATH)")
    written = []
    for role, g in m.graphs.items():
        name = f"{prefix}{role}"
        version_dir = repo_dir / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        if backend == "onnxruntime":
            shutil.copyfile(bundle_dir / g.file, version_dir / "model.onnx")
        else:
            shutil.copyfile(bundle_dir / m.engines[role].file, version_dir / "model.plan")
        cfg = repo_dir / name / "config.pbtxt"
        cfg.write_text(model_config(m, role, name, backend, max_batch_size, op_library if needs_library else None,
                                    kind))
        written.append(cfg)
    return written
