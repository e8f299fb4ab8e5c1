"""Edge cases of the Python runtime found by review: each was a crash with an untyped error, a
silently wrong translation, or a stream left inconsistent. Every test here failed before its fix."""

import numpy as np
import pytest

from qrnn_deploy.errors import ConfigError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.runtime import GreedyDecoder, load_bundle
from qrnn_deploy.runtime.generate import pick_token
from qrnn_deploy.runtime.stream import to_ids
from qrnn_deploy.vocab import UNK, CharVocab
from translators import greedy_decoder, portable_translator, random_translator

VOCAB = CharVocab.build(["abcdefghijklmnop "])
SOURCES = ["ponm lkji hgfe", "hello", "dead beef"]
MAX_LEN = 25


@pytest.fixture(scope="module")
def model():
    return random_translator(len(VOCAB), len(VOCAB), 0)


@pytest.fixture(scope="module")
def tr(model, tmp_path_factory):
    return portable_translator(model, tmp_path_factory.mktemp("edges") / "bundle", VOCAB)


def _decoder(tr, text):
    return greedy_decoder(tr, text, MAX_LEN)


@pytest.mark.parametrize("lp", [1000.0, -1.0, 10.5, float("nan")])
def test_length_penalty_out_of_range_is_refused_at_the_start(tr, model, lp):
    """(len + 1) ** 1000 overflowed at the end of a beam search (OverflowError, the decoder left
    done without a result); every decoder now refuses what the CLI and server refuse."""
    ts = tr.stream()
    ts.feed("abc")
    with pytest.raises(ConfigError, match=r"length_penalty must be a number in \[0, 10\]"):
        ts.decoder(beam=3, max_len=MAX_LEN, length_penalty=lp)
    assert not ts.ended  # the source stays open for a corrected call
    with pytest.raises(ConfigError, match="length_penalty"):
        model.beam_search(VOCAB.encode("abc"), beam=3, max_len=MAX_LEN, length_penalty=lp)
    assert ts.decoder(beam=3, max_len=MAX_LEN, length_penalty=10.0) is not None


def test_a_decoder_that_does_not_fit_leaves_the_batch_intact(tr):
    """A hand-built decoder with the wrong memory width made DecodeBatch.step raise a numpy
    ValueError after it had moved the shared buffers: the next step then decoded one
    translation with another's context. It is now refused with StreamError before anything
    moves, and the batch goes on as if it had never been offered."""
    alone = [tr.translate_ids(s, max_len=MAX_LEN) for s in SOURCES]
    decs = [_decoder(tr, s) for s in SOURCES]
    batch = tr.decode_batch()
    got = [list(t) for t in batch.step(decs)]
    ts = tr.stream()
    ts.feed("ab")
    bad = GreedyDecoder(np.zeros((2, 7), np.float32), ts.cond, tr.decoder.zero_states(1), 5)
    with pytest.raises(StreamError, match="memory has shape"):
        batch.step([decs[0], decs[2], bad])
    no_states = GreedyDecoder(np.zeros((2, tr.decoder.input_specs["memory"].shape[2]), np.float32), ts.cond, {}, 5)
    with pytest.raises(StreamError, match="states lack"):
        batch.step([decs[0], no_states])
    while not all(d.done for d in decs):
        for g, new in zip(got, batch.step(decs)):
            g.extend(new)
    assert got == alone


def test_feed_batch_is_all_or_nothing(tr):
    """When the encoder call of one length group failed, streams of groups already run had
    advanced their states without their memory: the stream stayed inconsistent for good."""
    a, b = tr.stream(), tr.stream()
    runner = tr.encoder.runner
    real = runner.run

    def fails_on_two_steps(inputs):
        if inputs["src"].shape[1] == 2:
            raise StreamError("simulated backend failure")
        return real(inputs)

    runner.run = fails_on_two_steps
    try:
        with pytest.raises(StreamError, match="simulated"):
            tr.feed_batch([(a, "abc"), (b, "de")])
    finally:
        runner.run = real
    assert a.source_length == 0 and b.source_length == 0
    tr.feed_batch([(a, "abc"), (b, "de")])  # as if the failed call had never been made
    d = a.decoder(beam=1, max_len=MAX_LEN)
    assert list(tr.decode_batch().run(d)) == tr.translate_ids("abc", max_len=MAX_LEN)


@pytest.mark.parametrize("temperature", [1e-310, 5e-324])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    """logits / 1e-310 overflowed to inf, the softmax to NaN: numpy's ValueError."""
    logits = np.array([0.5, 3.0, -2.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert pick_token(logits, temperature, rng=rng) == 1
    assert pick_token(logits, temperature, top_k=2, rng=rng) == 1


def test_out_of_range_ids_never_wrap_into_valid_ones():
    """Cast to int32 first, 2**32 + 5 became id 5 instead of <unk>."""
    got = to_ids(np.array([2 ** 32 + 5, -(2 ** 32) + 7, 3], dtype=np.int64), None, 20, UNK, np.int32)
    assert got.dtype == np.int32 and got.tolist() == [UNK, UNK, 3]


def test_tokens_ends_the_source_and_checks_options_at_the_call(tr):
    """tokens() was a generator: bad options raised only at the first next(), and the source
    stayed open, so a piece fed after tokens() changed the translation being decoded."""
    ts = tr.stream()
    ts.feed("abc")
    with pytest.raises(ConfigError, match="beam"):
        ts.tokens(beam=0)
    it = ts.tokens(max_len=MAX_LEN)
    assert ts.ended
    with pytest.raises(StreamError):
        ts.feed("def")
    assert list(it) == tr.translate_ids("abc", max_len=MAX_LEN)


@pytest.mark.parametrize("bad", [None, [None], "abc", [1.5], [True]])
def test_detokenize_refuses_what_is_not_ids(tr, bad):
    with pytest.raises(StreamError, match="detokenize"):
        tr.detokenize(bad)
    assert tr.detokenize(np.array([5, 6])) == tr.detokenize([5, 6]) == "".join(tr.token_text(t) for t in (5, 6))


def test_a_closed_stream_says_it_is_closed(tr):
    ts = tr.stream()
    ts.feed("abc")
    ts.close()
    with pytest.raises(StreamError, match="closed"):
        ts.memory
    with pytest.raises(StreamError, match="closed"):
        ts.decoder()


def test_generate_with_the_default_prompt_on_a_bundle_without_vocabulary(tmp_path):
    """generate()'s default prompt is "", which a bundle without a vocabulary refused as text
    (found by differential fuzzing); an empty prompt starts from <s> either way."""
    from qrnn_deploy.nn import QRNNLanguageModel
    import torch

    torch.manual_seed(0)
    export_bundle(QRNNLanguageModel(9, 4, 4, 1), tmp_path / "lm", fo_pool="portable", verify=False)
    b = load_bundle(tmp_path / "lm")
    assert list(b.language_model().generate(max_new_tokens=5)) == list(b.language_model().generate([], 5))
    lm = b.language_model()
    lm.feed("")
    with pytest.raises(StreamError, match="no vocabulary"):
        lm.feed("abc")
