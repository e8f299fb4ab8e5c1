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


# == round 3: the native kernel, export (schema, reference, TensorRT, Triton), CLI, benchmark ======

# -- the native CPU kernel: never writes outside its outputs ------------------------------------------

@pytest.mark.parametrize("B", [255, 256, 257])
def test_kernel_writes_nothing_past_h_and_c_last_at_the_block_size(B):
    """Items are processed in blocks of 256 (one item = one batch row here, H <= 256): a range of
    255, 256 or 257 items must end exactly at its last item. Guard bands of NaN after h and
    c_last must survive the call, and the outputs match the C ABI's own contract (reference)."""
    import ctypes

    from qrnn_deploy.nn import _cpu_kernels
    from qrnn_deploy.nn.fo_pool import fo_pool_ref

    lib = _cpu_kernels._load()
    if lib is None:
        pytest.skip(f"libqrnn_kernels.so not available: {_cpu_kernels.unavailable_reason()}")
    T, H, P, guard = 2, 4, 3, 3 * 256 * 4
    g = torch.Generator().manual_seed(0)
    gates = torch.zeros(T * B * P * H + guard)
    gates[:T * B * P * H] = torch.randn(T * B * P * H, generator=g)
    h = torch.full((T * B * H + guard,), float("nan"))
    c_last = torch.full((B * H + guard,), float("nan"))
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    for batch_first in (0, 1):
        h.fill_(float("nan"))
        c_last.fill_(float("nan"))
        rc = lib.qrnn_fo_pool_forward_f32(ptr(gates), None, ptr(h), ptr(c_last), T, B, H, P, batch_first, 0, 1)
        assert rc == 0
        assert torch.isnan(h[T * B * H:]).all() and torch.isnan(c_last[B * H:]).all()
        shape = (B, T, P * H) if batch_first else (T, B, P * H)
        h_ref, c_ref = fo_pool_ref(gates[:T * B * P * H].view(shape).double(), None, "fo", bool(batch_first), False)
        torch.testing.assert_close(h[:T * B * H].view(h_ref.shape), h_ref.float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c_last[:B * H].view(B, H), c_ref.float(), rtol=1e-6, atol=1e-6)


# -- export: the numpy FoPool of the reference evaluator ------------------------------------------------

def test_reference_fo_pool_keeps_float16_and_takes_an_empty_c0_as_absent():
    from qrnn_deploy.export.reference import fo_pool_numpy

    gates = np.zeros((2, 1, 3), np.float16)  # 'fo', H = 1: z = tanh 0 = 0, f = o = 1/2
    h, c = fo_pool_numpy(gates, np.array([[4.0]], np.float16), "fo")
    assert h.dtype == c.dtype == np.float16
    # c_1 = 4/2 = 2, c_2 = 1; h = c / 2
    np.testing.assert_array_equal(h[:, 0, 0], np.array([1.0, 0.5], np.float16))
    np.testing.assert_array_equal(c, np.array([[1.0]], np.float16))
    # An empty c0 (an optional input given as a 0-size tensor) is the zero state.
    h0, c0 = fo_pool_numpy(gates.astype(np.float32) + 1, np.zeros((0,), np.float32), "f")
    h1, c1 = fo_pool_numpy(gates.astype(np.float32) + 1, None, "f")
    np.testing.assert_array_equal(h0, h1)
    np.testing.assert_array_equal(c0, c1)


# -- export: shape inference of the registered qrnn::FoPool schema --------------------------------------

