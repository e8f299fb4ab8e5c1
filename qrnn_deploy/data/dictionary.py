"""German-English pairs from the TU Chemnitz dictionary (Debian package `trans-de-en`), pure Python.

The dictionary is read from the installed package (`/usr/share/trans/de-en`); nothing of it is
copied into this repository. A line of the file looks like

    Aal {m} [cook.] | Aale {pl} | Aal grün; grüner Aal :: eel | eels | Eel steamed ...

Parsing rules, applied in this order (docs/data.md lists them with counts):

1. Lines that are empty or start with `#` (header, comments) are skipped.
2. A line must hold exactly one ` :: ` separator (German on the left, English on the right);
   other lines are dropped ("malformed").
3. Both sides are split into sub-entries at ` | `. Sub-entry i of the German side translates
   sub-entry i of the English side. When the two sides have different numbers of sub-entries the
   alignment is unknown and the whole line is dropped ("misaligned").
4. Annotations are removed from each sub-entry: `{...}` (grammar: {m}, {pl}, {vt}), `[...]`
   (domain / register: [cook.], [Br.]), `(...)` (optional words and explanations) and `<...>`
   (alternative spellings kept only as search keys). Nested brackets are removed from the inside
   out. A sub-entry with an unbalanced bracket is dropped ("unbalanced").
5. What is left is split into synonyms at `;`. Synonyms are paired by position when both sides
   have the same number of them (the dictionary lists parallel forms in parallel, e.g.
   `A; Ais; As :: A; A sharp; A flat`); otherwise every German synonym is paired with the
   first English synonym, the dictionary's primary translation (pairing every German synonym with
   every English one would give each source several conflicting targets).
6. Whitespace is collapsed; the typographic apostrophe ’ becomes ' (one symbol for one thing).
   A synonym that is empty, holds an unmatched bracket character, holds the placeholder `...` /
   `…` or the ` / ` alternation shorthand (`It's not / It isn't over`) or `~` is dropped.
7. Pairs longer than `MAX_CHARS` characters on either side are dropped (a few very long
   definitions); exact duplicate pairs are kept once, in file order.

A pair is a *sentence* when its German side starts with an upper-case letter, ends with `.`, `!`
or `?` and has at least three words.

The split (train / valid / test) is made by German text: a stable hash (SHA-1, not Python's
salted `hash`) of the German string and a fixed seed string decide the split, so every pair with
the same German source lands in the same split, on every machine and every run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from qrnn_deploy.errors import DataError

DEFAULT_PATH = Path("/usr/share/trans/de-en")
INSTALL_HINT = "install it with: sudo apt-get install trans-de-en"
MAX_CHARS = 200
SPLIT_SEED = "qrnn-deploy-de-en-v1"
VALID_FRACTION = 0.02
TEST_FRACTION = 0.02
SPLITS = ("train", "valid", "test")

_BRACKETS = {"{": "}", "[": "]", "(": ")", "<": ">"}
# Innermost bracketed group of any kind (no bracket characters inside), removed repeatedly.
_INNER = re.compile(r"\{[^{}\[\]()<>]*\}|\[[^{}\[\]()<>]*\]|\([^{}\[\]()<>]*\)|<[^{}\[\]()<>]*>")
_BRACKET_CHARS = set("{}[]()<>")
_SPACES = re.compile(r"\s+")


@dataclass
class ParseStats:
    """How many lines / sub-entries / synonyms each rule removed (see the module docstring)."""
    lines: int = 0
    comments: int = 0
    malformed: int = 0
    misaligned: int = 0
    sub_entries: int = 0
    unbalanced: int = 0
    bad_synonyms: int = 0
    too_long: int = 0
    duplicates: int = 0
    pairs: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def strip_annotations(text: str) -> Optional[str]:
    """`text` without `{}` `[]` `()` `<>` groups (nested ones too); None if brackets don't balance."""
    prev = None
    while prev != text:
        prev, text = text, _INNER.sub(" ", text)
    if any(ch in _BRACKET_CHARS for ch in text):
        return None
    return text


def _clean(s: str) -> str:
    return _SPACES.sub(" ", s.replace("’", "'")).strip()


def _good(s: str) -> bool:
    return bool(s) and "..." not in s and "…" not in s and " / " not in s and "~" not in s


def _synonyms(side: str) -> Optional[list[str]]:
    stripped = strip_annotations(side)
    if stripped is None:
        return None
    return [_clean(s) for s in stripped.split(";")]


def parse_line(line: str, stats: Optional[ParseStats] = None) -> list[tuple[str, str]]:
    """(German, English) pairs of one dictionary line, by the rules of the module docstring."""
    st = stats if stats is not None else ParseStats()
    st.lines += 1
    # Only the line end goes: a line may begin with the space of its first " | " (an empty first
    # sub-entry), and stripping it would misalign the German and English sub-entries.
    line = line.rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith("#"):
        st.comments += 1
        return []
    parts = line.split(" :: ")
    if len(parts) != 2:
        st.malformed += 1
        return []
    de_subs, en_subs = parts[0].split(" | "), parts[1].split(" | ")
    if len(de_subs) != len(en_subs):
        st.misaligned += 1
        return []
    out = []
    for de_sub, en_sub in zip(de_subs, en_subs):
        st.sub_entries += 1
        de_syn, en_syn = _synonyms(de_sub), _synonyms(en_sub)
        if de_syn is None or en_syn is None:
            st.unbalanced += 1
            continue
        if len(de_syn) == len(en_syn):
            cand = list(zip(de_syn, en_syn))
        else:
            first_en = next((e for e in en_syn if _good(e)), "")
            cand = [(d, first_en) for d in de_syn]
        for d, e in cand:
            if not (_good(d) and _good(e)):
                st.bad_synonyms += 1
            elif len(d) > MAX_CHARS or len(e) > MAX_CHARS:
                st.too_long += 1
            else:
                out.append((d, e))
    return out


