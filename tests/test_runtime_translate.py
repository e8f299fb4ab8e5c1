"""qrnn_deploy.runtime on seq2seq bundles: incremental encoding, greedy / beam parity with the PyTorch
reference decoders, token emission, DecodeBatch, errors, `qrnn-deploy translate`, and the no-torch
subprocess check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qrnn_deploy.errors import BuildError, BundleError, ConfigError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNSeq2Seq
from translators import random_translator
from qrnn_deploy.runtime import BeamDecoder, DecodeBatch, GreedyDecoder, load_bundle
from qrnn_deploy.vocab import BOS, EOS, UNK, CharVocab

REPO = Path(__file__).resolve().parents[1]
VOCAB = CharVocab.build(["abcdefghijklmnop "])
MAX_LEN = 25


def _native_lib_available() -> bool:
    try:
        from qrnn_deploy._native import ort_library_path

        return Path(ort_library_path()).is_file()
    except Exception:
        return False


def make_model(seed: int = 0) -> QRNNSeq2Seq:
    """A random translator whose outputs vary with the source (see translators.py)."""
    return random_translator(len(VOCAB), len(VOCAB), seed)


def export(model, out: Path, fo_pool: str) -> Path:
    export_bundle(model, out, fo_pool=fo_pool, verify=False, vocab=VOCAB)
    return out


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def bundle_dir(model, tmp_path_factory):
    return export(model, tmp_path_factory.mktemp("s2s") / "portable", "portable")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir, threads=1)


@pytest.fixture(scope="module")
def translator(bundle):
    return bundle.translator()


SOURCES = [[int(t) for t in np.random.default_rng(i).integers(4, len(VOCAB), size=n)]
           for i, n in enumerate([1, 3, 5, 7, 9, 11, 2, 8])]


@pytest.fixture(scope="module")
def refs(model):
    """The PyTorch reference decoders' answers for SOURCES (computed once per module)."""
    return {"greedy": [model.greedy_decode(s, MAX_LEN) for s in SOURCES],
            "beam": [model.beam_search(s, 4, MAX_LEN) for s in SOURCES]}


def _chunkings(n, rng, count=4):
    out = []
    for _ in range(count):
        cuts = sorted(set(rng.integers(1, n, size=rng.integers(0, n)).tolist())) if n > 1 else []
        b = [0] + cuts + [n]
        out.append([(b[i], b[i + 1]) for i in range(len(b) - 1)])
    return out


# -- loading -------------------------------------------------------------------------------------

def test_load_bundle_exposes_states(bundle, model):
    assert set(bundle.graphs) == {"encoder", "decoder"}
    enc = bundle.graph("encoder")
    names = [s.name for s in enc.states]
    assert names == ["conv_state_0", "c_state_0", "conv_state_1", "c_state_1"]
    z = enc.zero_states(5)
    assert z["conv_state_0"].shape == (5, 2, 16) and z["conv_state_1"].shape == (5, 1, 32)
    assert z["c_state_1"].shape == (5, 32) and z["c_state_1"].dtype == np.float32
    dec = bundle.graph("decoder")
    # decoder window [2, 1]: layer 1 (k = 1) carries no conv_state
    assert [s.name for s in dec.states] == ["conv_state_0", "c_state_0", "c_state_1"]
    assert all(not v.any() for v in dec.zero_states(2).values())


# -- incremental encoding ------------------------------------------------------------------------