def _infer_fo_pool(gates_shape, **attrs):
    from onnx import TensorProto, helper

    from qrnn_deploy.export.schema import register_fo_pool_schema

    register_fo_pool_schema()
    node = helper.make_node("FoPool", ["gates"], ["h", "c_last"], domain="qrnn", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("gates", TensorProto.FLOAT, gates_shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h", "c_last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in inferred.graph.output}


def test_schema_infers_h_and_c_last_by_layout_and_default_pooling():
    # No pooling attribute: 'fo', P = 3, so [5, 2, 12] -> H = 4.
    assert _infer_fo_pool([5, 2, 12]) == {"h": [5, 2, 4], "c_last": [2, 4]}
    # batch_first: B is axis 0.
    assert _infer_fo_pool(["B", "T", 12], pooling="ifo", batch_first=1) == {"h": ["B", "T", 3], "c_last": ["B", 3]}
    assert _infer_fo_pool([7, 2, 12], pooling="f", batch_first=1) == {"h": [7, 2, 6], "c_last": [7, 6]}


@pytest.mark.parametrize("shape,pooling,needle", [([5, 2, 10], "fo", "is not 3\\*H"), ([5, 2, 12, 6], "fo", "rank 4"),
                                                  ([5, 12], "f", "rank 2")])
def test_schema_refuses_gates_that_are_not_rank_3_p_times_h(shape, pooling, needle):
    with pytest.raises(Exception, match=needle):
        _infer_fo_pool(shape, pooling=pooling)


# -- export: TensorRT plugin attributes in subgraphs --------------------------------------------------

def test_add_plugin_attrs_reaches_fo_pool_nodes_inside_subgraphs():
    from onnx import TensorProto, helper

    from qrnn_deploy.export.tensorrt_nodes import PLUGIN_ATTRS, add_plugin_attrs

    fo = lambda name: helper.make_node("FoPool", ["g"], [name], domain="qrnn", pooling="fo")  # noqa: E731
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    then = helper.make_graph([fo("a")], "then", [], [out("a")])
    other = helper.make_graph([fo("b")], "else", [], [out("b")])
    top = helper.make_graph([fo("top"), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                            "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out("y")])
    model = helper.make_model(top)
    assert add_plugin_attrs(model) == 3
    nested = [model.graph.node[1].attribute[i].g.node[0] for i in range(2)]
    for node in [model.graph.node[0], *nested]:
        attrs = {a.name: a.s.decode() for a in node.attribute if a.name in PLUGIN_ATTRS}
        assert attrs == PLUGIN_ATTRS


# -- export: Triton configs and TensorRT profiles -------------------------------------------------------

def test_triton_dims_need_the_batch_axis_first_and_max_batch_size_at_least_1():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export import triton

    assert triton._dims(["B", "T", 4], "x") == [-1, 4]
    with pytest.raises(ExportError, match="batch-first"):
        triton._dims(["T", "B", 4], "x")
    with pytest.raises(ExportError, match="max_batch_size"):
        triton.model_config(None, "lm", "qrnn_lm", max_batch_size=0)


@pytest.fixture(scope="module")
def portable_seq2seq_bundle(tmp_path_factory):
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import QRNNSeq2Seq

    torch.manual_seed(0)
    model = QRNNSeq2Seq(12, 14, embed_size=8, hidden_size=8, num_layers=1, encoder_window=2, decoder_window=1)
    out = tmp_path_factory.mktemp("s2s") / "bundle"
    export_bundle(model, out, fo_pool="portable", verify=False)
    return out


def test_triton_portable_bundle_never_names_the_op_library(portable_seq2seq_bundle, tmp_path):
    from qrnn_deploy.export.triton import write_model_repository

    for cfg in write_model_repository(portable_seq2seq_bundle, tmp_path / "repo", op_library="/opt/libqrnn_ort.so"):
        assert "model_operations" not in cfg.read_text() and "libqrnn_ort" not in cfg.read_text()


def test_triton_refuses_engines_if_any_graph_used_the_plugin_library(tmp_path):
    from qrnn_deploy.bundle import EngineSpec, load_manifest
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.export.triton import write_model_repository
    from qrnn_deploy.nn import QRNNSeq2Seq

    torch.manual_seed(0)
    model = QRNNSeq2Seq(12, 14, embed_size=8, hidden_size=8, num_layers=1, encoder_window=2, decoder_window=1)
    b = tmp_path / "b"
    export_bundle(model, b, fo_pool="custom", verify=False)
    man = load_manifest(b)
    for role, plugin in (("encoder", "aot"), ("decoder", "library")):
        (b / f"{role}.plan").write_bytes(b"engine")
        man.engines[role] = EngineSpec(file=f"{role}.plan", precision="fp32", plugin=plugin, profiles=[])
    man.write(b)
    with pytest.raises(ExportError, match="--plugin aot"):
        write_model_repository(b, tmp_path / "repo", backend="tensorrt")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("config.pbtxt"))


def test_engine_profile_source_length_opt_is_64_or_the_max():
    from types import SimpleNamespace as NS

    from qrnn_deploy.export.tensorrt_engine import engine_profiles

    man = NS(graphs={"encoder": NS(inputs=[NS(name="memory", shape=["B", "S", 4])], states=[])})
    (chunk,) = engine_profiles(man, "encoder", max_batch=3, max_chunk=8, max_source=256)
    assert chunk["shapes"]["memory"] == {"min": [1, 1, 4], "opt": [3, 64, 4], "max": [3, 256, 4]}
    (chunk,) = engine_profiles(man, "encoder", max_batch=3, max_chunk=8, max_source=50)
    assert chunk["shapes"]["memory"]["opt"] == [3, 50, 4]


def test_export_opset_range_is_checked_at_both_ends():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import MIN_OPSET, _check_opset

    newest = onnx.defs.onnx_opset_version()
    assert _check_opset(MIN_OPSET) == MIN_OPSET and _check_opset(newest) == newest
    for bad in (MIN_OPSET - 1, newest + 1):
        with pytest.raises(ExportError, match="opset"):
            _check_opset(bad)


# -- export: option checks and metadata -------------------------------------------------------------

def test_export_option_checks_at_their_boundaries(tmp_path):
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import _check_options

    ok = dict(out_dir=tmp_path, tol=1e-4, quantized_tol=0.1, quantize_block=128, verify_engine="auto", node_attrs=None)
    _check_options(**dict(ok, tol=0, quantized_tol=0.0))  # exact agreement may be asked for
    _check_options(**dict(ok, quantize_block=16))
    for bad in (dict(tol=-1e-9), dict(quantize_block=8), dict(quantize_block=48), dict(quantize_block=0),
                dict(node_attrs={"plugin_version": 1})):
        with pytest.raises(ExportError):
            _check_options(**dict(ok, **bad))


def test_export_vocabulary_may_fill_but_not_exceed_the_model_vocabulary():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import resolve_vocab
    from qrnn_deploy.nn import QRNNLanguageModel

    model = QRNNLanguageModel(8, 4, 4, 1)
    specials = CharVocab.build([""]).symbols  # the 4 special symbols
    assert len(specials) == 4
    fits = CharVocab(specials + list("abcd"))  # 8 symbols for vocab_size 8
    assert resolve_vocab(model, fits)["symbols"] == fits.symbols
    with pytest.raises(ExportError, match="9 symbols"):
        resolve_vocab(model, CharVocab(specials + list("abcde")))


def test_quantized_export_records_the_sizes_of_the_quantized_files(tmp_path):
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(0)
    man = export_bundle(QRNNLanguageModel(40, 32, 32, 1), tmp_path / "b", fo_pool="portable", verify=False,
                        quantize="int8", quantize_block=16)
    sizes = man.metadata["sizes"]
    assert sizes == {"lm": (tmp_path / "b" / "lm.onnx").stat().st_size}


def test_export_vocabulary_pair_of_three_is_one_export_error():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import resolve_vocab
    from qrnn_deploy.nn import QRNNSeq2Seq

    model = QRNNSeq2Seq(12, 14, embed_size=4, hidden_size=4, num_layers=1)
    v = CharVocab.build(["abc"])
    assert set(resolve_vocab(model, (v, v))) == {"src", "tgt"}
    with pytest.raises(ExportError, match="got 3 entries"):
        resolve_vocab(model, (v, v, v))


# -- benchmark: the figures a report publishes ----------------------------------------------------------

def _enc(impl, family, ms, window=1, macs=300, H=32):
    return {"section": "encode", "impl": impl, "family": family, "H": H, "window": window, "B": 2, "T": 8, "ms": ms,
            "macs_per_token": macs}


def _lat(impl, family, p50, window=1, H=32):
    return {"section": "stream_latency", "impl": impl, "family": family, "H": H, "window": window, "B": 1, "T": 1,
            "ms": p50, "p50_ms": p50, "p99_ms": 2 * p50}


def _bench_result(recs):
    from qrnn_deploy.benchmark.suite import BenchResult, preset

    return BenchResult(preset("smoke", 1), {}, {"ort_gemm_gflops": 10.0}, recs)


def test_report_matmul_share_only_for_bundles_and_never_negative():
    from qrnn_deploy.benchmark import report

    recs = report.derive(_bench_result([
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800), _enc("qrnn-custom", "qrnn", 1.15),
        _enc("qrnn-matmuls", "floor", 1.0, macs=None), _enc("qrnn-torch", "qrnn", 5.0),
        _enc("qrnn-custom", "qrnn", 2.0, H=64), _enc("qrnn-matmuls", "floor", 2.5, macs=None, H=64),
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800, H=64)]))
    by = {(r["impl"], r["H"]): r for r in recs}
    assert by["qrnn-custom", 32]["outside_matmul_share"] == pytest.approx(0.15 / 1.15)
    # Matrix products timed slower than the whole graph (noise): the share outside them is 0, not < 0.
    assert by["qrnn-custom", 64]["outside_matmul_share"] == 0.0
    assert by["qrnn-custom", 64]["time_over_matmuls"] == pytest.approx(0.8)
    # PyTorch's QRNN is not the exported graph whose matrix products were timed.
    assert "time_over_matmuls" not in by["qrnn-torch", 32] and "matmul_ms" not in by["qrnn-torch", 32]
    # 1.15 / 1.0 is exactly the target: met.
    t = report.targets(recs)["encode_within_15pct_of_matmuls"]
    assert by["qrnn-custom", 32]["time_over_matmuls"] == 1.15 and (t["met"], t["total"]) == (2, 2)


