"""The TensorFlow SavedModel runtime: real SavedModels built here (TF2 tf.Module and TF1 graph
mode with classify/regress signatures), loaded in-process and served end to end, with TF
Serving's warm-up file replayed before a version goes live."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

tf = pytest.importorskip("tensorflow")

import base64
import gc
import subprocess
import sys
import threading
import time
import weakref

import httpx
import numpy as np

from conftest import status, wait_for, wait_state
from hotserve.core.gates.validation import validate
from hotserve.errors import Code, HotserveError, InvalidArgument, LoadError
from hotserve.repository.publish import publish
from hotserve.runtimes.registry import RuntimeOptions, detect_runtime, load_servable
from hotserve.runtimes.tensorflow import SavedModelServable

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


# -- SavedModel builders -------------------------------------------------------------------------
def build_tf2_model(path: str, offset: float) -> str:
    """serving_default: y = x * 2 + offset (float32 [None, 3]);
    add_one: (a int64 [None], s string [None]) -> a_plus_one = a + 1, s_twice = s + s."""

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(offset, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0 + self.offset}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="a"),
                                      tf.TensorSpec([None], tf.string, name="s")])
        def add_one(self, a, s):
            return {"a_plus_one": a + 1, "s_twice": tf.strings.join([s, s])}

    m = Model()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve, "add_one": m.add_one})
    return path


def example(x0: float, x1: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x0, x1]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def build_tf1_model(path: str, tags=("serve",)) -> str:
    """Graph-mode SavedModel: score = x . [1, 2] for x parsed from tf.Example feature 'x' (2 floats).
    classify -> classes [["neg", "pos"]], scores [-score, score]; regress -> outputs = score;
    serving_default (predict) -> yout = xin . [1, 2] for a float32 [None, 2] input."""
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        w = tf.compat.v1.Variable([[1.0], [2.0]], name="w")
        score = tf.matmul(x, w)
        reg = tf.identity(score, name="regression")
        scores = tf.concat([-score, score], 1, name="scores")
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(x)[0], 1], name="classes")
        xin = tf.compat.v1.placeholder(tf.float32, [None, 2], name="xin")
        yout = tf.matmul(xin, w, name="yout")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(sess, list(tags), signature_def_map={
                "classify": tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores),
                "regress": tf.compat.v1.saved_model.regression_signature_def(serialized, reg),
                "serving_default": tf.compat.v1.saved_model.predict_signature_def({"xin": xin}, {"yout": yout}),
            })
            builder.save()
    return path


def tensor_proto(arr: np.ndarray):
    return tf.make_tensor_proto(arr)


def write_warmup(model_dir: str, requests: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    """assets.extra/tf_serving_warmup_requests holding one PredictionLog per request, written the
    way TF Serving documents it (tensorflow-serving-api messages, tf.io.TFRecordWriter)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    extra = os.path.join(model_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    path = os.path.join(extra, "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as writer:
        for sig_name, inputs in requests:
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", signature_name=sig_name))
            for key, arr in inputs.items():
                request.inputs[key].CopyFrom(tensor_proto(arr))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def write_example_warmup(model_dir: str) -> str:
    """Warm-up records of the other kinds TF Serving replays: classify_log and regress_log
    (example_list and example_list_with_context)."""
    from tensorflow_serving.apis import (classification_pb2, input_pb2, model_pb2, prediction_log_pb2,
                                         regression_pb2)

    def examples(*pairs):
        return [tf.train.Example.FromString(example(*p)) for p in pairs]

    extra = os.path.join(model_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    path = os.path.join(extra, "tf_serving_warmup_requests")
    classify = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="m", signature_name="classify"),
        input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples((1, 1), (0, 3)))))
    context = tf.train.Example.FromString(example(5, 5))
    regress = regression_pb2.RegressionRequest(
        model_spec=model_pb2.ModelSpec(name="m", signature_name="regress"),
        input=input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
            examples=examples((1, 0)), context=context)))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)).SerializeToString())
        writer.write(prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=regress)).SerializeToString())
    return path