def test_random_chunkings_equal_one_pass(translator):
    rng = np.random.default_rng(1)
    for src in SOURCES:
        whole = translator.stream()
        whole.feed(src)
        ref_tokens = {beam: list(translator.iter_tokens(src, beam, MAX_LEN)) for beam in (1, 4)}
        for chunks in _chunkings(len(src), rng):
            ts = translator.stream()
            for a, b in chunks:
                ts.feed(src[a:b])
                ts.feed([])  # an empty chunk advances nothing
            assert ts.source_length == len(src)
            for k, v in whole.encoder_states.items():
                np.testing.assert_allclose(ts.encoder_states[k], v, atol=1e-5, rtol=0)
            np.testing.assert_allclose(ts.memory, whole.memory, atol=1e-5, rtol=0)
            for n, c in whole.cond.items():
                np.testing.assert_allclose(ts.cond[n], c, atol=1e-5, rtol=0)
            beam = int(rng.choice([1, 4]))
            assert list(ts.tokens(beam=beam, max_len=MAX_LEN)) == ref_tokens[beam]


def test_feed_batch_equals_feeding_alone(translator):
    """Sources of different lengths fed in chunks, several translations per encoder call, starting
    at different times: memory, cond and tokens equal each fed alone."""
    rng = np.random.default_rng(4)
    srcs, starts = [SOURCES[i] for i in (5, 1, 7, 3)], [0, 0, 1, 2]
    plans = [[src[a:b] for a, b in _chunkings(len(src), rng, 1)[0]] for src in srcs]
    streams = [translator.stream() for _ in srcs]
    tick = 0
    while any(tick < s + len(p) for s, p in zip(starts, plans)):
        items = [(ts, p[tick - s]) for ts, p, s in zip(streams, plans, starts) if s <= tick < s + len(p)]
        assert translator.feed_batch(items) == [ts.source_length for ts, _ in items]
        tick += 1
    for ts, src in zip(streams, srcs):
        alone = translator.stream()
        alone.feed(src)
        np.testing.assert_allclose(ts.memory, alone.memory, atol=1e-5, rtol=0)
        for n in alone.cond:
            np.testing.assert_allclose(ts.cond[n], alone.cond[n], atol=1e-5, rtol=0)
        assert list(ts.tokens(beam=4, max_len=MAX_LEN)) == list(alone.tokens(beam=4, max_len=MAX_LEN))
    with pytest.raises(StreamError, match="ended"):
        translator.feed_batch([(streams[0], [5])])


def test_encoder_memory_matches_pytorch(translator, model):
    src = SOURCES[5]
    ts = translator.stream()
    for i in range(0, len(src), 3):
        ts.feed(src[i:i + 3])
    with torch.no_grad():
        memory, cond, _ = model.encode(torch.tensor([src]))
    np.testing.assert_allclose(ts.memory, memory[0].numpy(), atol=1e-5, rtol=1e-5)
    for l, c in enumerate(cond):
        np.testing.assert_allclose(ts.cond[f"cond_{l}"], c[0].numpy(), atol=1e-4, rtol=1e-5)


# -- parity with the PyTorch reference decoders -----------------------------------------------

def test_reference_outputs_are_varied(refs):
    """Guards the parity tests below against a degenerate model (all outputs alike)."""
    greedy, beam = refs["greedy"], refs["beam"]
    assert len({len(g) for g in greedy}) >= 2
    assert any(len(g) < MAX_LEN for g in greedy)  # some end with </s>
    assert len({tuple(g[:3]) for g in greedy}) >= 3  # the source matters
    assert any(g != b for g, b in zip(greedy, beam))  # the beam changes some answers


def test_greedy_matches_pytorch(translator, refs):
    assert [translator.translate_ids(src, beam=1, max_len=MAX_LEN) for src in SOURCES] == refs["greedy"]


def test_beam4_matches_pytorch(translator, refs, model):
    assert [translator.translate_ids(src, beam=4, max_len=MAX_LEN) for src in SOURCES] == refs["beam"]
    for src in SOURCES[:4]:  # length penalty 0: raw scores pick the answer
        ref = model.beam_search(src, beam=4, max_len=MAX_LEN, length_penalty=0.0)
        assert translator.translate_ids(src, beam=4, max_len=MAX_LEN, length_penalty=0.0) == ref


