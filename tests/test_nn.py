"""qrnn_deploy.nn: fo_pool against its reference, layers, streaming equivalence, models, checkpoints."""

import math
import subprocess
import sys

import pytest
import torch

from qrnn_deploy.errors import CheckpointError, ConfigError
from qrnn_deploy.nn import (QRNN, QRNNClassifier, QRNNLanguageModel, QRNNLayer, QRNNSeq2Seq, fo_pool,
                            fo_pool_ref, load_checkpoint, save_checkpoint)

P_OF = {"f": 2, "fo": 3, "ifo": 4}


def _gates(T, B, H, pooling, batch_first, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, P_OF[pooling] * H) if batch_first else (T, B, P_OF[pooling] * H)
    return torch.randn(shape, generator=g, dtype=dtype) * 2


# -- fo_pool ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_c0", [False, True])
@pytest.mark.parametrize("T", [1, 2, 17])
def test_fo_pool_matches_reference(pooling, batch_first, reverse, with_c0, T):
    B, H = 3, 7
    g = _gates(T, B, H, pooling, batch_first, seed=T)
    c0 = torch.randn(B, H) if with_c0 else None
    h, c = fo_pool(g, c0, pooling, batch_first, reverse)
    hr, cr = fo_pool_ref(g, c0, pooling, batch_first, reverse)
    assert h.shape == hr.shape and c.shape == (B, H)
    torch.testing.assert_close(h, hr, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c, cr, atol=1e-6, rtol=1e-6)
    # the op is also reachable as torch.ops.qrnn.fo_pool
    h2, _ = torch.ops.qrnn.fo_pool(g, c0, pooling, batch_first, reverse)
    torch.testing.assert_close(h2, hr, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_fo_pool_gradcheck_float64(pooling, batch_first, reverse):
    g = _gates(5, 2, 3, pooling, batch_first, torch.float64).requires_grad_()
    c0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, c0: fo_pool(g, c0, pooling, batch_first, reverse), (g, c0))
    assert torch.autograd.gradcheck(lambda g: fo_pool(g, None, pooling, batch_first, reverse), (g,))


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_fo_pool_gradients_match_reference_autograd(pooling):
    g = _gates(9, 4, 5, pooling, False).requires_grad_()
    c0 = torch.randn(4, 5, requires_grad=True)
    wh, wc = torch.randn(9, 4, 5), torch.randn(4, 5)
    h, c = fo_pool(g, c0, pooling)
    grads = torch.autograd.grad((h * wh).sum() + (c * wc).sum(), (g, c0))
    h, c = fo_pool_ref(g, c0, pooling)
    ref = torch.autograd.grad((h * wh).sum() + (c * wc).sum(), (g, c0))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fo_pool_low_precision_storage(dtype):
    g = _gates(6, 2, 4, "fo", True)
    h, c = fo_pool(g.to(dtype), None, "fo", True)
    hr, cr = fo_pool_ref(g.to(dtype).double(), None, "fo", True)
    assert h.dtype == dtype and c.dtype == dtype
    torch.testing.assert_close(h.double(), hr, atol=1e-2, rtol=1e-2)


def test_fo_pool_empty_inputs():
    h, c = fo_pool(torch.zeros(0, 2, 6), None)
    assert h.shape == (0, 2, 2) and torch.equal(c, torch.zeros(2, 2))
    c0 = torch.randn(2, 2)
    h, c = fo_pool(torch.zeros(0, 2, 6), c0)
    assert torch.equal(c, c0)
    h, c = fo_pool(torch.zeros(3, 0, 6), None)
    assert h.shape == (3, 0, 2) and c.shape == (0, 2)


