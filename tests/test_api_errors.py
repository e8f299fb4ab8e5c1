"""The Python library API on bad and edge input: typed errors (qrnn_deploy.errors) that say what is
wrong, never a bare numpy / torch / onnxruntime error, a hang or silently wrong output; and the
edge cases the contracts allow (DESIGN.md section 2: empty T, B or H) working."""

import json

import numpy as np
import pytest
import torch

from qrnn_deploy.data.scoring import score
from qrnn_deploy.decoding import beam_step, best_hypothesis
from qrnn_deploy.errors import BundleError, CheckpointError, ConfigError, DataError, ExportError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import (QRNN, QRNNClassifier, QRNNLanguageModel, QRNNLayer, QRNNSeq2Seq, QRNNState, fo_pool,
                            fo_pool_ref, load_checkpoint, save_checkpoint)
from qrnn_deploy.runtime import (BeamDecoder, GreedyDecoder, StreamBatch, load_bundle, pick_token, split_states,
                                 stack_states)
from qrnn_deploy.vocab import CharVocab
from translators import random_translator

VOCAB = CharVocab.build(["abcdefghijklmnop "])
V = len(VOCAB)


def _lm():
    torch.manual_seed(0)
    return QRNNLanguageModel(V, 8, 8, 2, window=[2, 1]).eval()


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "bundle"
    export_bundle(_lm(), out, fo_pool="portable", verify=False, vocab=VOCAB)
    return load_bundle(out, threads=1)


@pytest.fixture(scope="module")
def translators(tmp_path_factory):
    """Two seq2seq bundles with the same shapes and different weights."""
    out = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"s2s{seed}") / "bundle"
        export_bundle(random_translator(V, V, seed, hidden_size=16), d, fo_pool="portable", verify=False,
                      vocab=VOCAB)
        out.append(load_bundle(d, threads=1).translator())
    return out


# -- runtime: loading -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, match", [
    (dict(path=None), BundleError, "must be a str or path"),
    (dict(threads="2"), ConfigError, "threads must be an integer"),
    (dict(threads=1.5), ConfigError, "threads must be an integer"),  # was silently 1
    (dict(threads=10 ** 12), ConfigError, "threads must be an integer"),
    (dict(providers="CPUExecutionProvider"), ConfigError, "list of provider names"),  # was split into letters
    (dict(providers=["NoSuchExecutionProvider"]), ConfigError, "not available"),  # was a silent CPU fallback
])
def test_load_bundle_bad_arguments(lm_bundle, kw, error, match):
    kw = {"path": lm_bundle.path, **kw}
    with pytest.raises(error, match=match):
        load_bundle(kw.pop("path"), **kw)


# -- runtime: streams, batches, generation ----------------------------------------------------------

def test_stream_batch_and_state_helpers(lm_bundle):
    batch = StreamBatch(lm_bundle.graph("lm"))
    s = lm_bundle.stream()
    for items in (None, [s], [(s,)], [(s, "a", "b")]):
        with pytest.raises(StreamError, match=r"\(Stream, chunk\) pairs"):
            batch.feed(items)
    assert s.steps == 0
    with pytest.raises(StreamError, match="no states"):
        stack_states([])
    with pytest.raises(StreamError, match="summing to the batch size 2"):
        split_states({"a": np.zeros((2, 3))}, [1, 5])


@pytest.mark.parametrize("logits, kw, match", [
    ([0.0, 1.0], dict(temperature=float("nan")), "temperature"),
    ([0.0, 1.0], dict(temperature=None), "temperature"),
    ([0.0, 1.0], dict(temperature=1.0, top_k=1.5), "top_k"),
    ([0.0, 1.0], dict(temperature=1.0, rng=3), "Generator"),
    ([], dict(), "non-empty"),
    ([[0.0, 1.0]], dict(temperature=1.0), "non-empty"),
    ([np.nan, 1.0], dict(temperature=1.0), "NaN"),
    ([-np.inf, -np.inf], dict(temperature=1.0), "all -inf"),
])
def test_pick_token_bad_arguments(logits, kw, match):
    with pytest.raises(ConfigError, match=match):
        pick_token(np.asarray(logits, dtype=np.float64), **kw)


def test_pick_token_infinite_logit_is_the_limit():
    rng = np.random.default_rng(0)
    assert {pick_token(np.array([1.0, np.inf, 2.0, np.inf]), 1.0, rng=rng) for _ in range(20)} == {1, 3}


