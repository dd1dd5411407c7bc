"""Property-based tests of every decoder (hypothesis): whatever bytes or JSON a client sends, a
decoder answers with arrays that match the declared shape and type, or with a 400 / 413 carrying
a message, never another exception, and never a large allocation (tracemalloc's peak is bounded
by a small multiple of the request)."""

from __future__ import annotations

import base64
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hotserve import dtypes
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.protocols import limits, tf_examples, tfserving_grpc, tfserving_rest, v2, v2_grpc
from hotserve.protos.inference import grpc_service_pb2 as v2pb
from hotserve.protos.tensorflow.core.framework import types_pb2
from hotserve.protos.tensorflow_serving.apis import input_pb2, predict_pb2
from hotserve.runtimes.base import Signature, TensorSpec

# derandomize: the same examples on every run, so the suite cannot pass or fail by the draw; a
# case a random search once found is pinned below with @example.
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Headroom over the request's own size for the decoder's arrays and Python objects.
ALLOWED_PEAK = 32 << 20

SIG_FLOAT = Signature(inputs={"x": TensorSpec("x", dtypes.BY_TF_NAME["DT_FLOAT"], (-1, 4))}, outputs={})
SIG_TWO = Signature(inputs={"a": TensorSpec("a", dtypes.BY_TF_NAME["DT_INT64"], (-1,)),
                            "s": TensorSpec("s", dtypes.STRING, (-1,))}, outputs={})

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=6), st.dictionaries(st.sampled_from(["x", "a", "s", "b64", "data", "shape", "name"]), kids,
                                                max_size=4)), max_leaves=40)
shapes = st.lists(st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32, 10**12, 400_000_000])), max_size=4)


def _decodes_or_refuses(fn, *args):
    """Run a decoder under tracemalloc: its result, or the HotserveError it raised (4xx only)."""
    tracemalloc.start()
    try:
        result = fn(*args)
    except HotserveError as exc:
        result = exc
        assert exc.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED), (exc.code, exc)
        assert exc.http_status in (400, 413) and str(exc)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < ALLOWED_PEAK, f"decoder allocated {peak} bytes"
    return result


@FUZZ
@given(doc=json_values, sig=st.sampled_from([SIG_FLOAT, SIG_TWO]))
def test_tf_serving_rest_json(doc, sig):
    body = json.dumps({"instances": doc} if not isinstance(doc, dict) else doc).encode()
    out = _decodes_or_refuses(lambda: tfserving_rest.decode_predict(tfserving_rest.parse_body(body), sig))
    if not isinstance(out, HotserveError):
        inputs, _ = out
        assert set(inputs) == set(sig.inputs)


@FUZZ
@given(rows=st.lists(st.lists(st.floats(width=32, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=5),
       columnar=st.booleans())
def test_tf_serving_rest_valid_requests_decode_exactly(rows, columnar):
    doc = {"inputs": rows} if columnar else {"instances": rows}
    inputs, row_format = tfserving_rest.decode_predict(doc, SIG_FLOAT)
    assert row_format is not columnar
    np.testing.assert_array_equal(inputs["x"], np.asarray(rows, dtype=np.float32))


@FUZZ
@given(values=st.lists(st.binary(max_size=10), min_size=1, max_size=4), b64=st.booleans())
def test_tf_serving_rest_b64_strings(values, b64):
    sig = Signature(inputs={"s": TensorSpec("s", dtypes.STRING, (-1,))}, outputs={})
    enc = [{"b64": base64.b64encode(v).decode()} for v in values] if b64 else [v.decode("latin-1") for v in values]
    inputs, _ = tfserving_rest.decode_predict({"instances": enc}, sig)
    want = values if b64 else [v.decode("latin-1").encode() for v in values]
    assert list(inputs["s"]) == want


@FUZZ
@given(shape=shapes, datatype=st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "FP16", "NOPE"]), data=json_values)
def test_v2_json(shape, datatype, data):
    body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}).encode()
    out = _decodes_or_refuses(v2.decode_infer, body, None)
    if not isinstance(out, HotserveError):
        assert out.inputs["x"].shape == tuple(shape)


@FUZZ
@given(shape=shapes, datatype=st.sampled_from(["FP32", "INT8", "BYTES", "UINT64"]), payload=st.binary(max_size=64),
       extra=st.integers(-3, 3))
def test_v2_binary(shape, datatype, payload, extra):
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(payload) + extra}}]}).encode()
    out = _decodes_or_refuses(v2.decode_infer, header + payload, len(header))
    if not isinstance(out, HotserveError):
        assert out.inputs["x"].shape == tuple(shape)


