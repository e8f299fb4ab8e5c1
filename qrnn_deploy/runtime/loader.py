"""Loading a bundle: the manifest, one runner per graph, the states each graph carries.

Sizes come from the manifest, not from code: a state's zero value is allocated from its
manifest shape (the symbol "B" is the batch size) and dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qrnn_deploy.bundle import GraphSpec, Manifest, StateSpec, load_manifest
from qrnn_deploy.errors import BundleError, ConfigError, StreamError
from qrnn_deploy.limits import MAX_THREADS
from qrnn_deploy.runtime.backends import GraphRunner, create_runner
from qrnn_deploy.vocab import BOS, EOS, PAD, UNK, CharVocab

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
              "bool": np.bool_}
# The graph input that takes token ids, per role (bundle.py's module docstring).
TOKEN_INPUTS = {"lm": "tokens", "classifier": "tokens", "encoder": "src", "decoder": "tgt"}


def np_dtype(name: str, where: str):
    if name not in _NP_DTYPES:
        raise BundleError(f"{where}: dtype {name!r} is not supported by the numpy runtime")
    return _NP_DTYPES[name]


class Graph:
    """One graph of a bundle: its manifest spec, its runner, and its carried states.

    `states` lists StateSpec(name, output, shape, dtype); `zero_states(B)` allocates them.
    `run(inputs, states)` returns (outputs, next states), both dicts of batch-first arrays.
    """

    def __init__(self, role: str, spec: GraphSpec, runner: GraphRunner):
        self.role, self.spec, self.runner = role, spec, runner
        self.states: list[StateSpec] = list(spec.states)
        self.input_specs = {t.name: t for t in spec.inputs}
        self.output_names = [t.name for t in spec.outputs]
        for s in self.states:
            bad = [d for d in s.shape if isinstance(d, str) and d != "B"]
            if not s.shape or s.shape[0] != "B" or bad:
                raise BundleError(f"graph {role!r}: state {s.name} has shape {s.shape}; a state must be "
                                  f"[B, fixed sizes...]")
            np_dtype(s.dtype, f"graph {role!r} state {s.name}")
        tok = TOKEN_INPUTS.get(role)
        if tok is not None and tok not in self.input_specs:
            raise BundleError(f"graph {role!r}: the manifest lists no {tok!r} input (has {list(self.input_specs)})")
        self.token_input = tok
        self.token_dtype = np_dtype(self.input_specs[tok].dtype, role) if tok else None

    @property
    def state_names(self) -> list:
        return [s.name for s in self.states]

    def state_shape(self, name: str, batch: int = 1) -> tuple:
        s = next((s for s in self.states if s.name == name), None)
        if s is None:
            raise StreamError(f"graph {self.role!r} has no state {name!r}")
        return tuple(batch if d == "B" else int(d) for d in s.shape)

    def zero_states(self, batch: int = 1) -> dict:
        """name -> zeros of the manifest shape with B = batch (e.g. conv_state_0 [B, k-1, d])."""
        specs = self.__dict__.get("_zero_specs")
        if specs is None:  # every new stream asks: resolve names, shapes and dtypes once
            specs = self.__dict__["_zero_specs"] = [
                (s.name, [None if d == "B" else int(d) for d in s.shape], _NP_DTYPES[s.dtype]) for s in self.states]
        return {name: np.zeros(tuple(batch if d is None else d for d in shape), dtype=dt)
                for name, shape, dt in specs}

    def run(self, inputs: dict, states: dict) -> tuple[dict, dict]:
        """inputs: the non-state inputs; states: name -> [B, ...]. Returns (outputs, next states)."""
        feed = dict(inputs)
        feed.update(states)
        res = self.runner.run(feed)
        return ({n: res[n] for n in self.output_names}, {s.name: res[s.output] for s in self.states})


def _vocab(d, where: str) -> Optional[CharVocab]:
    if d is None:
        return None
    try:
        return CharVocab.from_json(d)
    except Exception as e:
        raise BundleError(f"{where}: bad vocabulary entry ({e})") from None


class Bundle:
    """A loaded bundle: `manifest`, `graphs` (role -> Graph), vocabularies and special tokens.

    Seq2seq bundles may carry one shared vocabulary ({"type": "char", ...}) or a pair
    ({"src": {...}, "tgt": {...}}); `src_vocab` / `tgt_vocab` are the same object when shared.
    """

    def __init__(self, path: Path, manifest: Manifest, graphs: dict):
        self.path, self.manifest, self.graphs = path, manifest, graphs
        self.model_type = manifest.model_type
        v = manifest.vocab
        where = str(path)
        if isinstance(v, dict) and "src" in v:
            self.src_vocab, self.tgt_vocab = _vocab(v.get("src"), where), _vocab(v.get("tgt"), where)
        else:
            self.src_vocab = self.tgt_vocab = _vocab(v, where)
        self.vocab = self.src_vocab
        st = manifest.special_tokens or {}
        self.pad_id, self.unk_id = int(st.get("pad", PAD)), int(st.get("unk", UNK))
        self.bos_id, self.eos_id = int(st.get("bos", BOS)), int(st.get("eos", EOS))
        if (self.bos_id, self.eos_id) != (BOS, EOS):
            # qrnn_deploy.decoding (the shared beam rule) fixes </s> = EOS; a bundle that disagrees
            # would decode differently from every other runtime.
            raise BundleError(f"{where}: special tokens bos={self.bos_id}, eos={self.eos_id} differ from "
                              f"the project's ({BOS}, {EOS}); re-export the bundle")
        cfg = manifest.config or {}
        self.src_vocab_size = int(cfg.get("src_vocab_size") or cfg.get("vocab_size")
                                  or (len(self.src_vocab) if self.src_vocab else 0)) or None
        self.tgt_vocab_size = int(cfg.get("tgt_vocab_size") or cfg.get("vocab_size")
                                  or (len(self.tgt_vocab) if self.tgt_vocab else 0)) or None

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, {self.model_type}, graphs={list(self.graphs)}, fo_pool={self.manifest.fo_pool})"

    def graph(self, role: str) -> Graph:
        if role not in self.graphs:
            raise BundleError(f"{self.path}: this {self.model_type} bundle has no graph {role!r} "
                              f"(has {list(self.graphs)})")
        return self.graphs[role]

    def states(self, role: str) -> list:
        """The StateSpecs graph `role` carries (name, output, shape, dtype)."""
        return self.graph(role).states

    # -- conveniences (imports here keep this module free of cycles) ------------------------

    def stream(self, role: Optional[str] = None):
        """A Stream on graph `role` (default: the bundle's only graph, or the encoder)."""
        from qrnn_deploy.runtime.stream import Stream

        role = role or ("encoder" if self.model_type == "seq2seq" else next(iter(self.graphs)))
        g = self.graph(role)
        vocab, size = (self.tgt_vocab, self.tgt_vocab_size) if role == "decoder" else (self.src_vocab, self.src_vocab_size)
        return Stream(g, vocab=vocab, vocab_size=size, unk_id=self.unk_id)

    def translator(self):
        from qrnn_deploy.runtime.seq2seq import Translator

        return Translator(self)

    def language_model(self):
        from qrnn_deploy.runtime.generate import LanguageModelStream

        return LanguageModelStream(self)

    def classifier(self):
        from qrnn_deploy.runtime.generate import ClassifierStream

        return ClassifierStream(self)


def load_bundle(path, backend: str = "onnxruntime", providers: Optional[Sequence] = None,
                threads: Optional[int] = None) -> Bundle:
    """Reads and validates `path/manifest.json` and loads one runner per graph on `backend`.

    backend: "onnxruntime" (the FoPool custom-op library is registered when the manifest says
    fo_pool == "custom"), or a backend registered with `register_backend` ("tensorrt" raises
    BuildError until it is installed). providers / threads go to the backend's sessions.
    Raises BundleError (missing/malformed bundle, unknown version, graph not matching the manifest),
    ConfigError (threads not an integer in [1, MAX_THREADS], providers not a list of provider names).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"load_bundle: the bundle path must be a str or path, got {type(path).__name__}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"load_bundle: threads must be an integer in [1, {MAX_THREADS}] or None, got {threads!r}")
    if providers is not None and (isinstance(providers, (str, bytes)) or not isinstance(providers, (list, tuple))):
        raise ConfigError(f"load_bundle: providers must be a list of provider names "
                          f"(e.g. ['CPUExecutionProvider']), got {providers!r}")
    path = Path(path)
    manifest = load_manifest(path, check_files=True)
    graphs = {role: Graph(role, spec, create_runner(backend, path, manifest, role, providers, threads))
              for role, spec in manifest.graphs.items()}
    return Bundle(path, manifest, graphs)
