"""TensorRT engines from a bundle (`qrnn-deploy build-engine`).

One engine per graph, with optimisation profiles for streaming, recorded in the manifest
(`engines[role]`, an EngineSpec) beside the ONNX graphs:
- "decode": chunk length T = 1 (token-by-token decoding), for the "lm" and "decoder" graphs;
- "chunk":  T from 1 to --max-chunk (prompts, source chunks, whole sequences), every graph.
The batch axis B runs from 1 to --max-batch in both; a decoder's memory length S from 1 to
--max-source.

FoPool runs as the TensorRT plugin of this project, either
- "aot": the kernel's PTX embedded in the engine (qrnn_deploy.export.tensorrt_aot, needs
  TensorRT >= 10.8 with tensorrt.plugin at build time; nothing at run time), or
- "library": libqrnn_trt_plugin.so (plugins/tensorrt), needed at build and at run time.
A portable bundle (standard ONNX operators) needs no plugin.

`engine_profiles` is plain Python (tested everywhere); `build_engines` needs TensorRT and a
GPU and is untested on the project's machines, which have neither.
"""

from __future__ import annotations

from pathlib import Path
from qrnn_deploy.bundle import EngineSpec, Manifest, load_manifest
from qrnn_deploy.errors import BuildError, ExportError

PLUGIN_MODES = ("aot", "library")
DECODE_ROLES = ("lm", "decoder")  # graphs that run one token at a time when generating


def engine_profiles(manifest: Manifest, role: str, max_batch: int = 8, max_chunk: int = 256,
                    max_source: int = 256) -> list[dict]:
    """Optimisation profiles of graph `role`: [{"name", "shapes": {input: {"min", "opt", "max"}}}].

    Every graph input (states included) gets a shape per profile: "B" -> 1..max_batch (opt
    max_batch), "T" -> 1 (decode) or 1..max_chunk, "S" -> 1..max_source, integers fixed.
    """
    for name, v in (("max_batch", max_batch), ("max_chunk", max_chunk), ("max_source", max_source)):
        if not isinstance(v, int) or v < 1:
            raise ExportError(f"{name} must be an integer >= 1, got {v!r}")
    g = manifest.graphs[role]
    tensors = [(t.name, t.shape) for t in g.inputs] + [(s.name, s.shape) for s in g.states]
    ranges = {"B": (1, max_batch, max_batch), "S": (1, min(64, max_source), max_source)}
    kinds = (["decode"] if role in DECODE_ROLES else []) + ["chunk"]
    profiles = []
    for kind in kinds:
        dims = dict(ranges, T=(1, 1, 1) if kind == "decode" else (1, min(64, max_chunk), max_chunk))
        shapes = {}
        for name, shape in tensors:
            lo, opt, hi = [], [], []
            for d in shape:
                if isinstance(d, int):
                    r = (d, d, d)
                elif d in dims:
                    r = dims[d]
                else:
                    raise ExportError(f"graph {role!r}: input {name} has a symbolic axis {d!r} that build-engine "
                                      f"does not know (known: B, T, S)")
                lo.append(r[0])
                opt.append(r[1])
                hi.append(r[2])
            shapes[name] = {"min": lo, "opt": opt, "max": hi}
        profiles.append({"name": kind, "shapes": shapes})
    return profiles


def import_tensorrt():
    """The tensorrt module, or BuildError (one line) when it is not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BuildError("TensorRT is not installed: build-engine needs the `tensorrt` Python package "
                         "(TensorRT >= 10) and an NVIDIA GPU") from None
    return trt


def build_engines(bundle_dir, fp16: bool = False, max_batch: int = 8, max_chunk: int = 256, max_source: int = 256,
                  plugin: str = "aot", workspace_mib: int = 1024, log=print) -> Manifest:
    """Builds `<role>.<fp16|fp32>.plan` for every graph of the bundle and records them in its manifest.

    Raises BuildError (no TensorRT, no plugin, a failed parse or build) or BundleError.
    """
    if plugin not in PLUGIN_MODES:
        raise ExportError(f"--plugin must be one of {PLUGIN_MODES}, got {plugin!r}")
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    quant = manifest.metadata.get("quantization") if isinstance(manifest.metadata, dict) else None
    if quant:
        scheme = quant.get("scheme") if isinstance(quant, dict) else quant
        raise BuildError(f"{bundle_dir}: the bundle's weights are quantized ({scheme}, "
                         "onnxruntime's MatMulNBits operator), which TensorRT cannot parse; build engines from a "
                         "bundle exported without --quantize (TensorRT has its own int8 and fp16 modes)")
    for role in manifest.graphs:  # validate the options before the (slow) TensorRT import
        engine_profiles(manifest, role, max_batch, max_chunk, max_source)
    trt = import_tensorrt()
    import onnx

    from qrnn_deploy.export.tensorrt_nodes import add_plugin_attrs

    logger = trt.Logger(trt.Logger.WARNING)
    uses_plugin = manifest.fo_pool == "custom"
    if uses_plugin and plugin == "library":
        from qrnn_deploy import _native

        trt.get_plugin_registry().load_library(_native.trt_plugin_library_path())
    elif uses_plugin:
        from qrnn_deploy.export import tensorrt_aot

        tensorrt_aot.register_plugin()
    precision = "fp16" if fp16 else "fp32"
    for role, g in manifest.graphs.items():
        proto = onnx.load(str(bundle_dir / g.file))
        if uses_plugin:
            add_plugin_attrs(proto)  # bundles exported without --tensorrt work too
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(proto.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BuildError(f"TensorRT cannot parse graph {role!r} ({g.file}): {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        if fp16:
            if not hasattr(trt.BuilderFlag, "FP16"):  # weak typing: deprecated in 10.12, removed in 11
                raise BuildError(f"TensorRT {getattr(trt, '__version__', '?')} has no BuilderFlag.FP16 (weakly typed "
                                 "precision was removed in TensorRT 11); build without --fp16")
            config.set_flag(trt.BuilderFlag.FP16)
        profiles = engine_profiles(manifest, role, max_batch, max_chunk, max_source)
        for p in profiles:
            prof = builder.create_optimization_profile()
            for name, s in p["shapes"].items():
                prof.set_shape(name, s["min"], s["opt"], s["max"])
            config.add_optimization_profile(prof)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BuildError(f"TensorRT could not build an engine for graph {role!r} (see its log above)")
        file = f"{role}.{precision}.plan"
        (bundle_dir / file).write_bytes(bytes(plan))
        manifest.engines[role] = EngineSpec(file=file, precision=precision,
                                            plugin=plugin if uses_plugin else "none",
                                            profiles=profiles, tensorrt_version=trt.__version__)
        log(f"built {file} ({precision}, FoPool plugin {manifest.engines[role].plugin}, "
            f"profiles {[p['name'] for p in profiles]})")
    try:
        manifest.write(bundle_dir)
    except OSError as e:
        raise ExportError(f"cannot write {Path(bundle_dir) / 'manifest.json'}: {e.strerror or e} (the bundle's "
                          "manifest is unchanged; the engines built are beside it)") from None
    return manifest

