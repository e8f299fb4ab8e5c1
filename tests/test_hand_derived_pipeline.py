"""Hand-derived expectations, second round of mutation testing: runtime streams, vocabularies,
bundle manifests, dictionary parsing, nn defaults, batching and losses, training state,
quantization and the server's batching and request limits. Every test here failed on a small
deliberate bug (a mutant) that the rest of the suite let through (first round:
test_hand_derived.py)."""

import json

import numpy as np
import pytest
import torch

from qrnn_deploy.vocab import EOS, UNK, CharVocab
from test_hand_derived import MAX_LEN, translator  # noqa: F401  (translator: a fixture)


# -- TranslationStream: the memory it decodes from ---------------------------------------------------

def test_memory_read_between_feeds_grows_with_the_next_feed(translator):
    """Reading `memory` caches the concatenation; a later feed must extend it (decoding uses it)."""
    ts = translator.stream()
    ts.feed("abc")
    assert ts.memory.shape[0] == 3
    ts.feed("de")
    one = translator.stream()
    one.feed("abcde")
    assert ts.memory.shape[0] == 5
    np.testing.assert_allclose(ts.memory, one.memory, rtol=0, atol=1e-5)
    assert list(ts.tokens(max_len=MAX_LEN)) == list(one.tokens(max_len=MAX_LEN))


def test_reset_forgets_the_previous_source(translator):
    ts = translator.stream()
    ts.feed("abcdef")
    ts.reset()
    ts.feed("gh")
    fresh = translator.stream()
    fresh.feed("gh")
    assert ts.source_length == 2 and ts.memory.shape[0] == 2
    np.testing.assert_allclose(ts.memory, fresh.memory, rtol=0, atol=1e-6)


def test_bundle_stream_encodes_with_the_source_vocabulary_and_threads_start_at_1(tmp_path):
    from translators import random_translator

    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.runtime import load_bundle
    from qrnn_deploy.vocab import SPECIALS

    src = CharVocab(SPECIALS + ["a", "b", "c"])  # "abc" -> 4 5 6
    tgt = CharVocab(SPECIALS + ["x", "c", "b", "a"])  # "abc" -> 7 6 5
    export_bundle(random_translator(len(src), len(tgt), 0, hidden_size=8), tmp_path, fo_pool="portable",
                  verify=False, vocab=(src, tgt))
    b = load_bundle(tmp_path, threads=1)
    assert b.stream().ids("abc").tolist() == [4, 5, 6]  # the encoder stream: source symbols
    # load_bundle checks threads for every backend (a registered one too), before making runners.
    from qrnn_deploy.runtime import backends

    made = []
    backends.register_backend("mut_recorder", lambda *a, **kw: made.append(kw))
    try:
        with pytest.raises(ConfigError, match="threads"):
            load_bundle(tmp_path, backend="mut_recorder", threads=0)
    finally:
        backends._BACKENDS.pop("mut_recorder", None)
    assert made == []


# -- CharVocab ---------------------------------------------------------------------------------------

def test_char_vocab_build_min_count_max_size_order_and_specials():
    from qrnn_deploy.vocab import BOS, PAD

    texts = ["aab", "cbb", "d"]  # a: 2, b: 3, c: 1, d: 1
    assert CharVocab.build(texts, min_count=2).symbols[4:] == ["b", "a"]  # count >= 2, most frequent first
    assert CharVocab.build(texts).symbols[4:] == ["b", "a", "c", "d"]  # equal counts: by character
    assert CharVocab.build(texts, max_size=6).symbols[4:] == ["b", "a"]  # max_size counts the 4 specials
    assert len(CharVocab.build(texts, max_size=4)) == 4
    v = CharVocab.build(texts)
    assert [v.token_text(i) for i in range(4)] == ["", "", "", ""]  # special symbols are no text
    assert v.decode([BOS, 4, EOS, 5, PAD, UNK, 99]) == "ba"


# -- bundle manifest validation ------------------------------------------------------------------------

def _manifest_dict(**over):
    from qrnn_deploy.bundle import BUNDLE_FORMAT, BUNDLE_VERSION

    d = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "model_type": "language_model",
         "fo_pool": "portable", "config": {}, "special_tokens": {"pad": 0},
         "graphs": {"lm": {"file": "lm.onnx",
                           "inputs": [{"name": "tokens", "shape": ["B", "T"], "dtype": "int64"}],
                           "outputs": [{"name": "logits", "shape": ["B", "T", 9], "dtype": "float32"}],
                           "states": [{"name": "c_state_0", "output": "c_state_0_out", "shape": ["B", 4],
                                       "dtype": "float32"}]}}}
    d.update(over)
    return d