def test_fo_pool_hand_computed_two_steps():
    # H = 1, B = 1, 'fo'. Step 1: z = tanh(0) = 0, f = sigmoid(0) = 0.5, o = sigmoid(ln 3) = 0.75;
    # c1 = 0.5 * c0 + 0.5 * 0 with c0 = 1 -> 0.5; h1 = 0.375.
    # Step 2: z = tanh(atanh(0.8)) = 0.8, f = sigmoid(-ln 3) = 0.25, o = sigmoid(0) = 0.5;
    # c2 = 0.25 * 0.5 + 0.75 * 0.8 = 0.725; h2 = 0.3625.
    g = torch.tensor([[[0.0, 0.0, math.log(3)]], [[math.atanh(0.8), -math.log(3), 0.0]]], dtype=torch.float64)
    h, c = fo_pool(g, torch.ones(1, 1, dtype=torch.float64), "fo")
    torch.testing.assert_close(h.flatten(), torch.tensor([0.375, 0.3625], dtype=torch.float64))
    torch.testing.assert_close(c.flatten(), torch.tensor([0.725], dtype=torch.float64))
    # 'ifo' with i = sigmoid(ln 4) = 0.8 on step 2: c2 = 0.25 * 0.5 + 0.8 * 0.8 = 0.765.
    g4 = torch.cat([g, torch.tensor([[[0.0]], [[math.log(4)]]], dtype=torch.float64)], -1)
    h, c = fo_pool(g4, torch.ones(1, 1, dtype=torch.float64), "ifo")
    torch.testing.assert_close(c.flatten(), torch.tensor([0.765], dtype=torch.float64))
    # 'f': h = c
    h, c = fo_pool(g[..., :2], torch.ones(1, 1, dtype=torch.float64), "f")
    torch.testing.assert_close(h.flatten(), torch.tensor([0.5, 0.725], dtype=torch.float64))


@pytest.mark.parametrize("bad, msg", [
    (lambda: fo_pool(torch.zeros(2, 3), None), "rank 3"),
    (lambda: fo_pool(torch.zeros(2, 3, 7), None, "fo"), "3\\*H"),
    (lambda: fo_pool(torch.zeros(2, 3, 6), None, "xyz"), "unknown pooling"),
    (lambda: fo_pool(torch.zeros(2, 3, 6), torch.zeros(3, 3)), "c0 must be"),
    (lambda: fo_pool(torch.zeros(2, 3, 6, dtype=torch.int64), None), "floating point"),
])
def test_fo_pool_bad_arguments(bad, msg):
    with pytest.raises(ValueError, match=msg):
        bad()


# -- layers: streaming equivalence -------------------------------------------------------------------

def _chunks(T, seed):
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(set(torch.randint(1, T, (4,), generator=g).tolist()))
    bounds = [0] + cuts + [T]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@pytest.mark.parametrize("window", [1, 2, 6])
@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
@pytest.mark.parametrize("with_cond", [False, True])
def test_layer_chunked_equals_whole(window, pooling, with_cond):
    torch.manual_seed(window)
    layer = QRNNLayer(5, 7, window, pooling).eval()
    x = torch.randn(3, 23, 5)
    cond = torch.randn(3, layer.num_gates * 7) if with_cond else None
    whole, s_whole = layer(x, None, cond)
    state, parts = layer.init_state(3), []
    for a, b in _chunks(23, window):
        y, state = layer(x[:, a:b], state, cond)
        parts.append(y)
    assert (torch.cat(parts, 1) - whole).abs().max() <= 1e-6
    assert (state.c - s_whole.c).abs().max() <= 1e-6
    if window > 1:
        assert torch.equal(state.conv_state, x[:, -(window - 1):])
    else:
        assert state.conv_state is None


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_stack_chunked_equals_whole(dense, pooling):
    torch.manual_seed(1)
    qrnn = QRNN(4, 6, num_layers=3, window=[6, 2, 1], pooling=pooling, dense=dense).eval()
    x = torch.randn(2, 19, 4)
    whole, _ = qrnn(x)
    assert whole.shape[-1] == qrnn.output_size == (4 + 3 * 6 if dense else 6)
    state, parts = qrnn.init_state(2), []
    for a, b in [(0, 1), (1, 2), (2, 9), (9, 19)]:
        y, state = qrnn(x[:, a:b], state)
        parts.append(y)
    assert (torch.cat(parts, 1) - whole).abs().max() <= 1e-6