def test_generate_checks_arguments_at_the_call(lm_bundle):
    lm = lm_bundle.language_model()
    for kw in (dict(max_new_tokens=1.5), dict(max_new_tokens=-1), dict(seed=-1), dict(seed="x"),
               dict(temperature=float("nan"))):
        with pytest.raises(ConfigError):
            lm.generate("ab", **kw)  # not at the first next()
    assert lm.stream.steps == 0


# -- runtime: translation ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(beam=1.5), "beam"), (dict(beam="2"), "beam"), (dict(beam=10 ** 6), "beam"),  # 10**6 took GBs
    (dict(max_len=-1), "max_len"), (dict(max_len=2.5), "max_len"), (dict(max_len=None), "max_len"),
    (dict(beam=3, length_penalty=float("nan")), "length_penalty"),  # nan ranked nothing: empty output
    (dict(beam=3, length_penalty="x"), "length_penalty"),
])
def test_decoder_options(translators, kw, match):
    ts = translators[0].stream()
    ts.feed("abc")
    with pytest.raises(ConfigError, match=match):
        ts.decoder(**kw)
    ts.feed("d")  # a refused option leaves the source open
    assert translators[0].translate_ids("abc", max_len=0) == []


def test_decode_batch_refuses_another_bundles_decoder(translators):
    a, b = translators
    sa, sb = a.stream(), b.stream()
    sa.feed("abc")
    sb.feed("abc")
    da, db = sa.decoder(max_len=5), sb.decoder(max_len=5)
    batch = a.decode_batch()
    for decoders in ([db], [da, db]):  # used to decode with the wrong bundle's weights
        with pytest.raises(StreamError, match="another translator"):
            batch.step(decoders)
    with pytest.raises(StreamError, match="not a decoder"):
        batch.step(["x"])
    with pytest.raises(StreamError, match="list of decoders"):
        batch.step(None)
    assert batch.step(iter([da])) == [da.emitted] and da.steps == 1  # any iterable of decoders


def test_feed_batch_bad_items(translators):
    a, b = translators
    ts = a.stream()
    with pytest.raises(StreamError, match="pairs"):
        a.feed_batch(None)
    with pytest.raises(StreamError, match="pairs"):
        a.feed_batch([(ts,)])
    with pytest.raises(StreamError, match="TranslationStream of this translator"):
        a.feed_batch([("abc", "abc")])
    with pytest.raises(StreamError, match="TranslationStream of this translator"):
        a.feed_batch([(ts, "ab"), (b.stream(), "cd")])
    assert ts.source_length == 0


def test_decoder_constructors():
    with pytest.raises(StreamError, match="numpy array"):
        GreedyDecoder([[1.0]], {}, {}, 5)
    with pytest.raises(ConfigError, match="beam"):
        BeamDecoder(np.zeros((2, 3), np.float32), {}, {}, "x")


def test_decoding_rules_bad_input():
    with pytest.raises(ConfigError, match=r"\[K, V\]"):
        beam_step([0.0, 0.0], np.zeros((1, 5)), 2, 0, False)  # used to broadcast to a parent that is not there
    with pytest.raises(ConfigError, match="length_penalty"):
        best_hypothesis([(-1.0, [4])], float("nan"))


# -- nn: construction -------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: QRNNLayer(4, 2.5), lambda: QRNNLayer(4, None), lambda: QRNNLayer(4, 5, window=True),
    lambda: QRNNLayer(4, 5, pooling=["fo"]), lambda: QRNNLayer(4, 5, zoneout="0.1"),
    lambda: QRNN(4, 5, 1.5), lambda: QRNN(4, 5, dropout="x"),
    lambda: QRNNLanguageModel(10, -1, 5, 1), lambda: QRNNLanguageModel(2.5, 4, 5, 1),
    lambda: QRNNLanguageModel(10, 4, 5, 1, foo=1),
    lambda: QRNNClassifier(0, 4, 5, 1, 2), lambda: QRNNClassifier(10, 4, 5, 1, 2.5),
    lambda: QRNNSeq2Seq(10, 3, embed_size=4, hidden_size=5, num_layers=1),  # no room for <s> </s>
    lambda: QRNNSeq2Seq(10, -1, embed_size=4, hidden_size=5, num_layers=1),
    lambda: QRNNSeq2Seq(10, 10, embed_size=4, hidden_size=5, num_layers=1, dropout=-1),  # was ignored
    lambda: QRNNSeq2Seq(10, 10, embed_size=4, hidden_size=5, num_layers=1, dropout=2),
])
def test_bad_model_configs(make):
    with pytest.raises(ConfigError):
        make()


# -- nn: forward ------------------------------------------------------------------------------------

