"""Behaviour pinned down by hand-derived expectations, where the parity tests (runtime against the
PyTorch reference) cannot see a mistake: both share `qrnn_deploy.decoding`, so a wrong beam rule
there is wrong in both. Also boundaries of the server's limits, sampling, scoring and verification
that the end-to-end tests do not reach. Every test here failed on a small deliberate bug (a mutant)
that the rest of the suite let through."""

import json
import math

import numpy as np
import onnx
import pytest
import torch

from qrnn_deploy.decoding import beam_step, best_hypothesis
from qrnn_deploy.vocab import EOS, UNK, CharVocab

NEG = -1e9  # log-prob of a symbol that is never among the candidates


def _logp(rows):
    """[K, V] log-probs from {symbol: log-prob} per row (others NEG), V = 8."""
    out = np.full((len(rows), 8), NEG)
    for k, r in enumerate(rows):
        for v, lp in r.items():
            out[k, v] = lp
    return out


# -- beam_step: the rule of every decoder -----------------------------------------------------------

def test_beam_step_walks_2_beam_candidates_so_an_early_eos_leaves_beam_live():
    # beam 2, one live row: </s> is the best candidate (finishes), then 5 and 6 stay live. Only
    # walking the best 2*beam candidates keeps `beam` live hypotheses after a finish.
    live, fin = beam_step([0.0], _logp([{EOS: -0.1, 5: -0.2, 6: -0.3, 7: -0.4}]), 2, 0, False)
    assert fin == [(-0.1, 0, EOS)]
    assert live == [(-0.2, 0, 5), (-0.3, 0, 6)]


def test_beam_step_eos_ranked_beyond_beam_does_not_finish():
    # beam 2: 5 (rank 0), 6 (rank 1), </s> (rank 2 = beam): </s> is not within the first `beam`.
    live, fin = beam_step([0.0], _logp([{5: -0.1, 6: -0.2, EOS: -0.3, 7: -0.4}]), 2, 0, False)
    assert fin == [] and live == [(-0.1, 0, 5), (-0.2, 0, 6)]


def test_beam_step_finishes_no_more_than_beam_in_all():
    # beam 2 with one hypothesis finished already: of two </s> candidates in the first two ranks
    # only one may finish, and then `beam` are finished: nothing stays live.
    scores = [-1.0, -1.5]
    live, fin = beam_step(scores, _logp([{EOS: -0.1, 5: -2.0}, {EOS: -0.1, 6: -2.0}]), 2, 1, False)
    assert fin == [(-1.1, 0, EOS)]
    assert live == []


def test_beam_step_once_beam_finished_nothing_stays_live():
    # beam 2, one finished before: the </s> at rank 0 makes two, so the live candidates 5, 6 go.
    live, fin = beam_step([0.0], _logp([{EOS: -0.1, 5: -0.2, 6: -0.3}]), 2, 1, False)
    assert fin == [(-0.1, 0, EOS)] and live == []


def test_beam_step_last_step_finishes_only_up_to_beam():
    # beam 3, one finished before, last step: live candidates 5, 6, 7 finish with their symbol,
    # but only 3 - 1 = 2 of them, best first.
    live, fin = beam_step([0.0], _logp([{5: -0.1, 6: -0.2, 7: -0.3}]), 3, 1, True)
    assert live == [] and fin == [(-0.1, 0, 5), (-0.2, 0, 6)]
    # no earlier finished ones: all three (the beam) finish
    live, fin = beam_step([0.0], _logp([{5: -0.1, 6: -0.2, 7: -0.3}]), 3, 0, True)
    assert live == [] and fin == [(-0.1, 0, 5), (-0.2, 0, 6), (-0.3, 0, 7)]


def test_beam_step_parents_and_ties():
    # Two live rows; candidates rank by total score, ties to the lower flat index (row 0 first).
    live, fin = beam_step([-1.0, -0.5], _logp([{5: -0.5, 6: -3.0}, {5: -1.0, 7: -0.2}]), 2, 0, False)
    assert fin == [] and live == [(-0.7, 1, 7), (-1.5, 0, 5)]
    live, _ = beam_step([0.0, 0.0], _logp([{5: -1.0}, {5: -1.0}]), 1, 0, False)
    assert live == [(-1.0, 0, 5)]