def parse_lines(lines: Iterable[str], stats: Optional[ParseStats] = None,
                line_sources: Optional[list] = None) -> list[tuple[str, str]]:
    """All pairs of `lines`, duplicates removed (first occurrence kept, file order). With
    `line_sources` (a list), also appends the sorted German strings of each line that gave pairs."""
    st = stats if stats is not None else ParseStats()
    seen: set[tuple[str, str]] = set()
    out = []
    for line in lines:
        pairs = parse_line(line, st)
        if line_sources is not None and pairs:
            line_sources.append(tuple(sorted({d for d, _ in pairs})))
        for p in pairs:
            if p in seen:
                st.duplicates += 1
                continue
            seen.add(p)
            out.append(p)
    st.pairs = len(out)
    return out


def dictionary_path(path=None) -> Path:
    """The dictionary file: `path` if given, else the installed package's. DataError if missing."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        if path is None:
            raise DataError(f"the German-English dictionary {p} is missing: {INSTALL_HINT}")
        if p.is_dir():
            raise DataError(f"data file {p} is a directory, not a dictionary file")
        if p.exists():
            raise DataError(f"data file {p} is not a regular file")
        raise DataError(f"data file not found: {p}")
    return p


_CACHE: dict = {}  # file key -> (pairs, line sources): one parse serves both


def _load(path, stats: Optional[ParseStats] = None) -> tuple:
    p = dictionary_path(path)
    key = (str(p), p.stat().st_mtime_ns, p.stat().st_size)
    if key in _CACHE and stats is None:
        return _CACHE[key]
    lines: list = []
    with open(p, encoding="utf-8", errors="replace") as f:
        pairs = parse_lines(f, stats, lines)
    if not pairs:
        if p.stat().st_size == 0:
            raise DataError(f"data file {p} is empty")
        raise DataError(f"{p} holds no German :: English pairs (is it the trans-de-en dictionary?)")
    if len(_CACHE) >= 4:  # a few files at most (the installed one is ~100 MB parsed)
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (pairs, lines)
    return pairs, lines


def load_pairs(path=None, stats: Optional[ParseStats] = None) -> list[tuple[str, str]]:
    """Every clean (German, English) pair of the dictionary at `path` (default: the installed one)."""
    return _load(path, stats)[0]


def load_line_sources(path=None) -> list[tuple[str, ...]]:
    """The German strings of each dictionary line that gave pairs (sorted), in file order.

    The sub-entries of one line are forms of one headword (singular | plural, `;` synonyms,
    spelling variants); `unseen_sources` uses them to find test sources none of whose line
    siblings were trained on. Read in the same pass as `load_pairs` (and cached with it).
    """
    return _load(path)[1]


_NON_WORD = re.compile(r"[\W_]+")


def normalize_source(german: str) -> str:
    """`german` folded for near-duplicate matching: case, ß -> ss, no punctuation, hyphens, spaces."""
    return _NON_WORD.sub("", german.casefold().replace("ß", "ss"))


def unseen_sources(splits: dict[str, list[tuple[str, str]]], line_sources: Iterable[tuple[str, ...]],
                   split: str = "test") -> set[str]:
    """German sources of `split` whose dictionary lines gave nothing to the training split.

    The split is by German string, so the other sub-entries of a test source's line (its plural,
    a synonym, another spelling) usually land in training (docs/data.md). A source is *unseen*
    when no line it appears on has a German string in training, and no training string equals it
    up to `normalize_source`. Scores on these sources measure translation of headwords the model
    has met in no form.
    """
    train = {d for d, _ in splits.get("train", ())}
    train_norm = {normalize_source(d) for d in train}
    wanted = {d for d, _ in splits.get(split, ())}
    seen_lines: set[str] = set()
    for germans in line_sources:
        hit = [d for d in germans if d in wanted]
        if hit and any(d in train for d in germans):
            seen_lines.update(hit)
    return {d for d in wanted if d not in seen_lines and normalize_source(d) not in train_norm}


def split_of(german: str, seed: str = SPLIT_SEED) -> str:
    """'train', 'valid' or 'test' for a German source string: a stable hash, same on every run."""
    h = int.from_bytes(hashlib.sha1((seed + "\0" + german).encode("utf-8")).digest()[:8], "big")
    u = h / 2.0 ** 64
    if u < TEST_FRACTION:
        return "test"
    if u < TEST_FRACTION + VALID_FRACTION:
        return "valid"
    return "train"


def split_pairs(pairs: Iterable[tuple[str, str]], seed: str = SPLIT_SEED) -> dict[str, list[tuple[str, str]]]:
    """{'train': [...], 'valid': [...], 'test': [...]}, grouped by German text (see `split_of`)."""
    out: dict[str, list] = {s: [] for s in SPLITS}
    cache: dict[str, str] = {}
    for de, en in pairs:
        s = cache.get(de)
        if s is None:
            s = cache[de] = split_of(de, seed)
        out[s].append((de, en))
    return out


def is_sentence(german: str) -> bool:
    """A full sentence: capitalised, ends with . ! or ?, at least three words."""
    return bool(german) and german[0].isupper() and german[-1] in ".!?" and len(german.split()) >= 3


def load_splits(path=None) -> dict[str, list[tuple[str, str]]]:
    """The train / valid / test pairs of the dictionary at `path` (default: the installed one)."""
    return split_pairs(load_pairs(path))
