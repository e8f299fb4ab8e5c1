"""One loaded bundle shared by several threads (a web app's thread pool): translate() (greedy and
beam), independent streams and LM generation give the sequential results (the contract in
qrnn_deploy/runtime/__init__.py; the TensorRT runner's side is in test_tensorrt_runtime.py)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNLanguageModel
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.vocab import CharVocab
from translators import random_translator

VOCAB = CharVocab.build(["abcdefghijklmnop "])
SOURCES = ["abc def gh", "hello", "a", "pop mop", "ijkl mnop abc", "dead beef", "gag", "ponm lkji hgfe",
           "mob ape", "hjk lmn opa", "beef dead", "fig gap lob"]


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many GIL hand-overs: many interleavings
    yield
    sys.setswitchinterval(old)


def test_shared_translator_and_lm_across_threads_equal_sequential(tmp_path, fast_switching):
    export_bundle(random_translator(len(VOCAB), len(VOCAB), 0), tmp_path / "s2s", fo_pool="portable",
                  verify=False, vocab=VOCAB)
    tr = load_bundle(tmp_path / "s2s", threads=1).translator()
    jobs = [(s, beam) for s in SOURCES for beam in (1, 3)]
    want = {j: tr.translate(j[0], beam=j[1], max_len=25) for j in jobs}
    assert len(set(want.values())) >= 6  # the outputs really vary

    def streamed(j):
        ts = tr.stream()
        for i in range(0, len(j[0]), 3):
            ts.feed(j[0][i:i + 3])
        return tr.detokenize(list(ts.tokens(beam=j[1], max_len=25)))

    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda j: tr.translate(j[0], beam=j[1], max_len=25), jobs * 3))
        got_streamed = list(ex.map(streamed, jobs * 2))
    assert got == [want[j] for j in jobs * 3]
    assert got_streamed == [want[j] for j in jobs * 2]

    torch.manual_seed(1)
    lm = QRNNLanguageModel(len(VOCAB), 16, 24, 2, window=[2, 1], pooling="fo").eval()
    with torch.no_grad():
        lm.out.weight.mul_(4)
    export_bundle(lm, tmp_path / "lm", fo_pool="portable", verify=False, vocab=VOCAB)
    b = load_bundle(tmp_path / "lm", threads=1)
    gen = lambda k: list(b.language_model().generate(SOURCES[k % len(SOURCES)], max_new_tokens=15,  # noqa: E731
                                                     temperature=0.7 * (k % 2), seed=k))
    want_lm = [gen(k) for k in range(24)]
    with ThreadPoolExecutor(6) as ex:
        assert list(ex.map(gen, range(24))) == want_lm