def copy_model(src: str, dst: str) -> str:
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- module-scoped models (each built once) -----------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("savedmodels")
    out = {
        "tf2_1": build_tf2_model(str(root / "tf2_offset1"), 1.0),
        "tf2_2": build_tf2_model(str(root / "tf2_offset2"), 2.0),
        "tf1": build_tf1_model(str(root / "tf1")),
        "train_only": build_tf1_model(str(root / "train_only"), tags=("train",)),
    }
    good = copy_model(out["tf2_1"], str(root / "warm_good"))
    write_warmup(good, [
        ("serving_default", {"x": np.ones((2, 3), np.float32)}),
        ("", {"x": np.zeros((1, 3), np.float32)}),  # empty signature name -> serving_default
        ("add_one", {"a": np.array([1, 2], np.int64), "s": np.array([b"ab", b"\xff"], dtype=object)}),
    ])
    out["warm_good"] = good
    bad_name = copy_model(out["tf2_2"], str(root / "warm_bad_name"))
    write_warmup(bad_name, [("serving_default", {"x": np.ones((1, 3), np.float32)}),
                            ("serving_default", {"wrong": np.ones((1, 3), np.float32)})])
    out["warm_bad_name"] = bad_name
    bad_shape = copy_model(out["tf2_2"], str(root / "warm_bad_shape"))
    write_warmup(bad_shape, [("serving_default", {"x": np.ones((1, 4), np.float32)})])
    out["warm_bad_shape"] = bad_shape
    tf1_warm = copy_model(out["tf1"], str(root / "tf1_warm"))
    write_example_warmup(tf1_warm)
    out["tf1_warm"] = tf1_warm
    return out


@pytest.fixture(scope="module")
def tf2(models):
    s = SavedModelServable(models["tf2_1"])
    yield s
    s.unload()


@pytest.fixture(scope="module")
def tf1(models):
    s = SavedModelServable(models["tf1"])
    yield s
    s.unload()


