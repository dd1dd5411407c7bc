"""`hotserve learn` (the learner process) and `hotserve feedback` (post a JSONL file of labels)."""

from __future__ import annotations

import argparse
import json
import sys


def add_commands(sub, flag, non_negative) -> None:
    p = sub.add_parser("learn", help="continuous learning: train on feedback, publish better versions behind a gate",
                       description="Read labelled examples from the feedback store, train the model incrementally, and "
                                   "publish a new version when it is not worse than the serving one (docs/learning.md).")
    flag(p, "model_name", required=True, help="the model, as the server names it")
    flag(p, "model_base_path", required=True, help="the model's repository (where versions are published)")
    flag(p, "trainer", required=True, metavar="MODULE:CLASS",
         help="the trainer, e.g. hotserve.learning.torch_trainer:TorchTrainer (hotserve.learning.trainer.Trainer protocol)")
    flag(p, "trainer_option", action="append", default=[], metavar="KEY=VALUE",
         help="keyword argument for the trainer (repeatable), e.g. module=hotserve.learning.ctr:make lr=0.02")
    flag(p, "learning_dir", default=None, metavar="DIR", help="the server's --learning_dir (SQLite store)")
    flag(p, "feedback_store", default=None, metavar="URL", help="the server's --feedback_store (redis://... or sqlite://...)")
    flag(p, "every_examples", type=non_negative(int), default=256, metavar="N",
         help="train when this many new training examples wait (default 256)")
    flag(p, "every_seconds", type=non_negative(float), default=5.0, metavar="S",
         help="...or when this long passed since the last round and some wait (default 5; 0: by count only)")
    flag(p, "max_metric_drop", type=non_negative(float), default=0.0, metavar="D",
         help="publish only when the candidate's gate metric is at most this much worse than the serving version's "
              "on the holdout (default 0: not worse at all)")
    flag(p, "gate_metric", default=None, help="metric the gate compares (default: the trainer's, e.g. log_loss)")
    flag(p, "holdout_every", type=non_negative(int), default=10, metavar="N",
         help="every Nth example is held out for evaluation, never trained on (default 10)")
    flag(p, "holdout_size", type=non_negative(int), default=2000, metavar="N",
         help="the gate evaluates on the N most recent held-out examples (default 2000)")
    flag(p, "min_holdout", type=non_negative(int), default=50, metavar="N",
         help="no publish before N examples are held out, except the first version (default 50)")
    flag(p, "epochs", type=non_negative(int), default=1, help="passes over each round's new examples (default 1)")
    flag(p, "poll_seconds", type=non_negative(float), default=0.1, metavar="S",
         help="how often to look for new examples (default 0.1)")
    flag(p, "keep_versions", type=non_negative(int), default=20, metavar="N",
         help="keep the newest N versions the learner published and remove older ones it made (default 20; 0 keeps "
              "all); the serving version and versions published by others are never removed")
    flag(p, "publish", default="versions", choices=["versions", "deltas"],
         help="what a candidate that passes the gate becomes: a new version (default), or a parameter delta of the "
              "serving version (changed embedding rows and tensors; needs a trainer with delta(), e.g. TorchTrainer)")
    flag(p, "full_every", type=non_negative(int), default=20, metavar="N",
         help="with --publish deltas: publish a full version after N deltas (default 20; 0: never by count)")
    flag(p, "full_every_seconds", type=non_negative(float), default=0.0, metavar="S",
         help="with --publish deltas: ...or once S seconds passed since the last full version (default 0: never by time)")
    flag(p, "duration", type=non_negative(float), default=None, metavar="S", help="stop after S seconds (default: run until stopped)")
    flag(p, "max_rounds", type=non_negative(int), default=None, metavar="N", help="stop after N rounds")
    flag(p, "log_level", default="info", choices=["debug", "info", "warning", "error"])
    flag(p, "log_format", default="text", choices=["text", "json"])
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("feedback", help="post labels from a JSONL file to a running server",
                       description='Each line is {"request_id": ..., "label": ..., "weight": ...} (a label for a logged '
                                   'prediction) or {"inputs": {...}, "label": ...} (a new example). Posted in batches; '
                                   "a batch the server refuses stops the command with its reason.")
    p.add_argument("model")
    p.add_argument("file", help="JSONL file ('-' for standard input)")
    p.add_argument("--url", default="http://localhost:8501", help="the server's REST address (default http://localhost:8501)")
    flag(p, "batch_size", type=non_negative(int), default=1000, help="items per call (default 1000)")
    p.set_defaults(func=_cmd_feedback)


def _cmd_learn(args: argparse.Namespace) -> int:
    import signal

    from hotserve.learning.learner import Learner, LearnerOptions, subscribe_metrics_and_logs
    from hotserve.learning.stores import open_store
    from hotserve.learning.trainer import load_trainer
    from hotserve.observability.logs import setup_logging

    url = args.feedback_store or args.learning_dir
    if not url or (args.feedback_store and args.learning_dir):
        print("hotserve learn: give the server's store: --learning_dir DIR or --feedback_store URL (one of them)",
              file=sys.stderr)
        return 2
    options = {}
    for item in args.trainer_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"hotserve learn: --trainer_option {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        options[key] = value
    setup_logging(args.log_level, args.log_format, None)
    subscribe_metrics_and_logs()
    try:
        trainer = load_trainer(args.trainer, options)
        store = open_store(url)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        print(f"hotserve learn: {exc}", file=sys.stderr)
        return 2
    opts = LearnerOptions(
        every_examples=max(1, args.every_examples), every_seconds=args.every_seconds,
        max_metric_drop=args.max_metric_drop, gate_metric=args.gate_metric, holdout_every=args.holdout_every,
        holdout_size=max(1, args.holdout_size), min_holdout=args.min_holdout, epochs=max(1, args.epochs),
        poll_seconds=max(0.01, args.poll_seconds), trainer_spec=args.trainer,
        keep_versions=args.keep_versions, publish=args.publish, full_every=args.full_every,
        full_every_seconds=args.full_every_seconds)
    learner = Learner(args.model_name, args.model_base_path, trainer, store, opts)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: learner.stop())
    print(f"hotserve: learner for model {args.model_name} running (store {store.url})", flush=True)
    try:
        learner.run(max_rounds=args.max_rounds, duration=args.duration)
    finally:
        store.close()
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from hotserve.admin_client import call

    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    accepted, unknown, sent = 0, [], 0
    batch: dict[str, list] = {"feedback": [], "examples": []}

    def post() -> None:
        nonlocal accepted, sent
        body = {k: v for k, v in batch.items() if v}
        if not body:
            return
        doc = call(args.url, None, "POST", f"/v1/models/{args.model}:feedback", body)
        accepted += doc["accepted"]
        unknown.extend(doc["unknown_request_ids"])
        sent += sum(len(v) for v in body.values())
        batch["feedback"], batch["examples"] = [], []

    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                print(f"hotserve feedback: {args.file}:{n}: not JSON: {exc}", file=sys.stderr)
                return 2
            if not isinstance(item, dict):
                print(f"hotserve feedback: {args.file}:{n}: expected a JSON object", file=sys.stderr)
                return 2
            batch["examples" if "inputs" in item else "feedback"].append(item)
            if len(batch["feedback"]) + len(batch["examples"]) >= max(1, args.batch_size):
                post()
        post()
    print(f"accepted {accepted} of {sent}; {len(unknown)} unknown request id(s)"
          + (f": {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}" if unknown else ""))
    return 0