def test_manifest_validation_of_custom_op_state_dtypes_and_vocab_pairs():
    from qrnn_deploy.bundle import Manifest
    from qrnn_deploy.errors import BundleError

    Manifest.from_json(_manifest_dict())  # the base is valid
    with pytest.raises(BundleError, match="custom_op"):
        Manifest.from_json(_manifest_dict(fo_pool="custom"))
    bad_state = _manifest_dict()
    bad_state["graphs"]["lm"]["states"][0]["dtype"] = "float64"
    with pytest.raises(BundleError, match="c_state_0 has unknown dtype"):
        Manifest.from_json(bad_state)
    one_side = {"src": CharVocab.build(["ab"]).to_json()}  # a pair needs its "tgt" side too
    with pytest.raises(BundleError, match="vocab.tgt must be an object"):
        Manifest.from_json(_manifest_dict(vocab=one_side))


# -- dictionary parsing ----------------------------------------------------------------------------------

def test_unparallel_synonyms_take_the_first_good_english_one():
    from qrnn_deploy.data.dictionary import parse_line

    # 2 German synonyms, 3 English ones: not parallel, so each German one gets the first English
    # synonym that is usable; "~" is not.
    assert parse_line("Haus; Gebäude :: ~; house; building") == [("Haus", "house"), ("Gebäude", "house")]


def test_max_chars_and_sentence_boundaries():
    from qrnn_deploy.data.dictionary import MAX_CHARS, is_sentence, parse_line

    assert parse_line("a" * MAX_CHARS + " :: b") == [("a" * MAX_CHARS, "b")]
    assert parse_line("a" * (MAX_CHARS + 1) + " :: b") == []
    assert parse_line("b :: " + "e" * MAX_CHARS) == [("b", "e" * MAX_CHARS)]
    assert is_sentence("Ich bin da.") and not is_sentence("Ich bin.")  # at least three words


# -- nn: defaults and dropout ------------------------------------------------------------------------------

def test_seq2seq_default_encoder_windows_are_the_papers():
    from qrnn_deploy.nn import QRNNSeq2Seq

    m = QRNNSeq2Seq(10, 10, embed_size=4, hidden_size=4, num_layers=3)
    assert m.enc_windows == [6, 2, 2] and [l.window for l in m.encoder] == [6, 2, 2]


def test_language_model_dropout_acts_on_the_output_layers_input():
    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(0)
    m = QRNNLanguageModel(11, 8, 12, 1, dropout=0.5)  # one layer: no dropout between layers
    x = torch.randint(4, 11, (2, 6))
    m.eval()
    ref, _ = m(x)
    y, _ = m.qrnn(m.embed(x))
    m.train()
    torch.manual_seed(1)
    got, _ = m(x)
    torch.manual_seed(1)
    keep = torch.nn.functional.dropout(torch.ones_like(y), 0.5, training=True)  # the same draw: 0 or 2
    np.testing.assert_allclose(got.detach().numpy(), m.out(y * keep).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, ref)


# -- batching and losses -----------------------------------------------------------------------------------

def test_make_batches_width_restarts_per_batch_and_max_tokens_is_inclusive():
    import random

    from qrnn_deploy.nn.batching import make_batches

    # Sorted by (target, source) length: pair 0 (width 10+1+1 = 12) is alone; pairs 1 and 2 take
    # 2 rows x (1 + 2 + 1) = 8 symbols, exactly max_tokens: one batch.
    src, tgt = [[5] * 10, [5], [5]], [[6], [6, 6], [6, 6]]
    got = make_batches(src, tgt, 8, random.Random(0))
    assert sorted(sorted(b) for b in got) == [[0], [1, 2]]


def test_loss_is_the_mean_over_real_target_symbols():
    import torch.nn.functional as F

    from qrnn_deploy.nn import QRNNSeq2Seq
    from qrnn_deploy.nn.batching import collate
    from qrnn_deploy.nn.train import evaluate_loss, loss_on

    torch.manual_seed(0)
    m = QRNNSeq2Seq(9, 9, embed_size=8, hidden_size=8, num_layers=1).eval()
    src, tgt = [[4, 5, 6], [7]], [[4], [5, 6, 7, 8]]
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(2):  # each pair alone: no padding; the targets are y_1 .. y_n </s>
            s, sl, ti, to = collate(src, tgt, [i])
            total += float(F.cross_entropy(m(s, sl, ti)[0], to[0], reduction="sum"))
            n += to.shape[1]
        loss, k = loss_on(m, *collate(src, tgt, [0, 1]))
    assert k == n == 7
    assert float(loss) == pytest.approx(total / n, rel=1e-5)
    assert evaluate_loss(m, src, tgt, 10_000, "cpu") == pytest.approx(total / n, rel=1e-5)  # one batch
    assert evaluate_loss(m, src, tgt, 1, "cpu") == pytest.approx(total / n, rel=1e-5)  # a batch each


# -- training state ------------------------------------------------------------------------------------------

def test_commit_staged_moves_state_json_last(tmp_path):
    from qrnn_deploy.nn.train_state import STAGED, commit_staged

    for name in ("state.json", "state.safetensors"):
        (tmp_path / name).write_text("old")
        (tmp_path / (name + STAGED)).write_text("new")
    # last.safetensors.new is missing (its write failed): the commit stops before state.json.
    with pytest.raises(OSError):
        commit_staged(tmp_path, ["state.json", "last.safetensors", "state.safetensors"])
    assert (tmp_path / "state.json").read_text() == "old"


