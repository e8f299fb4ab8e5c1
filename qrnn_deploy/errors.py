"""Typed errors a user can hit. The CLI turns every `QRNNError` into one line and exit code 2.

This module imports nothing heavy: the runtime (numpy + onnxruntime only) uses it too.
"""


class QRNNError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(QRNNError, ValueError):
    """A model, layer or op was given arguments it cannot work with."""


class CheckpointError(QRNNError):
    """A file is missing, is not a qrnn-deploy checkpoint, or is corrupt."""


class BundleError(QRNNError):
    """A bundle directory or its manifest is missing, malformed or of an unknown version."""


class ExportError(QRNNError):
    """A model cannot be exported as asked (e.g. a bidirectional encoder asked to stream)."""


class VerificationError(QRNNError):
    """An exported graph disagrees with the PyTorch model beyond tolerance."""


class BuildError(QRNNError):
    """A native library could not be built or found (missing compiler, headers, ...)."""


class StreamError(QRNNError):
    """A stream was used wrongly (fed after close, mismatched batch, ...)."""


class DataError(QRNNError):
    """Training / evaluation data is missing or malformed."""
