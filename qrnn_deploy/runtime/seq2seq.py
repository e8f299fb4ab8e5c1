"""Streaming translation with a seq2seq bundle (encoder + decoder graphs).

The source arrives in chunks; each chunk advances the encoder at once (its states carry over, the
memory chunks are kept, cond_{l} is replaced by the latest), so nothing seen is encoded twice and
when the source ends only decoding is left:

    tr = load_bundle("bundle/").translator()
    ts = tr.stream()
    ts.feed("Guten ")              # encoded now
    ts.feed("Morgen")
    for tok in ts.tokens(beam=4):  # source ends; tokens come as soon as they are final
        print(tr.token_text(tok), end="", flush=True)
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from qrnn_deploy.decoding import check_decode_options
from qrnn_deploy.errors import BundleError, StreamError
from qrnn_deploy.runtime.decoders import MEMORY, MEMORY_MASK, BeamDecoder, DecodeBatch, GreedyDecoder
from qrnn_deploy.runtime.stream import Chunk, Stream, StreamBatch, _pairs


class Translator:
    """Translation with a loaded seq2seq Bundle: streams, decoders, and one-call conveniences."""

    def __init__(self, bundle):
        if bundle.model_type != "seq2seq":
            raise BundleError(f"{bundle.path}: a translator needs a seq2seq bundle, this one is {bundle.model_type}")
        self.bundle = bundle
        self.encoder, self.decoder = bundle.graph("encoder"), bundle.graph("decoder")
        self.cond_names = [n for n in self.encoder.output_names if n.startswith("cond_")]
        if MEMORY not in self.encoder.output_names:
            raise BundleError(f"{bundle.path}: the encoder graph has no {MEMORY!r} output")
        need = set(self.decoder.input_specs) - {self.decoder.token_input, MEMORY, MEMORY_MASK}
        if not {MEMORY, MEMORY_MASK} <= set(self.decoder.input_specs) or need != set(self.cond_names):
            raise BundleError(f"{bundle.path}: the decoder inputs {sorted(self.decoder.input_specs)} do not match "
                              f"the encoder outputs {self.encoder.output_names}; re-export the bundle")
        self.src_vocab, self.tgt_vocab = bundle.src_vocab, bundle.tgt_vocab

    def stream(self) -> "TranslationStream":
        return TranslationStream(self)

    def decode_batch(self) -> DecodeBatch:
        """A DecodeBatch on this bundle's decoder graph (steps many translations per call)."""
        return DecodeBatch(self.decoder, self.cond_names)

    def feed_batch(self, items) -> list:
        """Encodes source chunks of many translations at once: items [(TranslationStream, chunk)];
        streams whose chunks have the same length share one encoder call (StreamBatch). Same
        result as feeding each alone. Returns each stream's source length so far."""
        items = _pairs(items, "Translator.feed_batch", "TranslationStream")
        for ts, _ in items:
            if not isinstance(ts, TranslationStream) or ts.translator is not self:
                raise StreamError("Translator.feed_batch: every stream must be a TranslationStream of this translator "
                                  "(translator.stream())")
            ts._check_feedable()
        outs = StreamBatch(self.encoder).feed([(ts._enc, chunk) for ts, chunk in items])
        for (ts, _), out in zip(items, outs):
            ts._absorb(out)
        return [ts.source_length for ts, _ in items]

    def token_text(self, tok: int) -> str:
        return self.tgt_vocab.token_text(tok) if self.tgt_vocab is not None else f" {tok}"

    def detokenize(self, ids) -> str:
        """Target ids -> text. Raises StreamError for anything but a sequence of integer ids."""
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise StreamError(f"detokenize takes a sequence of integer ids, got {type(ids).__name__}")
        out = []
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise StreamError(f"detokenize takes integer ids, got {t!r}")
            out.append(self.token_text(int(t)))
        return "".join(out)

    def iter_tokens(self, source: Chunk, beam: int = 1, max_len: int = 200,
                    length_penalty: float = 1.0) -> Iterator[int]:
        """Translates a whole source, yielding target ids as they become final."""
        ts = self.stream()
        ts.feed(source)
        yield from ts.tokens(beam, max_len, length_penalty)

    def translate_ids(self, source: Chunk, beam: int = 1, max_len: int = 200,
                      length_penalty: float = 1.0) -> list:
        return list(self.iter_tokens(source, beam, max_len, length_penalty))

    def translate(self, text: str, beam: int = 1, max_len: int = 200, length_penalty: float = 1.0) -> str:
        return self.detokenize(self.iter_tokens(text, beam, max_len, length_penalty))


