"""Compression at publish time (hotserve.compress, `hotserve optimize`): every pass builds a
valid ONNX model that serves through a real hotserve server with the expected outputs, pruned
tensors really shrink, both gates refuse with their numbers and publish nothing, `--publish
--canary 10` makes the variant a canary (through the management API and through the routing
store), and the pipeline's accuracy gate keeps a bad hand-published version from serving.

Real data: scikit-learn's bundled digits for an MLP trained here, and a generated sequence task
for a small transformer-style encoder. No timed assertions: the speed gate is forced to refuse
with a --min_speedup no variant can reach, and the message must carry the measured speedup.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
import numpy as np
import pytest

from conftest import status, wait_for, wait_state
from hotserve.cli import main
from hotserve.compress import examples as ex
from hotserve.compress import model_io
from hotserve.compress.optimize import Options, run
from hotserve.compress.passes import prune_onnx
from hotserve.core.gates import accuracy
from hotserve.repository import manifest
from hotserve.repository.publish import publish
from hotserve.repository.routing_store import FileRoutingStore
from hotserve.repository.storage import LocalStorage
from hotserve.runtimes.registry import load_servable

torch = pytest.importorskip("torch", reason="the compression tests train their models with PyTorch")
e2e = pytest.mark.e2e
TOKEN = "compress-token"
QUIET = dict(runs=10)  # few timed runs: these tests check behaviour, never speed


# -- models and data, trained once per module ---------------------------------------------------------
@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """(parent model.onnx, eval.npz, split, torch module) for a digits MLP 64-128-128-10."""
    d = tmp_path_factory.mktemp("mlp")
    torch.set_num_threads(1)  # these small models train faster on one thread, and leave the other core alone
    split = ex.digits()
    model = ex.train_mlp(split, hidden=(128, 128), epochs=20)
    path = ex.export_mlp(model, str(d / "parent" / "model.onnx"))
    npz = ex.save_npz(str(d / "eval.npz"), split.y_test, x=split.x_test)
    return path, npz, split, model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """(parent model.onnx, eval.npz) for a one-block encoder on the marker-counting task."""
    d = tmp_path_factory.mktemp("enc")
    tokens, labels = ex.sequences(900, length=16)
    model = ex.make_encoder(length=16, d_model=32, heads=2, ff=128, layers=1)
    ex.train_encoder(model, tokens[:600], labels[:600], epochs=4)
    path = ex.export_encoder(model, str(d / "parent" / "model.onnx"), 16)
    npz = ex.save_npz(str(d / "eval.npz"), labels[600:], tokens=tokens[600:])
    return path, npz


def _repo_with(parent_onnx: str, tmp_path, name: str = "m") -> str:
    base = str(tmp_path / "models" / name)
    publish(parent_onnx, base, 1)
    return base


def _ort(model_dir: str, inputs: dict) -> np.ndarray:
    s = load_servable(model_dir)
    try:
        return next(iter(s.predict(inputs).values()))
    finally:
        s.unload()


def _optimize(base: str, npz: str, workdir: str, **kw) -> object:
    opts = Options(model_base_path=base, eval=npz, workdir=workdir, **(QUIET | kw))
    return run(opts, say=lambda _msg: None)


def _versions(base: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(base) if n.isdigit())


# -- every pass serves --------------------------------------------------------------------------------
# Largest difference from the parent's class probabilities each kind of variant may show, on
# the same rows. Pruned variants are different models: they are held to their own in-process
# outputs and to the parent's accuracy instead.
PARENT_TOLERANCE = {"ort-optimized": 1e-5, "fp16": 1e-2, "int8-dynamic": 0.1, "int8-static": 0.1}


@e2e
def test_every_pass_builds_a_model_that_serves_with_the_expected_outputs(mlp, encoder, tmp_path, start_server):
    mlp_onnx, mlp_npz, split, torch_mlp = mlp
    enc_onnx, enc_npz = encoder
    work = str(tmp_path / "work")
    loose = dict(max_metric_drop=1.0, min_speedup=1e-6)  # gates open: this test is about the models

    # Build: the digits MLP through every pass, the encoder through int8 and FFN pruning.
    build_m = _repo_with(mlp_onnx, tmp_path, "build_m")
    r1 = _optimize(build_m, mlp_npz, work + "/m1", optimize_graph=True, quantize="dynamic", fp16=True,
                   prune=0.5, finetune_epochs=3, **loose)
    r2 = _optimize(build_m, mlp_npz, work + "/m2", quantize="static", **loose)
    build_e = _repo_with(enc_onnx, tmp_path, "build_e")
    r3 = _optimize(build_e, enc_npz, work + "/e", quantize="dynamic", prune=0.5, batch_size=8, **loose)
    # PyTorch models go through torch-pruning's dependency graph, then our exporter.
    from hotserve.compress.finetune import finetune
    from hotserve.compress.passes.prune_torch import prune_module

    tp_model, tp_info = prune_module(torch_mlp, torch.zeros(1, 64), 0.5)
    assert tp_info["parameters_after"] * 2 <= tp_info["parameters_before"]
    tp_dir = str(tmp_path / "tp")
    ex.export_mlp(tp_model, os.path.join(tp_dir, "model.onnx"))
    onnx_model = model_io.load(os.path.join(tp_dir, "model.onnx"))
    finetune(onnx_model, {"x": split.x_train}, split.y_train, "probabilities", "accuracy", epochs=3)
    model_io.save(onnx_model, tp_dir)

    variants_m = {r.name: r for r in r1.variants + r2.variants}
    variants_e = {r.name: r for r in r3.variants}
    assert set(variants_m) == {"ort-optimized", "int8-dynamic", "fp16", "prune-0.5+finetune-3",
                               "prune-0.5+finetune-3+int8-dynamic", "int8-static"}
    assert set(variants_e) == {"int8-dynamic", "prune-0.5", "prune-0.5+int8-dynamic"}
    for r in [*variants_m.values(), *variants_e.values()]:
        assert r.error is None and r.passed, (r.name, r.verdict)

    # Serve: each variant is a version of a model served by a real hotserve process.
    served_m = str(tmp_path / "models" / "m")
    served_e = str(tmp_path / "models" / "e")
    publish(mlp_onnx, served_m, 1)
    publish(enc_onnx, served_e, 1)
    numbers_m = {"parent": 1}
    for i, (name, r) in enumerate(sorted(variants_m.items()), start=2):
        publish(r.dir, served_m, i)
        numbers_m[name] = i
    numbers_m["torch-pruning"] = len(numbers_m) + 1
    publish(tp_dir, served_m, numbers_m["torch-pruning"])
    numbers_e = {"parent": 1}
    for i, (name, r) in enumerate(sorted(variants_e.items()), start=2):
        publish(r.dir, served_e, i)
        numbers_e[name] = i
    cfg = tmp_path / "models.yaml"
    cfg.write_text("model_config_list:\n"
                   f"  - {{name: m, base_path: {served_m}, model_version_policy: {{all: {{}}}}}}\n"
                   f"  - {{name: e, base_path: {served_e}, model_version_policy: {{all: {{}}}}}}\n")
    server = start_server(None, "--model_config_file", str(cfg))
    for model, numbers in (("m", numbers_m), ("e", numbers_e)):
        for v in numbers.values():
            wait_state(server, v, "AVAILABLE", model=model)

    x = split.x_test[:16]
    tokens = accuracy.load_npz(enc_npz)["tokens"][:16]
    parent_m, parent_e = _ort(os.path.dirname(mlp_onnx), {"x": x}), _ort(os.path.dirname(enc_onnx), {"tokens": tokens})
    dirs_m = {n: r.dir for n, r in variants_m.items()} | {"torch-pruning": tp_dir}
    dirs_e = {n: r.dir for n, r in variants_e.items()}
    with httpx.Client(timeout=30) as c:
        def served(model: str, version: int, inputs: dict) -> np.ndarray:
            r = c.post(f"{server.url}/v1/models/{model}/versions/{version}:predict",
                       json={"inputs": {k: v.tolist() for k, v in inputs.items()}})
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == str(version)
            return np.asarray(r.json()["outputs"], dtype=np.float32)

        for model, numbers, dirs, inputs, parent in (("m", numbers_m, dirs_m, {"x": x}, parent_m),
                                                     ("e", numbers_e, dirs_e, {"tokens": tokens}, parent_e)):
            np.testing.assert_allclose(served(model, 1, inputs), parent, rtol=1e-5, atol=1e-6)
            for name, d in dirs.items():
                got = served(model, numbers[name], inputs)
                # What serves is exactly what was built and measured.
                np.testing.assert_allclose(got, _ort(d, inputs), rtol=1e-4, atol=1e-5, err_msg=name)
                assert got.shape == parent.shape
                np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-2, err_msg=name)
                tol = PARENT_TOLERANCE.get(name)
                if tol is not None:
                    assert float(np.abs(got - parent).max()) <= tol, (model, name, float(np.abs(got - parent).max()))
                # Every variant keeps (nearly) the parent's predictions on these rows.
                agree = float(np.mean(got.argmax(1) == parent.argmax(1)))
                assert agree >= 0.85, (model, name, agree)


# -- pruning really shrinks tensors -------------------------------------------------------------------
def _shapes(path: str) -> dict[str, tuple]:
    return {i.name: tuple(i.dims) for i in model_io.load(path).graph.initializer}


def test_pruned_tensors_are_smaller_in_the_file(mlp, encoder, tmp_path):
    mlp_onnx, _, split, _ = mlp
    model, info = prune_onnx.prune_dir(os.path.dirname(mlp_onnx), "", 0.5)
    out = model_io.save(model, str(tmp_path / "pruned"))
    before, after = _shapes(mlp_onnx), _shapes(out)
    # Gemm weights are [out, in] (transB=1): hidden units leave rows here and columns in the next layer.
    assert before["fc0.weight"] == (128, 64) and after["fc0.weight"] == (64, 64)
    assert before["fc2.weight"] == (128, 128) and after["fc2.weight"] == (64, 64)
    assert after["fc4.weight"] == (10, 64) and after["fc4.bias"] == (10,)  # the output keeps its 10 classes
    assert after["fc0.bias"] == (64,) and after["fc2.bias"] == (64,)
    assert info["units"] == {"fc0": [128, 64], "fc2": [128, 64]}
    assert os.path.getsize(out) < 0.45 * os.path.getsize(mlp_onnx)
    assert model_io.parameter_count(model) * 2 < model_io.parameter_count(model_io.load(mlp_onnx))

    # The encoder: only the feed-forward hidden units are prunable; attention and the residual
    # stream keep their widths.
    enc_onnx, _ = encoder
    model, info = prune_onnx.prune_dir(os.path.dirname(enc_onnx), "", 0.5)
    b, a = _shapes(enc_onnx), {i.name: tuple(i.dims) for i in model.graph.initializer}
    changed = {k for k in b if b[k] != a[k]}
    assert changed and all(b[k][-1] == 128 or b[k][0] == 128 for k in changed), changed
    assert list(info["units"].values()) == [[128, 64]]
    assert a["blocks.0.ff1.bias"] == (64,)


def test_pruning_removes_exactly_the_units_it_says(mlp, tmp_path):
    """Units whose outgoing weights are zero contribute nothing: pruning them (they rank
    lowest) leaves the model's outputs unchanged, which checks every weight was cut right."""
    from onnx import numpy_helper

    mlp_onnx, _, split, _ = mlp
    model = model_io.load(mlp_onnx)
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(1)
    for nxt in ("fc2.weight", "fc4.weight"):  # consumers of the two hidden layers ([out, in])
        w = numpy_helper.to_array(inits[nxt]).copy()
        w[:, rng.permutation(128)[:64]] = 0.0
        inits[nxt].CopyFrom(numpy_helper.from_array(w, nxt))
    zeroed = model_io.save(model, str(tmp_path / "zeroed"))
    pruned, _ = prune_onnx.prune(model_io.load(zeroed), 0.5)
    pruned_dir = str(tmp_path / "pruned")
    model_io.save(pruned, pruned_dir)
    x = {"x": split.x_test[:64]}
    np.testing.assert_allclose(_ort(pruned_dir, x), _ort(os.path.dirname(zeroed), x), rtol=1e-5, atol=1e-6)


