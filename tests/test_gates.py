"""File gates (core/gates/files.py): warmup.json replays and golden.json checks a version passes
before it goes live. Unit tests call run_file_gates on real servables; end-to-end tests pin
invariant 2 (a version failing a gate never receives traffic) through a real server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LoadClients, affine_version, status, wait_for, wait_state
from hotserve.core.gates import files as gates
from hotserve.core.gates import GOLDEN_FILE, WARMUP_FILE, GateReport, run_file_gates
from hotserve.errors import LoadError
from hotserve.protocols import tfserving_rest
from hotserve.examples import make_affine, make_two_io
from hotserve.repository.publish import publish
from hotserve.runtimes.registry import load_servable

# The file gates run in every server's gate pipeline (core/gates/standard.py).
e2e = pytest.mark.e2e

X = [[1.0, 2.0, 3.0, 4.0]]


def _write(d: str, name: str, content) -> None:
    with open(os.path.join(d, name), "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def affine_dir(tmp_path, offset: float = 1.0, scale: float = 1.0, warmup=None, golden=None) -> str:
    """A version directory: y = x * scale + offset, plus warmup.json / golden.json when given
    (a str is written as is, anything else as JSON)."""
    d = tmp_path / f"v-{time.monotonic_ns()}"
    make_affine(str(d / "model.onnx"), offset, scale=scale)
    if warmup is not None:
        _write(str(d), WARMUP_FILE, warmup)
    if golden is not None:
        _write(str(d), GOLDEN_FILE, golden)
    return str(d)


PY_MODEL = """
import numpy as np

SIGNATURE = {
    "inputs": {"x": ("float32", [-1, 4])},
    "outputs": {"label": ("object", [-1]), "count": ("int64", [-1]), "positive": ("bool", [-1]),
                "y": ("float32", [-1, 4])},
}

def predict(inputs):
    x = inputs["x"]
    if x.size and x.flat[0] == 7.0:
        raise RuntimeError("seven is not allowed")
    s = x.sum(axis=1)
    return {
        "label": np.array(["pos" if v > 0 else "neg" for v in s], dtype=object),
        "count": (x > 0).sum(axis=1).astype(np.int64),
        "positive": s > 0,
        "y": x * np.float32(2),
    }
"""


def python_dir(tmp_path, warmup=None, golden=None) -> str:
    """A Python-runtime version with string, int64, bool and float outputs; x[0][0] == 7 fails."""
    d = tmp_path / f"py-{time.monotonic_ns()}"
    d.mkdir()
    (d / "model.py").write_text(PY_MODEL)
    if warmup is not None:
        _write(str(d), WARMUP_FILE, warmup)
    if golden is not None:
        _write(str(d), GOLDEN_FILE, golden)
    return str(d)


class Counting:
    """Wraps a servable and records every predict call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.runtime = inner.runtime
        self.signatures = inner.signatures
        self.calls: list[tuple[str, dict]] = []

    def predict(self, inputs, signature_name="serving_default"):
        self.calls.append((signature_name, {k: np.array(v, copy=True) for k, v in inputs.items()}))
        return self.inner.predict(inputs, signature_name)

    def unload(self) -> None:
        self.inner.unload()


@pytest.fixture
def gate():
    """gate(version_dir) -> (Counting servable, GateReport or the LoadError raised)."""
    loaded = []

    def run(version_dir: str):
        s = Counting(load_servable(version_dir))
        loaded.append(s)
        try:
            return s, run_file_gates(s, version_dir, tfserving_rest)
        except LoadError as exc:
            return s, exc

    yield run
    for s in loaded:
        s.unload()


def failed(result) -> str:
    _, out = result
    assert isinstance(out, LoadError), f"expected the gate to fail, got {out!r}"
    return str(out)


def passed(result) -> GateReport:
    _, out = result
    assert isinstance(out, GateReport), f"expected the gate to pass, got {out!r}"
    return out


# -- no files ----------------------------------------------------------------------------------
def test_no_files_runs_nothing(tmp_path, gate):
    s, report = gate(affine_dir(tmp_path))
    assert report == GateReport() and s.calls == []