def test_layer_window_is_causal_and_paper_shaped():
    # With window 2 and f pooling, G_t = W [x_{t-1}; x_t] + b: changing x at step 5 must not
    # change outputs before step 5.
    layer = QRNNLayer(3, 4, window=2, pooling="f").eval()
    x = torch.randn(1, 10, 3)
    y1, _ = layer(x)
    x2 = x.clone()
    x2[0, 5] += 1.0
    y2, _ = layer(x2)
    assert torch.equal(y1[:, :5], y2[:, :5]) and not torch.equal(y1[:, 5:], y2[:, 5:])
    # step 0 sees a zero left context: G_0 = W[:, d:] x_0 + b
    g, _ = layer.gates(x[:, :1])
    torch.testing.assert_close(g[0, 0], layer.conv.weight[:, 3:] @ x[0, 0] + layer.conv.bias)


def test_time_major_layer():
    layer = QRNNLayer(3, 4, window=2, batch_first=False).eval()
    x = torch.randn(7, 2, 3)
    y, _ = layer(x)
    layer.batch_first = True
    yb, _ = layer(x.transpose(0, 1))
    torch.testing.assert_close(y, yb.transpose(0, 1))


def test_zoneout_keeps_previous_value():
    torch.manual_seed(0)
    layer = QRNNLayer(3, 64, pooling="f", zoneout=0.5).train()
    x = torch.randn(2, 6, 3)
    y, _ = layer(x)
    kept = (y[:, 1:] == y[:, :-1]).float().mean().item()
    assert 0.3 < kept < 0.7  # about half of the units are zoned out at each step
    layer.eval()
    y, _ = layer(x)
    assert (y[:, 1:] == y[:, :-1]).float().mean().item() < 0.05  # no zoneout at inference


def test_bidirectional_stack():
    torch.manual_seed(0)
    qrnn = QRNN(3, 4, num_layers=2, window=2, bidirectional=True).eval()
    x = torch.randn(2, 8, 3)
    y, _ = qrnn(x)
    assert y.shape == (2, 8, 8)
    # in one layer, the backward half at step t depends on the future, the forward half does not
    one = QRNN(3, 4, num_layers=1, window=2, bidirectional=True).eval()
    x2 = x.clone()
    x2[:, -1] += 1
    y1, y2 = one(x)[0], one(x2)[0]
    assert not torch.allclose(y1[:, 0, 4:], y2[:, 0, 4:]) and torch.equal(y1[:, :-1, :4], y2[:, :-1, :4])
    with pytest.raises(ValueError, match="cannot stream"):
        qrnn(x, state=[None, None])
    with pytest.raises(ValueError, match="cannot stream"):
        qrnn.init_state(2)


@pytest.mark.parametrize("make, msg", [
    (lambda: QRNNLayer(3, 4, window=0), "window"),
    (lambda: QRNNLayer(3, 4, pooling="lstm"), "unknown pooling"),
    (lambda: QRNN(3, 4, num_layers=2, window=[1, 2, 3]), "window"),
    (lambda: QRNNLanguageModel(10, 8, 6, 1, tie_weights=True), "tie_weights"),
    (lambda: QRNNLayer(3, 4)(torch.zeros(3, 4)), "rank 3"),
    (lambda: QRNNLayer(3, 4)(torch.zeros(1, 2, 5)), "features"),
])
def test_bad_arguments_raise_value_error(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
    with pytest.raises(ConfigError):
        make()


# -- models ----------------------------------------------------------------------------------------

def test_language_model_streams_and_trains():
    torch.manual_seed(0)
    lm = QRNNLanguageModel(12, 8, 8, 2, window=2, tie_weights=True)
    x = torch.randint(0, 12, (2, 10))
    logits, _ = lm(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), x.reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters())
    lm.eval()
    whole, _ = lm(x)
    a, s = lm(x[:, :4])
    b, _ = lm(x[:, 4:], s)
    assert (torch.cat([a, b], 1) - whole).abs().max() <= 1e-6