def test_pruning_refuses_a_graph_without_hidden_units(tmp_path):
    from hotserve.examples import make_affine

    d = str(tmp_path / "affine")
    make_affine(os.path.join(d, "model.onnx"), 1.0)
    with pytest.raises(prune_onnx.PruneError, match="no prunable hidden units"):
        prune_onnx.prune_dir(d, "", 0.5)


# -- the gates ---------------------------------------------------------------------------------------
def test_speed_gate_refuses_with_the_measured_speedup_and_publishes_nothing(mlp, tmp_path, capsys):
    mlp_onnx, npz, _, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    code = main(["optimize", "--model_base_path", base, "--eval", npz, "--fp16", "--runs", "10",
                 "--min_speedup", "100", "--publish"])
    err = capsys.readouterr().err
    assert code == 1, err
    m = re.search(r"fp16 refused: speed gate: (\d+\.\d\d)x \(p50 at batch 32: parent (\d+\.\d+) ms, variant "
                  r"(\d+\.\d+) ms\) < --min_speedup 100", err)
    assert m, err
    assert float(m.group(1)) < 100
    assert "accuracy gate" not in err  # fp16 keeps the digits accuracy: only the speed gate refused
    assert "no variant passed the gates; nothing published" in err
    assert _versions(base) == [1]