def read_signature_defs(path: str) -> dict:
    """The SignatureDefs as TensorFlow itself reads them, to compare against."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    (mg,) = [mg for mg in sm.meta_graphs if list(mg.meta_info_def.tags) == ["serve"]]
    return dict(mg.signature_def)


# -- runtime level -------------------------------------------------------------------------------------
def test_registry_detects_and_loads_savedmodel(models):
    assert detect_runtime(models["tf2_1"]) == "tensorflow"
    s = load_servable(models["tf2_1"], RuntimeOptions())
    try:
        assert isinstance(s, SavedModelServable) and s.runtime == "tensorflow"
    finally:
        s.unload()


def test_tf2_signatures_from_the_signature_def(tf2, models):
    assert set(tf2.signatures) == {"serving_default", "add_one"}  # not __saved_model_init_op
    sd = tf2.signatures["serving_default"]
    assert sd.method_name == PREDICT
    x, y = sd.inputs["x"], sd.outputs["y"]
    assert (x.dtype.tf_name, x.shape) == ("DT_FLOAT", (-1, 3))
    assert (y.dtype.tf_name, y.shape) == ("DT_FLOAT", (-1, 3))
    add = tf2.signatures["add_one"]
    assert {k: (s.dtype.tf_name, s.shape) for k, s in add.inputs.items()} == {
        "a": ("DT_INT64", (-1,)), "s": ("DT_STRING", (-1,))}
    assert {k: (s.dtype.tf_name, s.shape) for k, s in add.outputs.items()} == {
        "a_plus_one": ("DT_INT64", (-1,)), "s_twice": ("DT_STRING", (-1,))}
    # Tensor names are the graph's, as TF Serving reports them in metadata.
    defs = read_signature_defs(models["tf2_1"])
    for name, sig in tf2.signatures.items():
        assert sig.input_tensor_names == {k: i.name for k, i in defs[name].inputs.items()}
        assert sig.output_tensor_names == {k: i.name for k, i in defs[name].outputs.items()}
    assert sd.input_tensor_names["x"] == "serving_default_x:0"


def test_tf1_signatures_method_names_and_tensor_names(tf1):
    assert {n: s.method_name for n, s in tf1.signatures.items()} == {
        "classify": CLASSIFY, "regress": REGRESS, "serving_default": PREDICT}
    c = tf1.signatures["classify"]
    assert {k: (s.dtype.tf_name, s.shape) for k, s in c.inputs.items()} == {"inputs": ("DT_STRING", (-1,))}
    assert c.outputs["classes"].dtype.tf_name == "DT_STRING" and c.outputs["classes"].shape == (-1, 2)
    assert c.outputs["scores"].dtype.tf_name == "DT_FLOAT"
    assert c.input_tensor_names == {"inputs": "tf_example:0"}
    assert c.output_tensor_names == {"classes": "classes:0", "scores": "scores:0"}
    assert tf1.signatures["regress"].output_tensor_names == {"outputs": "regression:0"}
    assert tf1.signatures["serving_default"].input_tensor_names == {"xin": "xin:0"}
    assert tf1.signatures["serving_default"].output_tensor_names == {"yout": "yout:0"}


def test_predict_numeric_and_strings(tf2):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = tf2.predict({"x": x})
    assert set(out) == {"y"} and isinstance(out["y"], np.ndarray)
    np.testing.assert_allclose(out["y"], x * 2 + 1)
    out = tf2.predict({"a": np.array([1, 41], np.int64), "s": np.array([b"ab", b"\x00\xff"], dtype=object)}, "add_one")
    assert out["a_plus_one"].tolist() == [2, 42] and out["a_plus_one"].dtype == np.int64
    assert out["s_twice"].dtype == object and out["s_twice"].tolist() == [b"abab", b"\x00\xff\x00\xff"]
    with pytest.raises(InvalidArgument, match="available signatures: add_one, serving_default"):
        tf2.predict({"x": x}, "nope")


def test_predict_maps_tensorflow_errors_to_clean_client_errors(tf1):
    with pytest.raises(HotserveError) as err:
        tf1.predict({"xin": np.zeros((2, 3), np.float32)})
    assert err.value.code is Code.INVALID_ARGUMENT
    assert "Matrix size-incompatible" in str(err.value) and "File " not in str(err.value)


def test_tf1_predict_classify_regress(tf1):
    np.testing.assert_allclose(tf1.predict({"xin": np.array([[1, 1], [0, 3]], np.float32)})["yout"], [[3], [6]])
    examples = [example(1, 1), example(0, 3)]
    c = tf1.classify(examples, "classify")
    assert set(c) == {"classes", "scores"}
    assert c["classes"].tolist() == [[b"neg", b"pos"], [b"neg", b"pos"]]
    np.testing.assert_allclose(c["scores"], [[-3, 3], [-6, 6]])
    r = tf1.regress(examples, "regress")
    assert set(r) == {"outputs"}
    np.testing.assert_allclose(r["outputs"], [[3], [6]])


def test_classify_regress_reject_wrong_signatures_and_inputs(tf1, tf2):
    with pytest.raises(InvalidArgument, match="'regress' has method 'tensorflow/serving/regress'.*'classify'"):
        tf1.classify([example(1, 1)], "regress")
    with pytest.raises(InvalidArgument, match="'serving_default' has method 'tensorflow/serving/predict'"):
        tf1.regress([example(1, 1)])
    with pytest.raises(InvalidArgument, match="are: none"):
        tf2.classify([example(1, 1)])
    with pytest.raises(InvalidArgument, match="no examples"):
        tf1.classify([], "classify")
    with pytest.raises(InvalidArgument, match="expected a serialized tf.Example"):
        tf1.regress(["not bytes"], "regress")
    with pytest.raises(HotserveError, match="is required but could not be found") as err:
        tf1.regress([b""], "regress")  # an empty Example lacks the required feature
    assert err.value.code is Code.INVALID_ARGUMENT


def test_validation_skips_example_signatures(tf1, tf2):
    validate(tf1)  # b"" would fail the classify/regress signatures; they are skipped, not failed
    validate(tf2)


def test_no_serve_tag_set_is_refused_with_the_tag_sets_found(models):
    with pytest.raises(LoadError, match=r"no MetaGraphDef tagged \{'serve'\}.*\[\['train'\]\]"):
        SavedModelServable(models["train_only"])


def test_corrupt_savedmodel_is_a_load_error(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(LoadError, match="SavedModel"):
        SavedModelServable(str(tmp_path))


def test_warmup_requests_parsed(models, tf2):
    assert tf2.warmup_requests() == []  # no assets.extra file
    s = SavedModelServable(models["warm_good"])
    try:
        reqs = s.warmup_requests()
        assert [name for name, _ in reqs] == ["serving_default", "serving_default", "add_one"]
        np.testing.assert_array_equal(reqs[0][1]["x"], np.ones((2, 3), np.float32))
        assert reqs[0][1]["x"].dtype == np.float32 and reqs[1][1]["x"].shape == (1, 3)
        assert reqs[2][1]["a"].tolist() == [1, 2] and reqs[2][1]["a"].dtype == np.int64
        assert reqs[2][1]["s"].tolist() == [b"ab", b"\xff"]
        for name, inputs in reqs:
            s.predict(inputs, name)
    finally:
        s.unload()


def test_warmup_classify_and_regress_records(models):
    s = SavedModelServable(models["tf1_warm"])
    try:
        (c_name, c_inputs), (r_name, r_inputs) = s.warmup_requests()
        assert (c_name, list(c_inputs), c_inputs["inputs"].dtype) == ("classify", ["inputs"], object)
        assert c_inputs["inputs"].tolist() == [example(1, 1), example(0, 3)]
        np.testing.assert_allclose(s.predict(c_inputs, c_name)["scores"], [[-3, 3], [-6, 6]])
        assert r_name == "regress" and r_inputs["inputs"].shape == (1,)
        # The context's features are merged into each example; the example's own values win.
        np.testing.assert_allclose(s.predict(r_inputs, r_name)["outputs"], [[1.0]])
    finally:
        s.unload()


def test_bad_warmup_files_are_load_errors(models, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    d = copy_model(models["warm_good"], str(tmp_path / "m"))
    path = os.path.join(d, "assets.extra", "tf_serving_warmup_requests")
    s = SavedModelServable(d)
    try:
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:-7])  # truncate the last record
        with pytest.raises(LoadError, match="warm-up request 3 is unreadable: ValueError: .*truncated"):
            s.warmup_requests()
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(prediction_log_pb2.PredictionLog(
                multi_inference_log=prediction_log_pb2.MultiInferenceLog()).SerializeToString())
        with pytest.raises(LoadError, match="warm-up request 1 is a multi_inference_log record"):
            s.warmup_requests()
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(b"\xff\xff not a PredictionLog")
        with pytest.raises(LoadError, match="warm-up request 1 is unreadable"):
            s.warmup_requests()
    finally:
        s.unload()


def test_unload_frees_the_loaded_model(models):
    s = SavedModelServable(models["tf2_2"])
    ref = weakref.ref(s._loaded)
    np.testing.assert_allclose(s.predict({"x": np.zeros((1, 3), np.float32)})["y"], [[2, 2, 2]])
    s.unload()
    gc.collect()
    assert ref() is None


def test_thread_pools_set_once_per_process_and_tensorflow_stays_lazy(models):
    """In a fresh process: importing the server does not import tensorflow; the first load's
    thread counts apply, a later differing one is ignored with a warning."""
    code = f"""
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
import hotserve.cli, hotserve.server.serve, hotserve.runtimes.registry, hotserve.runtimes.tensorflow
assert "tensorflow" not in sys.modules, "tensorflow imported before any SavedModel was loaded"
from hotserve.runtimes.tensorflow import SavedModelServable
a = SavedModelServable({models['tf2_1']!r}, 2, 1)
import tensorflow as tf
print("threads", tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
b = SavedModelServable({models['tf2_2']!r}, 3, 1)
print("threads", tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("threads 2 1") == 2, out.stdout
    assert "ignoring intra_op=3, inter_op=1" in out.stdout


# -- end to end: a real server --------------------------------------------------------------------------
def _post(c: httpx.Client, url: str, body: dict, version: int | None = None) -> httpx.Response:
    path = "/v1/models/m" + (f"/versions/{version}" if version is not None else "") + ":predict"
    return c.post(url + path, json=body)


def test_e2e_metadata_predict_and_hot_swap(tmp_path, models, start_server):
    base = str(tmp_path / "models" / "m")
    publish(models["tf2_1"], base, 1)
    server = start_server(base)
    with httpx.Client(timeout=30) as c:
        meta = c.get(server.url + "/v1/models/m/metadata").json()
        defs = meta["metadata"]["signature_def"]["signature_def"]
        assert set(defs) == {"serving_default", "add_one"}
        sd = defs["serving_default"]
        assert sd["method_name"] == PREDICT
        assert sd["inputs"]["x"] == {
            "dtype": "DT_FLOAT", "name": "serving_default_x:0",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False}}
        assert sd["outputs"]["y"]["dtype"] == "DT_FLOAT" and sd["outputs"]["y"]["name"].endswith(":0")
        add = defs["add_one"]
        assert {k: v["dtype"] for k, v in add["inputs"].items()} == {"a": "DT_INT64", "s": "DT_STRING"}
        assert {k: v["name"] for k, v in add["inputs"].items()} == {"a": "add_one_a:0", "s": "add_one_s:0"}
        assert {k: v["dtype"] for k, v in add["outputs"].items()} == {"a_plus_one": "DT_INT64", "s_twice": "DT_STRING"}

        # Row format, no signature name -> serving_default.
        r = _post(c, server.url, {"instances": [[1, 2, 3], [0, 0, 0]]})
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == "1"
        assert r.json() == {"predictions": [[3.0, 5.0, 7.0], [1.0, 1.0, 1.0]]}
        # Columnar format with an explicit serving_default.
        r = _post(c, server.url, {"signature_name": "serving_default", "inputs": {"x": [[1, 1, 1]]}})
        assert r.status_code == 200 and r.json() == {"outputs": [[3.0, 3.0, 3.0]]}
        # Second signature, two dtypes, row and columnar; strings come back as text.
        r = _post(c, server.url, {"signature_name": "add_one", "instances": [{"a": 1, "s": "ab"}, {"a": 9, "s": "c"}]})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["a_plus_one"] for p in preds] == [2, 10]
        # TF Serving's rule: DT_STRING outputs are text unless the output name ends in "_bytes".
        assert [p["s_twice"] for p in preds] == ["abab", "cc"]
        r = _post(c, server.url, {"signature_name": "add_one", "inputs": {"a": [5], "s": [{"b64": "/w=="}]}})
        assert r.status_code == 200, r.text
        assert r.json() == {"outputs": {"a_plus_one": [6], "s_twice": [{"b64": "//8="}]}}
        # A bad request is a 400 that says what was expected.
        r = _post(c, server.url, {"instances": [[1, 2]]})
        assert r.status_code == 400 and "[-1, 3]" in r.json()["error"]

    # Hot swap 1 -> 2 under concurrent clients: every answer is x * 2 + <its version>, no failure.
    errors: list[str] = []
    seen: set[int] = set()
    count = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        x = [float(i), 1.0, 2.0]
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=30) as c:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = _post(c, server.url, {"instances": [x]})
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    v = int(r.headers["x-model-version"])
                    if not np.allclose(r.json()["predictions"][0], np.array(x) * 2 + v):
                        errors.append(f"version {v} answered {r.json()}")
                    seen.add(v)
                    count[0] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: count[0] >= 20, 20, "traffic on version 1")
        publish(models["tf2_2"], base, 2)
        wait_state(server, 2, "AVAILABLE", timeout=60)
        wait_for(lambda: 2 in seen, 20, "clients to reach version 2")
        n = count[0]
        wait_for(lambda: count[0] >= n + 20, 20, "traffic on version 2")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == [], errors[:5]
    assert seen == {1, 2}
    wait_state(server, 1, "END", timeout=30)