# -- best_hypothesis: the length penalty -------------------------------------------------------------

def test_best_hypothesis_divides_by_length_plus_one():
    fin = [(-1.0, [5]), (-2.5, [5, 6, 7])]
    # score / (len + 1) ** lp: -1/2 = -0.5 beats -2.5/4 = -0.625 (divided by len alone the
    # longer one, -0.833 vs -1, would win).
    assert best_hypothesis(fin, 1.0) == [5]
    # lp 2: -1/4 = -0.25 vs -2.5/16 = -0.156: the longer one.
    assert best_hypothesis(fin, 2.0) == [5, 6, 7]
    # lp 0: raw scores
    assert best_hypothesis(fin, 0.0) == [5]
    # the empty hypothesis (</s> at once) counts its end symbol: -0.9 / 1 vs -1.5 / 2 = -0.75
    assert best_hypothesis([(-0.9, []), (-1.5, [4])], 1.0) == [4]


def test_best_hypothesis_ties_go_to_the_one_finished_first():
    assert best_hypothesis([(-1.0, [5]), (-1.0, [6])], 1.0) == [5]
    assert best_hypothesis([(-2.0, [5, 6]), (-2.0, [7, 8])], 0.0) == [5, 6]


def test_log_softmax64_is_float64():
    from qrnn_deploy.runtime.decoders import log_softmax64

    x = np.array([[0.0, 1e-12, 2.0]], dtype=np.float64)
    y = log_softmax64(x)
    assert y.dtype == np.float64
    ref = x - math.log(sum(math.exp(v) for v in x[0]))
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-15)
    assert y[0, 1] > y[0, 0]  # a difference of 1e-12 survives (it ranks beam candidates)


# -- DecodeBatch: greedy rows leaving and joining ---------------------------------------------------

VOCAB = CharVocab.build(["abcdefghijklmnop "])
MAX_LEN = 25
SOURCES = [[int(t) for t in np.random.default_rng(i).integers(4, len(VOCAB), size=n)]
           for i, n in enumerate([1, 3, 5, 7, 9, 11, 2, 8])]


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    from translators import random_translator

    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.runtime import load_bundle

    model = random_translator(len(VOCAB), len(VOCAB), 0)
    out = tmp_path_factory.mktemp("s2s_mut") / "portable"
    export_bundle(model, out, fo_pool="portable", verify=False, vocab=VOCAB)
    return load_bundle(out, threads=1).translator()


def _greedy(translator, src):
    ts = translator.stream()
    ts.feed(src)
    return ts.decoder(beam=1, max_len=MAX_LEN)


def test_decode_batch_of_greedy_rows_leaving_from_the_middle(translator):
    """Only greedy (one-row) decoders: rows that leave are filled from the last rows. A decoder
    dropped from the middle, and others finishing at different steps, leave the rest exact."""
    alone = [translator.translate_ids(s, beam=1, max_len=MAX_LEN) for s in SOURCES]
    assert len({len(a) for a in alone}) >= 3  # they finish at different steps
    batch = translator.decode_batch()
    decs = [_greedy(translator, s) for s in SOURCES]
    outs = [[] for _ in SOURCES]
    live = list(range(len(SOURCES)))
    for step in range(MAX_LEN + 2):
        if step == 2:
            live.remove(1)  # closed mid-translation (rows 0, 2.. stay; the last row fills row 1)
        if step == 4:
            live.remove(5)
        for i, new in zip(live, batch.step([decs[i] for i in live])):
            outs[i] += new
        live = [i for i in live if not decs[i].done]
    for i, (got, ref) in enumerate(zip(outs, alone)):
        if i in (1, 5):
            assert got == ref[:len(got)]
        else:
            assert got == ref and decs[i].result == ref


# -- nn: zoneout and dropout -------------------------------------------------------------------------

def test_zoneout_rate_is_the_probability_of_keeping_the_cell():
    from qrnn_deploy.nn import QRNNLayer

    torch.manual_seed(0)
    layer = QRNNLayer(3, 128, pooling="f", zoneout=0.2).train()
    y, _ = layer(torch.randn(4, 8, 3))
    kept = (y[:, 1:] == y[:, :-1]).float().mean().item()
    assert 0.12 < kept < 0.28, kept  # about 20 % zoned out, not 80 %


