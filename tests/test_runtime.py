"""qrnn_deploy.runtime on language-model and classifier bundles: streams, batched streams, the
backend interface, generation, running classification, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from qrnn_deploy.errors import BundleError, ConfigError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel
from qrnn_deploy.runtime import (OrtRunner, StreamBatch, load_bundle, pick_token, register_backend,
                                 stack_states, split_states)
from qrnn_deploy.vocab import UNK, CharVocab

VOCAB = CharVocab.build(["abcdefghijklmnop "])
V = len(VOCAB)


def _lib_built() -> bool:
    try:
        from qrnn_deploy.runtime import ort_library_path

        return Path(ort_library_path()).is_file()
    except Exception:
        return False


def make_lm(seed=1):
    torch.manual_seed(seed)
    m = QRNNLanguageModel(V, 16, 24, 2, window=[2, 1], pooling="fo").eval()
    with torch.no_grad():
        m.out.weight.mul_(4)  # sharper next-symbol distributions: generation is not all one symbol
        m.embed.weight.mul_(3)
    return m


def make_classifier(seed=0):
    torch.manual_seed(seed)
    return QRNNClassifier(V, 16, 24, 2, 3, window=2, pooling="ifo", dense=True).eval()


@pytest.fixture(scope="module")
def lm():
    return make_lm()


@pytest.fixture(scope="module")
def lm_dir(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "bundle"
    export_bundle(lm, out, fo_pool="portable", verify=False, vocab=VOCAB)
    return out


@pytest.fixture(scope="module")
def lm_bundle(lm_dir):
    return load_bundle(lm_dir, threads=1)


@pytest.fixture(scope="module")
def clf():
    return make_classifier()


@pytest.fixture(scope="module")
def clf_bundle(clf, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "bundle"
    export_bundle(clf, out, fo_pool="portable", verify=False, vocab=VOCAB)
    return load_bundle(out, threads=1)


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].numpy()


def _random_chunks(ids, rng):
    out, i = [], 0
    while i < len(ids):
        n = int(rng.integers(1, 6))
        out.append(ids[i:i + n])
        i += n
    return out


# -- streams -------------------------------------------------------------------------------------

def test_stream_chunks_equal_whole_and_pytorch(lm_bundle, lm):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=23).tolist()
    ref = _torch_logits(lm, ids)
    whole = lm_bundle.stream()
    w = whole.feed(ids)["logits"]
    np.testing.assert_allclose(w, ref, atol=1e-5, rtol=1e-5)
    for _ in range(3):
        s = lm_bundle.stream()
        parts = [s.feed(c)["logits"] for c in _random_chunks(ids, rng)]
        np.testing.assert_allclose(np.concatenate(parts), w, atol=1e-5, rtol=0)
        for k in whole.states:
            np.testing.assert_allclose(s.states[k], whole.states[k], atol=1e-5, rtol=0)
    assert s.steps == len(ids)
    assert s.feed([]) is None and s.steps == len(ids)  # an empty chunk advances nothing


def test_stream_reset_close_and_unknown_symbols(lm_bundle):
    s = lm_bundle.stream()
    first = s.feed("abc")["logits"]
    s.feed("ddd")
    s.reset()
    np.testing.assert_array_equal(s.feed("abc")["logits"], first)
    # unknown characters and ids outside the vocabulary become <unk>, never an error
    a = lm_bundle.stream().feed("a\u00e9b")["logits"]
    b = lm_bundle.stream().feed([VOCAB.index["a"], UNK, VOCAB.index["b"]])["logits"]
    c = lm_bundle.stream().feed([VOCAB.index["a"], 10_000, VOCAB.index["b"]])["logits"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    s.close()
    with pytest.raises(StreamError, match="closed"):
        s.feed("a")
    with pytest.raises(StreamError, match="closed"):
        s.reset()
    with pytest.raises(StreamError):
        lm_bundle.stream().feed(np.zeros((2, 2), dtype=np.int64))


def test_state_specs_from_manifest(lm_bundle, lm):
    g = lm_bundle.graph("lm")
    assert [(s.name, s.shape, s.dtype) for s in g.states] == [
        ("conv_state_0", ["B", 1, 16], "float32"), ("c_state_0", ["B", 24], "float32"),
        ("c_state_1", ["B", 24], "float32")]
    z = g.zero_states(3)
    assert {k: v.shape for k, v in z.items()} == {"conv_state_0": (3, 1, 16), "c_state_0": (3, 24),
                                                   "c_state_1": (3, 24)}
    st = [{k: np.full((n,) + v.shape[1:], float(i)) for k, v in z.items()} for i, n in enumerate([1, 2, 1])]
    back = split_states(stack_states(st), [1, 2, 1])
    for a, b in zip(st, back):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_decode_batch_states_reuse_the_last_outputs():
    """DecodeBatch hands decoders row views of one step's outputs; the next step feeds that base
    itself when the rows are unchanged, gathers from it when some left or the order changed, and
    concatenates when a decoder's states came from elsewhere (a new or reordered decoder)."""
    from qrnn_deploy.runtime.decoders import RowStates, _batch_states

    base = {"c_state_0": np.arange(10.0).reshape(5, 2), "conv_state_0": np.arange(15.0).reshape(5, 1, 3)}

    class D:
        def __init__(self, states):
            self.states = states

    ds = [D(RowStates(base, a, b)) for a, b in [(0, 1), (1, 3), (3, 4), (4, 5)]]
    assert _batch_states(ds) is base
    assert dict(ds[1].states.items()).keys() == base.keys() and len(ds[1].states) == 2
    np.testing.assert_array_equal(ds[1].states["c_state_0"], base["c_state_0"][1:3])
    picked = [ds[3], ds[1]]  # one left, order changed
    got = _batch_states(picked)
    for n, v in base.items():
        np.testing.assert_array_equal(got[n], v[[4, 1, 2]])
    fresh = D({n: np.full((1,) + v.shape[1:], -1.0) for n, v in base.items()})
    got = _batch_states([ds[0], fresh])
    for n, v in base.items():
        np.testing.assert_array_equal(got[n], np.concatenate([v[:1], fresh.states[n]]))


