"""Decode states for seq2seq bundles, and `DecodeBatch`, which steps many of them in one call.

A decoder (GreedyDecoder, BeamDecoder) owns one translation's decoding: the encoder memory
[S, H] and conditioning cond_{l} [P*H], its decoder-graph states ([K, ...], one row per live
hypothesis: K = 1 for greedy), and its hypotheses. It does no graph calls itself: each step it
offers `next_tokens()` ([K] ids) and its states, and `advance(logits [K, V], states [K, ...])`
applies the step and returns the tokens that became final. `DecodeBatch.step(decoders)` runs the
decoder graph once for all rows of all decoders (memories of different lengths padded, with
memory_mask 0 on the padding), so a single translation and a server batch share one code path.
The choice rules are exactly the reference decoders' (QRNNSeq2Seq.greedy_decode / beam_search):
argmax for greedy, `qrnn_deploy.decoding.beam_step` / `best_hypothesis` for beams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np

from qrnn_deploy.decoding import beam_step, best_hypothesis, check_decode_options
from qrnn_deploy.errors import ConfigError, StreamError
from qrnn_deploy.runtime.loader import Graph
from qrnn_deploy.runtime.stream import stack_states
from qrnn_deploy.vocab import BOS, EOS

MEMORY, MEMORY_MASK, LOGITS = "memory", "memory_mask", "logits"


def log_softmax64(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis in float64 (as the reference: logits.double().log_softmax)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ConfigError(f"log_softmax64: logits need a non-empty last axis, got shape {list(x.shape)}")
    y = x - x.max(-1, keepdims=True)
    return y - np.log(np.exp(y).sum(-1, keepdims=True))


def _common_prefix(seqs: Sequence[list]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


class _Decoder:
    """Shared parts: the context (memory, cond), states, max_len, and what was emitted.

    `graph`: the decoder Graph this context was encoded for (TranslationStream.decoder sets it);
    a DecodeBatch of another graph refuses the decoder instead of decoding with the wrong weights.
    """

    def __init__(self, memory: np.ndarray, cond: dict, states: dict, max_len: int, graph: Optional[Graph] = None):
        if not isinstance(memory, np.ndarray) or memory.ndim != 2 or memory.shape[0] < 1:
            shape = list(memory.shape) if isinstance(memory, np.ndarray) else type(memory).__name__
            raise StreamError(f"decoder memory must be a numpy array [S >= 1, H], got {shape}")
        if not isinstance(cond, Mapping) or not isinstance(states, Mapping):
            raise StreamError("decoder cond and states must be dicts of arrays (name -> array)")
        check_decode_options(1, max_len, 1.0)
        self.memory, self.cond, self.states, self.graph = memory, cond, states, graph
        self.max_len = int(max_len)
        self.steps = 0
        self.emitted: list[int] = []  # tokens handed out as final, in order
        self.done = self.max_len <= 0
        # For a lone decoder the graph inputs are views of these (no per-step copies).
        self.memory_mask = np.ones((1, memory.shape[0]), dtype=np.float32)

    @property
    def num_rows(self) -> int:
        raise NotImplementedError

    def next_tokens(self) -> np.ndarray:
        raise NotImplementedError

    def advance(self, logits: np.ndarray, states: dict) -> list:
        raise NotImplementedError


class GreedyDecoder(_Decoder):
    """The argmax symbol each step until </s> (not included) or max_len symbols."""

    def __init__(self, memory, cond, states, max_len: int = 200, graph: Optional[Graph] = None):
        super().__init__(memory, cond, states, max_len, graph)
        self._last = BOS

    @property
    def num_rows(self) -> int:
        return 1

    def next_tokens(self) -> np.ndarray:
        return np.array([self._last], dtype=np.int64)

    def advance(self, logits: np.ndarray, states: dict, best: Optional[int] = None) -> list:
        """logits [1, V] of this step -> [the new token] or [] at </s>. best: argmax(logits[0])
        when the caller has it already (DecodeBatch takes every row's in one call)."""
        self.steps += 1
        tok = int(np.argmax(logits[0])) if best is None else best
        if tok == EOS:
            self.done = True
            return []
        self.states, self._last = states, tok
        self.emitted.append(tok)
        self.done = self.steps >= self.max_len
        return [tok]

    @property
    def result(self) -> list:
        return list(self.emitted)


class BeamDecoder(_Decoder):
    """Beam search: K live hypotheses (K <= beam), the decoder states reordered by parent each step.

    Final tokens: the common prefix of every live and finished hypothesis can no longer change
    (the answer is a finished one, or a descendant of a live one), so it is emitted as it grows;
    the rest of the best hypothesis comes when the search ends.
    """

    def __init__(self, memory, cond, states, beam: int = 4, max_len: int = 200, length_penalty: float = 1.0,
                 graph: Optional[Graph] = None):
        check_decode_options(beam, max_len, length_penalty)
        super().__init__(memory, cond, states, max_len, graph)
        self.beam, self.length_penalty = int(beam), float(length_penalty)
        self.live: list = [(0.0, [])]  # (sum of log-probs, tokens)
        self.finished: list = []
        self._result: Optional[list] = [] if self.done else None

    @property
    def num_rows(self) -> int:
        return len(self.live)

    def next_tokens(self) -> np.ndarray:
        return np.array([seq[-1] if seq else BOS for _, seq in self.live], dtype=np.int64)

    def advance(self, logits: np.ndarray, states: dict) -> list:
        """logits [K, V] -> the tokens that became final this step."""
        logp = log_softmax64(logits)
        self.steps += 1
        live_next, fin = beam_step([s for s, _ in self.live], logp, self.beam, len(self.finished),
                                   self.steps == self.max_len)
        self.finished += [(s, self.live[p][1] + ([] if t == EOS else [t])) for s, p, t in fin]
        if not live_next:
            self.done = True
            self._result = best_hypothesis(self.finished, self.length_penalty)
            new = self._result[len(self.emitted):]
        else:
            self.live = [(s, self.live[p][1] + [t]) for s, p, t in live_next]
            idx = np.array([p for _, p, _ in live_next])
            if not np.array_equal(idx, np.arange(len(self.live))) or len(idx) != len(logits):
                states = {n: a[idx] for n, a in states.items()}
            self.states = states
            seqs = [seq for _, seq in self.live] + [seq for _, seq in self.finished]
            n = _common_prefix(seqs)
            new = seqs[0][len(self.emitted):n]
        self.emitted += new
        return new

    @property
    def result(self) -> Optional[list]:
        """The best hypothesis' tokens (no </s>) once `done`, else None."""
        return None if self._result is None else list(self._result)


class RowStates(Mapping):
    """Rows [a, b) of one step's batched states {name: [N, ...]}, sliced when read.

    `DecodeBatch.step` hands each decoder one of these instead of a dict of slices (a server
    step at 32 streams made 32 x 8 slices and then concatenated them all again at the next
    step). When the next step's rows all come from the same base, the base is fed as it is, or
    gathered with one index per state, and nothing is sliced."""

    __slots__ = ("base", "a", "b")

    def __init__(self, base: dict, a: int, b: int):
        self.base, self.a, self.b = base, a, b

    def __getitem__(self, name: str) -> np.ndarray:
        return self.base[name][self.a:self.b]

    def __iter__(self):
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def _batch_states(order: Sequence["_Decoder"]) -> dict:
    """The decoders' states stacked in row order. Runs of decoders whose states are RowStates of
    one base (the previous step's outputs) are taken with one index per state, or as the base
    itself when every row is unchanged; other decoders' states (new ones) are concatenated in."""
    pieces: list = []  # [base, [row indices]] runs and plain state mappings, in row order
    for d in order:
        st = d.states
        if type(st) is RowStates:
            if pieces and type(pieces[-1]) is list and pieces[-1][0] is st.base:
                pieces[-1][1].extend(range(st.a, st.b))
            else:
                pieces.append([st.base, list(range(st.a, st.b))])
        else:
            pieces.append(st)
    if len(pieces) == 1 and type(pieces[0]) is list:
        base, idx = pieces[0]
        first = next(iter(base.values()), None)
        if first is not None and len(first) == len(idx) and idx == list(range(len(idx))):
            return base
    parts = []
    for p in pieces:
        if type(p) is list:
            ix = np.array(p[1], dtype=np.intp)
            parts.append({n: v[ix] for n, v in p[0].items()})
        else:
            parts.append(p)
    return stack_states(parts)


class DecodeBatch:
    """Steps many decoders (of one decoder graph) with one graph call per step.

    Rows of all live decoders are stacked: tokens [N, 1], states [N, ...], memories padded to a
    common length S >= the longest [N, S, H] with memory_mask [N, S] (1 = source position,
    0 = padding) and cond_{l} [N, P*H]. The padded context lives in buffers kept between steps
    and is updated in place: the rows of a decoder that leaves are filled from the last rows
    (one-row decoders) or compacted, one that joins is written after the others, and the
    buffers are rebuilt only when a longer memory joins, when S exceeds the longest memory by
    more than `slack` positions, or when the rows outgrow them. (Rebuilding the padded context
    at every change of the set of decoders took a quarter of a server's decoding thread at 32
    streams.) Rows are in our own order, not the caller's: results come back in the caller's.
    """

    slack = 16  # most padding positions beyond the longest memory before the buffers shrink

    def __init__(self, graph: Graph, cond_names: Sequence[str]):
        self.graph = graph
        self.cond_names = list(cond_names)
        self.mask_dtype = np.float32
        spec = graph.input_specs.get(MEMORY_MASK)
        if spec is not None and spec.dtype != "float32":
            from qrnn_deploy.runtime.loader import np_dtype

            self.mask_dtype = np_dtype(spec.dtype, "decoder memory_mask")
        self._order: list = []  # decoders in row order
        self._krows: list = []  # their row counts when placed
        self._bufs: Optional[dict] = None  # name -> [capacity, ...] buffer (memory, mask, cond_l)
        self._S = 0  # padded memory length of the buffers
        self._ids: set = set()  # id() of the decoders in _order
        self._ctx: dict = {}  # the context of the last step (views of the buffers)

    def _lone(self, d: _Decoder) -> dict:
        self._order, self._krows, self._ids = [], [], set()
        ctx = {MEMORY: d.memory[None], MEMORY_MASK: d.memory_mask.astype(self.mask_dtype, copy=False)}
        ctx.update({n: d.cond[n][None] for n in self.cond_names})
        return ctx

    def _write(self, d: _Decoder, a: int, k: int) -> None:
        """Writes decoder d's context into rows [a, a + k) of the buffers."""
        bufs, s = self._bufs, d.memory.shape[0]
        bufs[MEMORY][a:a + k, :s] = d.memory
        bufs[MEMORY][a:a + k, s:] = 0
        bufs[MEMORY_MASK][a:a + k, :s] = 1
        bufs[MEMORY_MASK][a:a + k, s:] = 0
        for n in self.cond_names:
            bufs[n][a:a + k] = d.cond[n]

    def _rebuild(self, live: list, S: int, N: int) -> None:
        m0 = live[0].memory
        cap = N + max(8, N // 2)  # room for decoders that join
        self._bufs = {MEMORY: np.zeros((cap, S, m0.shape[1]), dtype=m0.dtype),
                      MEMORY_MASK: np.zeros((cap, S), dtype=self.mask_dtype)}
        for n in self.cond_names:
            c0 = live[0].cond[n]
            self._bufs[n] = np.empty((cap,) + c0.shape, dtype=c0.dtype)
        self._S = S
        a = 0
        for d in live:
            k = d.num_rows
            self._write(d, a, k)
            a += k
        self._order, self._krows = list(live), [d.num_rows for d in live]

    def _arrange(self, live: list) -> tuple:
        """Brings the buffers up to date for `live`; returns (decoders in row order, context).
        A failure part way leaves no half-moved buffers behind: the next step rebuilds them."""
        try:
            return self._arrange_buffers(live)
        except Exception as e:
            self._bufs, self._order, self._krows, self._ids, self._ctx = None, [], [], set(), {}
            if isinstance(e, StreamError):
                raise
            raise StreamError(f"DecodeBatch.step: a decoder's context does not fit the batch ({e})") from None

    def _arrange_buffers(self, live: list) -> tuple:
        if len(live) == 1 and live[0].num_rows == 1:
            return live, self._lone(live[0])
        ids = {id(d) for d in live}
        if ids == self._ids and all(d.num_rows == k for d, k in zip(self._order, self._krows)):
            return self._order, self._ctx  # the same decoders as the last step: nothing moves
        kept, kept_rows, starts, a = [], [], [], 0
        for d, k in zip(self._order, self._krows):
            if id(d) in ids and d.num_rows == k:
                kept.append(d)
                kept_rows.append(k)
                starts.append(a)
            a += k
        kept_ids = {id(d) for d in kept}
        new = [d for d in live if id(d) not in kept_ids]
        N = sum(d.num_rows for d in live)
        S = max(d.memory.shape[0] for d in live)
        bufs = self._bufs
        m0 = live[0].memory
        if (bufs is None or S > self._S or self._S - S > self.slack or N > len(bufs[MEMORY])
                or bufs[MEMORY].shape[2] != m0.shape[1] or any(d.memory.dtype != bufs[MEMORY].dtype for d in new)):
            self._rebuild(live, S, N)
        else:
            n_kept = sum(kept_rows)
            if len(kept) != len(self._order) and n_kept:  # some left (or changed rows): compact
                if all(k == 1 for k in kept_rows):
                    # One row each (greedy): the kept rows beyond n_kept move into the holes.
                    at = dict(zip(starts, kept))
                    holes = [p for p in range(n_kept) if p not in at]
                    tail = [p for p in starts if p >= n_kept]
                    if holes:
                        dst, src = np.array(holes), np.array(tail)
                        for buf in bufs.values():
                            buf[dst] = buf[src]
                        for h, t in zip(holes, tail):
                            at[h] = at.pop(t)
                    kept = [at[p] for p in range(n_kept)]
                else:  # rows move down from the first hole on
                    idx = np.concatenate([np.arange(st, st + k) for st, k in zip(starts, kept_rows)])
                    moved = np.nonzero(idx != np.arange(n_kept))[0]
                    if len(moved):
                        j = int(moved[0])
                        for buf in bufs.values():
                            buf[j:n_kept] = buf[idx[j:]]
            a = n_kept
            for d in new:
                k = d.num_rows
                self._write(d, a, k)
                a += k
            self._order, self._krows = kept + new, kept_rows + [d.num_rows for d in new]
        self._ids = {id(d) for d in self._order}
        self._ctx = {name: buf[:N] for name, buf in self._bufs.items()}
        return self._order, self._ctx

    def step(self, decoders: Sequence[_Decoder]) -> list:
        """One decoding step for every decoder not yet done -> per decoder, its new final tokens."""
        if not isinstance(decoders, (list, tuple)):
            try:
                decoders = list(decoders)
            except TypeError:
                raise StreamError(f"DecodeBatch.step takes a list of decoders, got {type(decoders).__name__}") from None
        known = self._ids  # decoders of the last step were checked when they joined
        for d in decoders:
            if id(d) not in known:
                self._check_decoder(d)
        live = [d for d in decoders if not d.done]
        out = {id(d): [] for d in decoders}
        if len(out) != len(decoders):
            raise StreamError("DecodeBatch.step: a decoder appears twice; each steps once per call")
        if live:
            order, ctx = self._arrange(live)
            rows = [d.num_rows for d in order]
            toks: list = []
            for d in order:
                if type(d) is GreedyDecoder:
                    toks.append(d._last)
                else:
                    toks.extend(d.next_tokens().tolist())
            inputs = {self.graph.token_input: np.array(toks, dtype=self.graph.token_dtype)[:, None]}
            inputs.update(ctx)
            outputs, states = self.graph.run(inputs, _batch_states(order))
            logits = outputs[LOGITS][:, -1]
            best = logits.argmax(-1).tolist()  # one call for every greedy row (~2 us each alone)
            a = 0
            for d, k in zip(order, rows):
                b = a + k
                st = RowStates(states, a, b) if len(order) > 1 else states
                if isinstance(d, GreedyDecoder):
                    out[id(d)] = d.advance(logits[a:b], st, best=best[a])
                else:
                    out[id(d)] = d.advance(logits[a:b], st)
                a = b
        return [out[id(d)] for d in decoders]

    def _check_decoder(self, d) -> None:
        if not isinstance(d, _Decoder):
            raise StreamError(f"DecodeBatch.step: {type(d).__name__} is not a decoder (GreedyDecoder / BeamDecoder "
                              "from TranslationStream.decoder)")
        if d.graph is not None and d.graph is not self.graph:
            raise StreamError("DecodeBatch.step: a decoder was made by another translator (another bundle's "
                              "decoder graph); step it in that translator's decode_batch()")
        if d.graph is not None:
            return  # made by this translator's own TranslationStream.decoder: it fits
        missing = [n for n in self.cond_names if n not in d.cond]
        if missing:
            raise StreamError(f"DecodeBatch.step: a decoder's cond lacks {missing}")
        missing = [n for n in self.graph.state_names if n not in d.states]
        if missing:
            raise StreamError(f"DecodeBatch.step: a decoder's states lack {missing} (zero_states() of the "
                              "decoder graph has them all)")
        # A hand-built decoder: its context must have the graph's fixed sizes (a mismatch would
        # otherwise surface as a numpy error half way through re-arranging the batch).
        for name, arr, lead in [(MEMORY, d.memory, 2)] + [(n, d.cond[n], 1) for n in self.cond_names]:
            spec = self.graph.input_specs.get(name)
            if spec is None:
                continue
            want = list(spec.shape[lead:])
            got = list(np.shape(arr)[1:] if name == MEMORY else np.shape(arr))
            if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
                raise StreamError(f"DecodeBatch.step: a decoder's {name} has shape {list(np.shape(arr))}; the "
                                  f"decoder graph takes {spec.shape}")

    def run(self, decoder: _Decoder):
        """Steps one decoder to the end, yielding each token as it becomes final."""
        while not decoder.done:
            yield from self.step([decoder])[0]
