"""The bundle manifest (DESIGN.md section 4): written by `export`, read by every runtime.

Pure Python (json + dataclasses): the runtime reads it without torch, numpy or onnx.

A bundle is a directory with `manifest.json` and one ONNX graph per role:
- language_model: graph "lm":         tokens [B, T] int64 -> logits [B, T, V]
- classifier:     graph "classifier": tokens [B, T] int64 -> logits [B, C] (after the chunk's last step)
- seq2seq:        graph "encoder":    src [B, T] int64 -> memory [B, T, H], cond_{l} [B, P*H]
                  graph "decoder":    tgt [B, T] int64, memory [B, S, H], memory_mask [B, S] float32
                                      (1 = source position, 0 = padding), cond_{l} [B, P*H]
                                      -> logits [B, T, V]
Every graph also takes its states `conv_state_{l}` [B, k_l - 1, d_l] (absent when k_l = 1) and
`c_state_{l}` [B, H] and returns `conv_state_{l}_out` / `c_state_{l}_out` (DESIGN.md section 3).
Shapes are lists of ints and symbols ("B", "T", "S").

As written by qrnn_deploy.export (format version 1, no field added): layer indices l count from
0; graph inputs are the non-state inputs in the order above, then per layer conv_state_{l}
(when k_l > 1) and c_state_{l}; outputs likewise. `vocab` is one {"type": "char", ...} or, for
seq2seq with two vocabularies, {"src": {...}, "tgt": {...}}. `metadata` may hold "created_by",
"torch", "onnx", "sizes" (role -> bytes), "parameters", "labels" (classifier) and
"verification" ({"engine", "tolerance", "max_abs_error", "max_chunked_vs_whole", "cases"}).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from qrnn_deploy.errors import BundleError

BUNDLE_FORMAT = "qrnn-deploy-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_ROLES = {"language_model": ["lm"], "classifier": ["classifier"], "seq2seq": ["encoder", "decoder"]}
FO_POOL_VARIANTS = ("custom", "portable")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints and symbolic dims ("B", "T", "S")
    dtype: str = "float32"


@dataclass
class StateSpec:
    """A carried state: graph input `name`, its next value is graph output `output`."""

    name: str
    output: str
    shape: list
    dtype: str = "float32"


@dataclass
class GraphSpec:
    file: str
    inputs: list  # TensorSpec, non-state inputs
    outputs: list  # TensorSpec, non-state outputs
    states: list = field(default_factory=list)  # StateSpec


@dataclass
class EngineSpec:
    """A TensorRT engine built from one graph (sits beside the ONNX file)."""

    file: str
    precision: str = "fp32"
    plugin: str = "library"  # "aot" (kernel embedded) or "library" (needs the plugin .so)
    profiles: list = field(default_factory=list)
    tensorrt_version: Optional[str] = None


@dataclass
class Manifest:
    model_type: str
    fo_pool: str  # "custom" or "portable"
    graphs: dict  # role -> GraphSpec
    config: dict
    vocab: Optional[dict] = None  # {"type": "char", "symbols": [...]}
    special_tokens: dict = field(default_factory=dict)  # pad / unk / bos / eos ids
    opset: Optional[int] = None
    custom_op: Optional[dict] = None  # {"domain": "qrnn", "op_type": "FoPool", "version": 1}
    engines: dict = field(default_factory=dict)  # role -> EngineSpec
    metadata: dict = field(default_factory=dict)  # created_by, verification figures, ...
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_VERSION

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: not a JSON object")
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: not a qrnn-deploy bundle manifest (format {d.get('format')!r})")
        if d.get("format_version") != BUNDLE_VERSION:
            raise BundleError(f"{where}: bundle format version {d.get('format_version')!r} is not supported "
                              f"(this qrnn-deploy reads version {BUNDLE_VERSION}); re-export the bundle")
        try:
            graphs = {role: _graph(g) for role, g in d["graphs"].items()}
            engines = {role: EngineSpec(**e) for role, e in (d.get("engines") or {}).items()}
            known = {k: d[k] for k in ("model_type", "fo_pool", "config", "vocab", "special_tokens", "opset",
                                      "custom_op", "metadata") if k in d}
            m = cls(graphs=graphs, engines=engines, **known)
        except (KeyError, TypeError, AttributeError) as e:
            raise BundleError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
        m.validate(where)
        return m

    def validate(self, where: str = "manifest") -> None:
        if self.model_type not in MODEL_ROLES:
            raise BundleError(f"{where}: unknown model_type {self.model_type!r}")
        if self.fo_pool not in FO_POOL_VARIANTS:
            raise BundleError(f"{where}: fo_pool must be one of {FO_POOL_VARIANTS}, got {self.fo_pool!r}")
        missing = [r for r in MODEL_ROLES[self.model_type] if r not in self.graphs]
        if missing:
            raise BundleError(f"{where}: a {self.model_type} bundle needs graphs {missing}")
        for role, g in self.graphs.items():
            for t in list(g.inputs) + list(g.outputs) + list(g.states):
                if t.dtype not in DTYPES:
                    raise BundleError(f"{where}: graph {role}: tensor {t.name} has unknown dtype {t.dtype!r}")
                if not isinstance(t.shape, list) or not all(isinstance(s, (int, str)) for s in t.shape):
                    raise BundleError(f"{where}: graph {role}: tensor {t.name} has a malformed shape {t.shape!r}")
        if self.fo_pool == "custom" and not self.custom_op:
            raise BundleError(f"{where}: fo_pool 'custom' needs the custom_op entry")

    # -- files --------------------------------------------------------------------------------

    def write(self, bundle_dir) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _graph(g: dict) -> GraphSpec:
    return GraphSpec(file=g["file"], inputs=[TensorSpec(**t) for t in g["inputs"]],
                     outputs=[TensorSpec(**t) for t in g["outputs"]],
                     states=[StateSpec(**s) for s in g.get("states", [])])


def load_manifest(bundle_dir, check_files: bool = True) -> Manifest:
    """Reads and validates `bundle_dir/manifest.json`; raises BundleError with what to do."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle not found: {bundle_dir} is not a directory (export one with `qrnn-deploy export`)")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    m = Manifest.from_json(d, str(path))
    if check_files:
        for role, g in m.graphs.items():
            if not (bundle_dir / g.file).is_file():
                raise BundleError(f"{bundle_dir}: graph {role!r} file {g.file} is missing")
    return m
