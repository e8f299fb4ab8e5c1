"""Export for TensorRT (FoPool nodes with plugin attributes) and the Triton model repository.

No TensorRT and no Triton server here: the graphs are checked with the ONNX checker and run in
onnxruntime; each config.pbtxt is parsed with Triton's own model-config protobuf (from the
installed tritonclient package) and must name every state of the bundle.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format

from qrnn_deploy.bundle import EngineSpec, load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.errors import ExportError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.export.tensorrt_nodes import PLUGIN_ATTRS, add_plugin_attrs, tensorrt_node_attrs
from qrnn_deploy.export.triton import write_model_repository
from qrnn_deploy.nn import QRNNLanguageModel, QRNNSeq2Seq, save_checkpoint


def _model_config_pb2():
    """Triton's ModelConfig protobuf module. tritonclient.grpc's package __init__ needs grpcio,
    which the model-config module itself does not: load the module file directly then."""
    try:
        from tritonclient.grpc import model_config_pb2
        return model_config_pb2
    except (ImportError, RuntimeError):
        spec = importlib.util.find_spec("tritonclient")
        if spec is None:
            pytest.skip("tritonclient is not installed")
        path = spec.submodule_search_locations[0] + "/grpc/model_config_pb2.py"
        mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod


def _fo_pool_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == "FoPool" and n.domain == "qrnn"]


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = QRNNLanguageModel(16, 8, 8, 2, window=[2, 1])
    out = tmp_path_factory.mktemp("lm") / "bundle"
    export_bundle(model, out, node_attrs=tensorrt_node_attrs(), verify=False)
    return out, model


def test_fo_pool_nodes_carry_the_plugin_attributes_and_pass_the_checker(lm_bundle):
    out, _ = lm_bundle
    proto = onnx.load(str(out / "lm.onnx"))
    nodes = _fo_pool_nodes(proto)
    assert len(nodes) == 2
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"qrnn"
        assert attrs["pooling"] == b"fo" and attrs["batch_first"] == 1
    from qrnn_deploy.export import register_fo_pool_schema
    register_fo_pool_schema()
    onnx.checker.check_model(proto, full_check=True)


def test_graph_with_plugin_attributes_still_runs_in_onnxruntime(lm_bundle):
    from qrnn_deploy import _native
    try:
        _native.ort_library_path()
    except Exception as e:
        pytest.skip(f"libqrnn_ort.so not built: {e}")
    out, model = lm_bundle
    sess = _native.ort_session(str(out / "lm.onnx"))
    man = load_manifest(out)
    tokens = torch.randint(0, 16, (2, 5))
    feeds = {"tokens": tokens.numpy()}
    for s in man.graphs["lm"].states:
        feeds[s.name] = np.zeros([2 if d == "B" else d for d in s.shape], dtype=np.float32)
    logits = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        want, _ = model(tokens)
    assert np.abs(logits - want.numpy()).max() < 1e-4


def test_add_plugin_attrs_to_an_existing_graph(tmp_path):
    torch.manual_seed(0)
    export_bundle(QRNNLanguageModel(10, 4, 4, 1), tmp_path, verify=False)
    proto = onnx.load(str(tmp_path / "lm.onnx"))
    assert all(a.name not in PLUGIN_ATTRS for n in _fo_pool_nodes(proto) for a in n.attribute)
    assert add_plugin_attrs(proto) == 1
    assert add_plugin_attrs(proto) == 1  # idempotent: no duplicate attributes
    names = [a.name for a in _fo_pool_nodes(proto)[0].attribute]
    assert sorted(names) == sorted(set(names)) and "plugin_namespace" in names


def _parse(cfg_path):
    pb2 = _model_config_pb2()
    return text_format.Parse(cfg_path.read_text(), pb2.ModelConfig()), pb2


def test_triton_onnxruntime_config_parses_and_names_every_state(lm_bundle, tmp_path):
    out, _ = lm_bundle
    man = load_manifest(out)
    cfgs = write_model_repository(out, tmp_path / "repo", op_library="/opt/qrnn/libqrnn_ort.so", max_batch_size=4)
    assert [c.parent.name for c in cfgs] == ["qrnn_lm"]
    cfg, pb2 = _parse(cfgs[0])
    assert cfg.name == "qrnn_lm" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 4
    assert (cfgs[0].parent / "1" / "model.onnx").read_bytes() == (out / "lm.onnx").read_bytes()
    assert list(cfg.model_operations.op_library_filename) == ["/opt/qrnn/libqrnn_ort.so"]
    states = {s.input_name: s for s in cfg.sequence_batching.state}
    for s in man.graphs["lm"].states:
        st = states.pop(s.name)
        assert st.output_name == s.output and len(st.initial_state) == 1 and st.initial_state[0].zero_data
        assert list(st.dims) == [d for d in s.shape[1:]] and st.data_type == pb2.TYPE_FP32
    assert not states
    # States are carried by Triton, so they are not request inputs / outputs.
    assert [i.name for i in cfg.input] == ["tokens"] and list(cfg.input[0].dims) == [-1]
    assert [o.name for o in cfg.output] == ["logits"] and list(cfg.output[0].dims) == [-1, 16]
    assert cfg.sequence_batching.HasField("oldest")


def test_triton_seq2seq_repository_has_one_model_per_graph(tmp_path):
    torch.manual_seed(0)
    model = QRNNSeq2Seq(12, 14, embed_size=8, hidden_size=8, num_layers=2, encoder_window=2, decoder_window=2)
    export_bundle(model, tmp_path / "b", fo_pool="portable", verify=False)
    man = load_manifest(tmp_path / "b")
    cfgs = write_model_repository(tmp_path / "b", tmp_path / "repo")  # portable: no library needed
    assert sorted(c.parent.name for c in cfgs) == ["qrnn_decoder", "qrnn_encoder"]
    for c in cfgs:
        cfg, _ = _parse(c)
        role = c.parent.name.removeprefix("qrnn_")
        assert {s.input_name for s in cfg.sequence_batching.state} == {s.name for s in man.graphs[role].states}
        assert {s.output_name for s in cfg.sequence_batching.state} == {s.output for s in man.graphs[role].states}
        assert not cfg.model_operations.op_library_filename


def test_triton_tensorrt_backend_uses_the_engines(lm_bundle, tmp_path):
    out, _ = lm_bundle
    with pytest.raises(ExportError, match="build-engine"):
        write_model_repository(out, tmp_path / "repo", backend="tensorrt")
    # A bundle whose manifest lists an engine (written by build-engine on a TensorRT machine).
    import shutil
    b = tmp_path / "b"
    shutil.copytree(out, b)
    (b / "lm.plan").write_bytes(b"engine bytes")
    man = load_manifest(b)
    man.engines["lm"] = EngineSpec(file="lm.plan", precision="fp16", plugin="aot", profiles=[])
    man.write(b)
    cfgs = write_model_repository(b, tmp_path / "repo2", backend="tensorrt")
    cfg, _ = _parse(cfgs[0])
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert not cfg.model_operations.op_library_filename  # AOT: the kernel is in the engine
    assert (cfgs[0].parent / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert not cfg.instance_group[0].profile  # one profile: nothing to choose
    # Two profiles (decode, chunks): Triton must be told it may use both (it takes the first by default).
    man.engines["lm"].profiles = [{"name": "decode"}, {"name": "chunk"}]
    man.write(b)
    cfg, _ = _parse(write_model_repository(b, tmp_path / "repo4", backend="tensorrt", max_batch_size=3)[0])
    assert list(cfg.instance_group[0].profile) == ["0", "1"] and cfg.max_batch_size == 3
    # Triton's TensorRT backend cannot register the plugin library's creator: refused.
    man.engines["lm"].plugin = "library"
    man.write(b)
    with pytest.raises(ExportError, match="--plugin aot"):
        write_model_repository(b, tmp_path / "repo3", backend="tensorrt")


def test_triton_refuses_a_state_with_a_symbolic_axis(lm_bundle, tmp_path):
    """Triton's zero initial state is made at fixed dims; -1 there would not load."""
    import shutil

    out, _ = lm_bundle
    b = tmp_path / "b"
    shutil.copytree(out, b)
    man = load_manifest(b)
    man.graphs["lm"].states[0].shape = ["B", "T", 4]
    man.write(b)
    with pytest.raises(ExportError, match="symbolic axis"):
        write_model_repository(b, tmp_path / "repo", op_library="/opt/libqrnn_ort.so")


def test_build_engine_triton_needs_the_aot_plugin(lm_bundle, tmp_path, capsys):
    out, _ = lm_bundle
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(out), "--plugin", "library", "--triton", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --triton needs --plugin aot") and err.count("\n") == 1


def test_custom_bundle_without_op_library_is_refused(lm_bundle, tmp_path):
    out, _ = lm_bundle
    with pytest.raises(ExportError, match="--triton-op-library"):
        write_model_repository(out, tmp_path / "repo")


def test_cli_export_tensorrt_and_triton(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(QRNNLanguageModel(10, 4, 4, 2, window=[2, 1]), tmp_path / "m.safetensors")
    with pytest.raises(SystemExit) as e:
        main(["export", str(ckpt), "-o", str(tmp_path / "b"), "--fo-pool", "portable", "--no-verify", "--tensorrt",
              "--triton", str(tmp_path / "repo")])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    assert "wrote Triton model qrnn_lm" in out.out
    cfg, _ = _parse(tmp_path / "repo" / "qrnn_lm" / "config.pbtxt")
    assert len(cfg.sequence_batching.state) == 3  # conv_state_0, c_state_0, c_state_1