def test_report_targets_pick_the_custom_bundle_the_best_lstm_and_the_same_window():
    from qrnn_deploy.benchmark import report

    recs = report.derive(_bench_result([
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800), _enc("lstm-torch", "lstm", 4.0, window=None, macs=800),
        _enc("qrnn-portable", "qrnn", 1.0), _enc("qrnn-custom", "qrnn", 2.0),
        _lat("qrnn-custom", "qrnn", 0.1, window=1), _lat("qrnn-custom", "qrnn", 0.1, window=2),
        _lat("qrnn-torch", "qrnn", 0.15, window=1), _lat("qrnn-torch", "qrnn", 0.3, window=2)]))
    t = report.targets(recs)
    assert t["bundle"] == "qrnn-custom"  # preferred over the portable one when both ran
    mac = t["speedup_at_least_mac_ratio"]
    # 10 / 2 = 5x over lstm-ort >= 800 / 300; over the faster LSTM (4 ms) 2x < 8/3.
    assert (mac["met"], mac["total"], mac["vs_best_lstm_met"]) == (1, 1, 0)
    s = t["stream_latency_2x_below_torch"]
    assert [c["ratio"] for c in s["cases"]] == pytest.approx([1.5, 3.0])  # each against its own window
    assert (s["met"], s["total"]) == (1, 2)