class CountingRunner(OrtRunner):
    calls = 0

    def run(self, inputs):
        CountingRunner.calls += 1
        return super().run(inputs)


register_backend("counting-ort", CountingRunner)


def test_stream_batch_equals_streams_alone(lm_dir):
    """Streams of different lengths that start at different ticks, fed chunks of mixed lengths,
    advanced together: each equals the same stream fed alone (<= 1e-5), and one graph call serves
    every stream whose chunk has the same length."""
    bundle = load_bundle(lm_dir, backend="counting-ort", threads=1)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, V, size=n).tolist() for n in (12, 5, 20, 9, 15)]
    starts = [0, 0, 2, 3, 6]
    plans = [_random_chunks(s, rng) for s in seqs]
    plans[1] = [[t] for t in seqs[1]]  # token by token
    alone = []
    for plan in plans:
        s = bundle.stream()
        alone.append([s.feed(c)["logits"] for c in plan])
    streams = [bundle.stream() for _ in seqs]
    got = [[] for _ in seqs]
    batch = StreamBatch(bundle.graph("lm"))
    tick = 0
    while any(len(g) < len(p) for g, p in zip(got, plans)):
        items = [(streams[i], plans[i][tick - starts[i]]) for i in range(len(seqs))
                 if starts[i] <= tick < starts[i] + len(plans[i])]
        idx = [i for i in range(len(seqs)) if starts[i] <= tick < starts[i] + len(plans[i])]
        before = CountingRunner.calls
        outs = batch.feed(items)
        assert CountingRunner.calls - before == len({len(c) for _, c in items})
        for i, o in zip(idx, outs):
            got[i].append(o["logits"])
        tick += 1
    for g, a in zip(got, alone):
        for x, y in zip(g, a):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    # equal chunk lengths: one call for all
    before = CountingRunner.calls
    batch.feed([(s, [1]) for s in streams])
    assert CountingRunner.calls - before == 1
    with pytest.raises(StreamError, match="twice"):
        batch.feed([(streams[0], [1]), (streams[0], [2])])
    other = load_bundle(lm_dir, threads=1).stream()
    with pytest.raises(StreamError):
        batch.feed([(other, [1])])