def test_classifier_lengths_and_running_prediction():
    torch.manual_seed(0)
    clf = QRNNClassifier(12, 8, 8, 2, num_classes=3).eval()
    x = torch.randint(0, 12, (2, 9))
    full, _ = clf(x[:1, :6])
    padded, _ = clf(x, lengths=torch.tensor([6, 9]))
    torch.testing.assert_close(padded[0], full[0])
    part, s = clf(x[:, :6])
    rest, _ = clf(x[:, 6:], s)
    torch.testing.assert_close(rest, clf(x)[0])


def _seq2seq(pooling="fo", seed=0):
    torch.manual_seed(seed)
    m = QRNNSeq2Seq(24, 26, embed_size=8, hidden_size=12, num_layers=2, encoder_window=[3, 2],
                    decoder_window=2, pooling=pooling).eval()
    with torch.no_grad():
        m.out.weight.mul_(8)  # sharper distributions: varied tokens from a random model
        m.src_embed.weight.mul_(3)
        m.tgt_embed.weight.mul_(3)
    return m


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_seq2seq_beam_one_equals_greedy_and_decoders_agree(pooling):
    m = _seq2seq(pooling)
    g = torch.Generator().manual_seed(3)
    outputs = set()
    for n in range(6):
        src = torch.randint(4, 24, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        greedy = m.greedy_decode(src, max_len=12)
        assert m.beam_search(src, beam=1, max_len=12) == greedy
        best = m.beam_search(src, beam=4, max_len=12)
        assert all(4 <= t < 26 for t in best)
        outputs.add(tuple(greedy))
    assert len(outputs) > 1  # the model is not degenerate: different sources, different outputs


def test_seq2seq_encoder_streams_and_padding_is_ignored():
    m = _seq2seq()
    src = torch.randint(4, 24, (2, 11))
    lengths = torch.tensor([11, 6])
    memory, cond, _ = m.encode(src, None, lengths)
    mem1, cond1, _ = m.encode(src[1:, :6])
    torch.testing.assert_close(cond[0][1], cond1[0][0])
    torch.testing.assert_close(memory[1, :6], mem1[0])
    state, parts = None, []
    for a, b in [(0, 3), (3, 4), (4, 11)]:
        mem, cnd, state = m.encode(src[:1, a:b], state)
        parts.append(mem)
    assert (torch.cat(parts, 1) - memory[:1]).abs().max() <= 1e-6
    assert max((c1 - c2[:1]).abs().max() for c1, c2 in zip(cnd, cond)) <= 1e-6
    # training pass: padded batch == each sentence alone
    tgt = torch.randint(4, 26, (2, 5))
    logits = m(src, lengths, tgt)
    alone = m(src[1:, :6], torch.tensor([6]), tgt[1:])
    torch.testing.assert_close(logits[1], alone[0], atol=1e-5, rtol=1e-5)


def test_seq2seq_decoder_chunked_equals_whole():
    m = _seq2seq("ifo")
    src = torch.randint(4, 24, (1, 7))
    memory, cond, _ = m.encode(src)
    tgt = torch.randint(4, 26, (1, 9))
    whole, _ = m.decode(tgt, memory, None, cond)
    a, s = m.decode(tgt[:, :2], memory, None, cond)
    b, s = m.decode(tgt[:, 2:3], memory, None, cond, s)
    c, _ = m.decode(tgt[:, 3:], memory, None, cond, s)
    assert (torch.cat([a, b, c], 1) - whole).abs().max() <= 1e-5


# -- checkpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: QRNNLanguageModel(12, 8, 8, 2, window=[2, 1], tie_weights=True, dense=False),
    lambda: QRNNClassifier(12, 8, 8, 2, num_classes=3, pooling="ifo"),
    lambda: _seq2seq(),
])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, make):
    m = make()
    path = save_checkpoint(m, tmp_path / "m.safetensors", extra={"vocab": {"type": "char", "symbols": ["a"]}})
    m2 = load_checkpoint(path)
    assert type(m2) is type(m) and m2.config == m.config and m2.extra["vocab"]["symbols"] == ["a"]
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    if getattr(m.config, "tie_weights", False):
        assert m2.out.weight is m2.embed.weight


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a qrnn-deploy checkpoint"):
        load_checkpoint(junk)
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a qrnn-deploy checkpoint"):
        load_checkpoint(other)


