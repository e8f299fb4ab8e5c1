"""The C++ streaming runtime (runtime/): built with scripts/build_cpp_runtime.sh, run on bundles
exported here. Its decoders must give the same tokens as the Python runtime and the PyTorch
reference decoders (greedy and beam 4); chunked == whole and batched == alone inside C++; every
error path is one line and exit code 2; one valgrind run is clean.

Skips (with the reason) only when the build tools are missing: cmake, a C++17 compiler, or the
nlohmann-json headers."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNSeq2Seq
from translators import random_translator
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.vocab import EOS, CharVocab

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("QRNN_RUNTIME_BUILD_DIR", REPO / "runtime" / "build"))
SRC_VOCAB = CharVocab.build(["abcdefghijklmnopqrstuvwxyz äöü"])
TGT_VOCAB = CharVocab.build(["ABCDEFGHIJKLMNOP .!"])
MAX_LEN = 24
# Unknown characters (digits, '#'), a single character, and sources of very different lengths.
SOURCES = ["guten morgen", "a", "wie geht es dir heute abend", "zwölf 12 # äöü", "ich", "xyz xyz xyz xyz"]


def _missing_tools() -> list:
    missing = [t for t in ("cmake",) if shutil.which(t) is None]
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++17 compiler")
    if not Path("/usr/include/nlohmann/json.hpp").is_file():
        missing.append("nlohmann-json headers (nlohmann-json3-dev)")
    return missing


@pytest.fixture(scope="module")
def programs():
    """Builds (or brings up to date) the runtime; returns {name: path}."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"C++ runtime not built: missing {', '.join(missing)}")
    r = subprocess.run(["bash", str(REPO / "scripts" / "build_cpp_runtime.sh")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"build_cpp_runtime.sh failed:\n{r.stdout}\n{r.stderr}"
    progs = {n: BUILD / n for n in ("qrnn_translate", "qrnn_stream_bench", "qrnn_stream_check", "qrnn_stream")}
    for p in progs.values():
        assert p.is_file(), f"{p} was not built"
    return progs


def make_model(seed: int = 2) -> QRNNSeq2Seq:
    """A small random translator whose tokens vary with the source and the previous token, and
    whose hypotheses sometimes end (</s> bias): see translators.py."""
    return random_translator(len(SRC_VOCAB), len(TGT_VOCAB), seed, hidden_size=24, decoder_window=(2, 2),
                             out_scale=7, tgt_embed_scale=5, eos_bias=0.5)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def bundles(model, tmp_path_factory):
    """{"custom": ..., "portable": ...} bundles of the same model. The custom variant needs the
    FoPool custom-op library (scripts/build_plugins.sh, run by setup); the portable one uses
    standard operators only. Both carry a (source, target) vocabulary pair."""
    root = tmp_path_factory.mktemp("cpp_bundles")
    out = {}
    for variant in ("custom", "portable"):
        export_bundle(model, root / variant, fo_pool=variant, verify=False, vocab=(SRC_VOCAB, TGT_VOCAB))
        out[variant] = root / variant
    return out


def run(prog, *args, stdin="", env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([str(prog), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=e)


def translate_ids(programs, bundle, *args, sources=SOURCES):
    r = run(programs["qrnn_translate"], bundle, "--ids", "--max-len", MAX_LEN, "--threads", 1, *args,
            stdin="".join(s + "\n" for s in sources))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(sources) + 1, r.stdout
    return [[int(t) for t in line.split()] for line in lines[:-1]]


@pytest.fixture(scope="module")
def python_reference(bundles, model):
    """Per beam: tokens of the Python runtime, which must equal the PyTorch reference decoders."""
    tr = load_bundle(bundles["custom"], threads=1).translator()
    ref = {}
    for beam in (1, 4):
        py = [tr.translate_ids(s, beam=beam, max_len=MAX_LEN) for s in SOURCES]
        pt = [model.greedy_decode(SRC_VOCAB.encode(s), MAX_LEN) if beam == 1 else
              model.beam_search(SRC_VOCAB.encode(s), beam, MAX_LEN) for s in SOURCES]
        assert py == pt, "the Python runtime disagrees with the PyTorch reference"
        ref[beam] = py
    return ref


def test_model_makes_varied_translations(python_reference):
    # Guards the parity tests against a degenerate model (every source -> the same tokens).
    for beam, toks in python_reference.items():
        assert len({tuple(t) for t in toks}) >= 4, toks
        assert any(len(t) < MAX_LEN for t in toks), "no hypothesis ever ended with </s>"
        assert any(len(set(t)) >= 3 for t in toks), toks


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("variant", ["custom", "portable"])
def test_translate_matches_python_runtime(programs, bundles, python_reference, beam, variant):
    assert translate_ids(programs, bundles[variant], "--beam", beam) == python_reference[beam]


def test_quantized_bundle_matches_python_runtime(programs, model, tmp_path):
    """An int8 bundle (onnxruntime's MatMulNBits; export --quantize int8) runs in the C++ runtime
    and gives the Python runtime's tokens on the same bundle, greedy and beam."""
    q = tmp_path / "int8"
    export_bundle(model, q, fo_pool="custom", vocab=(SRC_VOCAB, TGT_VOCAB), quantize="int8", quantize_block=16)
    tr = load_bundle(q, threads=1).translator()
    for beam in (1, 4):
        want = [tr.translate_ids(s, beam=beam, max_len=MAX_LEN) for s in SOURCES]
        assert translate_ids(programs, q, "--beam", beam) == want


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 2.0])
def test_beam_length_penalty_matches_python_runtime(programs, bundles, length_penalty):
    tr = load_bundle(bundles["custom"], threads=1).translator()
    want = [tr.translate_ids(s, beam=3, max_len=MAX_LEN, length_penalty=length_penalty) for s in SOURCES]
    assert translate_ids(programs, bundles["custom"], "--beam", 3, "--length-penalty", length_penalty) == want


def test_translate_text_output(programs, bundles):
    tr = load_bundle(bundles["custom"], threads=1).translator()
    for beam in (1, 4):
        r = run(programs["qrnn_translate"], bundles["custom"], "--beam", beam, "--max-len", MAX_LEN,
                stdin="".join(s + "\r\n" for s in SOURCES) + "\n")
        assert r.returncode == 0, r.stderr
        want = [tr.translate(s, beam=beam, max_len=MAX_LEN) for s in SOURCES] + [""]  # empty line -> empty line
        assert r.stdout == "".join(w + "\n" for w in want)


def test_incremental_encoding_and_batching_give_the_same_tokens(programs, bundles, python_reference):
    b = bundles["custom"]
    for chunk in (1, 3):
        assert translate_ids(programs, b, "--src-chunk", chunk) == python_reference[1]
        assert translate_ids(programs, b, "--src-chunk", chunk, "--beam", 4) == python_reference[4]
    # Greedy decoding of 4 lines per batch (padded memories, finished rows dropped), 2 batches.
    assert translate_ids(programs, b, "--batch", 4) == python_reference[1]


def test_stream_check_chunked_equals_whole_and_batched_equals_alone(programs, bundles):
    for variant, seed in (("custom", 0), ("portable", 5)):
        r = run(programs["qrnn_stream_check"], bundles[variant], "--seed", seed, "--len", 13, "--tol", "1e-5")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.strip().split("\n")
        assert lines[-1] == "OK"
        checks = [l for l in lines if l.endswith(" ok")]
        # encoder: memory, cond_0, cond_1, 4 states, batched; decoder: logits, 4 states, batched;
        # greedy_batch == greedy.
        assert len(checks) == 15, r.stdout


def test_tokens_are_written_as_they_are_decoded(programs, bundles):
    # One line in, stdin still open: its translation must come out before the input ends.
    p = subprocess.Popen([str(programs["qrnn_translate"]), str(bundles["custom"]), "--ids", "--max-len", str(MAX_LEN)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write(SOURCES[0] + "\n")
        p.stdin.flush()
        line = p.stdout.readline()
        assert line.endswith("\n") and line.split(), line
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stream_bench_reports_latency(programs, bundles):
    r = run(programs["qrnn_stream_bench"], bundles["custom"], "--tokens", 30, "--warmup", 3, "--json")
    assert r.returncode == 0, r.stderr
    fig = json.loads(r.stdout)
    assert fig["tokens"] == 30 and fig["threads"] == 1 and fig["source_length"] > 0
    assert 0 < fig["p50_ms"] <= fig["p90_ms"] <= fig["p99_ms"]
    assert 0 < fig["graph_call_p50_ms"]
    r = run(programs["qrnn_stream_bench"], bundles["custom"], "--tokens", 10, "--beam", 3, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["beam"] == 3, r.stderr


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err and "\n" not in err, r.stderr
    for n in needles:
        assert n in err, err
    return err


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_error_paths_are_one_line_and_exit_2(programs, bundles, tmp_path):
    tr = programs["qrnn_translate"]
    good = bundles["custom"]
    _one_line_error(run(tr, tmp_path / "nope", stdin="a\n"), "not a directory")
    _one_line_error(run(tr, tmp_path, stdin="a\n"), "manifest.json is missing")

    missing_graph = _copy_bundle(good, tmp_path / "missing_graph")
    (missing_graph / "decoder.onnx").unlink()
    _one_line_error(run(tr, missing_graph, stdin="a\n"), "decoder", "missing")

    bad_json = _copy_bundle(good, tmp_path / "bad_json")
    (bad_json / "manifest.json").write_text("{ not json")
    _one_line_error(run(tr, bad_json, stdin="a\n"), "not valid JSON")

    manifest = json.loads((good / "manifest.json").read_text())
    cases = {
        "version": (lambda m: m.update(format_version=99), "version 99 is not supported"),
        "format": (lambda m: m.update(format="something-else"), "not a qrnn-deploy bundle"),
        "no_decoder": (lambda m: m["graphs"].pop("decoder"), "needs graph 'decoder'"),
        "dtype": (lambda m: m["graphs"]["encoder"]["inputs"][0].update(dtype="complex64"), "unknown dtype"),
        "shape": (lambda m: m["graphs"]["encoder"]["inputs"][0].update(shape="B,T"), "malformed shape"),
        "graphs_type": (lambda m: m.update(graphs=[1, 2]), "malformed manifest"),
        "state_name": (lambda m: m["graphs"]["decoder"]["states"][0].update(name="c_state_9"), "re-export"),
        "model_type": (lambda m: m.update(model_type="language_model", graphs={"lm": m["graphs"]["encoder"]}),
                       "needs a seq2seq bundle"),
        # Found by review: each was accepted (or crashed) before.
        "traversal": (lambda m: m["graphs"]["encoder"].update(file="../other/encoder.onnx"),
                      "must be a relative file name inside the bundle"),
        "absolute": (lambda m: m["graphs"]["encoder"].update(file="/etc/passwd"), "no absolute path"),
        "negative_bos": (lambda m: m["special_tokens"].update(bos=-1), "special_tokens.bos must be a token id"),
        "special_list": (lambda m: m.update(special_tokens=[1]), "special_tokens must be an object"),
        "multichar": (lambda m: m["vocab"]["src"]["symbols"].__setitem__(5, "ab") if "src" in m["vocab"]
                      else m["vocab"]["symbols"].__setitem__(5, "ab"), "must be one character"),
        "deep": (lambda m: m.update(config=json.loads("[" * 200 + "]" * 200)), "nested too deeply"),
        "huge_state": (lambda m: m["graphs"]["decoder"]["states"][0].update(shape=["B", 2 ** 62]), "too large"),
    }
    for name, (edit, needle) in cases.items():
        d = _copy_bundle(good, tmp_path / name)
        m = json.loads(json.dumps(manifest))
        edit(m)
        (d / "manifest.json").write_text(json.dumps(m))
        _one_line_error(run(tr, d, stdin="a\n"), needle)

    corrupt = _copy_bundle(good, tmp_path / "corrupt")
    (corrupt / "encoder.onnx").write_bytes(b"\x00garbage" * 10)
    _one_line_error(run(tr, corrupt, stdin="a\n"), "cannot load graph encoder")

    _one_line_error(run(tr, good, "--custom-op-library", tmp_path / "no.so", stdin="a\n"), "does not exist")
    _one_line_error(run(tr, good, stdin="a\n", env={"QRNN_ORT_LIBRARY": str(tmp_path / "no.so")}), "QRNN_ORT_LIBRARY")
    _one_line_error(run(tr, good, "--backend", "tensorrt", stdin="a\n"), "TensorRT")


@pytest.mark.parametrize("args, needle", [
    ([], "expected one BUNDLE"),
    (["--beam", "0"], "--beam must be between"),
    (["--beam", "x"], "--beam must be an integer"),
    (["--max-len"], "--max-len needs a value"),
    (["--frobnicate"], "unknown option --frobnicate"),
    (["--beam", "2", "--batch", "3"], "--batch is for greedy"),
    (["--beam", "2", "--length-penalty", "11"], "--length-penalty must be a number in [0, 10]"),
    (["--length-penalty", "nan"], "--length-penalty must be a number in [0, 10]"),
    (["--max-len", "0"], "--max-len must be between 1 and 1000000"),
    (["--max-source-chars", "0"], "--max-source-chars must be between 1"),
])
def test_bad_arguments(programs, bundles, args, needle):
    bundle = [] if needle.startswith("expected one BUNDLE") else [bundles["custom"]]
    _one_line_error(run(programs["qrnn_translate"], *bundle, *args, stdin="a\n"), needle)
    for prog in ("qrnn_stream_bench", "qrnn_stream_check"):
        r = run(programs[prog], bundles["custom"], "--frobnicate")
        assert r.returncode == 2 and "\n" not in r.stderr.strip()


VALGRIND = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite", f"--suppressions={REPO / 'runtime' / 'valgrind.supp'}"]


def _valgrind(args, stdin=""):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    r = subprocess.run(VALGRIND + [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_valgrind_clean(programs, bundles):
    """A short beam run (incremental source chunks, beam reordering, token output) under memcheck:
    no invalid access, no definite leak. Reports raised inside libonnxruntime itself are
    suppressed (runtime/valgrind.supp lists them); its 'possibly lost' blocks (thread pools,
    static registries) are not counted as errors."""
    r = _valgrind([programs["qrnn_translate"], bundles["custom"], "--ids", "--max-len", 4, "--beam", 2,
                   "--src-chunk", 2], stdin="abc\n")
    assert len(r.stdout.split("\n")) == 2


@pytest.mark.slow
def test_valgrind_clean_stream_check(programs, bundles):
    """Batched streams, greedy_batch (padding, dropped rows) and chunked encoding under memcheck."""
    r = _valgrind([programs["qrnn_stream_check"], bundles["custom"], "--len", 5])
    assert r.stdout.strip().endswith("OK")


# -- TensorRT backend: no TensorRT here, so it is compiled against a hand-written subset of the
# documented TensorRT 10 runtime API (tests/trt_runtime_api_subset/). That checks syntax and types
# only; the backend has not run against NVIDIA's headers or a real engine.

CUDA_INCLUDE = Path("/usr/local/cuda/include")


def _cache_value(key: str) -> str:
    for line in (BUILD / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split("=", 1)[1]
    raise AssertionError(f"{key} not in {BUILD / 'CMakeCache.txt'}")


@pytest.mark.skipif(not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file(), reason="needs the CUDA headers")
def test_tensorrt_backend_compiles_against_the_documented_api_subset(programs):
    cxx = shutil.which("g++") or shutil.which("clang++")
    for src in ("trt_backend.cpp", "ort_backend.cpp"):  # ort_backend.cpp holds make_backend's TensorRT branch
        cmd = ["nice", cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-DQRNN_HAVE_TENSORRT",
               "-I", str(REPO / "runtime" / "include"), "-I", str(REPO / "tests" / "trt_runtime_api_subset"),
               "-I", str(CUDA_INCLUDE), "-I", _cache_value("QRNN_ORT_INCLUDE_DIR"),
               str(REPO / "runtime" / "src" / src)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit (CMake's CUDAToolkit)")
def test_cmake_builds_the_tensorrt_backend_only_with_tensorrt(programs, tmp_path):
    def configure(build, *extra):
        r = subprocess.run(["nice", "cmake", "-S", str(REPO / "runtime"), "-B", str(build),
                            f"-DQRNN_ORT_INCLUDE_DIR={_cache_value('QRNN_ORT_INCLUDE_DIR')}",
                            f"-DQRNN_ORT_LIBRARY={_cache_value('QRNN_ORT_LIBRARY')}", *extra],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    assert "TensorRT backend OFF" in configure(tmp_path / "none", f"-DTensorRT_ROOT={tmp_path / 'missing'}")
    fake = tmp_path / "trt"
    (fake / "include").mkdir(parents=True)
    (fake / "lib").mkdir()
    shutil.copy(REPO / "tests" / "trt_runtime_api_subset" / "NvInferRuntime.h", fake / "include")
    (fake / "lib" / "libnvinfer.so").write_bytes(b"")  # found by name only; nothing is built here
    assert "TensorRT backend ON" in configure(tmp_path / "with", f"-DTensorRT_ROOT={fake}")


def test_stream_check_on_language_model_and_classifier_bundles(programs, tmp_path):
    """The C++ Stream / feed_batch are generic over graphs: an lm and a classifier bundle stream
    chunked == whole and batched == alone through them too."""
    from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel

    torch.manual_seed(0)
    models = {"lm": QRNNLanguageModel(30, 16, 24, 2, window=[2, 1]),
              "classifier": QRNNClassifier(30, 16, 24, 2, num_classes=3, window=[3, 2])}
    for name, m in models.items():
        export_bundle(m.eval(), tmp_path / name, fo_pool="custom", verify=False)
        r = run(programs["qrnn_stream_check"], tmp_path / name, "--len", 9, "--tol", "1e-5")
        assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
        # every output and state chunked==whole, and the batched check
        (g,) = json.loads((tmp_path / name / "manifest.json").read_text())["graphs"].values()
        assert sum(l.endswith(" ok") for l in r.stdout.splitlines()) == len(g["outputs"]) + len(g["states"]) + 1
    r = run(programs["qrnn_translate"], tmp_path / "lm", stdin="a\n")
    _one_line_error(r, "needs a seq2seq bundle")


LM_VOCAB = CharVocab.build(["abcdefghij klmno"])
PROMPTS = ["abc", "", "hello world", "ooo"]


@pytest.fixture(scope="module")
def lm_and_classifier_bundles(tmp_path_factory):
    from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel

    root = tmp_path_factory.mktemp("cpp_lm")
    torch.manual_seed(2)
    lm = QRNNLanguageModel(len(LM_VOCAB), 16, 24, 2, window=[2, 2]).eval()
    with torch.no_grad():  # sharper than random init, so generated tokens vary with the prompt
        for p in lm.parameters():
            p.mul_(3)
        lm.out.bias[EOS] -= 3
    cls = QRNNClassifier(len(LM_VOCAB), 16, 24, 2, num_classes=4, window=[3, 1]).eval()
    export_bundle(lm, root / "lm", fo_pool="custom", verify=False, vocab=LM_VOCAB)
    export_bundle(cls, root / "classifier", fo_pool="portable", verify=False, vocab=LM_VOCAB)
    return root / "lm", root / "classifier"


def test_language_model_greedy_generation_matches_python_runtime(programs, lm_and_classifier_bundles):
    lm_dir, _ = lm_and_classifier_bundles
    b = load_bundle(lm_dir, threads=1)
    want = []
    for prompt in PROMPTS:
        s = b.language_model()
        want.append(list(s.generate(prompt, max_new_tokens=15)))
    assert len({tuple(w) for w in want}) == len(PROMPTS) and len({t for w in want for t in w}) >= 4, want
    r = run(programs["qrnn_stream"], lm_dir, "--max-new", 15, "--ids", stdin="".join(p + "\n" for p in PROMPTS))
    assert r.returncode == 0, r.stderr
    got = [[int(t) for t in line.split()] for line in r.stdout.split("\n")[:-1]]
    assert got == want
    # Sampling is seeded (the same seed gives the same tokens) but not numpy's draws: no parity.
    args = ["--max-new", 12, "--temperature", 1.5, "--top-k", 4, "--seed", 7, "--ids"]
    a, c = (run(programs["qrnn_stream"], lm_dir, *args, stdin="abc\n") for _ in range(2))
    assert a.returncode == 0 and a.stdout == c.stdout and len(a.stdout.split()) >= 1


def test_classifier_running_prediction_matches_python_runtime(programs, lm_and_classifier_bundles):
    _, cls_dir = lm_and_classifier_bundles
    text = "abc defg hij"
    r = run(programs["qrnn_stream"], cls_dir, "--chunk", 5, stdin=text + "\n")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.split("\n") if line]
    s = load_bundle(cls_dir, threads=1).classifier()
    assert len(rows) == 3
    for i, row in enumerate(rows):
        probs = s.feed(text[5 * i:5 * i + 5])
        assert int(row[0]) == s.prediction
        assert [float(x) for x in row[1:]] == pytest.approx(list(probs), abs=1e-6)


@pytest.mark.parametrize("bad", [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"a\x80", b"\xe2\x82"])
def test_translate_refuses_malformed_utf8_like_python(programs, bundles, bad):
    """Overlong forms, surrogates, code points above U+10FFFF, stray or cut sequences: one error
    line naming the stdin line, after the lines before it were translated (as `qrnn-deploy
    translate`); the C++ vocabulary used to read some of them as one character."""
    for extra in ([], ["--batch", "2"]):
        r = subprocess.run([str(programs["qrnn_translate"]), str(bundles["custom"]), "--ids", "--max-len", "3", *extra],
                           input=b"ab\n" + "\u00e4\u20ac\U0001F600".encode() + b"\n" + bad + b"\nab\n",
                           capture_output=True, timeout=120)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.startswith("qrnn_translate: error: stdin line 3 is not valid UTF-8")
        assert err.count("\n") == 1 and r.stdout.decode().count("\n") == 2, (err, r.stdout)


def test_stream_check_on_an_int8_bundle_uses_the_quantized_tolerance(programs, model, tmp_path):
    """int8 one-row calls round apart from batched ones (a whole int8 step at worst): the check
    reads the bundle's quantization and compares relative to the quantized tolerance."""
    export_bundle(model, tmp_path / "q", fo_pool="custom", verify=False, vocab=(SRC_VOCAB, TGT_VOCAB),
                  quantize="int8", quantize_block=16)
    r = run(programs["qrnn_stream_check"], tmp_path / "q", "--len", 9)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("int8 bundle: differences relative to max(1, max|value|), tolerance 0.1")


def test_translate_strips_every_trailing_carriage_return_like_python(programs, bundles):
    lines = ["abc", "abc\r", "abc\r\r"]
    out = translate_ids(programs, bundles["custom"], sources=lines)
    assert out[0] == out[1] == out[2]


def test_stream_check_without_bundle_is_an_error_line_on_stderr(programs):
    r = run(programs["qrnn_stream_check"])
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("qrnn_stream_check: expected one BUNDLE")
    assert r.stderr.count("\n") == 1
    r = run(programs["qrnn_stream_check"], "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: qrnn_stream_check BUNDLE")


# (options, stdin) that `qrnn-deploy translate` refuses, each once before reading stdin and once at a
# line; qrnn_translate must refuse the same ones at the same point (same stdout, exit code 2).
# Differential tests on the shipped model found each of these apart: qrnn_translate checked
# --length-penalty only for beams and only at the first non-empty line (greedy took 11 or nan),
# took --max-len 0, and had no --max-source-chars (it translated a 2,001-character line);
# `qrnn-deploy translate` checked --beam <= 1000 and --max-len <= 1,000,000 only at the first
# non-empty line, after answering the empty lines before it.
CLI_PARITY = [
    ([], "ab\n\nzwölf 12\n"),  # agreement when nothing is refused
    (["--length-penalty", "11"], "ab\n"),
    (["--length-penalty", "nan"], "ab\n"),
    (["--length-penalty", "-1"], "\nab\n"),
    (["--beam", "2", "--length-penalty", "11"], "\nab\n"),
    (["--max-len", "0"], "ab\n"),
    (["--beam", "1001"], "\nab\n"),
    (["--max-len", "1000001"], "\nab\n"),
    ([], "ab\n" + "a" * 2001 + "\nab\n"),
    (["--beam", "2"], "ab\n" + "a" * 2001 + "\nab\n"),
    ([], "ab\n" + "a" * 2000 + "\nab\n"),
    (["--max-source-chars", "3"], "ab\n\nabcd\nab\n"),
    (["--max-source-chars", "3"], "äöü\nabc\r\n"),  # characters, not bytes; the \r is not one
]


@pytest.mark.parametrize("args, stdin", CLI_PARITY, ids=[f"{' '.join(a) or 'defaults'}|{len(s)}" for a, s in CLI_PARITY])
def test_translate_refuses_what_the_python_cli_refuses(programs, bundles, args, stdin):
    bundle = bundles["portable"]  # the Python side needs no custom-op library
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*args, "--max-len", "5"] if "--max-len" not in args else args
    py = subprocess.run([sys.executable, "-m", "qrnn_deploy", "translate", str(bundle), "--threads", "1", *args],
                        input=stdin, capture_output=True, text=True, timeout=300, env=env)
    cc = run(programs["qrnn_translate"], bundle, "--threads", 1, *args, stdin=stdin)
    assert (cc.returncode, cc.stdout) == (py.returncode, py.stdout), (cc.stderr, py.stderr)
    if py.returncode:
        assert cc.returncode == 2 and cc.stderr.count("\n") == 1, cc.stderr
    else:
        assert cc.stdout.count("\n") == stdin.count("\n")


def test_translate_too_long_line_after_a_batch_is_translated_first(programs, bundles):
    """--batch: the lines before a too-long one are still written (as for malformed UTF-8)."""
    r = run(programs["qrnn_translate"], bundles["custom"], "--ids", "--max-len", 3, "--batch", 2,
            "--max-source-chars", 4, stdin="ab\nab\nab\nabcde\nab\n")
    err = _one_line_error(r, "stdin line 4 has 5 characters, more than --max-source-chars 4")
    assert r.stdout.count("\n") == 3, (r.stdout, err)


# Hand-derived checks of the library's decoding rules and tensor helpers, compiled against
# libqrnn_runtime.a: ties (which the parity tests with random weights never meet), binary16
# conversion (TensorRT fp16 outputs, unreachable without a GPU) and concat_time of batch > 1.
UNIT_CPP = r"""// Hand-derived checks of the C++ runtime's decoding rules and tensor helpers.
#include <cstdio>
#include <vector>

#include "qrnn/decoding.hpp"
#include "qrnn/tensor.hpp"

using namespace qrnn;

static int fails = 0;
static void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++fails;
  }
}

int main() {
  // beam_step, beam 1, V = 8: row 0 symbol 6 and row 1 symbol 5 both total -1; the lower flat
  // index (0 * 8 + 6 < 1 * 8 + 5) ranks first and is the one live candidate.
  std::vector<double> logp(16, -1e9);
  logp[6] = -1.0;
  logp[8 + 5] = -1.0;
  std::vector<Candidate> live, fin;
  beam_step({0.0, 0.0}, logp, 8, 1, 0, false, 3, live, fin);
  check(live.size() == 1 && live[0].parent == 0 && live[0].symbol == 6 && fin.empty(), "beam_step tie");
  // best_hypothesis: -2 / (1 + 1) for both: the one finished first wins.
  check(best_hypothesis({{-2.0, {4}}, {-2.0, {5}}}, 1.0) == std::vector<int64_t>{4}, "best_hypothesis tie");
  check(best_hypothesis({{-3.0, {4, 4}}, {-2.5, {5}}}, 1.0) == std::vector<int64_t>{4, 4}, "length penalty");
  // IEEE binary16.
  check(half_to_float(0x3c00) == 1.0f && half_to_float(0xc000) == -2.0f, "half 1, -2");
  check(half_to_float(0x7bff) == 65504.0f && half_to_float(0x0001) == 5.9604644775390625e-8f, "half max, min");
  check(half_to_float(0x3555) == 0.333251953125f, "half 1/3");
  check(float_to_half(1.0f) == 0x3c00 && float_to_half(0.1f) == 0x2e66 && float_to_half(65504.0f) == 0x7bff,
        "float_to_half");
  // Halfway between two binary16 values (1 + 2^-11, 1 + 3 * 2^-11): to the even one.
  check(float_to_half(1.00048828125f) == 0x3c00 && float_to_half(1.00146484375f) == 0x3c02, "half ties to even");
  // concat_time of [2, 2, 1] and [2, 1, 1]: per row, the first part's steps then the second's.
  const Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2, 1}), b = Tensor::from_floats({5, 6}, {2, 1, 1});
  const Tensor c = concat_time({&a, &b});
  check(c.shape() == std::vector<int64_t>{2, 3, 1} && c.to_floats() == std::vector<float>{1, 2, 5, 3, 4, 6},
        "concat_time");
  std::printf("%d failed\n", fails);
  return fails ? 1 : 0;
}
"""


def test_library_rules_on_hand_derived_cases(programs, tmp_path):
    cxx = next(shutil.which(c) for c in ("c++", "g++", "clang++") if shutil.which(c))
    (tmp_path / "unit.cpp").write_text(UNIT_CPP)
    exe = tmp_path / "unit"
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(REPO / "runtime" / "include"), str(tmp_path / "unit.cpp"),
                        str(BUILD / "libqrnn_runtime.a"), "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = run(exe)
    assert r.returncode == 0 and r.stdout.strip().endswith("0 failed"), r.stdout + r.stderr
