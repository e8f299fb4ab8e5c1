"""Language-model generation and running classification on streams.

LanguageModelStream: feed text, then generate (greedy, temperature, top-k, seeded) token by token;
each generated token is fed back lazily, when the next one is asked for, so a consumer who stops
early still leaves the stream consistent (the token is fed at the next feed / generate).
ClassifierStream: the class probabilities of the prefix seen so far, after every chunk.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np

from qrnn_deploy.errors import BundleError, ConfigError
from qrnn_deploy.runtime.stream import Chunk


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pick_token(logits: np.ndarray, temperature: float = 0.0, top_k: Optional[int] = None,
               rng: Optional[np.random.Generator] = None) -> int:
    """Next id from logits [V]: argmax when temperature == 0, else a sample of
    softmax(logits / temperature) restricted to the top_k largest (ties at the k-th kept).
    Logits of -inf are never picked; +inf ones share all the probability. Raises ConfigError for
    bad arguments, logits that are not a non-empty [V] of numbers, NaN, or all -inf."""
    check_sampling(temperature, top_k)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                          f"got {type(rng).__name__}")
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"logits must be a [V] array of numbers, got {type(logits).__name__}") from None
    if z.ndim != 1 or z.size == 0:
        raise ConfigError(f"logits must be a non-empty [V] array, got shape {list(z.shape)}")
    if np.isnan(z).any() or np.isneginf(z).all():
        raise ConfigError("logits contain NaN or are all -inf: there is no token to pick")
    if temperature == 0:
        return int(np.argmax(z))
    if np.isposinf(z).any():  # the limit of softmax: the +inf entries share it evenly
        z = np.where(np.isposinf(z), 0.0, -np.inf)
    else:  # shifted first: a tiny temperature must not overflow the largest logit to inf
        with np.errstate(over="ignore"):  # far below the largest: -inf, never picked
            z = (z - z.max()) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(z.size, p=softmax(z)))


def check_sampling(temperature, top_k) -> None:
    """temperature: a finite number >= 0; top_k: None or an integer >= 1. Raises ConfigError."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
            or not 0 <= temperature < math.inf:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ConfigError(f"top_k must be None or an integer >= 1, got {top_k!r}")


class LanguageModelStream:
    """A language-model bundle as a stream. feed(chunk) -> logits [Tc, V]; generate(...) -> ids."""

    def __init__(self, bundle):
        if bundle.model_type != "language_model":
            raise BundleError(f"{bundle.path}: expected a language_model bundle, this one is {bundle.model_type}")
        self.bundle = bundle
        self.stream = bundle.stream("lm")
        self.vocab = bundle.vocab
        self._pending: list = []  # generated, handed out, not yet fed

    def reset(self) -> None:
        self.stream.reset()
        self._pending = []

    def close(self) -> None:
        self.stream.close()

    def feed(self, chunk: Chunk) -> Optional[np.ndarray]:
        """Advances by `chunk` (after any generated token not yet fed) -> logits [Tc', V]."""
        ids = self.stream.ids(chunk)
        if self._pending:
            ids = np.concatenate([np.asarray(self._pending, dtype=ids.dtype), ids])
            self._pending = []
        out = self.stream.feed(ids)
        return None if out is None else out["logits"]

    def generate(self, prompt: Chunk = "", max_new_tokens: int = 100, temperature: float = 0.0,
                 top_k: Optional[int] = None, seed: Optional[int] = None, stop_at_eos: bool = True) -> Iterator[int]:
        """Yields up to max_new_tokens ids continuing the stream (after `prompt`). A fresh stream with
        an empty prompt starts from <s>. Same seed, same prompt: same tokens. Bad arguments raise
        ConfigError here, at the call, not at the first token."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        check_sampling(temperature, top_k)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ConfigError(f"seed must be None or an integer >= 0, got {seed!r}")
        return self._generate(prompt, max_new_tokens, temperature, top_k, np.random.default_rng(seed), stop_at_eos)

    def _generate(self, prompt: Chunk, max_new_tokens: int, temperature: float, top_k: Optional[int],
                  rng: np.random.Generator, stop_at_eos: bool) -> Iterator[int]:
        logits = self.feed(prompt)
        if logits is None:
            if self.stream.last_outputs is None:
                logits = self.feed([self.bundle.bos_id])
            else:
                logits = self.stream.last_outputs["logits"]
        for i in range(max_new_tokens):
            if i > 0:
                logits = self.feed([])
            tok = pick_token(logits[-1], temperature, top_k, rng)
            if stop_at_eos and tok == self.bundle.eos_id:
                return
            self._pending.append(tok)
            yield tok

    def text(self, ids) -> str:
        return self.vocab.decode(ids) if self.vocab is not None else " ".join(map(str, ids))


class ClassifierStream:
    """A classifier bundle as a stream: after each chunk, the prediction for the prefix so far."""

    def __init__(self, bundle):
        if bundle.model_type != "classifier":
            raise BundleError(f"{bundle.path}: expected a classifier bundle, this one is {bundle.model_type}")
        self.bundle = bundle
        self.stream = bundle.stream("classifier")
        self.labels = (bundle.manifest.config or {}).get("labels") or (bundle.manifest.metadata or {}).get("labels")
        classes = (bundle.manifest.config or {}).get("num_classes")
        if self.labels is not None and (not isinstance(self.labels, list)
                                        or (isinstance(classes, int) and len(self.labels) != classes)):
            raise BundleError(f"{bundle.path}: the manifest's labels must be a list of one name per class "
                              f"({classes} classes), got {str(self.labels)[:60]}; re-export the bundle")
        self.logits: Optional[np.ndarray] = None

    def reset(self) -> None:
        self.stream.reset()
        self.logits = None

    def close(self) -> None:
        self.stream.close()

    def feed(self, chunk: Chunk) -> Optional[np.ndarray]:
        """Advances by `chunk` -> class probabilities [C] of everything seen so far (None before
        the first symbol)."""
        out = self.stream.feed(chunk)
        if out is not None:
            self.logits = out["logits"]
        return None if self.logits is None else softmax(self.logits)

    @property
    def prediction(self) -> Optional[int]:
        return None if self.logits is None else int(np.argmax(self.logits))

    @property
    def label(self):
        p = self.prediction
        return p if p is None or not self.labels else self.labels[p]
