"""TF Serving REST predict bodies parsed straight to numpy (protocols/json_numbers.py) decode
exactly as the general orjson path does, values and errors alike; bodies the fast parse cannot
read exactly (ragged, deeper arrays, other keys, non-numbers) are left to the general path."""

from __future__ import annotations

import threading

import numpy as np
import orjson
import pytest

from hotserve import dtypes
from hotserve.errors import InvalidArgument
from hotserve.protocols import json_numbers
from hotserve.protocols import tfserving_rest as tfs
from hotserve.runtimes.base import Signature, TensorSpec

pytestmark = pytest.mark.skipif(json_numbers.simdjson is None, reason="pysimdjson is not installed")

_KEYS = ("instances", "inputs")

FAST = [
    b'{"instances": [[1,2,3,4]]}',
    b'{"inputs": [[1.5,2,3,4],[5,6,7,8]]}',
    b'{"instances": [1,2,3]}',
    b'  {"instances":[[16777217, 0.1, -0.0, 3.4e38]]}  ',
    b'{"instances": [[9007199254740993, 1e-320, -1E+5, 0]]}',
    b'{"instances": [[1,2],[3,4]], "signature_name": "serving_default"}',
    b'{"signature_name": "", "inputs": [1,2,3,4]}',
]
GENERAL = [
    b'{"instances": [[1,2],[3]]}',  # ragged
    b'{"instances": [[1,2],[3,[4]]]}',  # a deeper array hidden where the lengths still agree
    b'{"instances": [1,[2]]}',
    b'{"instances": [[[1,2],[3,4]]]}',  # three levels: the general path
    b'{"instances": [[1,2],[3,[4]]], "signature_name": "\\u005b"}',  # an escaped [ beside a hidden array
    b'{"instances": [[1,2],[3,4]], "signature_name": "a[b"}',
    b'{"instances": [[1,2],[3,4]], "signature_name": 7}',
    b'{"instances": [[1,2],[3,4]], "signature_name": "s", "signature_name": "t"}',
    b'{"instances": [[1,2],[3,4]], "other": 1}',
    b'{"instances": [[1,2]], "instances": [[3,4,5]]}',  # duplicate keys (orjson keeps the last)
    b'{"instances": [[1,2,3,4]], "inputs": [[1]]}',
    b'{"instances": [[true, false]]}',
    b'{"instances": [[1, null]]}',
    b'{"instances": [[1, "2"]]}',
    b'{"instances": [[1,2],{"a":1,"b":2}]}',
    b'{"instances": [[1,2],3]}',
    b'{"instances": [{"x0": [1,2,3,4]}]}',
    b'{"instances": []}',
    b'{"instances": [[]]}',
    b'{"instances": [[1e400, 1]]}',
    b'{"instances": [[NaN, 1]]}',
    b'{"instances": [[1,2,3,4]]} trailing',
    b'[[1,2]]',
    b'{"instances": 5}',
    b'{"examples": [[1,2]]}',
]


def _bodies() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = FAST + GENERAL
    for _ in range(100):
        a = rng.standard_normal((int(rng.integers(1, 5)), int(rng.integers(1, 6)))) * 10.0 ** int(rng.integers(-40, 40))
        out.append(orjson.dumps({"instances": a.tolist()}))
        out.append(orjson.dumps({"inputs": a[0].tolist()}))
    return out


def _outcome(doc_of, body: bytes, sig: Signature):
    try:
        inputs, rows = tfs.decode_predict(doc_of(body), sig)
    except InvalidArgument as exc:
        return "error", str(exc)
    return rows, {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in inputs.items()}


@pytest.mark.parametrize("tf_type", ["DT_FLOAT", "DT_DOUBLE", "DT_HALF", "DT_INT32", "DT_INT64", "DT_BOOL", "DT_STRING"])
@pytest.mark.parametrize("n_inputs", [1, 2])
def test_fast_and_general_paths_decode_every_body_alike(tf_type, n_inputs):
    sig = Signature(inputs={f"x{i}": TensorSpec(f"x{i}", dtypes.BY_TF_NAME[tf_type], (-1, 4)) for i in range(n_inputs)},
                    outputs={})
    with np.errstate(over="ignore"):  # 3.4e38 * 10**k overflows float16/32 on both paths alike
        for body in _bodies():
            assert _outcome(tfs.parse_predict_body, body, sig) == _outcome(tfs.parse_body, body, sig), body[:80]


def test_only_rectangular_numbers_under_the_one_key_take_the_fast_parse():
    for body in FAST:
        doc = json_numbers.parse(body, _KEYS)
        assert doc is not None and doc.get("instances", doc.get("inputs")).dtype == np.float64, body
    for body in GENERAL:
        assert json_numbers.parse(body, _KEYS) is None, body
    assert json_numbers.parse(memoryview(FAST[0]), _KEYS) is None  # bytes only