def test_report_json_has_no_infinities():
    from qrnn_deploy.benchmark import report

    assert report._clean({"a": float("inf"), "b": [float("-inf"), float("nan"), 1.5], "c": "x"}) == \
        {"a": None, "b": [None, None, 1.5], "c": "x"}


def test_mac_counts_with_embedding_unlike_hidden_and_an_output_layer():
    from qrnn_deploy.benchmark.contenders import macs_per_token_lstm, macs_per_token_qrnn

    # E = 10, H = 4, V = 7. QRNN fo, windows [2, 1]: 3*4*2*10 + 3*4*1*4 + 4*7 = 240 + 48 + 28.
    assert macs_per_token_qrnn(10, 4, 2, [2, 1], 7) == 316
    # LSTM: 4*4*(10+4) + 4*4*(4+4) + 4*7 = 224 + 128 + 28.
    assert macs_per_token_lstm(10, 4, 2, 7) == 380


def test_interleaved_rounds_rotate_and_latency_blocks_run_at_least_two():
    from qrnn_deploy.benchmark.timing import interleaved, per_call_latency

    calls = []
    interleaved([lambda n=n: calls.append(n) for n in "abc"], rounds=3, warmup=0)
    assert "".join(calls) == "abc" + "bca" + "cab"
    lat = per_call_latency([lambda: None], tokens=3, blocks=5, warmup=0, budget_s=0.0)
    assert len(lat[0].samples) == 2 * 3


def test_floors_count_flops_and_bytes(monkeypatch):
    from qrnn_deploy.benchmark import floors
    from qrnn_deploy.benchmark.timing import Timing

    monkeypatch.setattr(floors, "interleaved", lambda fns, rounds: [Timing([0.5, 0.25])])
    # 2 n^3 flops in the best time; a copy reads and writes every byte.
    assert floors.numpy_gemm_gflops(n=8, repeat=1) == pytest.approx(2 * 8 ** 3 / 0.25 / 1e9)
    assert floors.copy_bandwidth_gbs(mbytes=1, repeat=1) == pytest.approx(2 * (1 << 20) / 0.25 / 1e9)


