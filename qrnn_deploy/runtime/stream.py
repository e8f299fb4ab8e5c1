"""Streams: one sequence advanced chunk by chunk through a graph, holding its own states.

A `Stream` takes chunks of any length (text or token ids) and returns that chunk's outputs; its
states carry over, so chunk by chunk equals the whole sequence at once (DESIGN.md section 3).
A `StreamBatch` advances many streams of one graph together: their states are stacked along
axis 0, run in one call per distinct chunk length, and split back.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from qrnn_deploy.errors import StreamError
from qrnn_deploy.runtime.loader import Graph
from qrnn_deploy.vocab import UNK, CharVocab

Chunk = Union[str, Sequence[int], np.ndarray]


def to_ids(chunk: Chunk, vocab: Optional[CharVocab], vocab_size: Optional[int], unk_id: int = UNK,
           dtype=np.int64) -> np.ndarray:
    """Text or ids -> ids [T]. Unknown characters and ids outside [0, vocab_size) become `unk_id`
    (never an error: a stray symbol in a live stream must not kill it)."""
    if isinstance(chunk, str):
        if vocab is None and chunk:  # "" is no text: generate()'s default prompt
            raise StreamError("this bundle has no vocabulary, so it takes token ids, not text")
        return np.asarray(vocab.encode(chunk) if chunk else [], dtype=dtype).reshape(-1)
    ids = np.asarray(chunk)
    if ids.size == 0:
        return np.zeros(0, dtype=dtype)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise StreamError(f"a chunk is text or a 1-D sequence of integer ids, got shape {list(ids.shape)} "
                          f"dtype {ids.dtype}")
    out = ids.astype(dtype, copy=True)
    if vocab_size:
        # Checked on the given values: a cast to a narrower dtype (int32 tokens) could first
        # wrap an out-of-range id into a valid one.
        out[(ids < 0) | (ids >= vocab_size)] = unk_id
    return out


def stack_states(states: Sequence[dict]) -> dict:
    """[{name: [b_i, ...]}] -> {name: [sum b_i, ...]} (concatenated along the batch axis)."""
    if len(states) == 0:
        raise StreamError("stack_states: no states to stack (an empty list)")
    if len(states) == 1:
        return states[0]
    return {n: np.concatenate([s[n] for s in states], 0) for n in states[0]}


def split_states(states: dict, sizes: Sequence[int]) -> list:
    """The inverse of stack_states: {name: [sum b_i, ...]} -> [{name: [b_i, ...]}]."""
    total = len(next(iter(states.values()))) if states else None
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in sizes) or \
            (total is not None and sum(sizes) != total):
        raise StreamError(f"split_states: sizes {list(sizes)} must be integers >= 0 summing to the batch size {total}")
    if len(sizes) == 1:
        return [states]
    # Plain basic slicing (views): np.split costs ~10x more per part (array_split + swapaxes).
    out, a = [], 0
    items = list(states.items())
    for k in sizes:
        b = a + k
        out.append({n: v[a:b] for n, v in items})
        a = b
    return out


def _pairs(items, where: str, what: str) -> list:
    """items as a list of 2-tuples, or StreamError saying what `where` takes."""
    try:
        items = list(items)
    except TypeError:
        raise StreamError(f"{where} takes a list of ({what}, chunk) pairs, got {type(items).__name__}") from None
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise StreamError(f"{where} takes a list of ({what}, chunk) pairs, got an item {type(item).__name__}"
                              + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    return items


class Stream:
    """One sequence through one graph (a language model, classifier or encoder graph).

    feed(chunk) -> outputs of that chunk with the batch axis removed (lm: logits [Tc, V];
    classifier: logits [C] after the chunk's last step; encoder: memory [Tc, H], cond_{l} [P*H]),
    or None for an empty chunk (nothing advances). `states` holds name -> [1, ...] arrays.
    """

    def __init__(self, graph: Graph, vocab: Optional[CharVocab] = None, vocab_size: Optional[int] = None,
                 unk_id: int = UNK):
        if graph.token_input is None:
            raise StreamError(f"graph {graph.role!r} takes no token input; it cannot be a Stream")
        extra = [n for n in graph.input_specs if n != graph.token_input]
        if extra:
            raise StreamError(f"graph {graph.role!r} needs inputs {extra} besides tokens; use the translator")
        self.graph, self.vocab, self.vocab_size, self.unk_id = graph, vocab, vocab_size, unk_id
        self.closed = False
        self.reset()

    def reset(self) -> None:
        """Back to the start of a sequence (zero states)."""
        self._check_open()
        self.states = self.graph.zero_states(1)
        self.steps = 0
        self.last_outputs: Optional[dict] = None

    def close(self) -> None:
        """Frees the states; any later use raises StreamError."""
        self.closed = True
        self.states = {}

    def _check_open(self) -> None:
        if self.closed:
            raise StreamError(f"this {self.graph.role} stream is closed; open a new one")

    def ids(self, chunk: Chunk) -> np.ndarray:
        return to_ids(chunk, self.vocab, self.vocab_size, self.unk_id, self.graph.token_dtype)

    def feed(self, chunk: Chunk) -> Optional[dict]:
        """Advances the stream by `chunk` (text or ids, any length) and returns its outputs."""
        self._check_open()
        ids = self.ids(chunk)
        if ids.size == 0:
            return None
        outputs, self.states = self.graph.run({self.graph.token_input: ids[None]}, self.states)
        self.steps += ids.size
        self.last_outputs = {n: v[0] for n, v in outputs.items()}
        return self.last_outputs


class StreamBatch:
    """Advances many streams of one graph together, as if each were fed alone.

    Streams of any start time and length can join: `feed([(stream, chunk), ...])` stacks the
    states of those whose chunks have the same length into one [N, ...] batch, runs the graph
    once per distinct chunk length (once when all are equal, e.g. token-by-token generation),
    and hands each stream its own rows back. Returns the outputs in the order given.
    """

    def __init__(self, graph: Graph):
        self.graph = graph

    def feed(self, items: Sequence[tuple]) -> list:
        """items: [(Stream, chunk)] -> [outputs dict or None (empty chunk)] in the same order."""
        items = _pairs(items, "StreamBatch.feed", "Stream")
        seen = set()
        groups: dict = {}
        results: list = [None] * len(items)
        for i, (stream, chunk) in enumerate(items):
            if not isinstance(stream, Stream) or stream.graph is not self.graph:
                raise StreamError("StreamBatch: every stream must be a Stream of this batch's graph")
            stream._check_open()
            if id(stream) in seen:
                raise StreamError("StreamBatch: a stream appears twice in one feed; concatenate its chunks")
            seen.add(id(stream))
            ids = stream.ids(chunk)
            if ids.size:
                groups.setdefault(ids.size, []).append((i, stream, ids))
        tok = self.graph.token_input
        # Every graph call first, then the streams advance: a call that fails leaves every stream
        # as it was (no stream of an earlier group advanced past outputs its caller never got).
        ran = []
        for members in groups.values():
            tokens = np.stack([ids for _, _, ids in members])
            states = stack_states([s.states for _, s, _ in members])
            ran.append((members, self.graph.run({tok: tokens}, states)))
        for members, (outputs, new_states) in ran:
            for row, ((i, stream, ids), st) in enumerate(zip(members, split_states(new_states, [1] * len(members)))):
                stream.states = st
                stream.steps += ids.size
                stream.last_outputs = {n: v[row] for n, v in outputs.items()}
                results[i] = stream.last_outputs
        return results