def test_layer_forward_bad_inputs():
    layer = QRNNLayer(4, 5, window=2)
    st = layer.init_state(2)
    x = torch.zeros(2, 3, 4)
    for bad, match in [(x.double(), "weights are torch.float32"), (x.long(), "floating point"),
                       (x.numpy(), "torch.Tensor")]:
        with pytest.raises(ConfigError, match=match):
            layer(bad)
    with pytest.raises(ConfigError, match="conv_state must be"):  # B of 3 with a state of 2
        layer(torch.zeros(3, 3, 4), st)
    with pytest.raises(ConfigError, match="conv_state must be"):  # used to shift the window silently
        layer(x, QRNNState(torch.zeros(2, 5, 4), st.c))
    with pytest.raises(ConfigError, match="QRNNState"):
        layer(x, torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="cond must be a list"):
        QRNN(4, 5, 2)(x, None, [None])


def test_model_forward_bad_inputs():
    lm = QRNNLanguageModel(10, 4, 5, 1).eval()
    for bad, match in [(torch.tensor([[10]]), r"in \[0, 10\)"), (torch.tensor([[-1]]), r"in \[0, 10\)"),
                       (torch.zeros(1, 3), "integer"), ([[1, 2]], "torch.Tensor")]:
        with pytest.raises(ConfigError, match=match):
            lm(bad)
    assert lm(torch.zeros(1, 0, dtype=torch.long))[0].shape == (1, 0, 10)
    clf = QRNNClassifier(10, 4, 5, 1, 2).eval()
    tokens = torch.tensor([[4, 5]])
    for lengths in (torch.tensor([0]), torch.tensor([5]), torch.tensor([1, 2])):  # [1, 2] gave 2 rows for 1
        with pytest.raises(ConfigError, match="lengths"):
            clf(tokens, lengths=lengths)
    with pytest.raises(ConfigError, match="T = 0"):
        clf(torch.zeros(1, 0, dtype=torch.long))


def test_seq2seq_bad_inputs():
    m = QRNNSeq2Seq(10, 10, embed_size=4, hidden_size=5, num_layers=2).eval()
    memory, cond, _ = m.encode(torch.tensor([[4, 5]]))
    tgt = torch.tensor([[2]])
    with pytest.raises(ConfigError, match=r"in \[0, 10\)"):
        m.greedy_decode([99], 5)
    with pytest.raises(ConfigError, match="lengths"):
        m(torch.tensor([[4, 5]]), torch.tensor([9]), tgt)
    with pytest.raises(ConfigError, match="cond must be a list of 2"):
        m.decode(tgt, memory, None, cond[:1])
    with pytest.raises(ConfigError, match="memory must be"):
        m.decode(tgt, torch.zeros(1, 2, 7), None, cond)
    with pytest.raises(ConfigError, match="memory_mask"):
        m.decode(tgt, memory, torch.ones(1, 2), cond)
    with pytest.raises(ConfigError, match="length_penalty"):
        m.beam_search([4, 5], 2, 5, length_penalty=float("nan"))


# -- nn: fo_pool ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [fo_pool, fo_pool_ref,
                                lambda g, c0=None: torch.ops.qrnn.fo_pool(g, c0, "fo", False, False)])
def test_fo_pool_empty_hidden_and_bad_c0(fn):
    h, c = fn(torch.randn(4, 2, 0))  # H = 0: the native kernel used to fail with "code -1"
    assert h.shape == (4, 2, 0) and c.shape == (2, 0)
    with pytest.raises(ConfigError, match="c0 must be a floating point tensor"):
        fn(torch.randn(4, 2, 15), torch.zeros(2, 5, dtype=torch.long))
    if fn is not fo_pool_ref:
        h, c = fn(torch.randn(0, 2, 15), torch.ones(2, 5))  # T = 0: c_last = c0
        assert h.shape == (0, 2, 5) and torch.equal(c, torch.ones(2, 5))


def test_fo_pool_numpy_c0_message():
    with pytest.raises(ConfigError, match="got ndarray"):  # said "c0 is on cpu but gates are on cpu"
        fo_pool(torch.randn(4, 2, 15), np.zeros((2, 5), np.float32))


# -- nn: checkpoints --------------------------------------------------------------------------------

def test_save_checkpoint_bad_arguments(tmp_path):
    m = QRNNLanguageModel(10, 4, 5, 1)
    (tmp_path / "file").write_text("x")
    for path in (None, "", tmp_path, tmp_path / "file" / "m.safetensors"):
        with pytest.raises(CheckpointError):
            save_checkpoint(m, path)
    for kw in (dict(extra={"a": object()}), dict(extra=[1]), dict(dtype=torch.int8), dict(dtype="float16")):
        with pytest.raises(CheckpointError):
            save_checkpoint(m, tmp_path / "m.safetensors", **kw)