def test_accuracy_gate_refuses_with_the_metric_numbers_and_publishes_nothing(mlp, tmp_path, capsys):
    mlp_onnx, npz, _, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    # 95% of the hidden units gone and no fine-tuning: far past a 0.01 accuracy budget.
    code = main(["optimize", "--model_base_path", base, "--eval", npz, "--prune", "0.95", "--runs", "10",
                 "--max_metric_drop", "0.01", "--min_speedup", "0.000001", "--publish"])
    out, err = capsys.readouterr()
    assert code == 1, err
    m = re.search(r"prune-0\.95 refused: accuracy gate: accuracy (0\.\d{4}) vs parent (0\.\d{4}), a drop of "
                  r"(0\.\d{4}) > --max_metric_drop 0\.01", err)
    assert m, err
    variant, parent, drop = map(float, m.groups())
    assert drop > 0.01 and abs((parent - variant) - drop) < 2e-4
    assert "speed gate" not in err
    assert re.search(r"prune-0\.95 .* refused: accuracy gate", out)  # the table says it too
    assert _versions(base) == [1]


def test_bad_requests_say_what_is_wrong(mlp, tmp_path, capsys):
    mlp_onnx, npz, split, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    no_label = ex.save_npz(str(tmp_path / "nolabel.npz"), split.y_test, x=split.x_test)
    with np.load(no_label) as z:
        np.savez(str(tmp_path / "nolabel.npz"), x=z["x"])
    cases = [
        (["--eval", npz], "ask for at least one pass"),
        (["--eval", npz, "--quantize", "dynamic", "--canary", "10"], "give --publish too"),
        (["--eval", npz, "--prune", "1.5"], "between 0 and 1"),
        (["--eval", npz, "--quantize", "dynamic", "--version", "9"], "has no version 9; versions: [1]"),
        (["--eval", str(tmp_path / "nolabel.npz"), "--fp16"], "has no 'label' array"),
        (["--eval", "feedback", "--fp16"], "--eval feedback reads the learning store: give --feedback_store"),
        (["--eval", "feedback", "--fp16", "--learning_dir", str(tmp_path / "empty")],
         "the store holds 0 labelled example(s) of model 'default'"),
        (["--eval", npz, "--fp16", "--output", "nope"], "has no output 'nope'"),
    ]
    for args, fragment in cases:
        code = main(["optimize", "--model_base_path", base, *args])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err, (args, err)
    assert _versions(base) == [1]