class TranslationStream:
    """One translation: feed source chunks (text or ids), then decode.

    feed(chunk) encodes the chunk now. `memory` [S, H] and `cond` (cond_{l} [P*H]) are what the
    decoder will use; `encoder_states` are the carried encoder states. `decoder(...)` ends the
    source and returns a GreedyDecoder / BeamDecoder (to step alone or in a DecodeBatch);
    `tokens(...)` ends the source and yields final target ids. reset() starts a new source.
    """

    def __init__(self, translator: Translator):
        self.translator = translator
        b = translator.bundle
        self._enc = Stream(translator.encoder, vocab=b.src_vocab, vocab_size=b.src_vocab_size, unk_id=b.unk_id)
        self.closed = False
        self.reset()

    def reset(self) -> None:
        self._check_open()
        self._enc.reset()
        self._chunks: list = []
        self._memory: Optional[np.ndarray] = None
        self.cond: Optional[dict] = None
        self.ended = False

    def close(self) -> None:
        self._enc.close()
        self.closed = True
        self._chunks, self._memory, self.cond = [], None, None

    def _check_open(self) -> None:
        if self.closed:
            raise StreamError("this translation stream is closed; open a new one with translator.stream()")

    @property
    def source_length(self) -> int:
        return self._enc.steps

    @property
    def encoder_states(self) -> dict:
        return self._enc.states

    @property
    def memory(self) -> np.ndarray:
        """The encoder's top-layer states of the source so far, [S, H]."""
        self._check_open()
        if self._memory is None:
            if not self._chunks:
                raise StreamError("the source is empty: feed some text before decoding")
            self._memory = self._chunks[0] if len(self._chunks) == 1 else np.concatenate(self._chunks, 0)
            self._chunks = [self._memory]
        return self._memory

    def feed(self, chunk: Chunk) -> int:
        """Encodes `chunk` (text or ids, any length; unknown symbols -> <unk>). Returns the source
        length so far."""
        self._check_feedable()
        self._absorb(self._enc.feed(chunk))
        return self._enc.steps

    def _check_feedable(self) -> None:
        self._check_open()
        if self.ended:
            raise StreamError("this translation's source has ended (decoding started); reset() for a new one")

    def _absorb(self, out: Optional[dict]) -> None:
        # Keep the chunk's memory; cond_{l} of the latest chunk is that of the whole source so far.
        if out is not None:
            self._chunks.append(out[MEMORY])
            self._memory = None
            self.cond = {n: out[n] for n in self.translator.cond_names}

    def decoder(self, beam: int = 1, max_len: int = 200, length_penalty: float = 1.0):
        """Ends the source; a decoder for it (greedy when beam == 1) with zero decoder states.
        Bad options raise ConfigError and leave the source open."""
        self._check_open()
        check_decode_options(beam, max_len, length_penalty)
        memory = self.memory
        self.ended = True
        graph = self.translator.decoder
        states = graph.zero_states(1)
        if beam == 1:
            return GreedyDecoder(memory, self.cond, states, max_len, graph=graph)
        return BeamDecoder(memory, self.cond, states, beam, max_len, length_penalty, graph=graph)

    def tokens(self, beam: int = 1, max_len: int = 200, length_penalty: float = 1.0) -> Iterator[int]:
        """Ends the source now (bad options raise ConfigError here, at the call) and returns an
        iterator of target ids, each as soon as it is final (no </s>)."""
        d = self.decoder(beam, max_len, length_penalty)
        return self._tokens(d, self.translator.decode_batch())  # its own batch: it caches per set of decoders

    def _tokens(self, d, batch) -> Iterator[int]:
        while not d.done:
            self._check_open()
            yield from batch.step([d])[0]