def test_beam_sizes_and_short_max_len_match_pytorch(translator, model):
    for src in SOURCES[:4]:
        for beam, max_len in [(2, 7), (3, 1), (5, 12)]:
            assert translator.translate_ids(src, beam=beam, max_len=max_len) == \
                model.beam_search(src, beam=beam, max_len=max_len)


@pytest.mark.skipif(not _native_lib_available(), reason="the FoPool onnxruntime library is not built")
def test_custom_op_bundle_matches_pytorch(model, refs, tmp_path):
    tr = load_bundle(export(model, tmp_path / "custom", "custom"), threads=1).translator()
    assert tr.bundle.manifest.fo_pool == "custom"
    assert [tr.translate_ids(src, beam=1, max_len=MAX_LEN) for src in SOURCES] == refs["greedy"]
    assert [tr.translate_ids(src, beam=4, max_len=MAX_LEN) for src in SOURCES] == refs["beam"]


# -- token emission ------------------------------------------------------------------------------

def test_tokens_are_emitted_as_soon_as_final(translator):
    early = 0
    for src in SOURCES:
        ts = translator.stream()
        ts.feed(src)
        d = ts.decoder(beam=4, max_len=MAX_LEN)
        assert isinstance(d, BeamDecoder)
        batch = translator.decode_batch()
        got = []
        while not d.done:
            new = batch.step([d])[0]
            got += new
            if new and not d.done:
                early += len(new)
        assert got == d.result  # what was emitted is exactly the answer, in order
        # greedy: one token per step, every step
        ts = translator.stream()
        ts.feed(src)
        g = ts.decoder(beam=1, max_len=MAX_LEN)
        assert isinstance(g, GreedyDecoder)
        while not g.done:
            new = batch.step([g])[0]
            assert len(new) == 1 or (g.done and not new)
    assert early > 0  # beams settle on common prefixes before they end


# -- batched decoding ----------------------------------------------------------------------------

def test_decode_batch_equals_alone(translator):
    """Translations of different source lengths joining at different steps, greedy and beam mixed,
    stepped together: each gets exactly the tokens it gets alone."""
    plan = [(SOURCES[0], 1, 0), (SOURCES[5], 4, 0), (SOURCES[2], 1, 2), (SOURCES[7], 3, 3),
            (SOURCES[4], 1, 5), (SOURCES[3], 4, 9)]
    alone = [translator.translate_ids(src, beam=beam, max_len=MAX_LEN) for src, beam, _ in plan]
    decoders, outs = [None] * len(plan), [[] for _ in plan]
    batch = translator.decode_batch()
    step = 0
    while step < 10 or any(d is not None and not d.done for d in decoders):
        for i, (src, beam, start) in enumerate(plan):
            if start == step:
                ts = translator.stream()
                ts.feed(src)
                decoders[i] = ts.decoder(beam=beam, max_len=MAX_LEN)
        live = [(i, d) for i, d in enumerate(decoders) if d is not None]
        for (i, _), new in zip(live, batch.step([d for _, d in live])):
            outs[i] += new
        step += 1
    assert outs == alone
    assert [d.result for d in decoders] == alone
    assert batch.step(decoders) == [[] for _ in decoders]  # finished decoders are skipped
    with pytest.raises(StreamError, match="twice"):
        batch.step([decoders[0], decoders[0]])


