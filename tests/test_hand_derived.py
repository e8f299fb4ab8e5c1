"""Behaviour pinned down by hand-derived expectations, where the parity tests (runtime against the
PyTorch reference) cannot see a mistake: both share `qrnn_deploy.decoding`, so a wrong beam rule
there is wrong in both. Also boundaries of the server's limits, sampling, scoring and verification
that the end-to-end tests do not reach. Every test here failed on a small deliberate bug (a mutant)
that the rest of the suite let through."""

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
    from translators import portable_translator, random_translator

    model = random_translator(len(VOCAB), len(VOCAB), 0)
    return portable_translator(model, tmp_path_factory.mktemp("s2s_mut") / "portable", VOCAB)


def _greedy(translator, src):
    from translators import greedy_decoder

    return greedy_decoder(translator, src, MAX_LEN)


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