def test_load_checkpoint_dtype_and_bad_config(tmp_path):
    from safetensors.torch import load_file, save_file

    m = QRNNLanguageModel(10, 4, 5, 1)
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    assert load_checkpoint(path, dtype=torch.float16).embed.weight.dtype == torch.float16  # was float32
    with pytest.raises(CheckpointError, match="dtype"):
        load_checkpoint(path, dtype=torch.int64)  # was a model of truncated weights
    with pytest.raises(CheckpointError):
        load_checkpoint(None)
    cfg = dict(m.config.__dict__, embed_size=-4)
    meta = {"format": "qrnn-deploy-checkpoint", "version": "1", "model_type": "language_model",
            "config": json.dumps(cfg), "extra": "{}"}
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="embed_size"):
        load_checkpoint(tmp_path / "bad.safetensors")
    meta.update(config=json.dumps(m.config.__dict__), extra="[1]")
    save_file(load_file(str(path)), str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="extra"):
        load_checkpoint(tmp_path / "extra.safetensors")


# -- export -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(out_dir=None), "out_dir"),
    (dict(tol=float("nan"), verify=True), "tol"),  # nan never fails a comparison
    (dict(quantize="int8", quantize_block="x"), "quantize_block"),
    (dict(quantize="int8", quantize_block=128.0), "quantize_block"),
    (dict(verify=True, verify_engine="x"), "verify_engine"),  # was taken as "reference"
    (dict(fo_pool="custom", node_attrs=5), "node_attrs"),
    (dict(vocab=(VOCAB, VOCAB)), "seq2seq"),
])
def test_export_bad_options(tmp_path, kw, match):
    kw = {"out_dir": tmp_path / "b", "fo_pool": "portable", "verify": False, **kw}
    with pytest.raises(ExportError, match=match):
        export_bundle(_lm(), **kw)


def test_export_checks_labels(tmp_path):
    clf = QRNNClassifier(V, 4, 5, 1, 3).eval()
    for labels in (5, ["a", "b"]):  # the runtime indexes labels by class id
        clf.extra = {"labels": labels}
        with pytest.raises(ExportError, match="labels"):
            export_bundle(clf, tmp_path / "b", fo_pool="portable", verify=False, vocab=VOCAB)


def test_classifier_stream_checks_manifest_labels(tmp_path):
    out = tmp_path / "b"
    export_bundle(QRNNClassifier(V, 4, 5, 1, 3).eval(), out, fo_pool="portable", verify=False, vocab=VOCAB)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metadata"]["labels"] = ["a", "b"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="labels"):
        load_bundle(out, threads=1).classifier()


# -- vocab, data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: CharVocab.build(None), lambda: CharVocab.build([b"ab"]), lambda: CharVocab.build(["ab"], max_size=2),
    lambda: CharVocab(None), lambda: CharVocab(["<pad>", "<unk>", "<s>", "</s>", "ab"]),
    lambda: CharVocab(["<pad>", "<unk>", "<s>", "</s>", 5]),
    lambda: VOCAB.encode(None), lambda: VOCAB.encode(b"ab"), lambda: VOCAB.decode([4.0]), lambda: VOCAB.decode("ab"),
    lambda: VOCAB.token_text("a"),
])
def test_vocab_bad_input(call):
    with pytest.raises(ConfigError):
        call()


def test_score_bad_input():
    with pytest.raises(DataError, match="hypotheses"):
        score(["a"], [])
    with pytest.raises(DataError, match="no pairs"):
        score([], [])


def test_cuda_sources_dir_env(monkeypatch, tmp_path):
    """The CUDA sources' directory: QRNN_PLUGIN_SOURCES (QRNN_PLUGINS_DIR, its old name, still
    works), else the checkout's plugins/; one definition for the CUDA kernels and the AOT plugin."""
    from qrnn_deploy._native import cuda_sources_dir

    monkeypatch.delenv("QRNN_PLUGIN_SOURCES", raising=False)
    monkeypatch.delenv("QRNN_PLUGINS_DIR", raising=False)
    assert (cuda_sources_dir() / "fo_pool_kernels.cuh").is_file()
    monkeypatch.setenv("QRNN_PLUGINS_DIR", str(tmp_path / "old"))
    assert cuda_sources_dir() == tmp_path / "old" / "cuda"
    monkeypatch.setenv("QRNN_PLUGIN_SOURCES", str(tmp_path / "new"))
    assert cuda_sources_dir() == tmp_path / "new" / "cuda"