def test_decode_batch_updates_its_context_in_place(translator):
    """The padded context is compacted and appended to between steps, not rebuilt: decoders
    passed in a different order every step, some dropped before they finish (a closed
    translation), short ones joining a batch with a longer memory. Each still gets exactly its
    tokens alone, and the buffers are rebuilt only when a longer memory joins."""
    import random

    rng = random.Random(0)
    srcs = sorted(SOURCES, key=len)
    longest, shorts = srcs[-1], srcs[:-1]
    batch = translator.decode_batch()
    live, outs, dropped, rebuilds, bufs = [], {}, 0, 0, None

    def start(src, beam):
        ts = translator.stream()
        ts.feed(src)
        d = ts.decoder(beam=beam, max_len=MAX_LEN)
        live.append(d)
        outs[id(d)] = (src, beam, [])

    start(longest, 1)
    start(shorts[0], 3)
    for step in range(40):
        if step % 3 == 0:
            start(shorts[step % len(shorts)], 1 if step % 2 else 3)
        if step == 20:
            start(longest, 3)  # same length as the longest so far: no rebuild needed
        if step % 7 == 6 and len(live) > 2:
            live.remove(live[1])  # closed mid-translation: leaves the batch unfinished
            dropped += 1
        order = live[:]
        rng.shuffle(order)
        for d, new in zip(order, batch.step(order)):
            outs[id(d)][2].extend(new)
        if batch._bufs is not None and batch._bufs is not bufs:
            rebuilds += 1
            bufs = batch._bufs
        live = [d for d in live if not d.done]
    finished = 0
    for src, beam, got in outs.values():
        ref = translator.translate_ids(src, beam=beam, max_len=MAX_LEN)
        assert got == ref[:len(got)]  # dropped / unfinished ones: a prefix of their translation
        finished += got == ref
    assert finished >= len(outs) - dropped - len(live)
    assert dropped >= 3 and rebuilds <= 3, (dropped, rebuilds)


def test_decode_batch_padding_keeps_logits(translator):
    """One step for two greedy decoders with memories of 1 and 11 positions: logits equal the
    unpadded single-decoder call (<= 1e-5)."""
    decs = []
    for src in (SOURCES[0], SOURCES[5]):
        ts = translator.stream()
        ts.feed(src)
        decs.append(ts.decoder(beam=1))
    seen = []

    def capture(d):  # records the logits each step hands to d
        orig = d.advance
        d.advance = lambda logits, st, **kw: seen.append(logits.copy()) or orig(logits, st, **kw)

    for d in decs:
        capture(d)
    DecodeBatch(translator.decoder, translator.cond_names).step(decs)
    batched = list(seen)
    seen.clear()
    for src in (SOURCES[0], SOURCES[5]):
        ts = translator.stream()
        ts.feed(src)
        d = ts.decoder(beam=1)
        capture(d)
        translator.decode_batch().step([d])
    for a, b in zip(batched, seen):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# -- errors --------------------------------------------------------------------------------------

def test_unknown_symbols_map_to_unk(translator):
    a = translator.translate_ids("ab" + "\u00e9" + "c", max_len=MAX_LEN)  # é is not in the vocabulary
    assert a == translator.translate_ids([VOCAB.index["a"], VOCAB.index["b"], UNK, VOCAB.index["c"]], max_len=MAX_LEN)
    assert translator.translate_ids([VOCAB.index["a"], 999, -5], max_len=MAX_LEN) == \
        translator.translate_ids([VOCAB.index["a"], UNK, UNK], max_len=MAX_LEN)


def test_stream_misuse_errors(translator):
    ts = translator.stream()
    with pytest.raises(StreamError, match="empty"):
        ts.decoder()
    ts.feed("abc")
    toks = ts.tokens(max_len=3)
    next(toks, None)
    with pytest.raises(StreamError, match="ended"):
        ts.feed("d")
    ts.reset()
    ts.feed("d")
    ts.close()
    with pytest.raises(StreamError, match="closed"):
        ts.feed("e")
    with pytest.raises(StreamError, match="closed"):
        ts.decoder()
    with pytest.raises(ConfigError):
        s = translator.stream()
        s.feed("a")
        s.decoder(beam=0)