# -- warmup.json -------------------------------------------------------------------------------
def test_warmup_replays_every_request_with_repeats(tmp_path, gate):
    warmup = [
        {"instances": X},
        {"signature_name": "serving_default", "inputs": {"x": [[0, 0, 0, 0], [1, 1, 1, 1]]}},
        {"inputs": [[5, 5, 5, 5]], "repeat": 3},
    ]
    s, report = gate(affine_dir(tmp_path, warmup=warmup))
    assert isinstance(report, GateReport)
    assert report.warmup_requests == 3 and report.warmup_runs == 5
    assert report.warmup_seconds > 0 and report.golden_cases == 0
    assert [c[1]["x"].shape for c in s.calls] == [(1, 4), (2, 4), (1, 4), (1, 4), (1, 4)]
    assert all(c[0] == "serving_default" and c[1]["x"].dtype == np.float32 for c in s.calls)
    np.testing.assert_array_equal(s.calls[-1][1]["x"], np.full((1, 4), 5, np.float32))


def test_warmup_empty_list_is_fine(tmp_path, gate):
    report = passed(gate(affine_dir(tmp_path, warmup=[])))
    assert report.warmup_requests == 0 and report.warmup_runs == 0


def test_warmup_wrong_shape_names_request_and_shapes(tmp_path, gate):
    s, err = gate(affine_dir(tmp_path, warmup=[{"instances": X}, {"instances": [[1.0, 2.0, 3.0]]}]))
    msg = failed((s, err))
    assert msg.startswith("warmup.json: request [1] is invalid")
    assert "input 'x': expected shape [-1, 4], got [1, 3]" in msg
    assert len(s.calls) == 1  # request [0] ran, request [1] never reached the model


def test_warmup_decode_errors_name_the_reason(tmp_path, gate):
    cases = {
        "neither": ({"signature_name": "serving_default"}, "exactly one of 'instances'"),
        "both": ({"instances": X, "inputs": X}, "it holds both"),
        "ragged": ({"instances": [[1, 2, 3, 4], [1, 2]]}, "ragged"),
        "strings": ({"instances": [["a", "b", "c", "d"]]}, "expected DT_FLOAT values"),
        "signature": ({"signature_name": "nope", "instances": X}, 'signature name: "nope" not found'),
        "sig type": ({"signature_name": 3, "instances": X}, "'signature_name' must be a string"),
        "input name": ({"inputs": {"z": X}}, "missing ['x']"),
    }
    for label, (req, reason) in cases.items():
        msg = failed(gate(affine_dir(tmp_path, warmup=[{"instances": X}, req])))
        assert msg.startswith("warmup.json: request [1] is invalid: "), (label, msg)
        assert reason in msg, (label, msg)


def test_warmup_request_that_fails_to_run(tmp_path, gate):
    msg = failed(gate(python_dir(tmp_path, warmup=[{"instances": X}, {"instances": [[7, 0, 0, 0]], "repeat": 2}])))
    assert msg == "warmup.json: request [1] failed to run (repeat 1 of 2): RuntimeError: seven is not allowed"


def test_warmup_repeat_bounds(tmp_path, gate):
    for bad in (0, -1, 1001, 2.5, "3", True, None):
        msg = failed(gate(affine_dir(tmp_path, warmup=[{"instances": X, "repeat": bad}])))
        assert msg == f'warmup.json: request [0]: "repeat" must be an integer from 1 to 1000, got {json.dumps(bad)}'
    report = passed(gate(affine_dir(tmp_path, warmup=[{"instances": X, "repeat": 1000}])))
    assert report.warmup_runs == 1000