def test_ifo_zoneout_keeps_the_cell():
    """A zoned-out unit of an 'ifo' layer keeps its cell: f = 1 and i = 0 (i * z must not add).
    Up to rounding: the native float32 kernel forms c_t as one quotient, a few ulp off c_{t-1}."""
    from qrnn_deploy.nn import QRNNLayer

    torch.manual_seed(0)
    layer = QRNNLayer(3, 128, pooling="ifo", zoneout=0.5).train()
    x = torch.randn(4, 8, 3)
    state = layer.init_state(4)
    state = state._replace(c=torch.randn(4, 128))
    kept = []
    for t in range(8):
        _, nxt = layer(x[:, t:t + 1], state)
        kept.append(((nxt.c - state.c).abs() <= 1e-6).float().mean().item())
        state = nxt
    assert 0.35 < float(np.mean(kept)) < 0.65, kept


def test_dropout_acts_between_layers_only():
    from qrnn_deploy.nn import QRNN

    torch.manual_seed(0)
    one = QRNN(3, 16, num_layers=1, dropout=0.5)
    x = torch.randn(2, 7, 3)
    y_eval, _ = one.eval()(x)
    y_train, _ = one.train()(x)
    torch.testing.assert_close(y_train, y_eval)  # one layer: nothing between layers to drop
    two = QRNN(3, 16, num_layers=2, dropout=0.5).train()
    y, _ = two(x)
    assert (y == 0).float().mean().item() < 0.01  # the last layer's output is not dropped


# -- server protocol limits at their boundaries -----------------------------------------------------

def test_protocol_limits_at_the_boundary():
    from qrnn_deploy.serve.config import ServeConfig
    from qrnn_deploy.serve.protocol import ProtocolError, check_source_length, decode_frame, decode_options

    cfg = ServeConfig(max_source_chars=30, max_message_bytes=200, max_beam=5, beam=1)
    assert check_source_length(20, "x" * 10, cfg) is None  # exactly the limit is allowed
    assert check_source_length(20, "x" * 11, cfg).code == "source_too_long"
    assert decode_frame(b"x" * 200, 200) == "x" * 200
    with pytest.raises(ProtocolError, match="201 bytes"):
        decode_frame(b"x" * 201, 200)
    assert decode_frame("x" * 200, 200) == "x" * 200
    with pytest.raises(ProtocolError) as e:
        decode_frame("ä" * 101, 200)  # 101 characters, 202 bytes of UTF-8
    assert e.value.code == "too_large" and "202 bytes" in e.value.message
    assert decode_frame("ä" * 100, 200) == "ä" * 100
    assert decode_options({"beam": 5}, cfg)[0] == 5
    with pytest.raises(ProtocolError, match="beam"):
        decode_options({"beam": 6}, cfg)


def test_rate_window_counts_the_last_window():
    from qrnn_deploy.serve.metrics import RateWindow

    rw = RateWindow(10.0)
    t0 = rw._start
    rw.add(5, now=t0 + 1)
    rw.add(5, now=t0 + 9)
    assert rw.rate(now=t0 + 10) == pytest.approx(10 / 10)
    assert rw.rate(now=t0 + 15) == pytest.approx(5 / 10)  # the first event is over 10 s old
    assert rw.rate(now=t0 + 30) == 0.0


# -- sampling and ids --------------------------------------------------------------------------------

def test_top_k_keeps_exactly_k_symbols():
    from qrnn_deploy.runtime.generate import pick_token

    rng = np.random.default_rng(0)
    logits = np.array([3.0, 2.0, 1.0, 0.0, -1.0])
    picked = {pick_token(logits, temperature=100.0, top_k=3, rng=rng) for _ in range(300)}
    assert picked == {0, 1, 2}
    picked = {pick_token(logits, temperature=100.0, top_k=1, rng=rng) for _ in range(20)}
    assert picked == {0}


def test_ids_at_vocab_size_become_unk():
    from qrnn_deploy.runtime.stream import to_ids

    assert to_ids([0, 9, 10, 11, -1], None, 10).tolist() == [0, 9, UNK, UNK, UNK]


# -- scoring -----------------------------------------------------------------------------------------