def test_checkpoint_fp16_weights(tmp_path):
    m = _seq2seq()
    path = save_checkpoint(m, tmp_path / "half.safetensors", dtype=torch.float16)
    m2 = load_checkpoint(path)
    w, w2 = m.out.weight, m2.out.weight
    assert w2.dtype == torch.float32 and torch.equal(w2, w.half().float())


def test_checkpoint_int8_weights(tmp_path):
    """quantize='int8': weight matrices stored as int8 with a scale per row (within half a step
    of the originals after loading), small tensors as they were; about a third of the float32
    file here (a quarter for large models);
    the quantized model computes what its dequantized weights give."""
    torch.manual_seed(0)
    m = QRNNSeq2Seq(30, 30, embed_size=32, hidden_size=64, num_layers=2, encoder_window=[2, 1],
                    decoder_window=2).eval()
    full = save_checkpoint(m, tmp_path / "f32.safetensors")
    path = save_checkpoint(m, tmp_path / "int8.safetensors", quantize="int8")
    assert path.stat().st_size < 0.35 * full.stat().st_size  # int8 matrices, float32 biases and scales
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    m2 = load_checkpoint(path)
    sd, sd2 = m.state_dict(), m2.state_dict()
    quantized = [k for k, v in stored.items() if v.dtype == torch.int8]
    assert sorted(quantized) == sorted(k for k, v in sd.items() if v.dim() >= 2 and v.numel() >= 4096)
    for k, w in sd.items():
        w2 = sd2[k]
        assert w2.dtype == torch.float32 and w2.shape == w.shape
        if k in quantized:
            step = w.reshape(w.shape[0], -1).abs().amax(1) / 127
            err = (w2 - w).reshape(w.shape[0], -1).abs().amax(1)
            assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-12), k
            assert not torch.equal(w2, w)
        else:
            assert torch.equal(w2, w), k
    src, tgt = torch.randint(4, 30, (2, 7)), torch.randint(4, 30, (2, 5))
    with torch.no_grad():
        a, b = m(src, torch.tensor([7, 7]), tgt), m2(src, torch.tensor([7, 7]), tgt)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    # a plain load of the same tensors is refused, not silently wrong
    from safetensors.torch import save_file

    meta = {k: v for k, v in safe_open(str(path), framework="pt").metadata().items()}
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in stored.items() if k != "encoder.0.conv.weight@int8_scale"},
              str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="no '@int8_scale' scale"):
        load_checkpoint(bad)
    save_file(stored, str(bad), metadata={**meta, "quantization": "int4-magic"})
    with pytest.raises(CheckpointError, match="unknown weight quantization"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="quantize"):
        save_checkpoint(m, tmp_path / "x.safetensors", quantize="int4")


# -- CLI ---------------------------------------------------------------------------------------------

def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "qrnn_deploy", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("qrnn-deploy ")
    out = subprocess.run([sys.executable, "-m", "qrnn_deploy", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_cli_demo_runs():
    out = subprocess.run([sys.executable, "-m", "qrnn_deploy", "demo", "--steps", "5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    diff = float(out.stdout.split("max |chunked - whole| = ")[1].split(";")[0])
    assert diff <= 1e-5