def test_matmul_weights_of_a_gemm_with_trans_b_are_k_by_n():
    from onnx import TensorProto, helper, numpy_helper

    from qrnn_deploy.benchmark import floors

    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # [N = 3, K = 4], used transposed
    b = np.ones(3, np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    ((got_w, got_b),) = floors.matmul_weights(helper.make_model(g))
    np.testing.assert_array_equal(got_w, w.T)
    np.testing.assert_array_equal(got_b, b)


def test_suite_tokens_per_second_and_floors_kept_at_their_best(monkeypatch):
    import numpy as np

    from qrnn_deploy.benchmark import suite
    from qrnn_deploy.benchmark.contenders import Contender
    from qrnn_deploy.benchmark.suite import BenchResult, preset

    cfg = preset("smoke", 1, rounds=2, min_rounds=2)
    res = BenchResult(cfg, {}, {})
    lstm = [Contender("lstm-ort", "lstm", lambda tokens: (lambda: None), None)]
    suite._encode_case(cfg, 8, 3, 5, lstm, [], res, np.random.default_rng(0))
    (r,) = res.records
    assert r["tokens_per_s"] * r["ms"] / 1e3 == pytest.approx(3 * 5)  # B * T tokens per call

    runs = iter([{"numpy_gemm_gflops": 1.0, "copy_gbs": 9.0, "ort_gemm_gflops": 5.0, "gemm_n": 8},
                 {"numpy_gemm_gflops": 2.0, "copy_gbs": 3.0, "ort_gemm_gflops": 4.0, "gemm_n": 8}])
    monkeypatch.setattr(suite, "_floors", lambda cfg: next(runs))
    out = suite.run_bench(preset("smoke", 1, hiddens=()), None)
    assert {k: out.floors[k] for k in ("numpy_gemm_gflops", "copy_gbs", "ort_gemm_gflops")} == \
        {"numpy_gemm_gflops": 2.0, "copy_gbs": 9.0, "ort_gemm_gflops": 5.0}
    assert out.floors["copy_gbs_start"] == 9.0 and out.floors["copy_gbs_end"] == 3.0


# -- command line: option checks at their boundaries ----------------------------------------------------

def _cli(capsys, *args):
    from qrnn_deploy.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_option_checks_at_their_boundaries():
    from qrnn_deploy.cli.options import check_at_most, check_length_penalty, check_positive
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.limits import LENGTH_PENALTY_RANGE

    check_at_most(100, "--n", 100)
    check_positive(1e-300, "--tol")
    lo, hi = LENGTH_PENALTY_RANGE
    check_length_penalty(lo)
    check_length_penalty(hi)
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ConfigError, match="--tol"):
            check_positive(bad, "--tol")
    with pytest.raises(ConfigError, match="<= 100"):
        check_at_most(101, "--n", 100)


def test_export_cli_refuses_small_blocks_and_int8_for_tensorrt(capsys, tmp_path):
    ckpt = tmp_path / "none.safetensors"  # the options are checked before the checkpoint is read
    for args, needle in (((ckpt, "-o", tmp_path / "b", "--quantize", "int8", "--quantize-block", "8"), "--quantize-block"),
                         ((ckpt, "-o", tmp_path / "b", "--quantize", "int8", "--tensorrt"), "--tensorrt")):
        code, _, err = _cli(capsys, "export", *args)
        assert code == 2 and err.startswith("error: ") and needle in err, err


def test_verify_samples_at_most_100000(capsys, tmp_path):
    code, _, err = _cli(capsys, "verify", tmp_path / "nobundle", "--samples", 100_001)
    assert code == 2 and "--samples must be <= 100000" in err, err


def test_verify_random_inputs_hold_no_special_symbols():
    from qrnn_deploy.cli.verify import random_inputs

    xs = random_inputs(200, EOS + 3, seed=0)
    assert len(xs) == 200 and all(3 <= len(x) <= 12 for x in xs)
    assert {t for x in xs for t in x} == {EOS + 1, EOS + 2}
    assert random_inputs(5, EOS + 1, seed=0) == []


def test_serve_cli_max_beam_defaults_to_the_beam_and_may_equal_it(monkeypatch, capsys):
    from qrnn_deploy import serve as serve_pkg

    got = []
    monkeypatch.setattr(serve_pkg, "run_server", lambda bundle, cfg, **kw: got.append(cfg))
    from qrnn_deploy.cli import main

    for args, want in ((["--beam", "12"], 12), (["--beam", "3"], 8), (["--beam", "5", "--max-beam", "5"], 5)):
        with pytest.raises(SystemExit) as e:
            main(["serve", "nobundle", *args])
        assert e.value.code == 0 and got[-1].max_beam == want