def test_load_train_state_restores_the_optimizer_settings(tmp_path):
    import random

    from qrnn_deploy.nn.train_state import load_train_state, save_train_state

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.5, betas=(0.8, 0.9))
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    save_train_state(tmp_path, opt, {"step": 1, "epoch": 0, "pos": 1, "trained_s": 1.0, "target_chars": 3,
                                     "best_valid_loss": 2.0, "_py_rng": random.Random(0).getstate()})
    q = torch.nn.Parameter(torch.ones(3))
    opt2 = torch.optim.Adam([q], lr=1e-3)
    meta = load_train_state(tmp_path, opt2)
    assert meta["step"] == 1
    assert opt2.param_groups[0]["lr"] == 0.5 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)
    assert torch.equal(opt2.state[q]["exp_avg"], torch.tensor([0.2, 0.4, 0.6]))  # (1 - 0.8) * grad


# -- quantization ----------------------------------------------------------------------------------------------

def test_a_weight_shared_by_two_matmuls_is_packed_once():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qrnn_deploy.export.quantize import dequantize_weight, quantize_graph, quantize_weight

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y1"], name="mm1"), helper.make_node("MatMul", ["x", "w"], ["y2"], name="mm2")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 16]) for n in ("y1", "y2")],
        [numpy_helper.from_array(w, "w")])
    q, rep = quantize_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), block_size=16)
    names = [t.name for t in q.graph.initializer]
    assert len(names) == len(set(names)) == 2  # one packed weight, one scale tensor
    # float32 [32, 16] before; after: uint8 [16 columns, 2 blocks, 16] + float32 scales [16 * 2]
    assert rep["matmuls"] == [2, 2] and rep["weight_bytes"] == [32 * 16 * 4, 16 * 2 * 16 + 16 * 2 * 4]
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2 = sess.run(None, {"x": x})
    ref = x @ dequantize_weight(*quantize_weight(w, 16), 32)
    np.testing.assert_allclose(y1, ref, rtol=0, atol=0.1)
    np.testing.assert_array_equal(y1, y2)


# -- server: batching rows, loopback, request limits -----------------------------------------------------------

def test_engine_fills_a_step_up_to_max_batch_rows():
    from types import SimpleNamespace

    from qrnn_deploy.serve.engine import Engine

    calls = []

    class Batch:
        def step(self, decoders):
            calls.append([d.num_rows for d in decoders])
            return [[] for _ in decoders]

    eng = Engine(SimpleNamespace(decode_batch=Batch), max_batch_rows=4)
    eng._active = [SimpleNamespace(_decoder=SimpleNamespace(num_rows=r, done=False), _sent=0) for r in (1, 3, 2, 2)]
    eng._step([])
    assert calls == [[1, 3], [2, 2]]  # 4 rows are allowed in one call


def test_ipv4_mapped_loopback_is_loopback():
    from qrnn_deploy.serve.guard import is_loopback_host, refusal

    assert is_loopback_host("::ffff:127.0.0.1") and is_loopback_host("[::ffff:127.0.0.1]")
    assert not is_loopback_host("::ffff:10.0.0.1")
    # A dual-stack server sees IPv4 loopback clients as ::ffff:127.0.0.1: the rebinding guard applies.
    scope = {"type": "http", "server": ("::ffff:127.0.0.1", 8000), "headers": [(b"host", b"rebound.example:8000")]}
    assert refusal(scope)[0] == "forbidden_host"


def test_http_translate_limits_at_the_boundary():
    import asyncio

    from starlette.requests import Request

    from qrnn_deploy.serve import ServeConfig
    from qrnn_deploy.serve.app import _parse_translate, _read_body_bytes
    from qrnn_deploy.serve.protocol import ProtocolError

    cfg = ServeConfig(max_source_chars=5, max_message_bytes=64).validate()
    assert _parse_translate(json.dumps({"text": "abcde"}).encode(), cfg)[0] == "abcde"
    with pytest.raises(ProtocolError, match="over the limit of 5"):
        _parse_translate(json.dumps({"text": "abcdef"}).encode(), cfg)

    def read(n, declared):
        async def receive():
            return {"type": "http.request", "body": b"x" * n, "more_body": False}
        scope = {"type": "http", "method": "POST", "headers": [(b"content-length", str(declared).encode())]}
        return asyncio.run(_read_body_bytes(Request(scope, receive), 64))

    assert read(64, 64) == b"x" * 64
    with pytest.raises(ProtocolError, match="65 bytes"):
        read(64, 65)
    with pytest.raises(ProtocolError, match="over the limit"):
        read(65, 64)


def test_cosine_learning_rate_runs_from_lr_to_lr_final():
    from qrnn_deploy.nn.train import cosine_lr

    assert cosine_lr(1e-3, 0.1, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 0.1, 1.0) == pytest.approx(1e-4)
    assert cosine_lr(1e-3, 0.1, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 / 2))
    assert cosine_lr(2e-3, 0.0, 0.25) == pytest.approx(2e-3 * 0.5 * (1 + 2 ** -0.5))
