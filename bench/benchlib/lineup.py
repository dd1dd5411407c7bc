"""Who is in table 1: hotserve's shapes and the peers, their labels, and the one line per
server that says what it is (printed with every table, so no row is ambiguous)."""

from __future__ import annotations

# The reference of issue 10's targets, and every peer in the order the table shows them.
REFERENCE = "lean"
PEERS = ("lean", "fastapi-naive", "kserve", "mlserver")
PEER_ALIASES = {"fastapi": "fastapi-naive", "naive": "fastapi-naive"}
DEFAULT_PEERS = ",".join(PEERS)

# hotserve's second shape, a hand-tuned one for this 2-core machine: two worker processes,
# one onnxruntime thread each, small requests run inline. The defaults may pick some of this
# by themselves now; the row shows what these explicit flags give next to them.
TUNED_FLAGS = ["--num_workers", "2", "--tensorflow_intra_op_parallelism", "1", "--inference_threading", "auto"]

LABELS = {
    "hotserve": "hotserve default",
    "hotserve-2w": "hotserve 2w/1t/auto",
    "lean": "lean app",
    "fastapi-naive": "FastAPI naive",
    "kserve": "KServe",
    "mlserver": "MLServer",
}
RATIO_HEADERS = {"lean": "vs lean", "fastapi-naive": "vs naive", "kserve": "vs KServe", "mlserver": "vs MLServer"}


def is_hotserve(name: str) -> bool:
    return name.startswith("hotserve")


def label(name: str, meta: dict) -> str:
    if name == "hotserve-2w" and meta.get("hotserve_tuned_flags", TUNED_FLAGS) != TUNED_FLAGS:
        return "hotserve custom flags"
    return LABELS.get(name, name)


def describe(name: str, meta: dict, processes: int | None = None) -> str:
    """One line: what the server is, how it was started, and its versions."""
    v = meta.get("versions", {})
    procs = f"; {processes} process{'es' if processes != 1 else ''} seen" if processes else ""
    commit = meta.get("hotserve_commit", "?")
    if name == "hotserve":
        return (f"hotserve {commit}, default flags: `python -m hotserve serve --model_name mlp --model_base_path ...` "
                f"and nothing else, so the shape its defaults pick for this machine and model{procs}.")
    if name == "hotserve-2w":
        flags = " ".join(meta.get("hotserve_tuned_flags", TUNED_FLAGS))
        return f"hotserve {commit} with explicit flags `{flags}`{procs}."
    if is_hotserve(name):
        flags = meta.get("hotserve_src_flags") or ""
        how = f"explicit flags `{flags}`" if flags else "default flags"
        return f"hotserve with {how}, from another source tree ({meta.get('hotserve_src', {}).get(name, '?')}){procs}."
    if name == "lean":
        return (f"the lean app, issue 10's reference: bench/peers/lean_app.py under `uvicorn --workers "
                f"{meta.get('lean_workers', 2)} --loop uvloop --http httptools --no-access-log`; one `async def` endpoint: "
                f"raw body, orjson.loads, np.asarray(float32), session.run inline (intra_op 1, inter_op 1), "
                f"Response(orjson.dumps({{\"predictions\": y.tolist()}})). TF Serving REST JSON at hotserve's path "
                f"({v.get('fastapi peers', '?')}; onnxruntime {v.get('onnxruntime', '?')}){procs}.")
    if name == "fastapi-naive":
        return (f"pydantic model, thread pool, default ORT threads (bench/peers/fastapi_naive.py: "
                f"pydantic request model, plain `def` endpoint in FastAPI's thread pool, onnxruntime's default "
                f"session options, FastAPI's JSON response) under `uvicorn --workers {meta.get('fastapi_workers', 2)} --no-access-log`; "
                f"TF Serving REST JSON{procs}.")
    if name == "kserve":
        k = v.get("kserve", {})
        workers = meta.get("kserve_workers", 1)
        return (f"KServe's own Python model server: kserve {k.get('kserve', '?')} `kserve.ModelServer` with an ONNX "
                f"`kserve.Model` (bench/peers/kserve_onnx.py: session with intra_op 1, `predict` run inline by "
                f"kserve; V1 = TF Serving JSON at /v1/models/mlp:predict, V2 REST JSON and binary, V2 gRPC). kserve's "
                f"defaults: --workers {workers}{' (kserve default)' if workers == 1 else ' (kserve default is 1)'}, "
                f"uvicorn {k.get('uvicorn', '?')} with uvloop {k.get('uvloop', '?')} and httptools {k.get('httptools', '?')} "
                f"(event_loop auto), gRPC server on (grpcio {k.get('grpcio', '?')}, 4 threads), prometheus metrics, "
                f"timing middleware; changed: listens on 127.0.0.1, no log line per request "
                f"(access log, latency/timing lines, gRPC call log); onnxruntime {k.get('onnxruntime', '?')}{procs}.")
    if name == "mlserver":
        return (f"MLServer ({v.get('mlserver', '?')}) defaults (1 parallel inference worker, metrics on) except "
                f"`debug: false` (no access log), a custom MLModel running onnxruntime (default threads) with "
                f"NumpyCodec (bench/peers/mlserver/); V2 REST JSON{procs}.")
    return name
