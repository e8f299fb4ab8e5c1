"""Small random translators for runtime, server and C++ tests (imported by those test files)."""

import torch

from qrnn_deploy.nn import QRNNSeq2Seq
from qrnn_deploy.vocab import BOS, EOS


def random_translator(src_vocab_size: int, tgt_vocab_size: int, seed: int, hidden_size: int = 32,
                      decoder_window=(2, 1), out_scale: float = 6.0, tgt_embed_scale: float = 6.0,
                      eos_bias: float = 0.8) -> QRNNSeq2Seq:
    """A 2-layer QRNNSeq2Seq whose tokens depend on the source and the previous token.

    Untrained weights settle into repeating one symbol; scaling up the output layer, the target
    embedding, the conditioning and the attention makes each step's choice depend on the previous
    token and the source, and a small </s> bias ends some hypotheses early.
    """
    torch.manual_seed(seed)
    m = QRNNSeq2Seq(src_vocab_size, tgt_vocab_size, embed_size=16, hidden_size=hidden_size, num_layers=2,
                    encoder_window=[3, 2], decoder_window=list(decoder_window)).eval()
    with torch.no_grad():
        m.out.weight.mul_(out_scale)
        m.tgt_embed.weight.mul_(tgt_embed_scale)
        m.src_embed.weight.mul_(3)
        for c in m.cond_proj:
            c.weight.mul_(4)
        m.decoder[-1].attn_k.weight.mul_(3)
        m.out.bias[EOS] += eos_bias
        m.out.bias[BOS] -= 20
    return m


def portable_translator(model: QRNNSeq2Seq, out_dir, vocab):
    """`model` exported as a portable bundle into `out_dir` (not verified) and loaded with one
    thread: its runtime translator."""
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.runtime import load_bundle

    export_bundle(model, out_dir, fo_pool="portable", verify=False, vocab=vocab)
    return load_bundle(out_dir, threads=1).translator()


def greedy_decoder(translator, src, max_len: int):
    """A greedy decoder of `translator` after feeding `src` to a fresh stream."""
    ts = translator.stream()
    ts.feed(src)
    return ts.decoder(beam=1, max_len=max_len)
