"""PyTorch-side cases found by review: a wrong result (a bidirectional classifier on padded
rows), reference decoders that sampled zoneout and dropout, and bad input that raised untyped
errors. Every test here failed before its fix."""

import numpy as np
import pytest
import torch

from qrnn_deploy.errors import ConfigError, ExportError, QRNNError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.export.quantize import quantize_weight
from qrnn_deploy.nn import QRNN, QRNNClassifier, QRNNLanguageModel, QRNNSeq2Seq
from qrnn_deploy.nn.batching import greedy_decode_batch
from qrnn_deploy.nn.layers import QRNNLayer


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_bidirectional_rows_padded_equal_rows_alone(pooling):
    """The reverse layers started at the padded end, so a padded row's logits read its padding.
    With lengths they start at each row's own last step: padded == alone, logits and outputs."""
    torch.manual_seed(0)
    clf = QRNNClassifier(12, 8, 8, 2, 3, pooling=pooling, bidirectional=True, window=[3, 2]).eval()
    x = torch.randint(0, 12, (3, 9))
    lengths = torch.tensor([6, 9, 1])
    padded, _ = clf(x, lengths=lengths)
    for r, n in enumerate(lengths.tolist()):
        alone, _ = clf(x[r:r + 1, :n])
        torch.testing.assert_close(padded[r], alone[0], rtol=1e-5, atol=1e-6)
    q = QRNN(5, 4, 2, pooling=pooling, bidirectional=True, dense=True).eval()
    e = torch.randn(2, 7, 5)
    y, _ = q(e, lengths=torch.tensor([4, 7]))
    torch.testing.assert_close(y[0, :4], q(e[:1, :4])[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[1], q(e[1:])[0][0], rtol=1e-5, atol=1e-6)


def test_reverse_layer_with_lengths_keeps_its_gradients_finite():
    torch.manual_seed(0)
    layer = QRNNLayer(4, 5, 2, "ifo", reverse=True)
    x = torch.randn(2, 6, 4, requires_grad=True)
    y, st = layer(x, lengths=torch.tensor([3, 6]))
    (y.sum() + st.c.sum()).backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
    x.grad = None
    y, st = layer(x, lengths=torch.tensor([3, 6]))
    (y[0, :3].sum() + st.c[0].sum()).backward()
    assert (x.grad[0, 3:] == 0).all()  # row 0's padding reaches neither its real steps nor its cell


def test_reference_decoders_run_in_eval_mode():
    """greedy_decode / beam_search on a model in training mode sampled zoneout and dropout: five
    calls gave five different outputs. They now decode in eval mode and restore the mode."""
    torch.manual_seed(0)
    m = QRNNSeq2Seq(20, 20, embed_size=8, hidden_size=16, num_layers=2, zoneout=0.3, dropout=0.3)
    assert m.training
    src = [5, 6, 7, 8]
    assert len({tuple(m.greedy_decode(src, max_len=12)) for _ in range(5)}) == 1
    assert len({tuple(m.beam_search(src, beam=3, max_len=12)) for _ in range(5)}) == 1
    assert m.training
    assert m.greedy_decode(src, max_len=12) == greedy_decode_batch(m, [src], max_len=12)[0]


def test_untyped_errors_are_now_typed(tmp_path):
    torch.manual_seed(0)
    lm = QRNNLanguageModel(12, 6, 5, 1)
    for attrs in ({"foo": "1"}, {"reverse": 1}, {"plugin_version": 1}):
        with pytest.raises(ExportError, match="node_attrs"):
            export_bundle(lm, tmp_path / "b", fo_pool="custom", verify=False, node_attrs=attrs)
    for block in (0, 12, 48, True):
        with pytest.raises(ExportError, match="block_size"):
            quantize_weight(np.ones((32, 4), np.float32), block_size=block)
    for n in (-1, "2", 1.5):
        with pytest.raises(ConfigError, match="batch_size"):
            lm.init_state(n)
    layer = QRNNLayer(4, 5, 1, "fo")
    with pytest.raises(ConfigError, match="cond"):
        layer(torch.randn(2, 3, 4), cond=np.zeros((2, 15), np.float32))
    m = QRNNSeq2Seq(20, 20, embed_size=8, hidden_size=8, num_layers=1)
    for kw in ({"batch_size": 0}, {"max_len": None}, {"max_len": lambda n: -1}):
        with pytest.raises(ConfigError):
            greedy_decode_batch(m, [[5, 6]], **kw)
    with pytest.raises(QRNNError):
        greedy_decode_batch(m, [["a", "b"]])
    m.train()
    with pytest.raises(ConfigError):
        greedy_decode_batch(m, [[5, 6]], batch_size=0)
    assert m.training  # the mode survives a refused call


def test_c_last_has_the_gates_dtype_even_without_steps():
    """With T = 0 c_last came back in c0's dtype, with steps in the gates' (found by review)."""
    from qrnn_deploy.nn import fo_pool

    c0 = torch.randn(2, 3, dtype=torch.float32)
    for T in (0, 1):
        gates = torch.randn(T, 2, 9).to(torch.float64)
        h, c_last = fo_pool(gates, c0, "fo")
        assert c_last.dtype == torch.float64 and h.shape == (T, 2, 3)
        if T == 0:
            torch.testing.assert_close(c_last, c0.double())


def test_bidirectional_classifier_reads_backward_channels_where_they_saw_the_whole_row():
    """The backward half of a bidirectional stack has seen only the last token at the last step;
    its summary of the row is at step 0 (found by review: two rows with the same last token gave
    the same backward features)."""
    torch.manual_seed(0)
    a = torch.tensor([[5, 6, 7, 8, 9]])
    b = torch.tensor([[15, 16, 17, 18, 9]])
    for dense in (False, True):
        for layers in (1, 2):
            clf = QRNNClassifier(20, 4, 3, layers, 2, window=1, dense=dense, bidirectional=True).eval()
            bwd = clf._backward_channels
            assert int(bwd.sum()) == (3 * layers if dense else 3)
            y, _ = clf.qrnn(clf.embed(a))
            assert torch.allclose(clf(a)[0], clf.out(torch.where(bwd, y[:, 0], y[:, -1])), atol=1e-6)
            ya, _ = clf.qrnn(clf.embed(a))
            yb, _ = clf.qrnn(clf.embed(b))
            if layers == 1:  # what the old features read: blind to all but the last token
                assert torch.equal(ya[0, -1][bwd], yb[0, -1][bwd])
            assert not torch.allclose(ya[0, 0][bwd], yb[0, 0][bwd])
            assert not torch.allclose(clf(a)[0], clf(b)[0])


def test_dense_stack_output_is_dropped_once():
    """Dense + dropout: each layer's output feeds later layers dropped, and the stack returns it
    undropped, so a head's dropout is its only one (it was dropped twice: rate 1 - 0.7**2)."""
    torch.manual_seed(0)
    q = QRNN(6, 8, 3, window=2, dropout=0.5, dense=True).train()
    x = torch.randn(4, 7, 6)
    y, _ = q(x)
    y1, _ = q.layers[0](x)  # layer 0 reads x undropped; no zoneout, so it is deterministic
    assert torch.equal(y[..., :6], x)
    assert torch.allclose(y[..., 6:14], y1)
    # The later layers still read dropped inputs: training output differs from eval output.
    q.eval()
    ye, _ = q(x)
    assert torch.allclose(ye[..., 6:14], y1) and not torch.allclose(ye[..., 14:], y[..., 14:])


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    """safetensors writes 0600: a shipped or shared checkpoint was readable by its owner only."""
    import os

    from qrnn_deploy.nn import save_checkpoint

    old = os.umask(0o022)
    try:
        p = save_checkpoint(QRNNLanguageModel(10, 4, 4, 1), tmp_path / "lm.safetensors")
        assert (os.stat(p).st_mode & 0o777) == 0o644
        os.umask(0o077)
        p = save_checkpoint(QRNNLanguageModel(10, 4, 4, 1), tmp_path / "private.safetensors")
        assert (os.stat(p).st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