@pytest.mark.parametrize("content, reason", [
    ("[{\"instances\": [[1, 2, 3, 4]]}", "warmup.json is not valid JSON: "),
    ("", "warmup.json is not valid JSON: "),
    (b"\xff\xfe[]", "warmup.json is not UTF-8 text"),
    ({"instances": X}, "warmup.json must be a JSON array of TF Serving REST predict requests"),
    ([[1, 2, 3, 4]], "warmup.json: request [0] must be a JSON object"),
    ([{"instances": X, "repeats": 3}], "warmup.json: request [0]: unknown key(s) ['repeats']; allowed keys are"),
])
def test_warmup_malformed_file(tmp_path, gate, content, reason):
    d = affine_dir(tmp_path)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(os.path.join(d, WARMUP_FILE), mode) as f:
        f.write(content if isinstance(content, (str, bytes)) else json.dumps(content))
    s, err = gate(d)
    assert reason in failed((s, err))
    assert s.calls == []


def test_file_too_large(tmp_path, gate, monkeypatch):
    monkeypatch.setattr(gates, "MAX_FILE_BYTES", 100)
    warmup = [{"instances": X}] * 10
    msg = failed(gate(affine_dir(tmp_path, warmup=warmup)))
    size = len(json.dumps(warmup))
    assert msg.startswith(f"warmup.json is {size} bytes, over the limit of 100 bytes")
    assert '"repeat"' in msg
    golden = {"cases": [{"inputs": X, "expected": [[2.0, 3.0, 4.0, 5.0]]}] * 5}
    msg = failed(gate(affine_dir(tmp_path, golden=golden)))
    assert msg.startswith("golden.json is ") and "over the limit of 100 bytes" in msg
    # Within the limit, it passes.
    assert passed(gate(affine_dir(tmp_path, warmup=[{"instances": X}]))).warmup_runs == 1


def test_gate_file_that_is_a_directory(tmp_path, gate):
    d = affine_dir(tmp_path)
    os.mkdir(os.path.join(d, GOLDEN_FILE))
    assert "golden.json: " in failed(gate(d)) and "is not a regular file" in failed(gate(d))


# -- golden.json -------------------------------------------------------------------------------
def test_golden_pass_bare_and_named(tmp_path, gate):
    golden = {
        "cases": [
            {"inputs": X, "expected": [[3.0, 5.0, 7.0, 9.0]]},  # bare: the one output
            {"name": "batch of two", "inputs": {"x": [[0, 0, 0, 0], [-1, -1, -1, -1]]},
             "expected": {"y": [[1, 1, 1, 1], [-1, -1, -1, -1]]}},
            {"signature_name": "serving_default", "inputs": [[0.1, 0.2, 0.3, 0.4]],
             "expected": {"y": [[1.2, 1.4, 1.6, 1.8]]}},  # float32 rounding within the default tolerance
        ],
    }
    s, report = gate(affine_dir(tmp_path, offset=1.0, scale=2.0, golden=golden))
    assert isinstance(report, GateReport), report
    assert report.golden_cases == 3 and report.golden_seconds > 0 and report.warmup_runs == 0
    assert len(s.calls) == 3


def test_warmup_then_golden_both_run(tmp_path, gate):
    d = affine_dir(tmp_path, offset=2.0, warmup=[{"instances": X, "repeat": 2}],
                   golden={"cases": [{"inputs": X, "expected": [[3, 4, 5, 6]]}]})
    s, report = gate(d)
    assert (report.warmup_requests, report.warmup_runs, report.golden_cases) == (1, 2, 1)
    assert len(s.calls) == 3
    assert "1 request(s), 2 run(s)" in report.summary() and "1 case(s) passed" in report.summary()


def test_golden_mismatch_message(tmp_path, gate):
    golden = {
        "tolerance": {"rtol": 0, "atol": 0.01},
        "cases": [
            {"inputs": X, "expected": [[2, 3, 4, 5]]},
            {"name": "two rows", "inputs": [[0, 0, 0, 0], [1, 1, 1, 1]],
             "expected": {"y": [[1, 1, 1, 1], [2, 2, 2.5, 2.25]]}},
        ],
    }
    msg = failed(gate(affine_dir(tmp_path, offset=1.0, golden=golden)))
    assert msg == (
        "golden.json: case [1] ('two rows') output 'y': 2 of 8 value(s) differ; max abs difference 0.5, "
        "tolerance rtol=0, atol=0.01; first mismatch at index [1, 2]: expected 2.5, got 2.0"
    )


