"""PyTorch QRNN (training side): the fo_pool op, layers, models and checkpoints.

Arrows: cli -> export -> nn. Nothing in `qrnn_deploy.runtime` imports this package.
"""

from qrnn_deploy.nn.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from qrnn_deploy.nn.classifier import ClassifierConfig, QRNNClassifier
from qrnn_deploy.nn.fo_pool import fo_pool, fo_pool_ref, gate_count
from qrnn_deploy.nn.layers import QRNN, QRNNLayer, QRNNState
from qrnn_deploy.nn.lm import LanguageModelConfig, QRNNLanguageModel
from qrnn_deploy.nn.seq2seq import QRNNSeq2Seq, Seq2SeqConfig

__all__ = [
    "fo_pool", "fo_pool_ref", "gate_count", "QRNN", "QRNNLayer", "QRNNState",
    "QRNNLanguageModel", "LanguageModelConfig", "QRNNClassifier", "ClassifierConfig",
    "QRNNSeq2Seq", "Seq2SeqConfig", "save_checkpoint", "load_checkpoint", "read_checkpoint_metadata",
]
