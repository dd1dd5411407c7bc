"""hotserve.protos: wire compatibility with tensorflow-serving-api / tritonclient, descriptor
parity with upstream, the private descriptor pool, the TensorProto codec and the TFRecord reader.

TensorFlow is imported once, at module level, *before* our generated modules, so the whole file
also exercises "TensorFlow's protos and ours in one process"; the reverse import order is
checked in a subprocess under the pure-python protobuf backend, the stricter one about
duplicate names.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

try:  # upstream first: the order a server loading SavedModels would typically see
    import tensorflow as tf
    from tensorflow.core.example import example_pb2 as up_example
    from tensorflow.core.protobuf import meta_graph_pb2 as up_meta_graph
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: F401  (registers upstream descriptors)
    from tensorflow_serving.apis import classification_pb2 as up_classification
    from tensorflow_serving.apis import get_model_metadata_pb2 as up_metadata
    from tensorflow_serving.apis import get_model_status_pb2 as up_status
    from tensorflow_serving.apis import model_management_pb2 as up_management
    from tensorflow_serving.apis import predict_pb2 as up_predict
    from tensorflow_serving.apis import prediction_log_pb2 as up_prediction_log
except ImportError:  # pragma: no cover - the dev venv has them
    tf = None
try:
    import tritonclient.grpc.model_config_pb2  # noqa: F401  (registers upstream descriptors)
    import tritonclient.grpc.service_pb2 as up_triton
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor
except ImportError:  # pragma: no cover
    up_triton = None

from google.protobuf import descriptor_pool, text_format

import hotserve.protos
from hotserve import dtypes
from hotserve.protos import tensors, tfrecord
from hotserve.protos._pool import POOL
from hotserve.protos.inference import grpc_service_pb2 as triton
from hotserve.protos.inference import model_config_pb2 as triton_config
from hotserve.protos.tensorflow.core.example import example_pb2, feature_pb2
from hotserve.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from hotserve.protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from hotserve.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_log_pb2,
)
from hotserve.protos.tensorflow_serving.config import model_server_config_pb2

needs_tf = pytest.mark.skipif(tf is None, reason="tensorflow / tensorflow-serving-api not installed")
needs_triton = pytest.mark.skipif(up_triton is None, reason="tritonclient not installed")

ROOT = Path(__file__).resolve().parent.parent


def _our_modules() -> list:
    """Every generated module under hotserve.protos (imports them all, as a server might)."""
    mods = []
    for info in pkgutil.walk_packages(hotserve.protos.__path__, "hotserve.protos."):
        if info.name.endswith("_pb2"):
            mods.append(importlib.import_module(info.name))
    return mods


OUR_MODULES = _our_modules()


# ---- generic helpers -------------------------------------------------------------------


def assert_same(a, b, path: str = "") -> None:
    """Field-by-field equality of two messages that may come from different descriptor pools."""
    where = path or a.DESCRIPTOR.full_name
    assert a.DESCRIPTOR.full_name == b.DESCRIPTOR.full_name, where
    set_a = {f.name for f, _ in a.ListFields()}
    set_b = {f.name for f, _ in b.ListFields()}
    assert set_a == set_b, f"{where}: fields set differ: {sorted(set_a ^ set_b)}"
    for field, value in a.ListFields():
        other = getattr(b, field.name)
        fpath = f"{where}.{field.name}"
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            assert set(value) == set(other), f"{fpath}: keys differ"
            value_field = field.message_type.fields_by_name["value"]
            for key in value:
                if value_field.message_type is not None:
                    assert_same(value[key], other[key], f"{fpath}[{key!r}]")
                else:
                    assert value[key] == other[key], f"{fpath}[{key!r}]"
        elif field.is_repeated:
            assert len(value) == len(other), f"{fpath}: lengths differ"
            for i, (x, y) in enumerate(zip(value, other)):
                if field.message_type is not None:
                    assert_same(x, y, f"{fpath}[{i}]")
                else:
                    assert x == y, f"{fpath}[{i}]"
        elif field.message_type is not None:
            assert_same(value, other, fpath)
        else:
            assert value == other, fpath
    for oneof in a.DESCRIPTOR.oneofs:
        assert a.WhichOneof(oneof.name) == b.WhichOneof(oneof.name), f"{where}: oneof {oneof.name}"


def cross(msg, other_cls):
    """Serialize msg, parse with the other side's class, check both ways, return the parsed copy."""
    parsed = other_cls.FromString(msg.SerializeToString())
    assert_same(parsed, msg)
    back = type(msg).FromString(parsed.SerializeToString())
    assert back == msg
    return parsed


# ---- the private pool ---------------------------------------------------------------------


def test_generated_modules_use_the_private_pool():
    assert len(OUR_MODULES) >= 30
    for mod in OUR_MODULES:
        assert mod.DESCRIPTOR.pool is POOL, mod.__name__
        assert mod.DESCRIPTOR.name.startswith("hotserve/protos/"), mod.DESCRIPTOR.name
    ours = POOL.FindMessageTypeByName("tensorflow.TensorProto")
    assert ours.file.name == "hotserve/protos/tensorflow/core/framework/tensor.proto"
    if tf is not None:  # TensorFlow's own registration is untouched
        theirs = descriptor_pool.Default().FindMessageTypeByName("tensorflow.TensorProto")
        assert theirs.file.name == "tensorflow/core/framework/tensor.proto"


