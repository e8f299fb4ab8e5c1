"""Scoring translations of the de-en test split: sacrebleu BLEU and chrF beside copying the source.

The copy-the-source baseline outputs the German text unchanged; German and English share many
letters and words (names, cognates, loan words), so it scores far above zero and is the floor a
translator must clear.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Optional, Sequence

from qrnn_deploy.data.dictionary import is_sentence
from qrnn_deploy.errors import DataError


def sample_pairs(pairs: Sequence[tuple[str, str]], limit: Optional[int]) -> list[tuple[str, str]]:
    """`limit` pairs of `pairs` chosen by a stable hash (the same ones on every run), or all of them.

    The sample is in the original order so that reading it follows the dictionary.
    """
    pairs = list(pairs)
    if limit is None or limit >= len(pairs):
        return pairs
    key = lambda i: hashlib.sha1(f"{pairs[i][0]}\0{pairs[i][1]}".encode("utf-8")).digest()
    keep = sorted(sorted(range(len(pairs)), key=key)[:max(0, limit)])
    return [pairs[i] for i in keep]


def score(hyps: Sequence[str], pairs: Sequence[tuple[str, str]], unseen: Optional[Collection[str]] = None) -> dict:
    """BLEU and chrF of `hyps` against the English side of `pairs`, and of the copy baseline.

    One segment per pair (a German source with several English translations appears once per
    pair, with the same hypothesis each time): the figures every earlier result was recorded
    with. Such a hypothesis can match only one of its references, so even a perfect system
    scores below 100; "multi_ref" scores one segment per distinct source against all of its
    references (sacrebleu's multi-reference mode), where a perfect system scores 100.
    Returns {"pairs", "bleu", "chrf", "copy_bleu", "copy_chrf", "sentences": {same keys on the
    full-sentence subset, or None}, "multi_ref": {"sources", "bleu", "chrf", "copy_bleu",
    "copy_chrf"}}; with `unseen` (German sources, see `dictionary.unseen_sources`) also "unseen":
    the per-pair block and its "multi_ref" on the pairs whose source is in `unseen` (None when
    none is).
    """
    import sacrebleu

    if len(hyps) != len(pairs):
        raise DataError(f"score: {len(hyps)} hypotheses for {len(pairs)} pairs; give one hypothesis per pair")
    if not pairs:
        raise DataError("score: no pairs to score (the split, or its sample, is empty)")

    def block(h, p):
        if not p:
            return None
        refs = [[e for _, e in p]]
        src = [d for d, _ in p]
        return {"pairs": len(p),
                "bleu": round(sacrebleu.corpus_bleu(list(h), refs).score, 2),
                "chrf": round(sacrebleu.corpus_chrf(list(h), refs).score, 2),
                "copy_bleu": round(sacrebleu.corpus_bleu(src, refs).score, 2),
                "copy_chrf": round(sacrebleu.corpus_chrf(src, refs).score, 2)}

    out = block(hyps, pairs)
    sent = [i for i, (d, _) in enumerate(pairs) if is_sentence(d)]
    out["sentences"] = block([hyps[i] for i in sent], [pairs[i] for i in sent])
    out["multi_ref"] = _multi_ref(hyps, pairs)
    if unseen is not None:
        keep = [i for i, (d, _) in enumerate(pairs) if d in unseen]
        h, p = [hyps[i] for i in keep], [pairs[i] for i in keep]
        out["unseen"] = block(h, p)
        if out["unseen"] is not None:
            out["unseen"]["multi_ref"] = _multi_ref(h, p)
    return out


def _multi_ref(hyps: Sequence[str], pairs: Sequence[tuple[str, str]]) -> dict:
    """One segment per distinct German source (its first hypothesis), against all its references."""
    import sacrebleu

    by_src: dict = {}
    for h, (d, e) in zip(hyps, pairs):
        entry = by_src.setdefault(d, [h, []])
        entry[1].append(e)
    srcs = list(by_src)
    k = max(len(refs) for _, refs in by_src.values())
    streams = [[by_src[d][1][j] if j < len(by_src[d][1]) else None for d in srcs] for j in range(k)]
    hs = [by_src[d][0] for d in srcs]
    return {"sources": len(srcs),
            "bleu": round(sacrebleu.corpus_bleu(hs, streams).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hs, streams).score, 2),
            "copy_bleu": round(sacrebleu.corpus_bleu(srcs, streams).score, 2),
            "copy_chrf": round(sacrebleu.corpus_chrf(srcs, streams).score, 2)}


def format_scores(s: dict, split: str = "test") -> str:
    """A few lines: model vs copy baseline, on all pairs and on the sentence subset."""
    lines = [f"{split} pairs: {s['pairs']:,}",
             f"  {'':12s} {'BLEU':>7s} {'chrF':>7s}",
             f"  {'model':12s} {s['bleu']:7.2f} {s['chrf']:7.2f}",
             f"  {'copy source':12s} {s['copy_bleu']:7.2f} {s['copy_chrf']:7.2f}"]
    t = s.get("sentences")
    if t:
        lines += [f"full sentences among them: {t['pairs']:,}",
                  f"  {'model':12s} {t['bleu']:7.2f} {t['chrf']:7.2f}",
                  f"  {'copy source':12s} {t['copy_bleu']:7.2f} {t['copy_chrf']:7.2f}"]
    m = s.get("multi_ref")
    if m:
        lines += [f"per distinct source, against all its references: {m['sources']:,} sources",
                  f"  {'model':12s} {m['bleu']:7.2f} {m['chrf']:7.2f}",
                  f"  {'copy source':12s} {m['copy_bleu']:7.2f} {m['copy_chrf']:7.2f}"]
    u = s.get("unseen")
    if u:
        um = u["multi_ref"]
        lines += [f"unseen lines (no form of the headword in training): {u['pairs']:,} pairs, "
                  f"{um['sources']:,} sources",
                  f"  {'':12s} {'BLEU':>7s} {'chrF':>7s} {'multi-ref BLEU':>15s} {'chrF':>7s}",
                  f"  {'model':12s} {u['bleu']:7.2f} {u['chrf']:7.2f} {um['bleu']:15.2f} {um['chrf']:7.2f}",
                  f"  {'copy source':12s} {u['copy_bleu']:7.2f} {u['copy_chrf']:7.2f} "
                  f"{um['copy_bleu']:15.2f} {um['copy_chrf']:7.2f}"]
    elif "unseen" in s:
        lines.append("unseen lines (no form of the headword in training): none among these pairs")
    return "\n".join(lines)
