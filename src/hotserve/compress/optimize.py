"""`hotserve optimize`: build the asked variants of one published version, measure and score
each beside its parent, gate them, and publish the best one that passes.

Variants: one per asked pass (`--optimize_graph`, `--quantize dynamic|static`, `--fp16`,
`--prune R`), plus prune followed by quantization when both are asked. The evaluation data is
one .npz with an array per model input and `label`. When some of it is needed to train
(fine-tuning after pruning) or to calibrate (static int8 without `--calibration`), it is split
once with a fixed seed: half for that, the other half for scoring every row of the table, so
parent and variants are always scored on the same held-out rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hotserve.compress import gates, measure, model_io, report
from hotserve.core.gates import accuracy
from hotserve.errors import HotserveError
from hotserve.repository.scanner import list_version_numbers
from hotserve.repository.storage import normalize_base_path, storage_for
from hotserve.runtimes.base import DEFAULT_SIGNATURE
from hotserve.runtimes.registry import RuntimeOptions, load_servable

SPLIT_SEED = 0


class OptimizeError(Exception):
    """A mistake in what was asked (bad flag, unreadable data): exit 2 with this message."""


@dataclass
class Options:
    model_base_path: str
    eval: str
    version: int | None = None
    quantize: str | None = None  # dynamic | static
    calibration: str | None = None
    prune: float | None = None
    finetune_epochs: int = 0
    fp16: bool = False
    optimize_graph: bool = False
    metric: str = "accuracy"
    output: str | None = None
    max_metric_drop: float = 0.01
    min_speedup: float = 1.1
    batch_size: int = 32
    runs: int = 200
    intra_op: int = 0
    inter_op: int = 0
    publish: bool = False
    canary: float | None = None
    url: str | None = None
    token: str | None = None
    model_name: str = "default"
    feedback_store: str | None = None  # --eval feedback: the learning store's URL or directory
    feedback_examples: int = 5000
    workdir: str | None = None


@dataclass
class Row:
    name: str
    dir: str
    passes: list[dict] = field(default_factory=list)
    size: int | None = None
    params: int | None = None
    latency: dict = field(default_factory=dict)
    metric: float | None = None
    change: float | None = None
    speedup: float | None = None
    verdict: str = ""
    passed: bool = False
    error: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass
class Result:
    rows: list[Row]
    batches: list[int]
    published: object | None = None  # publishing.Published
    table: str = ""

    @property
    def parent(self) -> Row:
        return self.rows[0]

    @property
    def variants(self) -> list[Row]:
        return self.rows[1:]


# -- inputs --------------------------------------------------------------------------------------
def _resolve_version(base: str, version: int | None) -> tuple[str, int]:
    base = normalize_base_path(base)
    storage = storage_for(base)
    try:
        versions = list_version_numbers(storage, base)
    except Exception as exc:
        raise OptimizeError(f"cannot list {base}: {exc}") from exc
    if not versions:
        raise OptimizeError(f"{base} holds no version directories")
    if version is None:
        version = max(versions)
    elif version not in versions:
        raise OptimizeError(f"{base} has no version {version}; versions: {versions}")
    path = storage.local_dir(storage.join(base, str(version)))
    if not os.path.isfile(model_io.model_path(path)):
        raise OptimizeError(f"version {version} holds no model.onnx; the compression passes work on ONNX models")
    return path, version


def _load_eval(path: str, opts: "Options | None" = None) -> dict[str, np.ndarray]:
    if path == "feedback":
        return _feedback_eval(opts)
    try:
        return accuracy.load_npz(path)
    except HotserveError as exc:
        raise OptimizeError(f"--eval: {exc}") from None


def _feedback_eval(opts: "Options | None") -> dict[str, np.ndarray]:
    """The learning store's most recent labelled examples of the model, as eval data: one
    array per input (rows stacked) plus 'label'."""
    if opts is None or not opts.feedback_store:
        raise OptimizeError("--eval feedback reads the learning store: give --feedback_store (redis://...) or "
                            "--learning_dir (the server's SQLite store) and --model_name")
    from hotserve.learning.stores import open_store

    try:
        store = open_store(opts.feedback_store)
    except Exception as exc:
        raise OptimizeError(f"--eval feedback: cannot open the feedback store {opts.feedback_store}: {exc}") from exc
    try:
        examples = store.recent_examples(opts.model_name, opts.feedback_examples)
    finally:
        store.close()
    if len(examples) < 2:
        raise OptimizeError(f"--eval feedback: the store holds {len(examples)} labelled example(s) of model "
                            f"{opts.model_name!r}; at least 2 are needed (post feedback first)")
    from hotserve.learning.trainer import Batch

    names, label_keys = set(examples[0].inputs), list(examples[0].label)
    if len(label_keys) != 1 or any(set(e.inputs) != names or list(e.label) != label_keys for e in examples):
        raise OptimizeError("--eval feedback: the examples must all have the same inputs and exactly one label "
                            f"(the first has inputs {sorted(names)} and labels {label_keys})")
    try:
        batch = Batch.of(examples)
    except ValueError as exc:  # rows of different shapes cannot be stacked
        raise OptimizeError(f"--eval feedback: the examples' rows do not stack into one batch: {exc}") from None
    return {**batch.inputs, "label": batch.labels[label_keys[0]]}


def _split(inputs: dict, labels: np.ndarray) -> tuple[tuple[dict, np.ndarray], tuple[dict, np.ndarray]]:
    """(train, holdout) halves of the rows, shuffled with a fixed seed."""
    rows = labels.shape[0]
    order = np.random.default_rng(SPLIT_SEED).permutation(rows)
    a, b = order[: rows // 2], order[rows // 2:]
    return ({k: v[a] for k, v in inputs.items()}, labels[a]), ({k: v[b] for k, v in inputs.items()}, labels[b])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- building variants ---------------------------------------------------------------------------
@dataclass
class _Ctx:
    opts: Options
    output: str
    train: tuple[dict, np.ndarray] | None
    calibration: tuple[dict, str] | None  # (inputs, where they came from)


def _prune(ctx: _Ctx, src: str, dst: str) -> list[dict]:
    from hotserve.compress.passes import prune_onnx

    model, settings = prune_onnx.prune_dir(src, dst, ctx.opts.prune)
    passes = [{"pass": "prune", "settings": settings}]
    if ctx.opts.finetune_epochs:
        from hotserve.compress.finetune import finetune

        x, y = ctx.train
        model, ft = finetune(model, x, y, ctx.output, ctx.opts.metric, ctx.opts.finetune_epochs)
        passes.append({"pass": "finetune", "settings": ft | {"data": "training half of --eval"}})
    model_io.save(model, dst)
    return passes


def _quantize(ctx: _Ctx, src: str, dst: str) -> list[dict]:
    from hotserve.compress.passes import quantize

    if ctx.opts.quantize == "dynamic":
        return [{"pass": "quantize", "settings": quantize.dynamic(src, dst)}]
    inputs, source = ctx.calibration
    return [{"pass": "quantize", "settings": quantize.static(src, dst, inputs, source)}]


def _fp16(ctx: _Ctx, src: str, dst: str) -> list[dict]:
    from hotserve.compress.passes import fp16

    return [{"pass": "fp16", "settings": fp16.convert(src, dst)}]


def _graph(ctx: _Ctx, src: str, dst: str) -> list[dict]:
    from hotserve.compress.passes import graph_opt

    return [{"pass": "graph_optimization", "settings": graph_opt.optimize(src, dst)}]


def _plan(opts: Options) -> list[tuple[str, list[Callable]]]:
    """(variant name, steps) for what was asked."""
    plan: list[tuple[str, list[Callable]]] = []
    if opts.optimize_graph:
        plan.append(("ort-optimized", [_graph]))
    prune_name = None
    if opts.prune is not None:
        prune_name = f"prune-{opts.prune:g}" + (f"+finetune-{opts.finetune_epochs}" if opts.finetune_epochs else "")
        plan.append((prune_name, [_prune]))
    if opts.quantize:
        plan.append((f"int8-{opts.quantize}", [_quantize]))
        if prune_name:
            plan.append((f"{prune_name}+int8-{opts.quantize}", [_prune, _quantize]))
    if opts.fp16:
        plan.append(("fp16", [_fp16]))
    return plan


def _build(ctx: _Ctx, name: str, steps: list[Callable], parent_dir: str, work: str) -> Row:
    row = Row(name, os.path.join(work, name.replace("+", "_")))
    src = parent_dir
    try:
        for i, step in enumerate(steps):
            dst = row.dir if i == len(steps) - 1 else f"{row.dir}.step{i}"
            row.passes += step(ctx, src, dst)
            src = dst
        model = model_io.load(model_io.model_path(row.dir))
        row.params = model_io.parameter_count(model)
        row.size = model_io.size_bytes(row.dir)
    except Exception as exc:  # a pass that cannot handle this model: reported in its row
        row.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HotserveError) else str(exc)
        row.verdict = f"failed: {row.error}"
    return row


# -- the command ---------------------------------------------------------------------------------
def _validate(opts: Options) -> None:
    if opts.metric not in accuracy.METRICS:
        raise OptimizeError(f"--metric must be one of {', '.join(accuracy.METRICS)}, got {opts.metric!r}")
    if opts.quantize not in (None, "dynamic", "static"):
        raise OptimizeError(f"--quantize must be dynamic or static, got {opts.quantize!r}")
    if opts.prune is not None and not 0 < opts.prune < 1:
        raise OptimizeError(f"--prune is the share of hidden units to remove, between 0 and 1 (exclusive); got {opts.prune:g}")
    if opts.finetune_epochs and opts.prune is None:
        raise OptimizeError("--finetune_epochs fine-tunes after pruning; give --prune too")
    if opts.calibration and opts.quantize != "static":
        raise OptimizeError("--calibration is for --quantize static")
    if not (opts.optimize_graph or opts.prune is not None or opts.quantize or opts.fp16):
        raise OptimizeError("ask for at least one pass: --quantize dynamic|static, --prune R, --fp16 or --optimize_graph")
    if opts.canary is not None and not opts.publish:
        raise OptimizeError("--canary N makes the published variant a canary; give --publish too")
    if opts.canary is not None and not 0 < opts.canary <= 100:
        raise OptimizeError(f"--canary is a percentage of default traffic, above 0 and at most 100; got {opts.canary:g}")
    if opts.max_metric_drop < 0 or opts.min_speedup <= 0:
        raise OptimizeError("--max_metric_drop must be >= 0 and --min_speedup > 0")
    if opts.batch_size < 1 or opts.runs < 1:
        raise OptimizeError("--batch_size and --runs must be >= 1")


def run(opts: Options, say: Callable[[str], None] = print) -> Result:
    """Build, measure, score and gate every asked variant; publish the best passing one when
    asked. Raises OptimizeError for mistakes in what was asked."""
    _validate(opts)
    parent_dir, parent_version = _resolve_version(opts.model_base_path, opts.version)
    data = _load_eval(opts.eval, opts)
    source = (f"the most recent labelled examples of {opts.model_name!r} in {opts.feedback_store}"
              if opts.eval == "feedback" else opts.eval)
    if accuracy.LABEL in data:  # without it split_inputs below says what is missing
        say(f"eval data: {len(data[accuracy.LABEL])} rows from {source}")
    runtime = RuntimeOptions(opts.intra_op, opts.inter_op)
    try:
        parent = load_servable(parent_dir, runtime)
    except HotserveError as exc:
        raise OptimizeError(f"version {parent_version} does not load: {exc}") from None
    loaded = {"parent": parent}
    try:
        sig = parent.signatures[DEFAULT_SIGNATURE]
        try:
            inputs, labels = accuracy.split_inputs(data, sig, f"--eval {opts.eval}")
            output = accuracy.select_output(sig, opts.output)
        except HotserveError as exc:
            raise OptimizeError(str(exc)) from None
        need_train = bool(opts.finetune_epochs)
        need_calib = opts.quantize == "static" and not opts.calibration
        train = None
        holdout = (inputs, labels)
        if need_train or need_calib:
            train, holdout = _split(inputs, labels)
        calibration = None
        if opts.quantize == "static":
            if opts.calibration:
                try:
                    cal = accuracy.load_npz(opts.calibration)
                    cal_inputs = {n: cal[n] for n in sig.inputs} if all(n in cal for n in sig.inputs) else None
                except HotserveError as exc:
                    raise OptimizeError(f"--calibration: {exc}") from None
                if cal_inputs is None:
                    raise OptimizeError(f"--calibration {opts.calibration} needs one array per model input "
                                        f"({', '.join(sig.inputs)}); it holds {sorted(cal)}")
                cal_inputs = {n: a.astype(sig.inputs[n].dtype.numpy) for n, a in cal_inputs.items()}
                calibration = (cal_inputs, os.path.basename(opts.calibration))
            else:
                calibration = (train[0], "training half of --eval")
        ctx = _Ctx(opts, output, train, calibration)
        work = opts.workdir or tempfile.mkdtemp(prefix="hotserve-optimize-")
        os.makedirs(work, exist_ok=True)
        try:
            return _run(opts, ctx, parent_dir, parent_version, loaded, runtime, holdout, work, say)
        finally:
            if not opts.workdir:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        for s in loaded.values():
            s.unload()


def _run(opts: Options, ctx: _Ctx, parent_dir: str, parent_version: int, loaded: dict, runtime: RuntimeOptions,
         holdout: tuple[dict, np.ndarray], work: str, say: Callable[[str], None]) -> Result:
    x_eval, y_eval = holdout
    parent_model = model_io.load(model_io.model_path(parent_dir))
    prow = Row(f"parent (v{parent_version})", parent_dir, size=model_io.size_bytes(parent_dir),
               params=model_io.parameter_count(parent_model), verdict="parent")
    rows = [prow]
    for name, steps in _plan(opts):
        say(f"building {name} ...")
        row = _build(ctx, name, steps, parent_dir, work)
        rows.append(row)
        if row.error is None:
            try:
                loaded[name] = load_servable(row.dir, runtime)
            except HotserveError as exc:
                row.error = str(exc)
                row.verdict = f"failed: {row.error}"

    def score(servable) -> float:
        return accuracy.score(opts.metric, accuracy.predict_rows(servable.predict, x_eval, ctx.output), y_eval)

    try:
        prow.metric = score(loaded["parent"])
    except HotserveError as exc:
        raise OptimizeError(f"cannot score the parent on --eval: {exc}") from None
    batches = sorted({1, opts.batch_size})
    names = ["parent"] + [r.name for r in rows[1:] if r.error is None]
    say(f"measuring {len(names)} model(s) at batch {' and '.join(map(str, batches))} "
        f"(intra-op threads {opts.intra_op or 'auto'}, inter-op {opts.inter_op or 'auto'}) ...")
    lat = measure.measure({n: loaded[n] for n in names}, x_eval, batches, runs=opts.runs)
    prow.latency = lat["parent"]
    big = batches[-1]
    for row in rows[1:]:
        if row.error is not None:
            continue
        row.latency = lat[row.name]
        row.metric = score(loaded[row.name])
        row.change = row.metric - prow.metric
        row.speedup = prow.latency[big].p50_ms / row.latency[big].p50_ms
        v = gates.judge(opts.metric, prow.metric, row.metric, opts.max_metric_drop, row.speedup,
                        prow.latency[big].p50_ms, row.latency[big].p50_ms, big, opts.min_speedup)
        row.passed, row.reasons, row.verdict = v.passed, v.reasons, v.summary()
    text = report.table([dataclasses.asdict(r) | {"latency": r.latency} for r in rows], batches, opts.metric)
    result = Result(rows, batches, table=text)
    say(text)
    passing = [r for r in rows[1:] if r.passed]
    if opts.publish and passing:
        best = max(passing, key=lambda r: r.speedup)
        from hotserve.compress.publishing import publish_variant

        lineage = _lineage(opts, parent_dir, parent_version, prow, best, batches, len(y_eval))
        result.published = publish_variant(best.dir, opts.model_base_path, lineage, parent_version, opts.canary,
                                           opts.url, opts.token, opts.model_name)
    return result


def _lineage(opts: Options, parent_dir: str, parent_version: int, parent: Row, v: Row, batches: list[int],
             rows: int) -> dict:
    def lat(r: Row) -> dict:
        return {f"batch_{b}": r.latency[b].as_dict() for b in batches}

    return {
        "source": "hotserve optimize",
        "parent_version": parent_version,
        "parent_model_sha256": _sha256(model_io.model_path(parent_dir)),
        "variant": v.name,
        "passes": v.passes,
        "size_bytes": {"parent": parent.size, "variant": v.size},
        "parameters": {"parent": parent.params, "variant": v.params},
        "latency_ms": {"parent": lat(parent), "variant": lat(v)},
        "speedup": round(v.speedup, 4),
        "speedup_measured_at_batch": batches[-1],
        "metric": {"name": opts.metric, "parent": round(parent.metric, 6), "variant": round(v.metric, 6),
                   "change": round(v.change, 6), "eval": os.path.basename(opts.eval),
                   "eval_sha256": _sha256(opts.eval) if os.path.isfile(opts.eval) else None, "eval_rows": rows},
        "gates": {"max_metric_drop": opts.max_metric_drop, "min_speedup": opts.min_speedup},
        "measured_on": {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                        "intra_op_threads": opts.intra_op, "inter_op_threads": opts.inter_op},
        "created_unix": time.time(),
    }
