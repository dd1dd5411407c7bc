"""OpenTelemetry tracing: with --otel_exporter_otlp_endpoint every model request is a span with
model, version and batch attributes, child of the caller's traceparent, exported over OTLP/HTTP
to a receiver this test runs (opentelemetry-proto decodes what the real exporter sent)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from conftest import affine_version, wait_for

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def by_model(self, model: str) -> list:
        with self.lock:
            return [s for s in self.spans if _attrs(s).get("hotserve.model") == model]


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value") else v.bool_value
    return out


def test_a_span_per_request_with_version_and_batch(repo, start_server, monkeypatch):
    import tritonclient.grpc as grpcclient

    base, build = repo
    affine_version(base, 3, build)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 100 ms instead of 5 s
    with Receiver() as receiver:
        server = start_server(base, "--otel_exporter_otlp_endpoint", receiver.url, "--enable_batching")
        with httpx.Client() as c:
            r = c.post(server.url + "/v1/models/m:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]},
                       headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
            assert r.status_code == 200
            assert c.post(server.url + "/v1/models/m/versions/9:predict", json={"instances": [[1.0] * 4]}).status_code == 404
        client = grpcclient.InferenceServerClient(server.grpc_target)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("m", [inp], headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        client.close()
        wait_for(lambda: len(receiver.by_model("m")) >= 3, 20, "3 spans at the receiver")
    spans = receiver.by_model("m")
    ok = [s for s in spans if _attrs(s)["hotserve.status"] == "OK"]
    rest = next(s for s in ok if _attrs(s)["hotserve.entrypoint"] == "REST")
    a = _attrs(rest)
    assert rest.name == "predict m" and a["hotserve.version"] == 3 and a["hotserve.batch.size"] == 1
    assert a["hotserve.api"] == "predict" and a["hotserve.request_bytes"] > 0
    assert rest.trace_id.hex() == TRACE_ID and rest.parent_span_id.hex() == PARENT_ID
    grpc_span = next(s for s in ok if _attrs(s)["hotserve.entrypoint"] == "GRPC")
    assert grpc_span.trace_id.hex() == TRACE_ID and _attrs(grpc_span)["hotserve.version"] == 3
    missing = next(s for s in spans if _attrs(s)["hotserve.status"] == "NOT_FOUND")
    assert "hotserve.version" not in _attrs(missing) and missing.status.code == 2  # STATUS_CODE_ERROR
    assert "tracing on" in server.log()


def test_tracing_off_imports_nothing(repo, start_server):
    """Without an endpoint the server never imports OpenTelemetry (the frame tests one boolean)."""
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    assert "tracing on" not in server.log()
    import subprocess
    import sys

    code = ("import sys; from hotserve.server import serve; from hotserve.observability import tracing; "
            "assert not tracing.configure(None); print('opentelemetry' in ' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")})
    assert out.stdout.strip() == "False", out.stderr