def test_bundle_errors(bundle_dir, tmp_path):
    import shutil

    broken = tmp_path / "missing_graph"
    shutil.copytree(bundle_dir, broken)
    man = json.loads((broken / "manifest.json").read_text())
    (broken / man["graphs"]["decoder"]["file"]).unlink()
    with pytest.raises(BundleError, match="decoder"):
        load_bundle(broken)

    man = json.loads((bundle_dir / "manifest.json").read_text())
    newer = tmp_path / "newer"
    shutil.copytree(bundle_dir, newer)
    (newer / "manifest.json").write_text(json.dumps({**man, "format_version": 99}))
    with pytest.raises(BundleError, match="version"):
        load_bundle(newer)

    # a manifest naming a state the graph does not have is caught at load time
    renamed = tmp_path / "renamed"
    shutil.copytree(bundle_dir, renamed)
    man2 = json.loads(json.dumps(man))
    man2["graphs"]["encoder"]["states"][0]["name"] = "conv_state_9"
    (renamed / "manifest.json").write_text(json.dumps(man2))
    with pytest.raises(BundleError, match="conv_state_9"):
        load_bundle(renamed)

    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BuildError, match="TensorRT"):
        load_bundle(bundle_dir, backend="tensorrt")
    with pytest.raises(BundleError, match="seq2seq"):
        load_bundle(bundle_dir).language_model()


# -- the command line ----------------------------------------------------------------------------

def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "qrnn_deploy", "translate", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_translate(bundle_dir, translator):
    texts = ["abc", "ponm lk", "", "aaa"]
    want = [translator.translate(t, beam=4, max_len=MAX_LEN) if t else "" for t in texts]
    r = _cli(str(bundle_dir), "abc", "--beam", "4", "--max-len", str(MAX_LEN))
    assert r.returncode == 0, r.stderr
    assert r.stdout == want[0] + "\n"
    r = _cli(str(bundle_dir), "--beam", "4", "--max-len", str(MAX_LEN), stdin="\n".join(texts) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == want
    r = _cli(str(bundle_dir.parent / "nope"), "abc")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


# -- no torch ------------------------------------------------------------------------------------

NO_TORCH = r"""
import sys
# Any `import torch` (or of the onnx package, which the runtime does not need either) now raises.
sys.modules["torch"] = None
sys.modules["onnx"] = None
import json
from qrnn_deploy.runtime import load_bundle
tr = load_bundle(sys.argv[1], threads=1).translator()
srcs = json.loads(sys.argv[2])
out = {"greedy": [tr.translate_ids(s, max_len=25) for s in srcs],
       "beam": [tr.translate_ids(s, beam=4, max_len=25) for s in srcs],
       "torch_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")
                               if sys.modules[m] is not None),
       "nn": sorted(m for m in sys.modules if m.startswith(("qrnn_deploy.nn", "qrnn_deploy.export")))}
print(json.dumps(out))
"""


def test_runtime_runs_without_torch(bundle_dir, refs):
    srcs = SOURCES[:4]
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle_dir), json.dumps(srcs)], capture_output=True,
                       text=True, cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["torch_modules"] == [] and out["nn"] == []
    assert out["greedy"] == refs["greedy"][:4]
    assert out["beam"] == refs["beam"][:4]


def test_checkpoint_export_translate_end_to_end(model, tmp_path):
    """checkpoint -> `qrnn-deploy export` -> `qrnn-deploy translate`, the vocabulary carried along."""
    from qrnn_deploy.nn import save_checkpoint

    ckpt = save_checkpoint(model, tmp_path / "m.safetensors", extra={"vocab": VOCAB.to_json()})
    r = subprocess.run([sys.executable, "-m", "qrnn_deploy", "export", str(ckpt), "-o", str(tmp_path / "b"),
                        "--fo-pool", "portable", "--no-verify"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    r = _cli(str(tmp_path / "b"), "pond", "--beam", "4", "--max-len", str(MAX_LEN))
    assert r.returncode == 0, r.stderr
    assert r.stdout == VOCAB.decode(model.beam_search(VOCAB.encode("pond"), 4, MAX_LEN)) + "\n"
