"""`hotserve` command line. `serve` takes tensorflow_model_server's flag names (dashed spellings
too), so an existing deployment switches by changing the binary; `hotserve --model_name=...`
without a subcommand means `serve`, as `tensorflow_model_server --model_name=...` does."""

from __future__ import annotations

import argparse
import json
import logging
import sys



def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _non_negative(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _port(text: str) -> int:
    value = _non_negative(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"ports go up to 65535, got {text}")
    return value


def _flag(parser: argparse.ArgumentParser, name: str, **kw) -> None:
    """Add --name and its dashed spelling --na-me."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, dest=name, **kw)


def _serve_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "port", type=_port, default=8500, metavar="N",
          help="gRPC port (default 8500; 0 picks a free port and prints it): TF Serving's PredictionService and ModelService, KServe V2's GRPCInferenceService, grpc.health.v1")
    _flag(p, "grpc_frontend", choices=("native", "grpcio"), default="native",
          help="what serves gRPC on --port: native (default: HTTP/2 parsed on the event loop, a cheap model's call "
               "answered where it arrives; docs/performance.md) or grpcio (grpc.aio, gRPC's own C-core server)")
    _flag(p, "rest_api_port", type=_port, default=8501, metavar="N",
          help="REST API port (default 8501; 0 picks a free port and prints it)")
    _flag(p, "host", default="0.0.0.0", help="address to listen on (default 0.0.0.0, all interfaces, like TF Serving)")
    _flag(p, "num_workers", type=_non_negative(int), default=0, metavar="N",
          help="serve with N processes sharing the ports (SO_REUSEPORT), each a full server with its own copy of every "
               "model (default 0: one per usable core, up to 4, fewer when the copies would not fit in half the "
               "available memory; the choice is logged and shown in model metadata as serving_shape)")
    p.add_argument("--worker_id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--serving_shape", default=None, help=argparse.SUPPRESS)  # the supervisor's choice, for status
    _flag(p, "reuse_port", type=_bool, default=False, nargs="?", const=True, metavar="BOOL",
          help="set SO_REUSEPORT on the listening sockets so several hotserve processes can share the ports "
               "(--num_workers does this for you)")
    _flag(p, "model_name", default="default", help="name the model is served under (default 'default')")
    _flag(p, "model_base_path", help="directory holding numeric version subdirectories: <path>/<version>/model.onnx; or a URL: s3://bucket/prefix, "
               "gs://bucket/prefix, hdfs://namenode:port/path, webhdfs://host:port/path (docs/storage.md)")
    _flag(p, "model_config_file", help="several models from a file: TF Serving's model_config_list text proto, or the same "
          "as YAML (.yaml/.yml, which may also configure canaries); replaces --model_name/--model_base_path")
    _flag(p, "model_config_file_poll_wait_seconds", type=_non_negative(float), default=0.0, metavar="S",
          help="re-read --model_config_file this often and apply changes (default 0: only at start and on "
               "POST /v1/admin/config:reload); an invalid file is reported and the running config stays")
    _flag(p, "admin_token", default=None, metavar="TOKEN",
          help="enables the management API (labels, canary, pin, rollback, load/unload, config reload) for callers "
               "sending 'Authorization: Bearer TOKEN'. Prefer --admin_token_file or HOTSERVE_ADMIN_TOKEN: a token on "
               "the command line is readable by every local user in /proc/<pid>/cmdline. Without a token that API is off")
    _flag(p, "admin_token_file", default=None, metavar="PATH",
          help="read the admin token from this file (first line; keep it mode 0600): the way to pass it")
    _flag(p, "memory_budget", default=None, metavar="SIZE",
          help="memory the loaded versions may use together, e.g. 4GiB (default: no limit); each version counts "
               "its RSS growth at load, or its files' size before it loads")
    _flag(p, "memory_budget_policy", default="wait", choices=["wait", "unload_first", "refuse"],
          help="when a new version does not fit beside the old: wait for memory to free up (default), unload the old "
               "version first (resource-preserving: brief 503s), or refuse the new version")
    _flag(p, "reload_config_timeout_seconds", type=_non_negative(float), default=60.0, metavar="S",
          help="how long a config reload (gRPC HandleReloadConfigRequest, admin API) waits for its models (default 60)")
    _flag(p, "num_versions", type=int, default=1, metavar="N",
          help="version policy 'latest N': serve the N newest complete versions (default 1)")
    _flag(p, "file_system_poll_wait_seconds", type=_non_negative(float), default=1.0, metavar="S",
          help="how often to rescan the model base path (default 1; fractions allowed). Local directories are also watched with inotify, so new versions are seen at once.")
    _flag(p, "version_settle_seconds", type=_non_negative(float), default=1.0, metavar="S",
          help="a version directory copied in by hand (no manifest) is loaded only after its files were unchanged this long (default 1)")
    _flag(p, "rest_api_num_threads", type=_non_negative(int), default=0, metavar="N",
          help="threads running one model's requests at once, REST and gRPC (default 0: 4 x CPU cores, shared out among "
               "the workers); the same as --max_concurrent_requests, under TF Serving's name")
    _flag(p, "max_concurrent_requests", type=_non_negative(int), default=0, metavar="N",
          help="per model: requests running at once, each model in its own threads so a slow or hung model cannot "
               "starve others (default 0: 4 x CPU cores shared out among the workers; a model config's max_concurrent_requests wins)")
    _flag(p, "max_queued_requests", type=_non_negative(int), default=128, metavar="N",
          help="per model: requests waiting for a thread; beyond it, and when the queue would outlast the timeout, "
               "requests are refused at once with 429 / RESOURCE_EXHAUSTED and Retry-After (default 128)")
    _flag(p, "degraded_liveness_seconds", type=_non_negative(float), default=300.0, metavar="S",
          help="a model whose every thread is stuck in calls that timed out is degraded (refused at once, named by "
               "/readyz); degraded this long, /healthz fails so an orchestrator restarts the server (default 300)")
    _flag(p, "rest_api_max_body_bytes", type=_non_negative(int), default=64 << 20, metavar="BYTES",
          help="largest REST request body, also after Content-Encoding is undone; larger answers 413 (default 64 MiB). "
               "gRPC keeps its own message limit (2 GiB, as TF Serving)")
    _flag(p, "rest_api_max_header_bytes", type=_non_negative(int), default=64 << 10, metavar="BYTES",
          help="request line + headers, in total; larger answers 431 (default 64 KiB)")
    _flag(p, "rest_api_max_headers", type=_non_negative(int), default=100, metavar="N",
          help="request header lines; more answer 431 (default 100)")
    _flag(p, "rest_api_header_timeout_seconds", type=_non_negative(float), default=10.0, metavar="S",
          help="a request's headers must arrive within this long of its first byte, else 408 and close (default 10)")
    _flag(p, "rest_api_body_timeout_seconds", type=_non_negative(float), default=60.0, metavar="S",
          help="a request's body must arrive within this long of its headers, else 408 and close (default 60)")
    _flag(p, "rest_api_idle_timeout_seconds", type=_non_negative(float), default=30.0, metavar="S",
          help="close a keep-alive connection idle this long (default 30)")
    _flag(p, "max_request_tensor_bytes", type=_non_negative(int), default=256 << 20, metavar="BYTES",
          help="the tensors a request declares (shape x element size, checked before anything is allocated) may be "
               "this large, or twice the request's own size if that is more; larger answers 413 / RESOURCE_EXHAUSTED "
               "(default 256 MiB)")
    _flag(p, "rest_api_timeout_in_ms", type=_non_negative(int), default=30000, metavar="MS",
          help="a REST request that takes longer answers 504 (default 30000)")
    _flag(p, "num_load_threads", type=_non_negative(int), default=1, metavar="N",
          help="threads loading versions in the background (default 1; loads never run on the request path)")
    _flag(p, "num_unload_threads", type=_non_negative(int), default=2, metavar="N",
          help="threads draining and unloading retired versions (default 2)")
    p.add_argument("--tensorflow_intra_op_parallelism", "--tensorflow-intra-op-parallelism", "--intra_op_parallelism",
                   "--intra-op-parallelism", dest="intra_op", type=_non_negative(int), default=None, metavar="N",
                   help="threads one inference may use inside an operator (default: usable cores / workers, 1 when each "
                        "core has its worker; 0: the runtime decides)")
    p.add_argument("--tensorflow_inter_op_parallelism", "--tensorflow-inter-op-parallelism", "--inter_op_parallelism",
                   "--inter-op-parallelism", dest="inter_op", type=_non_negative(int), default=0, metavar="N",
                   help="threads one inference may use across operators (default 0: the runtime decides)")
    _flag(p, "enable_batching", type=_bool, default=False, nargs="?", const=True, metavar="BOOL",
          help="merge concurrent requests into batches (TF Serving's flag); per model in a YAML config with 'batching:'")
    _flag(p, "batching_parameters_file", default=None, metavar="PATH",
          help="TF Serving's BatchingParameters text proto: max_batch_size, batch_timeout_micros, max_enqueued_batches, "
               "num_batch_threads, allowed_batch_sizes, pad_variable_length_inputs (implies --enable_batching)")
    _flag(p, "inference_threading", default="auto", choices=["pool", "auto"],
          help="auto (default): a small request (up to 32 KiB of JSON, or 128 KiB of binary tensors) to a model whose recent median inference is under "
               "--inline_inference_max_us runs on the event loop, with no thread hop (ONNX and TensorFlow models; Python "
               "models always run in their own threads, where a hang cannot stall the loop). pool: every inference runs "
               "in its model's threads")
    _flag(p, "inline_inference_max_us", type=_non_negative(float), default=300.0, metavar="US",
          help="with --inference_threading=auto, the median inference time under which a model runs inline (default 300)")
    _flag(p, "model_cache_dir", default=None, metavar="DIR",
          help="remote stores (s3://, gs://, hdfs://): versions are downloaded here, verified, and loaded from local "
               "disk (default: hotserve-cache-<uid> under the system temp dir)")
    _flag(p, "model_cache_keep_versions", type=_non_negative(int), default=2, metavar="N",
          help="unused versions per model the cache keeps besides those serving, for fast rollbacks (default 2)")
    _flag(p, "max_concurrent_downloads", type=_non_negative(int), default=2, metavar="N",
          help="versions downloaded from a remote store at once (default 2)")
    _flag(p, "load_jitter_seconds", type=_non_negative(float), default=0.0, metavar="S",
          help="wait a random 0..S seconds before downloading a new version, so a fleet does not hit the store at "
               "once (default 0; a few seconds for fleets)")
    _flag(p, "file_system_watch", type=_bool, default=True, metavar="BOOL",
          help="watch local model directories with inotify (default true); false leaves only polling")
    _flag(p, "learning_dir", default=None, metavar="DIR",
          help="turns on continuous learning with the embedded feedback store: DIR/feedback.sqlite (SQLite, WAL) "
               "holds logged predictions and labelled examples; enables POST /v1/models/<m>:feedback and "
               "GET /v1/models/<m>/learning (docs/learning.md)")
    _flag(p, "feedback_store", default=None, metavar="URL",
          help="a shared feedback store instead of --learning_dir: redis://host:port/db (Redis Streams, for several "
               "servers and one learner) or sqlite:///path")
    _flag(p, "feedback_retention", default="7d,1000000", metavar="AGE,COUNT",
          help="keep labelled examples this long and at most this many per model (default 7d,1000000; 'none' keeps all)")
    _flag(p, "feedback_label_window", default="1h", metavar="DURATION",
          help="how late a label may come: predictions are kept this long for feedback to join (default 1h); a "
               "label for an older prediction is answered as an unknown request id")
    _flag(p, "prediction_log_sampling_rate", type=_non_negative(float), default=0.0, metavar="R",
          help="with --model_name: share of predict requests written to the prediction log (0 to 1; default 0, off). "
               "In a config file, per model: logging_config { sampling_config { sampling_rate: R } }")
    _flag(p, "parameter_guard_margin", type=_non_negative(float), default=0.0, metavar="M",
          help="with a feedback store: revert a parameter delta whose metric on the labelled examples that arrive after "
               "it is worse than its parent revision's by more than M (log loss or MSE; default 0: no guard; "
               "docs/parameters.md)")
    _flag(p, "parameter_guard_examples", type=_non_negative(int), default=200, metavar="N",
          help="the delta guard decides once N labelled examples arrived after the delta (default 200)")
    _flag(p, "prediction_log_queue_size", type=_non_negative(int), default=10000, metavar="N",
          help="records the prediction log may hold before its writer catches up; past that they are dropped and "
               "counted, never the request (default 10000)")
    _flag(p, "otel_exporter_otlp_endpoint", default=None, metavar="URL",
          help="trace every model request with OpenTelemetry and export the spans over OTLP/HTTP to URL "
               "(e.g. http://collector:4318); the standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT variables also turn it "
               "on. Needs the otel extra: pip install 'hotserve[otel]'")
    _flag(p, "fleet", default=None, metavar="zk://HOST:PORT/PATH",
          help="join a fleet coordinated through ZooKeeper (the `fleet` extra): register this replica, keep routing "
               "intent (labels, pins, canary, rollbacks) fleet-wide, serve the fleet's version; new versions are "
               "prepared and served once `hotserve rollout` flips the fleet (docs/fleet.md)")
    _flag(p, "fleet_auto_rollout", type=_bool, default=False, nargs="?", const=True, metavar="BOOL",
          help="with --fleet: roll out each new complete version by itself (two phases all the same)")
    _flag(p, "fleet_replica_id", default=None, metavar="ID",
          help="with --fleet: this replica's name in the fleet (default: hostname-restport)")
    _flag(p, "drain_seconds", type=_non_negative(float), default=0.0, metavar="S",
          help="on SIGTERM: fail readiness at once and keep serving this long so balancers stop sending, then stop "
               "accepting, finish in-flight requests and exit 0 (default 0)")
    _flag(p, "log_level", default="info", choices=["debug", "info", "warning", "error"], help="default info")
    _flag(p, "log_format", default="text", choices=["text", "json"], help="text, or one JSON object per line")


def shape_json(shape) -> str:
    return json.dumps(shape.doc())


def _admin_token(args: argparse.Namespace) -> str | None:
    """--admin_token_file, else --admin_token (which warns), else HOTSERVE_ADMIN_TOKEN."""
    import os

    from hotserve import envvars

    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"{args.admin_token_file} is empty; expected the token on its first line")
        return token
    if args.admin_token:
        logging.getLogger("hotserve.server").warning(
            "--admin_token on the command line is readable by every local user (/proc/<pid>/cmdline, ps); "
            "pass it with --admin_token_file or %s instead", envvars.ADMIN_TOKEN)
        return args.admin_token
    return os.environ.get(envvars.ADMIN_TOKEN) or None


def _cmd_serve(args: argparse.Namespace) -> int:
    # Only light modules before the --num_workers supervisor is started: it imports nothing of
    # the serving stack (numpy, onnxruntime, grpc), so it stays small beside its workers.
    from hotserve.core.config import ConfigError, ModelConfig, load_config_file
    from hotserve.core.memory import parse_size
    from hotserve.core.policy import Latest
    from hotserve.observability.logs import setup_logging

    if args.model_config_file:
        if args.model_base_path:
            print("hotserve serve: give either --model_config_file or --model_base_path, not both", file=sys.stderr)
            return 2
        try:
            models = load_config_file(args.model_config_file)
        except ConfigError as exc:
            print(f"hotserve serve: {args.model_config_file}: {exc}", file=sys.stderr)
            return 2
    elif not args.model_base_path:
        print("hotserve serve: --model_base_path is required (the directory holding <version>/model.onnx), "
              "or --model_config_file for several models", file=sys.stderr)
        return 2
    else:
        if args.num_versions < 1:
            print(f"hotserve serve: --num_versions must be >= 1, got {args.num_versions}", file=sys.stderr)
            return 2
        if args.prediction_log_sampling_rate > 1:
            print(f"hotserve serve: --prediction_log_sampling_rate is a share from 0 to 1, got "
                  f"{args.prediction_log_sampling_rate}", file=sys.stderr)
            return 2
        models = [ModelConfig(args.model_name, args.model_base_path, Latest(args.num_versions),
                              logging_sampling_rate=args.prediction_log_sampling_rate)]
    try:
        budget = parse_size(args.memory_budget) if args.memory_budget else None
    except ValueError as exc:
        print(f"hotserve serve: --memory_budget: {exc}", file=sys.stderr)
        return 2
    from hotserve.batching.parameters import BatchingConfigError, BatchingParameters, load_batching_parameters

    batching = None
    try:
        if args.batching_parameters_file:
            batching = load_batching_parameters(args.batching_parameters_file)
        elif args.enable_batching:
            batching = BatchingParameters()
    except BatchingConfigError as exc:
        print(f"hotserve serve: --batching_parameters_file: {exc}", file=sys.stderr)
        return 2
    feedback_store = args.feedback_store or args.learning_dir
    if args.feedback_store and args.learning_dir:
        print("hotserve serve: give either --learning_dir or --feedback_store, not both", file=sys.stderr)
        return 2
    retention = None
    if feedback_store:  # learning's modules (numpy) only when learning is on
        from hotserve.learning.store import parse_retention

        try:
            retention = parse_retention(args.feedback_retention, args.feedback_label_window)
        except ValueError as exc:
            print(f"hotserve serve: --feedback_retention/--feedback_label_window: {exc}", file=sys.stderr)
            return 2
    setup_logging(args.log_level, args.log_format, args.worker_id)
    try:
        token = _admin_token(args)
    except (OSError, ValueError) as exc:
        print(f"hotserve serve: --admin_token_file: {exc}", file=sys.stderr)
        return 2
    from hotserve.server.shape import choose

    shape = choose(models, args.num_workers, args.intra_op, args.inter_op, args.inference_threading,
                   args.max_concurrent_requests or args.rest_api_num_threads)
    if args.fleet:
        from hotserve.cluster.zk import FleetAddress

        try:
            FleetAddress.parse(args.fleet)
        except ValueError as exc:
            print(f"hotserve serve: {exc}", file=sys.stderr)
            return 2
    elif args.fleet_auto_rollout:
        print("hotserve serve: --fleet_auto_rollout needs --fleet zk://host:port/path", file=sys.stderr)
        return 2
    if args.worker_id is None:
        logging.getLogger("hotserve.server").info("serving shape: %s", shape.describe())
    if shape.workers > 1 and args.worker_id is None:
        from hotserve.server.workers import Supervisor

        # Workers get the shape's choices as flags (later flags win), so they do not choose again.
        resolved = ["--tensorflow_intra_op_parallelism", str(shape.intra_op_threads), "--inference_threading",
                    shape.inference_threading, "--max_concurrent_requests", str(shape.max_concurrent_requests),
                    "--serving_shape", shape_json(shape)]
        try:
            return Supervisor(args.argv + resolved, shape.workers, args.host, args.rest_api_port, args.port).run()
        except OSError as exc:
            print(f"hotserve serve: {exc}", file=sys.stderr)
            return 1
    from hotserve.core.manager import ManagerOptions
    from hotserve.runtimes.registry import RuntimeOptions
    from hotserve.server.admission import AdmissionOptions
    from hotserve.server.http import Limits
    from hotserve.server.serve import ServeOptions, run

    opts = ServeOptions(
        models=models,
        config_file=args.model_config_file,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
        admin_token=token,
        reload_timeout_seconds=args.reload_config_timeout_seconds,
        manager=ManagerOptions(
            runtime=RuntimeOptions(shape.intra_op_threads, shape.inter_op_threads),
            settle_seconds=args.version_settle_seconds,
            poll_wait_seconds=args.file_system_poll_wait_seconds,
            num_load_threads=max(1, args.num_load_threads),
            num_unload_threads=max(1, args.num_unload_threads),
            use_inotify=args.file_system_watch,
            memory_budget_bytes=budget,
            memory_policy=args.memory_budget_policy,
            batching=batching,
            canary_analysis=args.worker_id in (None, 0),
            inline_max_us=args.inline_inference_max_us if shape.inference_threading == "auto" else 0.0,
            model_cache_dir=args.model_cache_dir,
            model_cache_keep_unused=args.model_cache_keep_versions,
            max_concurrent_downloads=max(1, args.max_concurrent_downloads),
            load_jitter_seconds=args.load_jitter_seconds,
        ),
        host=args.host,
        rest_api_port=args.rest_api_port,
        grpc_port=args.port,
        grpc_frontend=args.grpc_frontend,
        rest_api_timeout_seconds=args.rest_api_timeout_in_ms / 1000.0,
        http_limits=Limits(args.rest_api_max_body_bytes, args.rest_api_max_header_bytes, args.rest_api_max_headers,
                           args.rest_api_header_timeout_seconds, args.rest_api_body_timeout_seconds,
                           args.rest_api_idle_timeout_seconds),
        max_request_tensor_bytes=args.max_request_tensor_bytes,
        admission=AdmissionOptions(shape.max_concurrent_requests, args.max_queued_requests, args.degraded_liveness_seconds),
        serving_shape=json.loads(args.serving_shape) if args.serving_shape else shape.doc(),
        reuse_port=args.reuse_port,
        worker_id=args.worker_id,
        feedback_store=feedback_store,
        feedback_retention=retention,
        prediction_log_queue=max(1, args.prediction_log_queue_size),
        parameter_guard=(args.parameter_guard_margin, max(1, args.parameter_guard_examples))
        if args.parameter_guard_margin > 0 else None,
        otel_endpoint=args.otel_exporter_otlp_endpoint,
        fleet=args.fleet,
        fleet_auto_rollout=args.fleet_auto_rollout,
        fleet_replica_id=args.fleet_replica_id,
        drain_seconds=args.drain_seconds,
    )
    from hotserve.repository.storage import StorageUnavailable

    try:
        return run(opts)
    except StorageUnavailable as exc:  # --fleet: ZooKeeper not reachable at start
        print(f"hotserve serve: {exc}; a fleet replica must learn the fleet's versions before it serves", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"hotserve serve: {exc}", file=sys.stderr)
        return 1


def _cmd_publish(args: argparse.Namespace) -> int:
    from hotserve.repository.publish import PublishError, publish

    from hotserve.repository.storage import StorageUnavailable

    try:
        version, path = publish(args.src, args.model_base_path, args.version)
    except (PublishError, OSError, StorageUnavailable, ValueError) as exc:
        print(f"hotserve publish: {exc}", file=sys.stderr)
        return 1
    print(f"published version {version} at {path}")
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    import time

    from hotserve.errors import LoadError
    from hotserve.repository import manifest
    from hotserve.repository.scanner import VersionScanner
    from hotserve.repository.storage import StorageUnavailable, normalize_base_path, storage_for

    base = normalize_base_path(args.model_base_path)
    try:
        storage = storage_for(base)
    except ValueError as exc:
        print(f"hotserve versions: {exc}", file=sys.stderr)
        return 2
    scanner = VersionScanner(storage, base, args.settle_seconds)
    try:
        scanner.scan()
        if args.settle_seconds:
            time.sleep(args.settle_seconds)
        result = scanner.scan()
    except StorageUnavailable as exc:
        print(f"hotserve versions: {exc}", file=sys.stderr)
        return 1
    rows = []
    for v in sorted(set(result.complete) | set(result.pending)):
        info = result.complete.get(v)
        if info is None:
            rows.append((v, "no", result.pending[v], "-"))
            continue
        how = "published (manifest)" if info.published else f"hand-copied, unchanged for {args.settle_seconds:g}s"
        if args.verify and info.published:
            try:
                manifest.verify(info.path, storage)
                how += ", sha256 verified"
            except LoadError as exc:
                rows.append((v, "CORRUPT", str(exc), f"{info.size_bytes}"))
                continue
        rows.append((v, "yes", how, f"{info.size_bytes}"))
    if not rows:
        print(f"no version directories in {base}")
        return 0
    print(f"{'version':>8}  {'complete':8}  {'bytes':>12}  detail")
    for v, ok, detail, size in rows:
        print(f"{v:>8}  {ok:8}  {size:>12}  {detail}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.learning:
        try:
            from hotserve.learning.demo import run
        except ImportError as exc:
            print(f"hotserve demo --learning: {exc}", file=sys.stderr)
            return 2
        try:
            import torch  # noqa: F401
        except ImportError:
            print("hotserve demo --learning trains a PyTorch model: pip install torch==2.13.0 (the CPU wheel)",
                  file=sys.stderr)
            return 2
        kwargs = {} if args.duration is None else {"duration": args.duration}  # run()'s own default otherwise
        summary = run(**kwargs, png=args.png, workdir=args.workdir)
        return 0 if summary["failures"] == 0 else 1
    from hotserve.demo import run_demo

    if args.duration is None:
        args.duration = 20.0
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotserve",
        description="A model server that swaps in new model versions while serving (TF Serving compatible).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve models over REST (tensorflow_model_server flags)",
                           description="Serve a model from a versioned repository and hot-swap new versions as they appear.")
    _serve_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    pub = sub.add_parser("publish", help="publish a model file or directory as a new version, atomically",
                         description="Copy SRC into a staging directory beside the target, write a manifest of sizes and sha256 digests, fsync, and rename it into place as <model_base_path>/<version>. On object stores (s3://, gs://) the files are uploaded into place behind an in-progress marker (multipart for large files) and the manifest, written last, completes the version.")
    pub.add_argument("src", help="a model file (model.onnx, model.py) or a version directory")
    _flag(pub, "model_base_path", required=True, help="the model's base path")
    _flag(pub, "version", type=_non_negative(int), default=None, help="version number (default: newest + 1)")
    pub.set_defaults(func=_cmd_publish)

    ver = sub.add_parser("versions", help="list a base path's versions and whether each is complete")
    ver.add_argument("model_base_path")
    _flag(ver, "settle_seconds", type=_non_negative(float), default=1.0,
          help="watch hand-copied directories this long before calling them complete (default 1)")
    _flag(ver, "verify", action="store_true", help="also check every published file's sha256")
    ver.set_defaults(func=_cmd_versions)

    demo = sub.add_parser("demo", help="hot-update demo: serve, publish a new version every few seconds under load, print a table")
    _flag(demo, "duration", type=float, default=None, help="seconds of load (default 20; 150 with --learning, drift at a third)")
    _flag(demo, "publish_interval", type=float, default=2.0, help="seconds between publishes (default 2)")
    _flag(demo, "concurrency", type=int, default=8, help="concurrent client connections (default 8)")
    _flag(demo, "rest_api_port", type=_port, default=0, help="port for the demo server (default: a free one)")
    _flag(demo, "workdir", default=None, help="model repository to use (default: a temporary directory)")
    _flag(demo, "learning", action="store_true",
          help="the continuous-learning demo instead: a CTR model with drift, learning on vs off (needs torch; "
               "docs/learning.md)")
    _flag(demo, "png", default="learning_demo.png", help="with --learning: where to write the plot (default learning_demo.png)")
    demo.set_defaults(func=_cmd_demo)

    from hotserve.admin_client import add_commands
    from hotserve.cluster.cli import add_commands as add_fleet_commands

    add_commands(sub)
    from hotserve.compress.cli import add_commands as add_compress_commands
    from hotserve.learning.cli import add_commands as add_learning_commands

    add_learning_commands(sub, _flag, _non_negative)
    add_fleet_commands(sub)
    add_compress_commands(sub, _flag, _non_negative)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv[1:] if argv and argv[0] == "serve" else argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