def test_golden_missing_output(tmp_path, gate):
    golden = {"cases": [{"inputs": X, "expected": {"y": [[2, 3, 4, 5]], "z": [[0]]}}]}
    msg = failed(gate(affine_dir(tmp_path, golden=golden)))
    assert msg == "golden.json: case [0]: expected output 'z' but the model returned output(s) ['y']"


def test_golden_shape_mismatch(tmp_path, gate):
    golden = {"cases": [{"inputs": X, "expected": [[2, 3, 4, 5], [2, 3, 4, 5]]}]}
    msg = failed(gate(affine_dir(tmp_path, golden=golden)))
    assert msg == "golden.json: case [0] output 'y': expected shape [2, 4], got [1, 4]"
    golden = {"cases": [{"inputs": X, "expected": [2, 3, 4, 5]}]}
    assert "expected shape [4], got [1, 4]" in failed(gate(affine_dir(tmp_path, golden=golden)))


def test_golden_tolerance_is_respected(tmp_path, gate):
    # The model answers 2.0; the golden file says 2.001 (abs diff 1e-3, relative ~5e-4).
    case = {"inputs": [[1, 1, 1, 1]], "expected": [[2.001, 2.0, 2.0, 2.0]]}
    msg = failed(gate(affine_dir(tmp_path, golden={"cases": [case]})))
    assert "tolerance rtol=1e-05, atol=1e-06" in msg and "max abs difference 0.001" in msg
    assert "first mismatch at index [0, 0]: expected 2.001, got 2.0" in msg
    assert passed(gate(affine_dir(tmp_path, golden={"tolerance": {"atol": 2e-3}, "cases": [case]}))).golden_cases == 1
    assert passed(gate(affine_dir(tmp_path, golden={"tolerance": {"rtol": 1e-3, "atol": 0}, "cases": [case]}))).golden_cases == 1
    # np.allclose semantics: atol + rtol * |expected|, neither alone enough here.
    assert failed(gate(affine_dir(tmp_path, golden={"tolerance": {"rtol": 1e-4, "atol": 1e-4}, "cases": [case]})))
    assert passed(gate(affine_dir(tmp_path, golden={"tolerance": {"rtol": 3e-4, "atol": 5e-4}, "cases": [case]}))).golden_cases == 1


def test_golden_strings_ints_bools_are_exact(tmp_path, gate):
    ok = {"cases": [{
        "inputs": [[1, 0, 0, 0], [-1, -1, 0, 0]],
        "expected": {"label": ["pos", {"b64": "bmVn"}], "count": [1, 0], "positive": [True, False],
                     "y": [[2, 0, 0, 0], [-2, -2, 0, 0]]},
    }]}
    assert passed(gate(python_dir(tmp_path, golden=ok))).golden_cases == 1

    def expect(name, values):
        return {"tolerance": {"rtol": 1, "atol": 1}, "cases": [{"inputs": [[1, 0, 0, 0], [-1, -1, 0, 0]], "expected": {name: values}}]}

    msg = failed(gate(python_dir(tmp_path, golden=expect("label", ["pos", "POS"]))))
    assert msg == ("golden.json: case [0] output 'label': 1 of 2 value(s) differ; max abs difference n/a, "
                   "tolerance exact match (string output); first mismatch at index [1]: expected 'POS', got 'neg'")
    # A generous tolerance does not apply to integers.
    msg = failed(gate(python_dir(tmp_path, golden=expect("count", [2, 0]))))
    assert msg == ("golden.json: case [0] output 'count': 1 of 2 value(s) differ; max abs difference 1, "
                   "tolerance exact match (DT_INT64 output); first mismatch at index [0]: expected 2, got 1")
    msg = failed(gate(python_dir(tmp_path, golden=expect("positive", [True, True]))))
    assert "tolerance exact match (DT_BOOL output)" in msg and "index [1]: expected True, got False" in msg
    # Floats for an integer output and numbers for a bool output are refused, not rounded.
    msg = failed(gate(python_dir(tmp_path, golden=expect("count", [1.0, 0.0]))))
    assert msg.startswith("golden.json: case [0] output 'count': bad \"expected\" value: expected DT_INT64 values")
    msg = failed(gate(python_dir(tmp_path, golden=expect("positive", [1, 0]))))
    assert "DT_BOOL output is compared with JSON true/false values" in msg
    # With several outputs, a bare list is ambiguous.
    msg = failed(gate(python_dir(tmp_path, golden={"cases": [{"inputs": X, "expected": ["pos"]}]})))
    assert 'must be a JSON object naming outputs (the signature has 4 outputs' in msg


