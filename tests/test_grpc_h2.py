"""The native gRPC front end (server/grpc_h2.py): its HPACK encoder against an independent
decoder, HTTP/2 details a stock client rarely sends (padding, CONTINUATION, a garbage preface),
gRPC details (compression, unknown methods, unparsable messages, health Watch), and the
grpcio front end kept working behind --grpc_frontend grpcio."""

import socket
import struct

import grpc
import numpy as np
import pytest
from hpack import Decoder, Encoder

from conftest import affine_version
from hotserve.server.grpc_h2 import (CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, PREFACE, SETTINGS,
                                     _Encoder, _frame, parse_timeout)

pytest.importorskip("tritonclient.grpc")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from hotserve.protos.inference import grpc_service_pb2 as pb  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _infer_request(x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


def _output(resp: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))


def test_encoder_round_trips_through_an_independent_decoder():
    """Blocks decode to what was encoded, in order, across insertions, evictions (a table the
    peer shrank) and a size update owed at the start of the next block."""
    enc, dec = _Encoder(), Decoder()
    for i in range(300):
        if i == 120:
            enc.peer_table_size(200)  # small: entries are evicted as new ones come
            dec.max_allowed_table_size = 200
        trailing = (("x-model-version", str(i % 7)), ("x-model-revision", "0"), ("x-request-id", f"id-{i}"))
        block = enc.headers() + enc.status("NOT_FOUND" if i % 5 == 0 else None, "m%" * (i % 3), trailing)
        got = [(k if isinstance(k, str) else k.decode(), v if isinstance(v, str) else v.decode())
               for k, v in dec.decode(block)]
        want = [(":status", "200"), ("content-type", "application/grpc"),
                ("grpc-status", "5" if i % 5 == 0 else "0"), ("x-model-version", str(i % 7)), ("x-model-revision", "0")]
        if i % 3:
            want.append(("grpc-message", "m%25" * (i % 3)))
        want.append(("x-request-id", f"id-{i}"))
        assert got == want, i
    # Literals (ids, messages) are not part of what is kept: answers that differ only in them
    # reuse one block.
    enc = _Encoder()
    for i in range(100):
        enc.status(None, "", (("x-model-version", "3"), ("x-request-id", f"{i:032x}")))
    assert len(enc.kept) <= 2
    fresh = _Encoder()
    fresh.headers()
    assert fresh.headers() == b"\x88\xbe"  # then :status and content-type are one byte each


def test_grpc_timeout_header():
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert parse_timeout("2S") == 2.0 and parse_timeout("1H") == 3600.0
    assert parse_timeout("12") is None and parse_timeout("m") is None and parse_timeout("123456789S") is None




def _infer(channel, x, **kw):
    call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)
    return call(_infer_request(x), timeout=10, **kw)


def test_compressed_requests_unknown_methods_and_bad_messages(grpc_served):
    server, channel, _, _ = grpc_served
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(_output(_infer(channel, x, compression=grpc.Compression.Gzip)), x + 1)
    np.testing.assert_array_equal(_output(_infer(channel, x, compression=grpc.Compression.Deflate)), x + 1)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/no.Such/Method")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "/no.Such/Method" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(b"\xff\xff\xff", timeout=10)  # not a ModelInferRequest
    assert info.value.code() == grpc.StatusCode.INTERNAL and "ModelInferRequest" in info.value.details()
    np.testing.assert_array_equal(_output(_infer(channel, x)), x + 1)  # the connection still serves


def test_health_watch_streams_until_cancelled(grpc_served):
    server, channel, _, _ = grpc_served
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="m"), timeout=10)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="zz"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _read_frames(sock: socket.socket, until_end_of: int) -> list[tuple[int, int, int, bytes]]:
    frames, buf = [], b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed; frames so far: {[(f[0], f[1], f[2]) for f in frames]}"
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        kind, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0]
        frames.append((kind, flags, sid, buf[9:9 + n]))
        buf = buf[9 + n:]
        if sid == until_end_of and flags & END_STREAM and kind in (DATA, HEADERS):
            return frames


def test_padding_continuation_and_a_garbage_preface(grpc_served):
    """A request whose header block spans HEADERS + CONTINUATION and whose frames are padded is
    answered; a connection that does not start with the HTTP/2 preface is closed, and the
    server keeps serving."""
    server, channel, _, _ = grpc_served
    host, port = server.grpc_target.rsplit(":", 1)
    block = Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x"),
                              ("content-type", "application/grpc"), ("te", "trailers"), ("x-pad", "p" * 300)])
    msg = _infer_request(np.ones((1, 4), np.float32)).SerializeToString()
    body = b"\x00" + struct.pack(">I", len(msg)) + msg
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(PREFACE + _frame(SETTINGS, 0, 0)
                  + _frame(HEADERS, PADDED, 1, bytes([5]) + block[:100] + b"\x00" * 5)
                  + _frame(CONTINUATION, END_HEADERS, 1, block[100:])
                  + _frame(DATA, PADDED | END_STREAM, 1, bytes([3]) + body + b"\x00" * 3))
        frames = _read_frames(s, 1)
    dec = Decoder()
    headers = [dict(dec.decode(f[3])) for f in frames if f[0] == HEADERS and f[2] == 1]
    assert headers[0][":status"] == "200" and headers[-1]["grpc-status"] == "0"
    [data] = [f[3] for f in frames if f[0] == DATA and f[2] == 1]
    resp = pb.ModelInferResponse.FromString(data[5:])
    np.testing.assert_array_equal(_output(resp), np.full((1, 4), 2.0, np.float32))

    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk  # our SETTINGS, a GOAWAY, then the close
        kinds = []
        while got:
            kinds.append(got[3])
            got = got[9 + int.from_bytes(got[:3], "big"):]
        assert kinds[-1] == GOAWAY, kinds
    np.testing.assert_array_equal(_output(_infer(channel, np.ones((1, 4), np.float32))), np.full((1, 4), 2.0))


def test_the_grpcio_front_end_serves_the_same_methods(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--grpc_frontend", "grpcio")
    with grpc.insecure_channel(server.grpc_target) as channel:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        resp, rpc = call.with_call(_infer_request(x), timeout=10)
        np.testing.assert_array_equal(_output(resp), x + 1)
        assert dict(rpc.trailing_metadata())["x-model-version"] == "1"
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/no.Such/Method")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="m"), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
