"""`hotserve optimize`, registered by cli.build_parser through add_commands (like the admin
client's commands), which hands over its flag helpers so the spellings and checks match
`serve`'s without this module importing hotserve.cli back. Heavy imports (onnx, onnxruntime.quantization,
torch) wait until the command runs."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None


def add_commands(sub, _flag: Callable[..., None], _non_negative: Callable[[type], Callable[[str], float]]) -> None:
    """Add `optimize` to the subcommands with the serve command's flag helpers: _flag(parser,
    name, **kw) adds --name and --na-me, _non_negative(int|float) parses a number >= 0."""
    from hotserve import envvars

    _count, _non_negative_float = _non_negative(int), _non_negative(float)

    p = sub.add_parser(
        "optimize", help="build compressed variants of a version, measure and gate them, publish the best",
        description="Build each asked variant of a published ONNX version (int8, fp16, structured pruning, graph "
                    "optimization), measure p50/p99 on this host with the server's thread settings, score it on "
                    "--eval, and print one table. A variant passes only if its metric drop is within "
                    "--max_metric_drop and its speedup is at least --min_speedup; --publish publishes the fastest "
                    "passing variant (exit 1 when none passes, nothing published).")
    _flag(p, "model_base_path", required=True, help="the model's base path (holds <version>/model.onnx)")
    _flag(p, "version", type=_count, default=None, help="the version to compress (default: the newest)")
    _flag(p, "eval", required=True, metavar="DATA.npz",
          help="evaluation data: one array per model input plus 'label' (or 'feedback': the learning store's examples)")
    _flag(p, "quantize", choices=["dynamic", "static"], default=None, help="int8 quantization variant")
    _flag(p, "calibration", default=None, metavar="DATA.npz",
          help="calibration inputs for --quantize static (default: the training half of --eval)")
    _flag(p, "prune", type=_ratio, default=None, metavar="R",
          help="structured pruning: remove this share of every prunable layer's hidden units (e.g. 0.3)")
    _flag(p, "finetune_epochs", type=_count, default=0, metavar="N",
          help="after --prune, fine-tune the weights N epochs on the training half of --eval (needs PyTorch)")
    _flag(p, "fp16", action="store_true", help="fp16 weights variant (inputs and outputs stay float32)")
    _flag(p, "optimize_graph", action="store_true", help="ORT offline graph optimization variant")
    _flag(p, "metric", choices=["accuracy", "auc", "logloss", "mse"], default="accuracy", help="default accuracy")
    _flag(p, "output", default=None, help="the output to score (default: the model's only output)")
    _flag(p, "max_metric_drop", type=_non_negative_float, default=0.01,
          help="accuracy gate: largest allowed metric drop vs the parent (default 0.01)")
    _flag(p, "min_speedup", type=float, default=1.1,
          help="speed gate: smallest allowed p50 speedup at --batch_size (default 1.1)")
    _flag(p, "batch_size", type=int, default=32, help="the larger batch measured besides batch 1 (default 32)")
    _flag(p, "runs", type=int, default=200, help="timed runs per model and batch size (default 200)")
    p.add_argument("--tensorflow_intra_op_parallelism", "--tensorflow-intra-op-parallelism", "--intra_op_parallelism",
                   "--intra-op-parallelism", dest="intra_op", type=_count, default=0, metavar="N",
                   help="threads per operator, as the server would use them (default 0: the runtime decides)")
    p.add_argument("--tensorflow_inter_op_parallelism", "--tensorflow-inter-op-parallelism", "--inter_op_parallelism",
                   "--inter-op-parallelism", dest="inter_op", type=_count, default=0, metavar="N",
                   help="threads across operators, as the server would use them (default 0)")
    _flag(p, "publish", action="store_true", help="publish the fastest variant that passes both gates")
    _flag(p, "canary", type=float, default=None, metavar="N",
          help="with --publish: serve the variant as a canary taking N%% of default traffic beside the version serving now")
    _flag(p, "url", default=None,
          help="a running server's REST address: --canary goes through its management API (default: write the "
               "routing intent into the repository's routing store)")
    _flag(p, "token", default=None, help=f"admin token for --url (default: ${envvars.ADMIN_TOKEN})")
    _flag(p, "model_name", default="default", help="the model's name on the server at --url (default 'default')")
    _flag(p, "feedback_store", default=None, metavar="URL",
          help="with --eval feedback: the learning store (redis://host:port/db, sqlite:///path, or the server's "
               "--learning_dir) whose recent labelled examples of --model_name are the eval data")
    _flag(p, "learning_dir", default=None, metavar="DIR", help="with --eval feedback: the server's --learning_dir")
    _flag(p, "feedback_examples", type=_count, default=5000, metavar="N",
          help="with --eval feedback: how many of the most recent labelled examples (default 5000)")
    _flag(p, "workdir", default=None, help="keep the built variants here (default: a temporary directory, removed)")
    p.set_defaults(func=_cmd_optimize)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from hotserve.compress.optimize import OptimizeError, Options, run
    from hotserve.compress.publishing import CanaryError
    from hotserve.admin_client import token_of

    opts = Options(
        model_base_path=args.model_base_path, eval=args.eval, version=args.version, quantize=args.quantize,
        calibration=args.calibration, prune=args.prune, finetune_epochs=args.finetune_epochs, fp16=args.fp16,
        optimize_graph=args.optimize_graph, metric=args.metric, output=args.output,
        max_metric_drop=args.max_metric_drop, min_speedup=args.min_speedup, batch_size=args.batch_size,
        runs=args.runs, intra_op=args.intra_op, inter_op=args.inter_op, publish=args.publish, canary=args.canary,
        url=args.url, token=token_of(args), model_name=args.model_name, workdir=args.workdir,
        feedback_store=args.feedback_store or args.learning_dir, feedback_examples=args.feedback_examples)
    say = lambda msg: print(msg, flush=True)
    try:
        result = run(opts, say)
    except OptimizeError as exc:
        print(f"hotserve optimize: {exc}", file=sys.stderr)
        return 2
    except CanaryError as exc:
        print(f"hotserve optimize: --canary: {exc}", file=sys.stderr)
        return 1
    refused = [r for r in result.variants if not r.passed]
    for r in refused:
        print(f"hotserve optimize: {r.name} {r.verdict}", file=sys.stderr)
    if not any(r.passed for r in result.variants):
        print("hotserve optimize: no variant passed the gates" + ("; nothing published" if opts.publish else ""),
              file=sys.stderr)
        return 1
    p = result.published
    if p is not None:
        print(f"published {p.version} at {p.path}")
        if p.canary:
            print(f"version {p.version} is the canary at {p.canary['weight']:g}% beside stable version "
                  f"{p.canary['stable']} (via {p.canary['via']})")
    return 0