def test_golden_int_output_of_onnx_model(tmp_path, gate):
    d = tmp_path / "two"
    make_two_io(str(d / "model.onnx"), offset=0.5)
    golden = {"cases": [{"inputs": {"a": [[1, 2, 3]], "b": [4]}, "expected": {"sum": [[1.5, 2.5, 3.5]], "b_out": [8]}}]}
    _write(str(d), GOLDEN_FILE, golden)
    assert passed(gate(str(d))).golden_cases == 1
    golden["cases"][0]["expected"]["b_out"] = [9]
    _write(str(d), GOLDEN_FILE, golden)
    assert "output 'b_out': 1 of 1 value(s) differ; max abs difference 1, tolerance exact match (DT_INT64 output)" in failed(gate(str(d)))


def test_golden_nan_matches_nan(tmp_path, gate):
    # JSON NaN (as Python's json writes it) in expected matches a NaN output.
    d = affine_dir(tmp_path, offset=0.0)
    with open(os.path.join(d, GOLDEN_FILE), "w") as f:
        f.write('{"cases": [{"inputs": [[NaN, 1, 2, 3]], "expected": [[NaN, 1, 2, 3]]}]}')
    assert passed(gate(d)).golden_cases == 1
    with open(os.path.join(d, GOLDEN_FILE), "w") as f:
        f.write('{"cases": [{"inputs": [[NaN, 1, 2, 3]], "expected": [[0, 1, 2, 3]]}]}')
    msg = failed(gate(d))
    assert "max abs difference 0 (and non-finite differences)" in msg and "expected 0.0, got nan" in msg


def test_golden_inference_failure(tmp_path, gate):
    golden = {"cases": [{"inputs": [[7, 0, 0, 0]], "expected": {"count": [0]}}]}
    assert failed(gate(python_dir(tmp_path, golden=golden))) == \
        "golden.json: case [0]: inference failed: RuntimeError: seven is not allowed"


@pytest.mark.parametrize("golden, reason", [
    ("{\"cases\": [", "golden.json is not valid JSON: "),
    ([], "golden.json must be a JSON object {\"tolerance\""),
    ({}, 'golden.json: missing key "cases"; expected {"tolerance"'),
    ({"cases": {"inputs": X}}, 'golden.json: "cases" must be a JSON array of cases, got a JSON object'),
    ({"case": []}, "golden.json: unknown key(s) ['case']; allowed keys are ['tolerance', 'cases', 'description']"),
    ({"cases": [[1, 2]]}, "golden.json: case [0] must be a JSON object {\"inputs\": ..., \"expected\": ...}, got a JSON array"),
    ({"cases": [{"inputs": X}]}, 'golden.json: case [0]: missing key "expected"'),
    ({"cases": [{"expected": X}]}, 'golden.json: case [0]: missing key "inputs"'),
    ({"cases": [{"inputs": X, "expected": X, "expect": 1}]}, "golden.json: case [0]: unknown key(s) ['expect']"),
    ({"cases": [{"inputs": X, "expected": X, "name": 5}]}, 'golden.json: case [0]: "name" must be a string'),
    ({"cases": [{"inputs": [[1, 2]], "expected": X}]}, "golden.json: case [0]: invalid inputs: input 'x': expected shape [-1, 4], got [1, 2]"),
    ({"cases": [{"inputs": X, "expected": {}}]}, 'golden.json: case [0]: "expected" names no outputs'),
    ({"cases": [{"inputs": X, "expected": [["a", "b", "c", "d"]]}]}, "golden.json: case [0] output 'y': bad \"expected\" value: expected DT_DOUBLE values"),
    ({"cases": [{"inputs": X, "expected": [[1, 2], [3]]}]}, "golden.json: case [0] output 'y': bad \"expected\" value: nested lists are ragged"),
    ({"tolerance": 0.1, "cases": []}, 'golden.json: "tolerance" must be a JSON object like {"rtol": 1e-5, "atol": 1e-6}, got a JSON number'),
    ({"tolerance": {"atol": -1}, "cases": []}, "golden.json: \"tolerance\": 'atol' must be a finite number >= 0, got -1"),
    ({"tolerance": {"rtol": "1e-3"}, "cases": []}, "'rtol' must be a finite number >= 0, got \"1e-3\""),
    ({"tolerance": {"abs": 1}, "cases": []}, "golden.json: \"tolerance\": unknown key(s) ['abs']; allowed keys are ['rtol', 'atol']"),
])
def test_golden_malformed_file(tmp_path, gate, golden, reason):
    msg = failed(gate(affine_dir(tmp_path, golden=golden)))
    assert reason in msg, msg