def test_threads_take_the_one_parser_in_turn_and_keep_their_arrays():
    # The process has one simdjson parser behind a lock: every thread gets its own numbers, and
    # an array read earlier is not overwritten by a later parse (the numbers are copied out).
    bodies = [orjson.dumps({"instances": [[float(i)] * 8] * 4}) for i in range(8)]
    v2_bodies = [_v2(f"[{i},{i},{i}]") for i in range(8)]
    errors: list[str] = []
    kept: list[tuple[int, object, object]] = []

    def work(i: int) -> None:
        for _ in range(300):
            doc = json_numbers.parse(bodies[i], _KEYS)
            infer = json_numbers.parse_infer(v2_bodies[i])
            if doc is None or not (doc["instances"] == i).all() or infer is None or not (infer["inputs"][0]["data"] == i).all():
                errors.append(f"thread {i}")
                return
            kept.append((i, doc["instances"], infer["inputs"][0]["data"]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(kept) == 8 * 300
    assert all((a == i).all() and (b == i).all() for i, a, b in kept)


# -- KServe V2 infer bodies (json_numbers.parse_infer, through v2.decode_infer) ----------------

def _v2(data: str, datatype: str = "FP32", shape: str = "[1,3]", extra: str = "") -> bytes:
    return (f'{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]{extra}}}').encode()


V2_FAST = [
    _v2("[1,2.5,3]"),
    _v2("[16777217, 0.1, -0.0]", "FP64"),
    _v2("[9007199254740993, 1e-320, -1E+5]", "FP16"),
    _v2("[1,2,3]", extra=', "id": "r-1", "parameters": {"p": 1, "q": "s"}'),
    _v2("[1,2,3]", extra=', "outputs": [{"name": "y", "parameters": {"binary_data": true}}]'),
    b'{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1,2]},{"name":"b","shape":[2],"datatype":"FP64","data":[3,4]}]}',
    _v2("[1,2,3]", shape="[3]", extra=', "id": 7'),
    _v2("[1,2,3]", extra=', "id": "\\u00e9\\ud83d\\ude00 \\"q\\""'),
    _v2("[1,2]"),  # too few values for the shape: likewise
]
V2_GENERAL = [
    b'{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1,2]},'
    b'{"name":"b","shape":[2],"datatype":"INT64","data":[3,4]},'
    b'{"name":"c","shape":[1],"datatype":"BYTES","data":["s"]}]}',
    _v2("[1,2,3]", "INT32"),
    _v2("[true,false,true]", "BOOL"),
    _v2("[1,2,3]", extra=', "id": "\\ud800"'),  # a lone surrogate
    _v2("[1,2,3]", "FP8"),  # an unknown type: the general path's error
    _v2("[[1,2,3]]"),  # nested data: the general path
    _v2("[[1],2,3]"),  # a hidden nested array where the count still agrees
    _v2("[[1],2,3]", extra=', "id": "\\u005b"'),
    _v2("[1,2,3]", extra=', "id": "a[b"'),
    _v2("[1,2,3]", extra=', "inputs": []'),  # repeated key (orjson keeps the last)
    b'{"inputs":[{"name":"x","name":"y","shape":[3],"datatype":"FP32","data":[1,2,3]}]}',
    _v2("[1,2,3]", extra=', "parameters": {"p": 1, "p": 2}'),
    _v2("[1,true,3]"),
    _v2("[1,null,3]"),
    _v2('[1,"2",3]'),
    _v2('[1,{"a":1},3]'),
    _v2("[1e400,1,2]"),
    _v2("[NaN,1,2]"),
    _v2("[18446744073709551616,1,2]"),
    _v2("[1,2,3]", "INT64", extra=', "id": 18446744073709551616'),
    _v2("[1,2,3]", "INT64")[:-1] + b' trailing}',
    b'[1,2,3]',
    b'',
]


def _v2_outcome(body: bytes):
    from hotserve.protocols import v2

    try:
        req = v2.decode_infer(body, None)
    except InvalidArgument as exc:
        return "error", str(exc)
    inputs = {k: (a.dtype.str, a.shape, a.tolist() if a.dtype == object else a.tobytes()) for k, a in req.inputs.items()}
    return req.id, req.parameters, inputs, req.outputs, req.binary_outputs


def _v2_bodies() -> list[bytes]:
    rng = np.random.default_rng(1)
    out = V2_FAST + V2_GENERAL
    for _ in range(60):
        a = rng.standard_normal(int(rng.integers(1, 9))) * 10.0 ** int(rng.integers(-40, 40))
        for datatype in ("FP16", "FP32", "FP64", "INT32"):
            out.append(_v2(orjson.dumps(a.tolist()).decode(), datatype, f"[{a.size}]"))
    return out


def test_v2_fast_and_general_paths_decode_every_body_alike(monkeypatch):
    with np.errstate(over="ignore"):
        fast = [_v2_outcome(b) for b in _v2_bodies()]
        monkeypatch.setattr(json_numbers, "parse_infer", lambda body: None)
        general = [_v2_outcome(b) for b in _v2_bodies()]
    for body, f, g in zip(_v2_bodies(), fast, general):
        assert f == g, body[:100]


def test_v2_float_data_takes_the_fast_parse_and_the_rest_the_general_one():
    for body in V2_FAST:
        doc = json_numbers.parse_infer(body)
        assert doc is not None, body
        for spec in doc["inputs"]:
            assert isinstance(spec["data"], np.ndarray), body
    for body in V2_GENERAL:
        assert json_numbers.parse_infer(body) is None, body


def test_v2_bodies_of_other_types_are_turned_away_before_the_parse(monkeypatch):
    def no_parse(*args):
        raise AssertionError("parsed a body whose first input is not floating-point")

    monkeypatch.setattr(json_numbers, "_with_parser", no_parse)
    for datatype, data in (("INT32", "[1,2,3]"), ("BYTES", '["a","b","c"]'), ("BOOL", "[true,false,true]")):
        assert json_numbers.parse_infer(_v2(data, datatype)) is None


@pytest.mark.parametrize("body", [
    b"", b"[", b"[[1,2],[3,4]]", b"x" * 2000 + b"[" + b"y" * 2000 + b"[", b"[" * 5 + b"z" * 5000,
    b"[" + b"1," * 3000 + b"]", b"[" * 3 + b"q" * 600 + b"[",
])
def test_occurs_says_what_count_says(body):
    # The find chain (large bodies) and count (small ones) must agree with bytes.count exactly.
    n = body.count(b"[")
    for expected in range(max(0, n - 2), n + 3):
        assert json_numbers._occurs(body, b"[", expected) is (n == expected), (body[:20], expected)
