"""The streaming runtime: bundles on onnxruntime with numpy only (never torch).

    from qrnn_deploy.runtime import load_bundle
    bundle = load_bundle("bundle/")            # manifest + one session per graph
    tr = bundle.translator()                   # seq2seq bundles
    ts = tr.stream(); ts.feed("Guten "); ts.feed("Morgen")
    print(tr.detokenize(ts.tokens(beam=4)))

Threads: a loaded Bundle, its Graphs and a Translator hold no per-call state and may be shared
by any number of threads (translate(), stream(), decode_batch(), language_model() from each);
onnxruntime sessions take concurrent runs, the tensorrt runner serializes its calls. The objects
that hold one sequence - TranslationStream, Stream, decoders, DecodeBatch, LanguageModelStream,
ClassifierStream - belong to one thread at a time: make one per request or per thread.

Arrows: cli -> serve -> runtime -> bundle files. This package imports only numpy, onnxruntime
(when a session is made) and the pure-Python leaves qrnn_deploy.bundle / vocab / decoding /
errors / _native.
"""

from qrnn_deploy._native import ort_library_path
from qrnn_deploy.runtime.backends import GraphRunner, OrtRunner, available_backends, register_backend
from qrnn_deploy.runtime.decoders import BeamDecoder, DecodeBatch, GreedyDecoder, log_softmax64
from qrnn_deploy.runtime.generate import ClassifierStream, LanguageModelStream, pick_token
from qrnn_deploy.runtime.loader import Bundle, Graph, load_bundle
from qrnn_deploy.runtime.seq2seq import TranslationStream, Translator
from qrnn_deploy.runtime.stream import Stream, StreamBatch, split_states, stack_states


__all__ = [
    "load_bundle", "Bundle", "Graph", "GraphRunner", "OrtRunner", "register_backend", "available_backends",
    "Stream", "StreamBatch", "stack_states", "split_states",
    "Translator", "TranslationStream", "GreedyDecoder", "BeamDecoder", "DecodeBatch", "log_softmax64",
    "LanguageModelStream", "ClassifierStream", "pick_token", "ort_library_path",
]