def test_e2e_warmup_gates_versions(tmp_path, models, start_server):
    base = str(tmp_path / "models" / "m")
    publish(models["warm_good"], base, 1)
    server = start_server(base)
    assert status(server)[1]["state"] == "AVAILABLE"
    assert "replayed 3 warm-up request(s)" in server.log()

    # A warm-up record with a wrong input name: the version ends with the reason, 1 keeps serving.
    publish(models["warm_bad_name"], base, 2)
    wait_state(server, 2, "END", timeout=60)
    st = status(server)[2]["status"]
    assert st["error_code"] != "OK"
    assert "warm-up request 2 failed" in st["error_message"] and "'wrong'" in st["error_message"], st
    # A warm-up record with a wrong shape.
    publish(models["warm_bad_shape"], base, 3)
    wait_state(server, 3, "END", timeout=60)
    msg = status(server)[3]["status"]["error_message"]
    assert "warm-up request 1 failed" in msg and "expected shape [-1, 3], got [1, 4]" in msg, msg

    assert status(server)[1]["state"] == "AVAILABLE"
    with httpx.Client(timeout=30) as c:
        r = _post(c, server.url, {"instances": [[0, 0, 0]]})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert r.json() == {"predictions": [[1.0, 1.0, 1.0]]}


def test_e2e_tf1_model_metadata_and_predict(tmp_path, models, start_server):
    base = str(tmp_path / "models" / "m")
    # classify/regress signatures do not fail the validation gate; their warm-up records replay.
    publish(models["tf1_warm"], base, 1)
    server = start_server(base)
    assert "replayed 2 warm-up request(s)" in server.log()
    with httpx.Client(timeout=30) as c:
        defs = c.get(server.url + "/v1/models/m/metadata").json()["metadata"]["signature_def"]["signature_def"]
        assert {n: d["method_name"] for n, d in defs.items()} == {
            "classify": CLASSIFY, "regress": REGRESS, "serving_default": PREDICT}
        assert defs["classify"]["inputs"]["inputs"] == {
            "dtype": "DT_STRING", "name": "tf_example:0",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}}
        assert defs["classify"]["outputs"]["classes"]["name"] == "classes:0"
        assert defs["regress"]["outputs"]["outputs"]["name"] == "regression:0"
        assert defs["serving_default"]["inputs"]["xin"]["name"] == "xin:0"
        r = _post(c, server.url, {"instances": [[1, 1], [0, 3]]})
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [[3.0], [6.0]]}
        # The classify signature through :predict, with a serialized Example as b64.
        b64 = base64.b64encode(example(1, 1)).decode()
        r = _post(c, server.url, {"signature_name": "classify", "inputs": {"inputs": [{"b64": b64}]}})
        assert r.status_code == 200, r.text
        assert r.json() == {"outputs": {"classes": [["neg", "pos"]], "scores": [[-3.0, 3.0]]}}
        # TensorFlow's own INVALID_ARGUMENT (an Example missing its feature) is a 400 with TF's reason.
        r = _post(c, server.url, {"signature_name": "regress", "inputs": {"inputs": [""]}})
        assert r.status_code == 400, r.text
        assert "Feature: x (data type: float) is required but could not be found" in r.json()["error"]