def test_golden_empty_cases_pass(tmp_path, gate):
    report = passed(gate(affine_dir(tmp_path, golden={"description": "none yet", "cases": []})))
    assert report.golden_cases == 0


# -- end to end: a real server ---------------------------------------------------------------
def gated_version(base: str, version: int, build: str, golden_offset: float, warmup=None) -> str:
    """y = x + version, published with a golden file that expects y = x + golden_offset."""
    d = os.path.join(build, f"gated-{version}-{time.monotonic_ns()}")
    make_affine(os.path.join(d, "model.onnx"), float(version))
    _write(d, WARMUP_FILE, warmup if warmup is not None else [{"instances": X, "repeat": 5}])
    xs = [[0.0, 1.0, 2.0, 3.0], [-1.5, 0.25, 10.0, 1e3]]
    _write(d, GOLDEN_FILE, {"cases": [{"inputs": {"x": xs},
                                       "expected": {"y": (np.array(xs) + golden_offset).tolist()}}]})
    return publish(d, base, version)[1]


@e2e
def test_version_failing_golden_never_goes_live_and_next_good_one_does(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with LoadClients(server.url, n=3) as clients:
        gated_version(base, 2, build, golden_offset=2.5)  # the model answers x + 2
        wait_state(server, 2, "END")
        st = status(server)
        msg = st[2]["status"]["error_message"]
        assert st[2]["status"]["error_code"] != "OK"
        assert "golden.json: case [0] output 'y'" in msg and "max abs difference 0.5" in msg, msg
        assert "first mismatch at index [0, 0]: expected 2.5, got 2.0" in msg, msg
        assert st[1]["state"] == "AVAILABLE"
        assert "version 2: failed to load" in server.log() and "golden.json: case [0]" in server.log()
        clients.wait_requests(30)
        assert 2 not in clients.versions
        gated_version(base, 3, build, golden_offset=3.0)
        wait_for(lambda: 3 in clients.versions, 30, "version 3 to serve")
        clients.wait_requests(30)
    assert clients.errors == []
    assert clients.versions == {1, 3}
    assert status(server)[3]["state"] == "AVAILABLE"


@e2e
def test_version_failing_warmup_json_never_goes_live(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with LoadClients(server.url, n=2) as clients:
        gated_version(base, 2, build, golden_offset=2.0,
                      warmup=[{"instances": X}, {"instances": [[1.0, 2.0]]}])
        wait_state(server, 2, "END")
        msg = status(server)[2]["status"]["error_message"]
        assert msg.startswith("warmup.json: request [1] is invalid") and "expected shape [-1, 4], got [1, 2]" in msg, msg
        clients.wait_requests(30)
    assert clients.errors == [] and clients.versions == {1}