def test_message_behaviour_in_private_pool():
    """Serialize/parse, maps, oneofs, proto3 optional, Any and text format all work."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    assert req.model_spec.WhichOneof("version_choice") is None
    req.model_spec.version.value = 0  # the wrapper makes an explicit version 0 representable
    assert req.model_spec.WhichOneof("version_choice") == "version"
    req.model_spec.version_label = "stable"
    assert req.model_spec.WhichOneof("version_choice") == "version_label"
    tensors.from_numpy(np.ones((2, 2), np.float32), out=req.inputs["x"])
    req.output_filter.append("y")
    assert not req.HasField("client_id")
    req.client_id = b""
    assert req.HasField("client_id")  # proto3 optional tracks presence even for empty bytes
    parsed = predict_pb2.PredictRequest.FromString(req.SerializeToString())
    assert parsed == req and parsed.HasField("client_id")
    np.testing.assert_array_equal(tensors.to_numpy(parsed.inputs["x"]), np.ones((2, 2), np.float32))

    resp = get_model_metadata_pb2.GetModelMetadataResponse()
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig_map.signature_def["serving_default"].inputs["x"].name = "x:0"
    resp.metadata["signature_def"].Pack(sig_map)
    assert resp.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    parsed = get_model_metadata_pb2.GetModelMetadataResponse.FromString(resp.SerializeToString())
    out = get_model_metadata_pb2.SignatureDefMap()
    assert parsed.metadata["signature_def"].Unpack(out) and out == sig_map
    assert not parsed.metadata["signature_def"].Unpack(predict_pb2.PredictRequest())

    text = text_format.MessageToString(resp, descriptor_pool=POOL)
    assert "[type.googleapis.com/tensorflow.serving.SignatureDefMap]" in text
    assert text_format.Parse(text, get_model_metadata_pb2.GetModelMetadataResponse(), descriptor_pool=POOL) == resp

    feature = feature_pb2.Feature()
    feature.int64_list.value.extend([1, 2])
    assert feature.WhichOneof("kind") == "int64_list"
    feature.float_list.value.append(1.0)
    assert feature.WhichOneof("kind") == "float_list" and not feature.HasField("int64_list")


def test_model_config_file_text_format():
    """A typical --model_config_file parses into our ModelServerConfig as it does upstream."""
    text = textwrap.dedent("""
        model_config_list {
          config {
            name: "resnet"
            base_path: "/models/resnet"
            model_platform: "tensorflow"
            model_version_policy { specific { versions: 1 versions: 2 } }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
          }
          config {
            name: "half_plus_two"
            base_path: "/models/half_plus_two"
            model_platform: "tensorflow"
            model_version_policy { latest { num_versions: 2 } }
          }
          config { name: "all" base_path: "/m/all" model_version_policy { all {} } }
        }
    """)
    cfg = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    first = cfg.model_config_list.config[0]
    assert first.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(first.model_version_policy.specific.versions) == [1, 2]
    assert dict(first.version_labels) == {"stable": 1, "canary": 2}
    assert cfg.model_config_list.config[1].model_version_policy.latest.num_versions == 2
    assert cfg.model_config_list.config[2].model_version_policy.WhichOneof("policy_choice") == "all"
    if tf is not None:
        from tensorflow_serving.config import model_server_config_pb2 as up_cfg

        assert_same(cfg, text_format.Parse(text, up_cfg.ModelServerConfig()))


def test_ours_first_then_tensorflow_in_one_process_pure_python_backend():
    """Reverse import order, under the backend that rejects duplicate names most strictly."""
    if tf is None:
        pytest.skip("tensorflow not installed")
    code = textwrap.dedent("""
        import pkgutil, importlib
        import hotserve.protos
        from hotserve.protos.tensorflow_serving.apis import predict_pb2 as ours
        for info in pkgutil.walk_packages(hotserve.protos.__path__, "hotserve.protos."):
            if info.name.endswith("_pb2"):
                importlib.import_module(info.name)
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2 as theirs, get_model_metadata_pb2
        import tritonclient.grpc.service_pb2
        from google.protobuf.internal import api_implementation
        assert api_implementation.Type() == "python", api_implementation.Type()
        up = theirs.PredictRequest()
        up.model_spec.name = "m"
        up.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
        req = ours.PredictRequest.FromString(up.SerializeToString())
        assert req.model_spec.name == "m" and len(req.inputs["x"].tensor_content) == 8
        req.inputs["y"].float_val.extend([3.0])
        back = theirs.PredictRequest.FromString(req.SerializeToString())
        assert list(back.inputs["y"].float_val) == [3.0]
        print("ok")
    """)
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_generated_code_is_current():
    pytest.importorskip("grpc_tools")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- descriptor parity with upstream ----------------------------------------------------------

# Upstream fields we deliberately do not declare (they would pull in large, unrelated schemas or
# Triton features hotserve does not have). Parsing keeps them as unknown fields.
LEFT_OUT = {
    "tensorflow.MetaGraphDef": {"graph_def", "saver_def", "object_graph_def"},
    "tensorflow.MetaGraphDef.MetaInfoDef": {"stripped_op_list"},
    "tensorflow.serving.PredictionLog": {"session_run_log"},
    "inference.ModelConfig": {
        "batch_input", "batch_output", "optimization", "sequence_batching", "ensemble_scheduling",
        "model_warmup", "model_operations", "model_transaction_policy", "model_repository_agents",
        "response_cache", "model_metrics",
    },
}


def _walk_messages(container):
    for msg in container.message_types_by_name.values() if hasattr(container, "message_types_by_name") else []:
        yield msg
        yield from _walk_nested(msg)


def _walk_nested(msg):
    for nested in msg.nested_types:
        yield nested
        yield from _walk_nested(nested)


def _type_of(field) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return str(field.type)


def _compare_enum(ours, theirs, problems: list[str]) -> None:
    a = {v.name: v.number for v in ours.values}
    b = {v.name: v.number for v in theirs.values}
    if a != b:
        problems.append(f"enum {ours.full_name}: ours {sorted(set(a.items()) - set(b.items()))} "
                        f"upstream {sorted(set(b.items()) - set(a.items()))}")


@pytest.mark.skipif(tf is None or up_triton is None, reason="upstream packages not installed")
def test_every_field_number_and_type_matches_upstream():
    import tensorflow_serving.apis
    import tensorflow_serving.config

    for package in (tensorflow_serving.apis, tensorflow_serving.config):  # register every upstream file
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name.endswith("_pb2"):
                importlib.import_module(info.name)
    upstream = descriptor_pool.Default()
    problems: list[str] = []
    left_out_seen: dict[str, set[str]] = {}
    checked_fields = 0
    for mod in OUR_MODULES:
        fd = mod.DESCRIPTOR
        for enum in fd.enum_types_by_name.values():
            _compare_enum(enum, upstream.FindEnumTypeByName(enum.full_name), problems)
        for svc in fd.services_by_name.values():
            up_svc = upstream.FindServiceByName(svc.full_name)
            ours_m = {m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                               m.server_streaming) for m in svc.methods}
            up_m = {m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                             m.server_streaming) for m in up_svc.methods}
            if ours_m != up_m:
                problems.append(f"service {svc.full_name}: {ours_m} != {up_m}")
        for msg in _walk_messages(fd):
            try:
                up = upstream.FindMessageTypeByName(msg.full_name)
            except KeyError:
                problems.append(f"{msg.full_name}: no such upstream message")
                continue
            for enum in msg.enum_types:
                _compare_enum(enum, up.enum_types_by_name[enum.name], problems)
            for field in msg.fields:
                checked_fields += 1
                upf = up.fields_by_name.get(field.name)
                if upf is None:
                    problems.append(f"{msg.full_name}.{field.name}: not upstream")
                    continue
                ours_sig = (field.number, field.type, field.is_repeated, _type_of(field),
                            field.containing_oneof.name if field.containing_oneof else None,
                            field.has_presence)
                up_sig = (upf.number, upf.type, upf.is_repeated, _type_of(upf),
                          upf.containing_oneof.name if upf.containing_oneof else None, upf.has_presence)
                if ours_sig != up_sig:
                    problems.append(f"{msg.full_name}.{field.name}: ours {ours_sig} upstream {up_sig}")
                if field.is_repeated and field.message_type is None and field.is_packed != upf.is_packed:
                    problems.append(f"{msg.full_name}.{field.name}: packed {field.is_packed} vs {upf.is_packed}")
            missing = {f.name for f in up.fields} - {f.name for f in msg.fields}
            if missing:
                left_out_seen[msg.full_name] = missing
    assert not problems, "\n".join(problems)
    assert left_out_seen == LEFT_OUT
    assert checked_fields > 300


# ---- TF Serving wire compatibility ----------------------------------------------------------

ARRAYS = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "i64": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "str": np.array([b"a", b"\x00\xffbin", b""], dtype=object),
    "f16": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
    "bool": np.array([True, False, True]),
    "scalar_i32": np.array(7, dtype=np.int32),
}


@needs_tf
def test_predict_request_and_response_upstream_to_ours_and_back():
    up = up_predict.PredictRequest()
    up.model_spec.name = "resnet"
    up.model_spec.version.value = 42
    up.model_spec.signature_name = "serving_default"
    up.output_filter.extend(["probabilities", "classes"])
    for key, arr in ARRAYS.items():
        up.inputs[key].CopyFrom(tf.make_tensor_proto(arr))
    ours = cross(up, predict_pb2.PredictRequest)
    assert ours.model_spec.version.value == 42
    for key, arr in ARRAYS.items():
        got = tensors.to_numpy(ours.inputs[key])
        assert got.dtype == tf.make_ndarray(up.inputs[key]).dtype or arr.dtype == object
        np.testing.assert_array_equal(got, arr)

    resp = up_predict.PredictResponse()
    resp.model_spec.name = "resnet"
    resp.model_spec.version_label = "stable"
    resp.outputs["y"].CopyFrom(tf.make_tensor_proto(np.ones((1, 4), np.float64)))
    ours_resp = cross(resp, predict_pb2.PredictResponse)
    assert ours_resp.model_spec.WhichOneof("version_choice") == "version_label"
    np.testing.assert_array_equal(tensors.to_numpy(ours_resp.outputs["y"]), np.ones((1, 4)))


@needs_tf
def test_predict_request_and_response_ours_to_upstream():
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.model_spec.version.value = 3
    req.output_filter.append("y")
    req.predict_streamed_options.request_state = predict_pb2.PredictStreamedOptions.SPLIT
    req.predict_streamed_options.split_dimensions["x"] = 0
    for key, arr in ARRAYS.items():
        tensors.from_numpy(arr, out=req.inputs[key])
    up = cross(req, up_predict.PredictRequest)
    for key, arr in ARRAYS.items():
        np.testing.assert_array_equal(tf.make_ndarray(up.inputs[key]), arr)
        # TensorFlow itself accepts our encoding
        np.testing.assert_array_equal(tf.convert_to_tensor(tf.make_ndarray(up.inputs[key])).numpy(), arr)

    resp = predict_pb2.PredictResponse()
    resp.model_spec.name = "m"
    resp.model_spec.version.value = 3
    tensors.from_numpy(np.array([[0.25, 0.75]], np.float32), out=resp.outputs["probabilities"])
    up_resp = cross(resp, up_predict.PredictResponse)
    np.testing.assert_array_equal(tf.make_ndarray(up_resp.outputs["probabilities"]), [[0.25, 0.75]])


def _signature_map(mod_meta, mod_sig, types):
    sig_map = mod_meta.SignatureDefMap()
    sig = sig_map.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    x = sig.inputs["x"]
    x.name = "serving_default_x:0"
    x.dtype = types.DT_FLOAT
    for size in (-1, 4):
        x.tensor_shape.dim.add().size = size
    y = sig.outputs["y"]
    y.coo_sparse.values_tensor_name = "v:0"
    y.dtype = types.DT_INT64
    y.tensor_shape.unknown_rank = True
    sig.defaults["k"].dtype = types.DT_INT32
    sig.defaults["k"].int_val.append(5)
    sig_map.signature_def["classify"].method_name = "tensorflow/serving/classify"
    return sig_map


@needs_tf
def test_get_model_metadata_with_any_packed_signature_map():
    from tensorflow.core.framework import types_pb2 as up_types

    up_map = _signature_map(up_metadata, up_meta_graph, up_types)
    up = up_metadata.GetModelMetadataResponse()
    up.model_spec.name = "m"
    up.model_spec.version.value = 1
    up.metadata["signature_def"].Pack(up_map)
    ours = cross(up, get_model_metadata_pb2.GetModelMetadataResponse)
    ours_map = get_model_metadata_pb2.SignatureDefMap()
    assert ours.metadata["signature_def"].Unpack(ours_map)
    assert_same(ours_map, up_map)
    x = ours_map.signature_def["serving_default"].inputs["x"]
    assert x.WhichOneof("encoding") == "name" and [d.size for d in x.tensor_shape.dim] == [-1, 4]
    y = ours_map.signature_def["serving_default"].outputs["y"]
    assert y.WhichOneof("encoding") == "coo_sparse"

    # and the other way, packing on our side
    mine = get_model_metadata_pb2.GetModelMetadataResponse()
    mine.model_spec.name = "m"
    mine.metadata["signature_def"].Pack(_signature_map(get_model_metadata_pb2, meta_graph_pb2, types_pb2))
    back = cross(mine, up_metadata.GetModelMetadataResponse)
    unpacked = up_metadata.SignatureDefMap()
    assert back.metadata["signature_def"].Unpack(unpacked)
    assert_same(unpacked, up_map)

    req = up_metadata.GetModelMetadataRequest()
    req.model_spec.name = "m"
    req.metadata_field.append("signature_def")
    cross(req, get_model_metadata_pb2.GetModelMetadataRequest)


@needs_tf
def test_get_model_status_both_ways():
    up = up_status.GetModelStatusResponse()
    a = up.model_version_status.add(version=2, state=up_status.ModelVersionStatus.AVAILABLE)
    a.status.error_code = 0
    b = up.model_version_status.add(version=1, state=up_status.ModelVersionStatus.END)
    b.status.error_code = 5  # NOT_FOUND
    b.status.error_message = "gone"
    ours = cross(up, get_model_status_pb2.GetModelStatusResponse)
    assert ours.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE == 30
    assert ours.model_version_status[1].status.error_code == error_codes_pb2.NOT_FOUND

    mine = get_model_status_pb2.GetModelStatusResponse()
    s = mine.model_version_status.add(version=7, state=get_model_status_pb2.ModelVersionStatus.LOADING)
    s.status.error_code = error_codes_pb2.UNAVAILABLE
    assert cross(mine, up_status.GetModelStatusResponse).model_version_status[0].state == 20


def _examples(mod):
    ex = mod.Example()
    ex.features.feature["age"].int64_list.value.extend([31])
    ex.features.feature["height"].float_list.value.extend([1.8, 1.7])
    ex.features.feature["name"].bytes_list.value.append(b"ada")
    return ex


@needs_tf
def test_classification_both_ways():
    up = up_classification.ClassificationRequest()
    up.model_spec.name = "census"
    up.model_spec.signature_name = "classify"
    up.input.example_list_with_context.examples.add().CopyFrom(_examples(up_example))
    up.input.example_list_with_context.examples.add()
    up.input.example_list_with_context.context.CopyFrom(_examples(up_example))
    ours = cross(up, classification_pb2.ClassificationRequest)
    assert ours.input.WhichOneof("kind") == "example_list_with_context"

    mine = classification_pb2.ClassificationRequest()
    mine.model_spec.name = "census"
    mine.input.example_list.examples.add().CopyFrom(_examples(example_pb2))
    cross(mine, up_classification.ClassificationRequest)

    resp = up_classification.ClassificationResponse()
    c = resp.result.classifications.add()
    c.classes.add(label="yes", score=0.75)
    c.classes.add(label="no", score=0.25)
    cross(resp, classification_pb2.ClassificationResponse)


@needs_tf
def test_reload_config_both_ways():
    from tensorflow_serving.config import model_server_config_pb2 as up_cfg

    up = up_management.ReloadConfigRequest()
    m = up.config.model_config_list.config.add(name="a", base_path="/models/a", model_platform="tensorflow")
    m.model_version_policy.specific.versions.extend([1, 3])
    m.version_labels["stable"] = 1
    m.logging_config.sampling_config.sampling_rate = 0.5
    m.model_type = up_cfg.TENSORFLOW
    up.config.model_config_list.config.add(name="b", base_path="/models/b").model_version_policy.all.SetInParent()
    up.metric_names.append("/tensorflow/serving/model_warmup_latency")
    ours = cross(up, model_management_pb2.ReloadConfigRequest)
    assert ours.config.model_config_list.config[1].model_version_policy.WhichOneof("policy_choice") == "all"

    mine = model_management_pb2.ReloadConfigRequest()
    mine.config.model_config_list.config.add(name="c").model_version_policy.latest.num_versions = 2
    cross(mine, up_management.ReloadConfigRequest)

    resp = model_management_pb2.ReloadConfigResponse()
    resp.status.error_code = error_codes_pb2.INVALID_ARGUMENT
    resp.status.error_message = "bad"
    resp.metric.add(name="x", int64_value_increase=3)
    cross(resp, up_management.ReloadConfigResponse)


@needs_tf
def test_warmup_file_written_by_tensorflow(tmp_path):
    """The warm-up path end to end: PredictionLogs in a TFRecord written by TensorFlow."""
    path = tmp_path / "tf_serving_warmup_requests"
    logs = []
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(3):
            log = up_prediction_log.PredictionLog()
            log.predict_log.request.model_spec.name = "m"
            log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((1, 4), i, np.float32)))
            logs.append(log)
            writer.write(log.SerializeToString())
        cl = up_prediction_log.PredictionLog()
        cl.classify_log.request.input.example_list.examples.add().CopyFrom(_examples(up_example))
        logs.append(cl)
        writer.write(cl.SerializeToString())
    records = list(tfrecord.read_records(path))
    assert len(records) == 4
    for i, (data, up) in enumerate(zip(records, logs)):
        ours = prediction_log_pb2.PredictionLog.FromString(data)
        assert_same(ours, up)
        if i < 3:
            assert ours.WhichOneof("log_type") == "predict_log"
            np.testing.assert_array_equal(tensors.to_numpy(ours.predict_log.request.inputs["x"]), np.full((1, 4), i))
    assert prediction_log_pb2.PredictionLog.FromString(records[3]).WhichOneof("log_type") == "classify_log"


# ---- KServe V2 / Triton wire compatibility ----------------------------------------------------


def _infer_request(mod):
    req = mod.ModelInferRequest(model_name="simple", model_version="2", id="req-1")
    req.parameters["priority"].uint64_param = 2
    req.parameters["flag"].bool_param = True
    req.parameters["note"].string_param = "hi"
    req.parameters["ratio"].double_param = 0.5
    req.parameters["sequence_id"].int64_param = -9
    a = req.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 2])
    a.parameters["binary_data_size"].int64_param = 16
    req.inputs.add(name="INPUT1", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    req.raw_input_contents.append(serialize_byte_tensor(np.array([b"ab", b""], dtype=object)).item())
    out = req.outputs.add(name="OUTPUT0")
    out.parameters["classification"].int64_param = 3
    return req


def _typed_infer_request(mod):
    req = mod.ModelInferRequest(model_name="simple")
    t = req.inputs.add(name="F", datatype="FP32", shape=[3])
    t.contents.fp32_contents.extend([1.0, 2.5, -3.0])
    req.inputs.add(name="I", datatype="INT32", shape=[2]).contents.int_contents.extend([1, -1])
    req.inputs.add(name="L", datatype="INT64", shape=[1]).contents.int64_contents.append(2**40)
    req.inputs.add(name="U", datatype="UINT32", shape=[1]).contents.uint_contents.append(2**32 - 1)
    req.inputs.add(name="Q", datatype="UINT64", shape=[1]).contents.uint64_contents.append(2**64 - 1)
    req.inputs.add(name="D", datatype="FP64", shape=[1]).contents.fp64_contents.append(0.1)
    req.inputs.add(name="B", datatype="BOOL", shape=[2]).contents.bool_contents.extend([True, False])
    req.inputs.add(name="S", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"xyz")
    return req


@needs_triton
def test_model_infer_request_both_ways():
    for build in (_infer_request, _typed_infer_request):
        ours = cross(build(up_triton), triton.ModelInferRequest)
        assert ours == build(triton)
        cross(build(triton), up_triton.ModelInferRequest)
    ours = triton.ModelInferRequest.FromString(_infer_request(up_triton).SerializeToString())
    np.testing.assert_array_equal(np.frombuffer(ours.raw_input_contents[0], np.float32), np.arange(4))
    assert list(deserialize_bytes_tensor(ours.raw_input_contents[1])) == [b"ab", b""]
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"


def _infer_response(mod):
    resp = mod.ModelInferResponse(model_name="simple", model_version="1", id="req-1")
    resp.parameters["sequence_end"].bool_param = True
    o = resp.outputs.add(name="OUTPUT0", datatype="INT32", shape=[1, 3])
    o.parameters["x"].string_param = "y"
    resp.raw_output_contents.append(np.array([[1, 2, 3]], np.int32).tobytes())
    typed = resp.outputs.add(name="OUTPUT1", datatype="FP32", shape=[2])
    typed.contents.fp32_contents.extend([0.5, 1.5])
    return resp


@needs_triton
def test_model_infer_response_and_stream_both_ways():
    cross(_infer_response(up_triton), triton.ModelInferResponse)
    cross(_infer_response(triton), up_triton.ModelInferResponse)
    stream = triton.ModelStreamInferResponse(error_message="")
    stream.infer_response.CopyFrom(_infer_response(triton))
    cross(stream, up_triton.ModelStreamInferResponse)
    cross(up_triton.ModelStreamInferResponse(error_message="model not found"), triton.ModelStreamInferResponse)


@needs_triton
def test_metadata_repository_and_config_messages_both_ways():
    for mod, other in ((up_triton, triton), (triton, up_triton)):
        md = mod.ModelMetadataResponse(name="simple", versions=["1", "2"], platform="onnxruntime_onnx")
        md.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 16])
        md.outputs.add(name="OUTPUT0", datatype="BYTES", shape=[-1])
        cross(md, other.ModelMetadataResponse)

        idx = mod.RepositoryIndexResponse()
        idx.models.add(name="a", version="1", state="READY")
        idx.models.add(name="b", version="3", state="UNAVAILABLE", reason="unloaded")
        cross(idx, other.RepositoryIndexResponse)
        cross(mod.RepositoryIndexRequest(repository_name="", ready=True), other.RepositoryIndexRequest)

        load = mod.RepositoryModelLoadRequest(model_name="simple")
        load.parameters["config"].string_param = '{"max_batch_size": 8}'
        load.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07onnx"
        load.parameters["n"].int64_param = 4
        load.parameters["b"].bool_param = False
        ours_or_theirs = cross(load, other.RepositoryModelLoadRequest)
        assert ours_or_theirs.parameters["b"].WhichOneof("parameter_choice") == "bool_param"
        cross(mod.RepositoryModelUnloadRequest(model_name="simple"), other.RepositoryModelUnloadRequest)

        for msg in (mod.ServerLiveResponse(live=True), mod.ServerReadyResponse(ready=True),
                    mod.ModelReadyRequest(name="m", version="1"), mod.ModelReadyResponse(ready=True),
                    mod.ServerMetadataResponse(name="hotserve", version="0.1.0", extensions=["model_repository"])):
            cross(msg, getattr(other, type(msg).__name__))

        stats = mod.ModelStatisticsResponse()
        s = stats.model_stats.add(name="m", version="1", inference_count=10, execution_count=5)
        s.inference_stats.success.count = 10
        s.inference_stats.success.ns = 12345
        s.batch_stats.add(batch_size=2).compute_infer.ns = 7
        cross(stats, other.ModelStatisticsResponse)

    cfg = triton.ModelConfigResponse()
    c = cfg.config
    c.name, c.platform, c.backend, c.max_batch_size = "m", "onnxruntime_onnx", "onnxruntime", 8
    c.input.add(name="x", data_type=triton_config.TYPE_FP32, dims=[-1, 4])
    c.output.add(name="y", data_type=triton_config.TYPE_STRING, dims=[1], label_filename="labels.txt")
    c.version_policy.latest.num_versions = 1
    c.dynamic_batching.max_queue_delay_microseconds = 100
    c.instance_group.add(kind=triton_config.ModelInstanceGroup.KIND_CPU, count=2)
    c.parameters["k"].string_value = "v"
    cross(cfg, up_triton.ModelConfigResponse)


# ---- tensors.py -----------------------------------------------------------------------------


def _sample(dt: dtypes.DType) -> np.ndarray:
    if dt is dtypes.STRING:
        return np.array([[b"a", b""], [b"\xff\x00", b"long" * 50]], dtype=object)
    if dt.numpy == np.bool_:
        return np.array([[True, False], [False, True]])
    if dt.numpy.kind == "f":
        return np.array([[0.5, -1.25], [np.inf, 3.0]], dtype=dt.numpy)
    info = np.iinfo(dt.numpy)
    return np.array([[info.min, info.max], [0, 1]], dtype=dt.numpy)


@pytest.mark.parametrize("dt", list(dtypes.BY_TF_ENUM.values()), ids=lambda d: d.tf_name)
def test_round_trip_every_table_dtype(dt):
    assert tensors.enum_from_dtype(dt.numpy) == dt.tf_enum
    assert tensors.dtype_from_enum(dt.tf_enum) == dt.numpy
    for arr in (_sample(dt), _sample(dt)[0, :1].reshape(()), _sample(dt)[:0]):
        tp = tensors.from_numpy(arr)
        assert tp.dtype == dt.tf_enum
        assert [d.size for d in tp.tensor_shape.dim] == list(arr.shape)
        # round trip through the wire, not just the object
        got = tensors.to_numpy(tensor_pb2.TensorProto.FromString(tp.SerializeToString()))
        assert got.dtype == dt.numpy and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


def test_from_numpy_string_and_byte_order_variants():
    tp = tensors.from_numpy(np.array(["héllo", "x"]))
    assert tp.dtype == types_pb2.DT_STRING and list(tp.string_val) == ["héllo".encode(), b"x"]
    assert list(tensors.from_numpy(np.array([b"ab", b"c"])).string_val) == [b"ab", b"c"]
    assert list(tensors.from_numpy(np.array(["s", b"b"], dtype=object)).string_val) == [b"s", b"b"]
    with pytest.raises(ValueError, match="neither bytes nor str"):
        tensors.from_numpy(np.array([1, "a"], dtype=object))
    big = np.array([1.0, 2.0], dtype=">f4")
    tp = tensors.from_numpy(big)
    assert tp.dtype == types_pb2.DT_FLOAT and tp.tensor_content == np.array([1, 2], "<f4").tobytes()
    for arr in (np.array([1 + 2j], np.complex64), np.array([[3 - 1j]], np.complex128)):
        np.testing.assert_array_equal(tensors.to_numpy(tensors.from_numpy(arr)), arr)
    with pytest.raises(ValueError, match="unsupported"):
        tensors.from_numpy(np.array(["2020-01-01"], dtype="datetime64[D]"))


@needs_tf
@pytest.mark.parametrize("dt", list(dtypes.BY_TF_ENUM.values()), ids=lambda d: d.tf_name)
def test_to_numpy_of_tensorflow_made_protos(dt):
    for arr in (_sample(dt), _sample(dt)[0, 0]):  # arrays use tensor_content, scalars typed fields
        up = tf.make_tensor_proto(arr)
        ours = tensor_pb2.TensorProto.FromString(up.SerializeToString())
        got = tensors.to_numpy(ours)
        np.testing.assert_array_equal(got, tf.make_ndarray(up))
        assert got.dtype == dt.numpy
    # broadcast of a single typed value, as TensorFlow writes it
    up = tf.make_tensor_proto(_sample(dt)[0, 0], shape=[2, 3])
    got = tensors.to_numpy(tensor_pb2.TensorProto.FromString(up.SerializeToString()))
    np.testing.assert_array_equal(got, tf.make_ndarray(up))
    assert got.shape == (2, 3)


@needs_tf
def test_to_numpy_accepts_tensorflow_tensorproto_directly():
    up = tf.make_tensor_proto(np.eye(2, dtype=np.float32))
    np.testing.assert_array_equal(tensors.to_numpy(up), np.eye(2))


def _tp(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    tp = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        tp.tensor_shape.dim.add().size = size
    for name, value in fields.items():
        if isinstance(value, bytes) and name == "tensor_content":
            tp.tensor_content = value
        else:
            getattr(tp, name).extend(value)
    return tp


def test_to_numpy_typed_fields_by_hand():
    T = types_pb2
    cases = [
        (_tp(T.DT_FLOAT, [2], float_val=[1.5, 2.5]), np.array([1.5, 2.5], np.float32)),
        (_tp(T.DT_DOUBLE, [1], double_val=[0.1]), np.array([0.1])),
        (_tp(T.DT_INT32, [2, 1], int_val=[-1, 2]), np.array([[-1], [2]], np.int32)),
        (_tp(T.DT_INT8, [2], int_val=[-128, 127]), np.array([-128, 127], np.int8)),
        (_tp(T.DT_UINT8, [2], int_val=[0, 255]), np.array([0, 255], np.uint8)),
        (_tp(T.DT_INT16, [1], int_val=[-300]), np.array([-300], np.int16)),
        (_tp(T.DT_UINT16, [1], int_val=[65535]), np.array([65535], np.uint16)),
        (_tp(T.DT_INT64, [2], int64_val=[2**62, -5]), np.array([2**62, -5], np.int64)),
        (_tp(T.DT_UINT32, [1], uint32_val=[2**32 - 1]), np.array([2**32 - 1], np.uint32)),
        (_tp(T.DT_UINT64, [1], uint64_val=[2**64 - 1]), np.array([2**64 - 1], np.uint64)),
        (_tp(T.DT_BOOL, [3], bool_val=[True, False, True]), np.array([True, False, True])),
        (_tp(T.DT_STRING, [2], string_val=[b"a", b"bc"]), np.array([b"a", b"bc"], dtype=object)),
        (_tp(T.DT_STRING, [], string_val=[b"s"]), np.array(b"s", dtype=object)),
        (_tp(T.DT_COMPLEX64, [1], scomplex_val=[1.0, -2.0]), np.array([1 - 2j], np.complex64)),
        # half_val holds float16 bit patterns; accept sign-extended ones too
        (_tp(T.DT_HALF, [3], half_val=np.array([1.5, -2, 0.1], np.float16).view(np.uint16).tolist()),
         np.array([1.5, -2, 0.1], np.float16)),
        (_tp(T.DT_HALF, [1], half_val=np.array([-2], np.float16).view(np.int16).tolist()),
         np.array([-2], np.float16)),
        # a single value fills every element
        (_tp(T.DT_FLOAT, [2, 2], float_val=[7.0]), np.full((2, 2), 7.0, np.float32)),
        (_tp(T.DT_STRING, [3], string_val=[b"z"]), np.array([b"z"] * 3, dtype=object)),
        (_tp(T.DT_INT8, [2], int_val=[-1]), np.array([-1, -1], np.int8)),
        # empty tensors need no values
        (_tp(T.DT_FLOAT, [0, 3]), np.zeros((0, 3), np.float32)),
        (_tp(T.DT_FLOAT, [2], tensor_content=np.array([1, 2], "<f4").tobytes()), np.array([1, 2], np.float32)),
    ]
    for tp, want in cases:
        got = tensors.to_numpy(tensor_pb2.TensorProto.FromString(tp.SerializeToString()))
        assert got.dtype == want.dtype and got.shape == want.shape, (tp, got)
        np.testing.assert_array_equal(got, want)


def test_to_numpy_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arr = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    tp = tensors.from_numpy(arr)
    assert tp.dtype == types_pb2.DT_BFLOAT16
    np.testing.assert_array_equal(tensors.to_numpy(tp), arr)
    typed = _tp(types_pb2.DT_BFLOAT16, [2], half_val=arr.view(np.uint16).tolist())
    np.testing.assert_array_equal(tensors.to_numpy(typed), arr)


@pytest.mark.parametrize(
    "tp, message",
    [
        (_tp(types_pb2.DT_FLOAT, [2, 4], tensor_content=b"\0" * 12),
         r"tensor_content holds 12 bytes but shape \[2, 4\] of DT_FLOAT needs 32"),
        (_tp(types_pb2.DT_FLOAT, [3], float_val=[1, 2]), r"float_val holds 2 values but shape \[3\] of DT_FLOAT needs 3"),
        (_tp(types_pb2.DT_FLOAT, [1], float_val=[1, 2]), "float_val holds 2 values"),
        (_tp(types_pb2.DT_FLOAT, [2]), "float_val holds 0 values"),
        (_tp(types_pb2.DT_STRING, [2], string_val=[b"a", b"b", b"c"]), "string_val holds 3 values"),
        (_tp(types_pb2.DT_INT32, [1], float_val=[1.0]), "DT_INT32 tensor carries values in float_val; this type uses int_val"),
        (_tp(types_pb2.DT_INT8, [1], int_val=[200]), r"int_val holds a value outside DT_INT8's range \[-128, 127\]"),
        (_tp(types_pb2.DT_UINT8, [1], int_val=[-1]), "outside DT_UINT8's range"),
        (_tp(types_pb2.DT_HALF, [1], half_val=[70000]), "half_val holds a value outside 16 bits"),
        (_tp(types_pb2.DT_COMPLEX64, [1], scomplex_val=[1.0]), r"\(real, imag\) pairs"),
        (_tp(types_pb2.DT_STRING, [1], tensor_content=b"abc"), "DT_STRING tensors must use string_val"),
        (_tp(types_pb2.DT_FLOAT, [-1, 2], float_val=[1, 2]), "negative dimension"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}), "unknown_rank"),
        (_tp(types_pb2.DT_INVALID, [1]), "DT_INVALID"),
        (_tp(types_pb2.DT_VARIANT, [1]), "unsupported tensor dtype DT_VARIANT"),
        (_tp(77, [1]), "unsupported tensor dtype DataType 77"),
    ],
)
def test_to_numpy_rejects_inconsistent_protos(tp, message):
    with pytest.raises(ValueError, match=message):
        tensors.to_numpy(tp)


# ---- tfrecord.py ------------------------------------------------------------------------------

RECORDS = [b"first", b"", bytes(range(256)) * 5, b"\x00" * 3]


def test_crc32c_known_values():
    assert tfrecord.crc32c(b"") == 0
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert tfrecord.crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 test vector
    assert tfrecord.crc32c(b"6789", tfrecord.crc32c(b"12345")) == 0xE3069283


@needs_tf
def test_reads_file_written_by_tensorflow_and_tensorflow_reads_ours(tmp_path):
    theirs = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for r in RECORDS:
            writer.write(r)
    assert list(tfrecord.read_records(theirs)) == RECORDS
    with open(theirs, "rb") as f:  # file objects work too
        assert list(tfrecord.read_records(f)) == RECORDS

    ours = tmp_path / "ours.tfrecord"
    tfrecord.write_records(ours, RECORDS)
    assert ours.read_bytes() == theirs.read_bytes()
    assert list(tf.data.TFRecordDataset(str(ours)).as_numpy_iterator()) == RECORDS


def test_detects_corruption_and_truncation(tmp_path):
    path = tmp_path / "r.tfrecord"
    tfrecord.write_records(path, RECORDS)
    good = path.read_bytes()
    second = 12 + len(RECORDS[0]) + 4  # offset of record 1

    def read(data: bytes) -> list[bytes]:
        path.write_bytes(data)
        return list(tfrecord.read_records(path))

    def flipped(i: int) -> bytes:
        return good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:]

    assert read(good) == RECORDS
    with pytest.raises(ValueError, match="record 0 at offset 0: data CRC mismatch"):
        read(flipped(12))  # first data byte
    with pytest.raises(ValueError, match="record 0 at offset 0: length CRC mismatch"):
        read(flipped(0))
    with pytest.raises(ValueError, match="length CRC mismatch"):
        read(flipped(9))  # the length CRC itself
    with pytest.raises(ValueError, match="data CRC mismatch"):
        read(flipped(len(good) - 1))  # the last data CRC
    with pytest.raises(ValueError, match=f"record 1 at offset {second}: truncated header"):
        read(good[: second + 5])
    with pytest.raises(ValueError, match=r"record 2 at offset \d+: truncated data \(10 of 1280 bytes\)"):
        read(good[: second + 16 + 12 + 10])
    with pytest.raises(ValueError, match="truncated data CRC"):
        read(good[:-2])
    with pytest.raises(ValueError, match="gzip-compressed"):
        read(b"\x1f\x8b" + good[2:])
    assert read(b"") == []

    # records before the damage are still delivered
    path.write_bytes(good[:-2])
    it = tfrecord.read_records(path)
    assert [next(it) for _ in range(3)] == RECORDS[:3]
    with pytest.raises(ValueError):
        next(it)