@pytest.mark.skipif(not _lib_built(), reason="the FoPool onnxruntime library is not built")
def test_custom_op_lm_stream_matches_pytorch(lm, tmp_path):
    out = tmp_path / "custom"
    export_bundle(lm, out, fo_pool="custom", verify=False, vocab=VOCAB)
    b = load_bundle(out, threads=1)
    assert b.manifest.fo_pool == "custom"
    ids = np.random.default_rng(1).integers(0, V, size=17).tolist()
    s = b.stream()
    parts = [s.feed(ids[:5])["logits"], s.feed(ids[5:6])["logits"], s.feed(ids[6:])["logits"]]
    np.testing.assert_allclose(np.concatenate(parts), _torch_logits(lm, ids), atol=1e-5, rtol=1e-5)


# -- generation ----------------------------------------------------------------------------------

def test_greedy_generation_matches_pytorch(lm_bundle, lm):
    prompt = VOCAB.encode("abc")
    gen = lm_bundle.language_model()
    got = list(gen.generate("abc", max_new_tokens=15, stop_at_eos=False))
    ids = list(prompt)
    for _ in range(15):
        ids.append(int(_torch_logits(lm, ids)[-1].argmax()))
    assert got == ids[len(prompt):]
    assert len(set(got)) > 1
    # generating in two goes continues the same stream (the last token is fed lazily)
    g2 = lm_bundle.language_model()
    assert list(g2.generate("abc", 6, stop_at_eos=False)) + list(g2.generate("", 9, stop_at_eos=False)) == got


def test_sampling_seed_temperature_top_k(lm_bundle, lm):
    def sample(**kw):
        return list(lm_bundle.language_model().generate("ab", max_new_tokens=30, stop_at_eos=False, **kw))

    a = sample(temperature=1.5, seed=7)
    assert a == sample(temperature=1.5, seed=7)
    assert a != sample(temperature=1.5, seed=8)
    assert sample(temperature=1.0, top_k=1, seed=3) == sample(temperature=0.0)
    k3 = sample(temperature=2.0, top_k=3, seed=5)
    ids = VOCAB.encode("ab")
    for t in k3:  # every sample is among the 3 most likely symbols at its step
        top3 = np.argsort(-_torch_logits(lm, ids)[-1])[:3]
        assert t in top3
        ids.append(t)
    with pytest.raises(ConfigError):
        pick_token(np.zeros(4), temperature=-1)
    with pytest.raises(ConfigError):
        pick_token(np.zeros(4), temperature=1, top_k=0)


# -- classifier ----------------------------------------------------------------------------------

def test_classifier_running_prediction(clf_bundle, clf):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V, size=19).tolist()
    cs = clf_bundle.classifier()
    seen = []
    for chunk in _random_chunks(ids, rng):
        p = cs.feed(chunk)
        seen += chunk
        with torch.no_grad():
            ref = torch.softmax(clf(torch.tensor([seen]))[0][0], -1).numpy()
        np.testing.assert_allclose(p, ref, atol=1e-5, rtol=0)
        assert cs.prediction == int(ref.argmax())
    assert cs.feed([]) is not None  # an empty chunk keeps the running prediction
    with pytest.raises(BundleError, match="classifier"):
        clf_bundle.translator()
