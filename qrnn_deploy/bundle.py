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
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
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
        for key, kind in (("graphs", dict), ("engines", (dict, type(None)))):
            if key in d and not isinstance(d[key], kind):
                raise BundleError(f"{where}: {key} must be an object (role -> entry), got {_kind(d[key])}")
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
        self._check_types(where)
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

    def _check_types(self, where: str) -> None:
        """Every field has the JSON type the runtimes read it as: a hand-edited manifest fails
        here with its field named, not later in whatever code touches the field first."""
        def need(ok: bool, what: str, value) -> None:
            if not ok:
                raise BundleError(f"{where}: {what}, got {_kind(value)}")

        for name in ("model_type", "fo_pool"):
            need(isinstance(getattr(self, name), str), f"{name} must be a string", getattr(self, name))
        for name in ("graphs", "config", "special_tokens", "engines", "metadata"):
            need(isinstance(getattr(self, name), dict), f"{name} must be an object", getattr(self, name))
        for name in ("vocab", "custom_op"):
            value = getattr(self, name)
            need(value is None or isinstance(value, dict), f"{name} must be an object or null", value)
        need(self.opset is None or _is_int(self.opset), "opset must be an integer or null", self.opset)
        for key, value in self.config.items():
            if key.endswith("vocab_size"):
                need(value is None or _is_int(value), f"config.{key} must be an integer", value)
        for key, value in self.special_tokens.items():
            need(_is_int(value) and value >= 0, f"special_tokens.{key} must be a token id (an integer >= 0)", value)
        if self.vocab is not None:
            sides = ({f"vocab.{k}": self.vocab.get(k) for k in ("src", "tgt")} if "src" in self.vocab
                     else {"vocab": self.vocab})
            for name, side in sides.items():
                need(isinstance(side, dict), f"{name} must be an object", side)
                symbols = side.get("symbols")
                need(symbols is None or isinstance(symbols, list), f"{name}.symbols must be a list", symbols)
        ver = self.metadata.get("verification")
        need(ver is None or isinstance(ver, dict), "metadata.verification must be an object", ver)
        for role, g in self.graphs.items():
            _check_file(g.file, f"graph {role!r}", where)
            for part in ("inputs", "outputs", "states"):
                need(isinstance(getattr(g, part), list), f"graph {role!r}: {part} must be a list", getattr(g, part))
            for t in list(g.inputs) + list(g.outputs) + list(g.states):
                need(isinstance(t.name, str) and bool(t.name), f"graph {role!r}: a tensor name must be a string",
                     t.name)
                need(isinstance(t.dtype, str), f"graph {role!r}: tensor {t.name}: dtype must be a string", t.dtype)
            for st in g.states:
                need(isinstance(st.output, str) and bool(st.output),
                     f"graph {role!r}: state {st.name}: output must be a tensor name", st.output)
        for role, e in self.engines.items():
            _check_file(e.file, f"engine {role!r}", where)

    # -- files --------------------------------------------------------------------------------

    def write(self, bundle_dir) -> Path:
        """Writes manifest.json atomically: a full disk or a crash leaves the old one (or none),
        never a truncated one. Raises OSError."""
        path = Path(bundle_dir) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def _kind(value) -> str:
    """A JSON value's type, as a manifest's author knows it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)[:40]})"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_file(name, what: str, where: str) -> None:
    """A file of the bundle is named relative to the bundle directory and stays inside it."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: {what} file must be a non-empty file name, got {_kind(name)}")
    p = PurePosixPath(name)
    if p.is_absolute() or "\\" in name or ".." in p.parts or not p.parts:
        raise BundleError(f"{where}: {what} file {name!r} must be a relative file name inside the bundle "
                          "(no absolute path, no '..')")


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
        if path.exists():
            raise BundleError(f"{bundle_dir} is not a bundle: {path} is not a file")
        raise BundleError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, numbers over the digit limit
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{path}: not a manifest (JSON nested too deeply)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read it ({e.strerror or e})") from None
    m = Manifest.from_json(d, str(path))
    if check_files:
        for role, g in m.graphs.items():
            if not (bundle_dir / g.file).is_file():
                raise BundleError(f"{bundle_dir}: graph {role!r} file {g.file} is missing")
    return m