@FUZZ
@given(body=st.binary(max_size=200), length=st.one_of(st.none(), st.integers(-5, 300)))
def test_v2_arbitrary_bytes(body, length):
    _decodes_or_refuses(v2.decode_infer, body, length)


_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_INT32: "int_val", types_pb2.DT_INT8: "int_val",
           types_pb2.DT_STRING: "string_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_BOOL: "bool_val",
           types_pb2.DT_HALF: "half_val", types_pb2.DT_COMPLEX64: "scomplex_val"}


@FUZZ
@given(dtype=st.sampled_from([*_FIELDS, types_pb2.DT_INVALID, 99]), shape=shapes, n=st.integers(0, 5),
       content=st.one_of(st.none(), st.binary(max_size=64)), value=st.integers(-300, 70000))
def test_tensor_proto(dtype, shape, n, content, value):
    req = predict_pb2.PredictRequest()
    t = req.inputs["x"]
    t.dtype = dtype
    for d in shape:
        t.tensor_shape.dim.add().size = d
    if content is not None:
        t.tensor_content = content
    field = _FIELDS.get(dtype)
    if field is not None:
        vals = [str(value).encode()] * n if field == "string_val" else [bool(value)] * n if field == "bool_val" else [value] * n
        getattr(t, field).extend(vals)
    out = _decodes_or_refuses(tfserving_grpc.decode_predict, req)
    if not isinstance(out, HotserveError):
        assert out["x"].shape == tuple(shape)


@FUZZ
@given(shape=shapes, datatype=st.sampled_from(["FP32", "BYTES", "INT32", "BOOL", "FP16"]),
       raw=st.one_of(st.none(), st.binary(max_size=64)), n=st.integers(0, 5))
def test_v2_grpc(shape, datatype, raw, n):
    req = v2pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    elif datatype == "BYTES":
        t.contents.bytes_contents.extend([b"a"] * n)
    elif datatype == "FP32":
        t.contents.fp32_contents.extend([1.0] * n)
    elif datatype == "INT32":
        t.contents.int_contents.extend([1] * n)
    out = _decodes_or_refuses(v2_grpc.decode_infer, req)
    if not isinstance(out, HotserveError):
        assert out["x"].shape == tuple(shape)


@FUZZ
@given(doc=json_values)
@example(doc=[{"x": 2**63}])  # beyond int64: was a 500 (protobuf's ValueError), found by a CI run
@example(doc=[{"x": [-(2**63) - 1]}])
def test_tf_example_json(doc):
    body = {"examples": doc} if not isinstance(doc, dict) else doc
    _decodes_or_refuses(tf_examples.json_examples, body)


@FUZZ
@given(serialized=st.lists(st.binary(max_size=40), max_size=4), kind=st.sampled_from(["list", "context", "none"]))
def test_tf_example_grpc_input(serialized, kind):
    inp = input_pb2.Input()
    if kind == "list":
        inp.example_list.examples.extend([])
        for raw in serialized:
            try:
                inp.example_list.examples.add().ParseFromString(raw)
            except Exception:
                pass
    elif kind == "context":
        inp.example_list_with_context.examples.add()
    _decodes_or_refuses(tf_examples.serialized_examples, inp)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_decompress_bounds_the_output(encoding, monkeypatch):
    import zlib

    monkeypatch.setattr(limits, "MAX_DECODED_BODY_BYTES", 1000)
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    small = c.compress(b"x" * 999) + c.flush()
    assert limits.decompress(small, encoding) == b"x" * 999
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    big = c.compress(b"x" * 10**7) + c.flush()
    assert isinstance(_decodes_or_refuses(limits.decompress, big, encoding), limits.TooLarge)
    with pytest.raises(HotserveError, match="truncated"):
        limits.decompress(small[:-6], encoding)


@pytest.mark.parametrize("tf_type,value", [("DT_INT64", 2**63), ("DT_INT32", 2**31), ("DT_INT32", -(2**31) - 1),
                                           ("DT_UINT8", 256), ("DT_UINT8", -1)])
def test_tf_rest_integers_out_of_range_are_refused_not_wrapped(tf_type, value):
    """numpy's astype wraps around silently (2**31 became -2**31 for an int32 input)."""
    sig = Signature(inputs={"a": TensorSpec("a", dtypes.BY_TF_NAME[tf_type], (-1,))}, outputs={})
    with pytest.raises(InvalidArgument, match="outside"):
        tfserving_rest.decode_predict({"instances": [value]}, sig)
    with pytest.raises(InvalidArgument):  # numpy reads [1, 2**63] as floats: refused as such
        tfserving_rest.decode_predict({"inputs": {"a": [1, value]}}, sig)
    assert tfserving_rest.decode_predict({"instances": [1, 2]}, sig)[0]["a"].tolist() == [1, 2]
