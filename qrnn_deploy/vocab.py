"""Character vocabulary shared by training, the bundle and the runtime (pure Python, no torch).

Ids 0..3 are the special symbols <pad>, <unk>, <s> (begin), </s> (end); every other id is one
character. Unknown characters map to <unk>, never to an error.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from qrnn_deploy.errors import ConfigError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


class CharVocab:
    """Maps characters to ids and back. `symbols[i]` is the symbol of id i."""

    def __init__(self, symbols: Sequence[str]):
        symbols = list(symbols)
        if symbols[:4] != SPECIALS:
            raise ConfigError(f"CharVocab: the first four symbols must be {SPECIALS}, got {symbols[:4]}")
        if len(set(symbols)) != len(symbols):
            raise ConfigError("CharVocab: symbols are not unique")
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "CharVocab":
        """Characters of `texts` seen at least `min_count` times, most frequent first (ties by char)."""
        counts = Counter()
        for t in texts:
            counts.update(t)
        chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[:max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + chars)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and other.symbols == self.symbols

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.index.get(ch, UNK) for ch in text]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping special symbols (unknown shows as nothing)."""
        return "".join(self.symbols[i] for i in ids if i >= len(SPECIALS) and i < len(self.symbols))

    def token_text(self, i: int) -> str:
        return self.symbols[i] if len(SPECIALS) <= i < len(self.symbols) else ""

    def to_json(self) -> dict:
        return {"type": "char", "symbols": self.symbols, "pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}

    @classmethod
    def from_json(cls, d: dict) -> "CharVocab":
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("symbols"), list):
            raise ConfigError("CharVocab: expected {'type': 'char', 'symbols': [...]}")
        return cls(d["symbols"])
