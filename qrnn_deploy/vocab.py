"""Character vocabulary shared by training, the bundle and the runtime (pure Python, no torch).

Ids 0..3 are the special symbols <pad>, <unk>, <s> (begin), </s> (end); every other id is one
character. Unknown characters map to <unk>, never to an error.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Iterable, Sequence

from qrnn_deploy.errors import ConfigError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


class CharVocab:
    """Maps characters to ids and back. `symbols[i]` is the symbol of id i."""

    def __init__(self, symbols: Sequence[str]):
        if isinstance(symbols, str) or not isinstance(symbols, (list, tuple)):
            raise ConfigError(f"CharVocab: symbols must be a list of strings, got {type(symbols).__name__}")
        symbols = list(symbols)
        if symbols[:4] != SPECIALS:
            raise ConfigError(f"CharVocab: the first four symbols must be {SPECIALS}, got {symbols[:4]}")
        # encode() maps one character at a time: any other symbol could never be produced.
        bad = [x for x in symbols[4:] if not isinstance(x, str) or len(x) != 1]
        if bad:
            raise ConfigError(f"CharVocab: every symbol after the specials must be one character, got {bad[:3]!r}")
        if len(set(symbols)) != len(symbols):
            raise ConfigError("CharVocab: symbols are not unique")
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "CharVocab":
        """Characters of `texts` seen at least `min_count` times, most frequent first (ties by char).
        max_size counts the four special symbols too (so it is at least 4)."""
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)
                                     or max_size < len(SPECIALS)):
            raise ConfigError(f"CharVocab.build: max_size must be None or an integer >= {len(SPECIALS)} "
                              f"(the special symbols included), got {max_size!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int):
            raise ConfigError(f"CharVocab.build: min_count must be an integer, got {min_count!r}")
        counts = Counter()
        try:
            texts = iter(texts)
        except TypeError:
            raise ConfigError(f"CharVocab.build: texts must be a list of strings, got {type(texts).__name__}") from None
        for t in texts:
            if not isinstance(t, str):
                raise ConfigError(f"CharVocab.build: texts must be strings, got a {type(t).__name__}")
            counts.update(t)
        chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[:max_size - len(SPECIALS)]
        return cls(SPECIALS + chars)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and other.symbols == self.symbols

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of the characters of `text` (unknown ones -> <unk>), optionally framed by <s> / </s>."""
        if not isinstance(text, str):
            hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
            raise ConfigError(f"CharVocab.encode: text must be a str, got {type(text).__name__}{hint}")
        ids = [self.index.get(ch, UNK) for ch in text]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping special symbols and ids outside the vocabulary."""
        if isinstance(ids, (str, bytes)):
            raise ConfigError(f"CharVocab.decode: ids must be integers, got a {type(ids).__name__}")
        return "".join(self.token_text(i) for i in ids)

    def token_text(self, i: int) -> str:
        """The character of id `i`; "" for a special symbol or an id outside the vocabulary."""
        try:
            i = operator.index(i)  # ints and numpy integers; not floats, None, strings
        except TypeError:
            raise ConfigError(f"CharVocab: a token id must be an integer, got {i!r}") from None
        return self.symbols[i] if len(SPECIALS) <= i < len(self.symbols) else ""

    def to_json(self) -> dict:
        return {"type": "char", "symbols": self.symbols, "pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}

    @classmethod
    def from_json(cls, d: dict) -> "CharVocab":
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("symbols"), list):
            raise ConfigError("CharVocab: expected {'type': 'char', 'symbols': [...]}")
        return cls(d["symbols"])