PAIRS = [("Das Haus ist sehr groß.", "The house is very big."),
         ("Das Haus ist sehr groß.", "The house is really big."),
         ("Katze", "cat"),
         ("Der Hund schläft im Garten.", "The dog sleeps in the garden."),
         ("schnell", "fast")]


def test_copy_baseline_scores_the_sources():
    from qrnn_deploy.data.scoring import score

    perfect = [e for _, e in PAIRS]
    s = score(perfect, PAIRS)
    copy = score([d for d, _ in PAIRS], PAIRS)  # a system that copies the source
    assert (s["copy_bleu"], s["copy_chrf"]) == (copy["bleu"], copy["chrf"])
    m, cm = s["multi_ref"], copy["multi_ref"]
    assert (m["copy_bleu"], m["copy_chrf"]) == (cm["bleu"], cm["chrf"])
    assert m["copy_bleu"] < 100 and m["bleu"] == 100.0


def test_multi_ref_scores_each_sources_first_hypothesis():
    from qrnn_deploy.data.scoring import score

    hyps = [e for _, e in PAIRS]
    hyps[1] = "zzz qqq"  # the second hypothesis of a source is not scored per source
    s = score(hyps, PAIRS)
    assert s["multi_ref"]["bleu"] == 100.0 and s["multi_ref"]["chrf"] == 100.0
    assert s["bleu"] < 100


def test_sentence_subset_is_the_full_sentences():
    from qrnn_deploy.data.scoring import score

    s = score([e for _, e in PAIRS], PAIRS)
    assert s["sentences"]["pairs"] == 3  # the two capitalised ones ending in '.' (one twice)
    hyps = [e if d[0].isupper() and d.endswith(".") else "zzz" for d, e in PAIRS]
    assert score(hyps, PAIRS)["sentences"]["chrf"] == s["sentences"]["chrf"]


def test_sample_pairs_keeps_the_original_order():
    from qrnn_deploy.data.scoring import sample_pairs

    pairs = [(f"w{i}", f"e{i}") for i in range(200)]
    got = sample_pairs(pairs, 50)
    assert len(got) == 50 and len(set(got)) == 50
    assert got == [p for p in pairs if p in set(got)]
    assert sample_pairs(pairs[::-1], 50) == got[::-1]  # the same pairs, whatever their order


# -- verification -------------------------------------------------------------------------------------

def _lm():
    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(0)
    return QRNNLanguageModel(11, embed_size=8, hidden_size=12, num_layers=2, window=[2, 1]).eval()


def test_verification_catches_nan_outputs(tmp_path):
    from qrnn_deploy.errors import VerificationError
    from qrnn_deploy.export import export_bundle, verify_graphs

    m = _lm()
    man = export_bundle(m, tmp_path, fo_pool="portable", verify=False)
    path = tmp_path / man.graphs["lm"].file
    proto = onnx.load(str(path))
    w = next(i for i in proto.graph.initializer if i.name.startswith("layer1_bias"))
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[0] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save_model(proto, str(path))
    with pytest.raises(VerificationError, match="exceeds the tolerance"):
        verify_graphs(m, {"lm": path}, man.graphs, "portable")


def test_streaming_check_uses_the_stream_tolerance(tmp_path):
    """Chunked runs that differ from the whole pass by 2e-3: within stream_tol 1e-2 (tol 1e-4 is
    for the graph against the model) they pass; with stream_tol 1e-4 they fail."""
    from qrnn_deploy.errors import VerificationError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.export.verify import ort_runner, verify_bundle

    man = export_bundle(_lm(), tmp_path, fo_pool="portable", verify=False)
    real = ort_runner(tmp_path / man.graphs["lm"].file, False)

    def noisy(feeds):
        out = real(feeds)
        if feeds["tokens"].shape[1] < 9:  # a chunk, not the whole T = 9 pass
            out["logits"] = out["logits"] + 2e-3
        return out

    v = verify_bundle(tmp_path, runners={"lm": noisy}, engine="noisy", tol=1e-4, stream_tol=1e-2)
    assert v["max_chunked_vs_whole"] == pytest.approx(2e-3, rel=1e-3)
    with pytest.raises(VerificationError, match="chunked"):
        verify_bundle(tmp_path, runners={"lm": noisy}, engine="noisy", tol=1e-2, stream_tol=1e-4)


# == round 2: runtime streams, vocabularies, manifests, data, training, quantization, server =========

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