def test_e2e_classify_and_regress_over_rest_and_grpc(tmp_path, models, start_server):
    import grpc
    from tensorflow_serving.apis import (classification_pb2, inference_pb2, prediction_service_pb2_grpc,
                                         regression_pb2)

    base = str(tmp_path / "models" / "m")
    publish(models["tf1"], base, 1)
    server = start_server(base)
    with httpx.Client(timeout=30) as c:
        r = c.post(server.url + "/v1/models/m:classify",
                   json={"signature_name": "classify", "examples": [{"x": [1.0, 1.0]}, {"x": [0.5, 0.0]}]})
        assert r.status_code == 200, r.text
        assert r.json() == {"result": [[["neg", -3.0], ["pos", 3.0]], [["neg", -0.5], ["pos", 0.5]]]}
        assert r.headers["x-model-version"] == "1"
        # Context features merge into every example, as TF Serving does.
        r = c.post(server.url + "/v1/models/m/versions/1:regress",
                   json={"signature_name": "regress", "context": {"x": [1.0, 1.0]}, "examples": [{}, {"x": [2.0, 0.0]}]})
        assert r.status_code == 200, r.text
        assert r.json() == {"result": [3.0, 2.0]}
        r = c.post(server.url + "/v1/models/m:classify", json={"examples": [{"x": [1.0, 1.0]}]})
        assert r.status_code == 400 and "classify needs a signature" in r.json()["error"]
        r = c.post(server.url + "/v1/models/m:regress", json={"signature_name": "regress", "examples": []})
        assert r.status_code == 400 and "non-empty 'examples'" in r.json()["error"]

    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "m"
    creq.model_spec.signature_name = "classify"
    creq.input.example_list.examples.add().ParseFromString(example(1, 1))
    cres = stub.Classify(creq, timeout=30)
    assert cres.model_spec.version.value == 1
    assert [(c.label, c.score) for c in cres.result.classifications[0].classes] == [("neg", -3.0), ("pos", 3.0)]
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = "m"
    rreq.model_spec.signature_name = "regress"
    rreq.input.example_list_with_context.context.ParseFromString(example(1, 1))
    rreq.input.example_list_with_context.examples.add()
    rres = stub.Regress(rreq, timeout=30)
    assert [r.value for r in rres.result.regressions] == [3.0]
    mreq = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = mreq.tasks.add()
        task.model_spec.name = "m"
        task.model_spec.signature_name = sig
        task.method_name = method
    mreq.input.example_list.examples.add().ParseFromString(example(0, 1))
    mres = stub.MultiInference(mreq, timeout=30)
    assert mres.results[0].classification_result.classifications[0].classes[1].score == 2.0
    assert mres.results[1].regression_result.regressions[0].value == 2.0
    channel.close()