def test_eval_feedback_scores_on_the_learning_stores_labelled_examples(mlp, tmp_path, capsys):
    from hotserve.learning.store import NewExample
    from hotserve.learning.stores import open_store

    mlp_onnx, _, split, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    learning_dir = str(tmp_path / "learning")
    store = open_store(learning_dir)
    rows = [NewExample({"x": x.astype(np.float32)}, {"label": np.asarray(y, np.int64)})
            for x, y in zip(split.x_test[:200], split.y_test[:200])]
    store.add_feedback("m", [], rows, now=time.time())
    store.add_feedback("other", [], rows[:5], now=time.time())  # another model's examples are not read
    store.close()
    code = main(["optimize", "--model_base_path", base, "--eval", "feedback", "--learning_dir", learning_dir,
                 "--model_name", "m", "--feedback_examples", "150", "--fp16", "--runs", "5",
                 "--max_metric_drop", "1", "--min_speedup", "0.000001"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # The parent's accuracy on the 150 most recent examples, as the table and the gate report it.
    parent = float((_ort(os.path.dirname(mlp_onnx), {"x": split.x_test[50:200].astype(np.float32)}).argmax(1)
                    == split.y_test[50:200]).mean())
    assert f"{parent:.4f}" in out, out
    assert "150 rows" in out, out


# -- publishing: lineage and canary -------------------------------------------------------------------
def _routing(server) -> dict:
    return httpx.get(f"{server.url}/v1/admin/models/m", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


@e2e
def test_publish_canary_through_the_management_api(mlp, tmp_path, start_server, capsys):
    mlp_onnx, npz, _, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    server = start_server(base, "--admin_token", TOKEN)
    args = ["optimize", "--model_base_path", base, "--eval", npz, "--quantize", "dynamic", "--runs", "10",
            "--max_metric_drop", "0.05", "--min_speedup", "0.000001", "--publish", "--canary", "10",
            "--url", server.url, "--model_name", "m"]
    # A refused management call comes before the commit: nothing is published.
    assert main([*args, "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "nothing was published" in err, err
    assert _versions(base) == [1]

    code = main([*args, "--token", TOKEN])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "published 2 at" in out and "version 2 is the canary at 10% beside stable version 1" in out
    r = _routing(server)
    assert r["canary"] == {"version": 2, "weight": 10.0} and r["default_version"] == 1, r
    assert r["labels"] == {"canary": 2, "stable": 1}
    events = httpx.get(f"{server.url}/v1/events?after=0&kind=swap&model=m", timeout=10).json()["events"]
    assert events and all(e.get("default") in (None, 1) for e in events), [e["message"] for e in events]

    lineage = manifest.read(os.path.join(base, "2"))["lineage"]
    assert lineage["parent_version"] == 1 and lineage["variant"] == "int8-dynamic"
    assert [p["pass"] for p in lineage["passes"]] == ["quantize"]
    assert lineage["passes"][0]["settings"]["mode"] == "dynamic"
    assert lineage["size_bytes"]["variant"] < lineage["size_bytes"]["parent"]
    assert set(lineage["latency_ms"]["variant"]) == {"batch_1", "batch_32"}
    assert {"p50_ms", "p99_ms", "runs"} <= set(lineage["latency_ms"]["parent"]["batch_1"])
    metric = lineage["metric"]
    assert metric["name"] == "accuracy" and 0.9 < metric["parent"] <= 1 and metric["eval_rows"] == 718
    assert lineage["gates"] == {"max_metric_drop": 0.05, "min_speedup": 1e-06}


@e2e
def test_publish_canary_through_the_routing_store(mlp, tmp_path, start_server, capsys):
    """No server URL: the routing intent goes into the repository's routing store before the
    version is committed; the running server follows it and never makes the variant the default."""
    mlp_onnx, npz, _, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    server = start_server(base, "--admin_token", TOKEN)
    code = main(["optimize", "--model_base_path", base, "--eval", npz, "--prune", "0.5", "--finetune_epochs", "3",
                 "--runs", "10", "--max_metric_drop", "0.05", "--min_speedup", "0.000001", "--publish", "--canary", "10"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "version 2 is the canary at 10% beside stable version 1 (via routing store" in out
    state, _ = FileRoutingStore(LocalStorage(), base).read()
    assert state.labels == {"stable": 1, "canary": 2} and state.canary_weight == 10.0
    wait_state(server, 2, "AVAILABLE")
    wait_for(lambda: (_routing(server).get("canary") or {}).get("version") == 2, 20, "the canary split")
    r = _routing(server)
    assert r["default_version"] == 1 and r["canary"] == {"version": 2, "weight": 10.0}
    # The variant never served as the default: every route the server published had version 1 as default.
    events = httpx.get(f"{server.url}/v1/events?after=0&kind=swap&model=m", timeout=10).json()["events"]
    assert events and all(e.get("default") in (None, 1) for e in events), [e["message"] for e in events]
    assert manifest.read(os.path.join(base, "2"))["lineage"]["passes"][1]["pass"] == "finetune"


# -- the accuracy gate in the version pipeline ----------------------------------------------------------
def _hand_version(tmp_path, name: str, model_dir: str, npz: str) -> str:
    d = tmp_path / name
    shutil.copytree(model_dir, d)
    shutil.copy(npz, d / "eval.npz")
    return str(d)


@e2e
def test_pipeline_accuracy_gate_refuses_a_bad_hand_published_version(mlp, tmp_path, start_server):
    mlp_onnx, npz, split, _ = mlp
    base = _repo_with(mlp_onnx, tmp_path)
    server = start_server(base)
    wait_state(server, 1, "AVAILABLE")

    # Version 2: pruned hard by hand, published with a gate asking for at most 0.01 less accuracy than v1.
    bad, _ = prune_onnx.prune_dir(os.path.dirname(mlp_onnx), "", 0.95)
    bad_dir = str(tmp_path / "bad-build")
    model_io.save(bad, bad_dir)
    gate = {"accuracy": {"eval": "eval.npz", "metric": "accuracy", "max_drop": 0.01}}
    publish(_hand_version(tmp_path, "bad", bad_dir, npz), base, 2, gates=gate,
            lineage={"parent_version": 1, "passes": [{"pass": "prune", "settings": {"ratio": 0.95}}]})
    wait_state(server, 2, "END")
    msg = status(server)[2]["status"]["error_message"]
    assert re.search(r"accuracy gate: accuracy 0\.\d{4} vs parent version 1's 0\.\d{4} on eval\.npz: a drop of "
                     r"0\.\d{4}, over max_drop 0\.01", msg), msg
    r = httpx.post(f"{server.url}/v1/models/m:predict", json={"instances": split.x_test[:2].tolist()}, timeout=10)
    assert r.status_code == 200 and r.headers["x-model-version"] == "1"

    # Version 3: the parent's own weights with a floor it clears: the gate passes and it serves.
    publish(_hand_version(tmp_path, "good", os.path.dirname(mlp_onnx), npz), base, 3,
            gates={"accuracy": {"eval": "eval.npz", "metric": "accuracy", "min": 0.9, "max_drop": 0.0, "parent": 1}})
    wait_state(server, 3, "AVAILABLE")
    r = httpx.post(f"{server.url}/v1/models/m:predict", json={"instances": split.x_test[:2].tolist()}, timeout=10)
    assert r.headers["x-model-version"] == "3"
    events = httpx.get(f"{server.url}/v1/events?after=0&kind=gate&model=m", timeout=10).json()["events"]
    acc = [e for e in events if e.get("gate") == "accuracy"]
    assert [(e["version"], e["passed"]) for e in acc] == [(2, False), (3, True)], acc
    assert acc[1]["report"]["drop"] == 0.0 and acc[1]["report"]["rows"] == 718


def test_accuracy_gate_spec_errors_name_the_problem():
    bad = [
        ({"gates": {"accuracy": []}}, "must be an object"),
        ({"gates": {"accuracy": {"eval": "e.npz", "metric": "f1", "min": 1}}}, "'metric' must be one of"),
        ({"gates": {"accuracy": {"eval": "../e.npz", "metric": "auc", "min": 1}}}, "a file inside the version"),
        ({"gates": {"accuracy": {"eval": "e.npz", "metric": "auc"}}}, "give a bound"),
        ({"gates": {"accuracy": {"eval": "e.npz", "metric": "auc", "max_drop": 0.1}}}, "compares with a parent"),
        ({"gates": {"accuracy": {"eval": "e.npz", "metric": "auc", "min": "high"}}}, "'min' must be a finite number"),
        ({"gates": {"accuracy": {"eval": "e.npz", "metric": "auc", "min": 1, "tol": 1}}}, "unknown key(s) ['tol']"),
    ]
    from hotserve.errors import LoadError

    for doc, fragment in bad:
        with pytest.raises(LoadError) as exc:
            accuracy.parse_spec(doc)
        assert fragment in str(exc.value), (doc, str(exc.value))
    spec = accuracy.parse_spec({"lineage": {"parent_version": 4},
                                "gates": {"accuracy": {"eval": "e.npz", "metric": "logloss", "max_drop": 0.1}}})
    assert spec["parent"] == 4


# -- metrics -----------------------------------------------------------------------------------------
def test_metrics_match_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 4, 300)
    assert accuracy.score("accuracy", probs, y) == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert accuracy.score("accuracy", logits, y) == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert accuracy.score("logloss", probs, y) == pytest.approx(skm.log_loss(y, probs, labels=range(4)))
    assert accuracy.score("logloss", logits, y) == pytest.approx(skm.log_loss(y, probs, labels=range(4)))
    assert accuracy.score("auc", probs, y) == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    yb = rng.integers(0, 2, 300)
    pb = np.round(rng.random(300), 1)  # ties on purpose
    assert accuracy.score("auc", pb, yb) == pytest.approx(skm.roc_auc_score(yb, pb))
    assert accuracy.score("auc", pb[:, None], yb) == pytest.approx(skm.roc_auc_score(yb, pb))
    t = rng.standard_normal(300)
    assert accuracy.score("mse", t[:, None] + 0.1, t) == pytest.approx(skm.mean_squared_error(t, t + 0.1))
    assert accuracy.drop("accuracy", 0.9, 0.85) == pytest.approx(0.05)
    assert accuracy.drop("mse", 0.10, 0.12) == pytest.approx(0.02)
