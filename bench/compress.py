"""Compression at publish time: the issue's targets, measured in one run on this host.

    .venv/bin/python bench/compress.py            # about 3-4 minutes on 2 idle cores
    .venv/bin/python bench/compress.py --quick    # smoke run: fewer timed runs, shorter training

Every model is trained here on real data (scikit-learn's bundled digits; a generated sequence
task for the encoder), published into a temporary repository, and compressed with the same
code path as `hotserve optimize` (hotserve.compress.optimize.run): variants are measured
in-process, interleaved with their fp32 parent, with one intra-op thread. Each table row's
speedup is against the parent measured in the same rounds. Prints the optimize tables, a
targets table, and an evidence row for unstructured magnitude sparsity (not a pass: see
docs/compression.md), and writes bench/results/compress.{json,md}.

Needs the `compress` extra and PyTorch (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import session  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _optimize(log, base: str, npz: str, work: str, **kw):
    from hotserve.compress.optimize import Options, run

    opts = Options(model_base_path=base, eval=npz, workdir=work, intra_op=1, inter_op=1, **kw)
    return run(opts, say=lambda _msg: None)  # the tables are printed by the caller


def _row(result, name: str):
    return next(r for r in result.variants if r.name == name)


def _sparsity_evidence(parent_dir: str, npz: str, work: str, runs: int) -> dict:
    """Zero the smallest 50% of every weight matrix: what does it buy ONNX Runtime?"""
    from onnx import numpy_helper

    from hotserve.compress import measure, model_io
    from hotserve.core.gates import accuracy
    from hotserve.runtimes.registry import RuntimeOptions, load_servable

    model = model_io.load(model_io.model_path(parent_dir))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2:
            w = w.copy()
            w[np.abs(w) < np.quantile(np.abs(w), 0.5)] = 0.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    sparse_dir = os.path.join(work, "sparse50")
    model_io.save(model, sparse_dir)
    data = accuracy.load_npz(npz)
    opts = RuntimeOptions(1, 1)
    s = {"parent": load_servable(parent_dir, opts), "sparse": load_servable(sparse_dir, opts)}
    try:
        lat = measure.measure(s, {"x": data["x"]}, [32], runs=runs)
        acc = {k: accuracy.score("accuracy", accuracy.predict_rows(v.predict, {"x": data["x"]}, "probabilities"), data["label"])
               for k, v in s.items()}
    finally:
        for v in s.values():
            v.unload()

    def sizes(d: str) -> tuple[int, int]:
        raw = open(model_io.model_path(d), "rb").read()
        return len(raw), len(gzip.compress(raw, 6))

    (p_raw, p_gz), (s_raw, s_gz) = sizes(parent_dir), sizes(sparse_dir)
    return {"parent_bytes": p_raw, "parent_gzip_bytes": p_gz, "sparse_bytes": s_raw, "sparse_gzip_bytes": s_gz,
            "p50_b32_ms": {"parent": lat["parent"][32].p50_ms, "sparse": lat["sparse"][32].p50_ms},
            "speedup": lat["parent"][32].p50_ms / lat["sparse"][32].p50_ms,
            "accuracy": acc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer timed runs and training steps")
    args = ap.parse_args()
    log = session.begin()
    import torch

    from hotserve.compress import examples as ex
    from hotserve.repository.publish import publish

    torch.set_num_threads(1)  # small models train faster on one thread, and leave the other core alone
    runs = 60 if args.quick else 300
    results: dict = {"meta": {"commit": session.git_commit(), "loadavg_start": session.loadavg(), "quick": args.quick,
                              "runs": runs, "threads": "intra-op 1, inter-op 1"}, "tables": {}}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hotserve-bench-compress-") as tmp, session.guarded(results, log) as state:
        # 1. digits MLP 64-512-512-10: 50% structured pruning + brief fine-tune; int8; fp16.
        log("training the digits MLP 64-512-512-10 ...")
        split = ex.digits()
        mlp = ex.train_mlp(split, hidden=(512, 512), epochs=15 if args.quick else 30)
        mlp_dir = os.path.join(tmp, "mlp-parent")
        ex.export_mlp(mlp, os.path.join(mlp_dir, "model.onnx"))
        npz = ex.save_npz(os.path.join(tmp, "digits.npz"), split.y_test, x=split.x_test)
        publish(mlp_dir, os.path.join(tmp, "repo", "mlp"), 1)
        log("optimizing it: --prune 0.5 --finetune_epochs 10 --quantize dynamic --fp16 --batch_size 32 ...")
        r_mlp = _optimize(log, os.path.join(tmp, "repo", "mlp"), npz, os.path.join(tmp, "w-mlp"), prune=0.5,
                          finetune_epochs=10, quantize="dynamic", fp16=True, batch_size=32, runs=runs)
        log(r_mlp.table)
        results["tables"]["digits_mlp"] = r_mlp.table

        log("the same MLP pruned 90% without fine-tuning (past the accuracy limit) ...")
        r_bad = _optimize(log, os.path.join(tmp, "repo", "mlp"), npz, os.path.join(tmp, "w-bad"), prune=0.9,
                          batch_size=32, runs=runs)
        log(r_bad.table)
        results["tables"]["digits_mlp_pruned_90"] = r_bad.table

        # 2. a tiny MLP 64-16-10: int8 has nothing to win.
        log("training a tiny digits MLP 64-16-10 ...")
        tiny = ex.train_mlp(split, hidden=(16,), epochs=15 if args.quick else 30)
        tiny_dir = os.path.join(tmp, "tiny-parent")
        ex.export_mlp(tiny, os.path.join(tiny_dir, "model.onnx"))
        publish(tiny_dir, os.path.join(tmp, "repo", "tiny"), 1)
        r_tiny = _optimize(log, os.path.join(tmp, "repo", "tiny"), npz, os.path.join(tmp, "w-tiny"), quantize="dynamic",
                           batch_size=32, runs=runs)
        log(r_tiny.table)
        results["tables"]["tiny_mlp"] = r_tiny.table

        # 3. transformer-style encoder: d_model 256, 4 heads, FFN 1024, 2 blocks, 64 tokens.
        log("training the encoder (d_model 256, 4 heads, FFN 1024, 2 blocks, 64 tokens) ...")
        length = 64
        tokens, labels = ex.sequences(1600 if args.quick else 3000, length)
        n_train = len(labels) - 600
        enc = ex.make_encoder(length=length, d_model=256, heads=4, ff=1024, layers=2)
        ex.train_encoder(enc, tokens[:n_train], labels[:n_train], epochs=1 if args.quick else 2)
        enc_dir = os.path.join(tmp, "enc-parent")
        ex.export_encoder(enc, os.path.join(enc_dir, "model.onnx"), length)
        seq_npz = ex.save_npz(os.path.join(tmp, "seq.npz"), labels[n_train:], tokens=tokens[n_train:])
        publish(enc_dir, os.path.join(tmp, "repo", "enc"), 1)
        log("optimizing it: --quantize dynamic --fp16 --prune 0.5 --batch_size 8 ...")
        enc_runs = max(20, runs // 5)  # a batch-8 encoder run takes tens of milliseconds
        r_enc = _optimize(log, os.path.join(tmp, "repo", "enc"), seq_npz, os.path.join(tmp, "w-enc"),
                          quantize="dynamic", fp16=True, prune=0.5, batch_size=8, runs=enc_runs)
        log(r_enc.table)
        results["tables"]["encoder"] = r_enc.table
        r_enc_static = _optimize(log, os.path.join(tmp, "repo", "enc"), seq_npz, os.path.join(tmp, "w-enc-s"),
                                 quantize="static", batch_size=8, runs=enc_runs)
        log(r_enc_static.table)
        results["tables"]["encoder_static"] = r_enc_static.table

        # 4. unstructured magnitude sparsity, as evidence for leaving it out.
        sparse = _sparsity_evidence(mlp_dir, npz, tmp, runs)
        results["sparsity"] = sparse

        enc_int8 = _row(r_enc, "int8-dynamic")
        pruned = _row(r_mlp, "prune-0.5+finetune-10")
        par = r_mlp.parent
        targets = [
            ("encoder, dynamic int8, batch 8, 1 thread: p50 speedup", f"{enc_int8.speedup:.2f}x", ">= 1.5x",
             enc_int8.speedup >= 1.5),
            ("encoder, dynamic int8: accuracy drop", f"{-enc_int8.change:+.4f}", "<= 0.01", -enc_int8.change <= 0.01),
            ("digits MLP, 50% pruned + fine-tune: parameters", f"{par.params / pruned.params:.2f}x fewer", ">= 2x fewer",
             par.params / pruned.params >= 2),
            ("digits MLP, 50% pruned + fine-tune: p50 speedup at batch 32", f"{pruned.speedup:.2f}x", ">= 1.3x",
             pruned.speedup >= 1.3),
            ("digits MLP, 50% pruned + fine-tune: accuracy drop", f"{-pruned.change:+.4f}", "<= 0.01", -pruned.change <= 0.01),
        ]
        refusals = [
            ("tiny MLP 64-16-10, dynamic int8", _row(r_tiny, "int8-dynamic")),
            ("digits MLP 64-512-512-10, fp16", _row(r_mlp, "fp16")),
            ("encoder, fp16", _row(r_enc, "fp16")),
            ("digits MLP, 90% pruned, no fine-tune", _row(r_bad, "prune-0.9")),
        ]
        lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {'yes' if ok else 'NO'} |" for a, b, c, ok in targets]
        lines += ["", "| variant | speedup | change | verdict |", "|---|---|---|---|"]
        lines += [f"| {a} | {r.speedup:.2f}x | {r.change:+.4f} | {r.verdict} |" for a, r in refusals]
        lines += ["", "| unstructured 50% magnitude sparsity (digits MLP) | parent | sparse |", "|---|---|---|",
                  f"| model.onnx bytes | {sparse['parent_bytes']:,} | {sparse['sparse_bytes']:,} |",
                  f"| gzip -6 bytes | {sparse['parent_gzip_bytes']:,} | {sparse['sparse_gzip_bytes']:,} |",
                  f"| p50 batch 32 ms | {sparse['p50_b32_ms']['parent']:.3f} | {sparse['p50_b32_ms']['sparse']:.3f} "
                  f"({sparse['speedup']:.2f}x) |",
                  f"| accuracy | {sparse['accuracy']['parent']:.4f} | {sparse['accuracy']['sparse']:.4f} |"]
        summary = "\n".join(lines)
        results["targets"] = [{"target": a, "measured": b, "goal": c, "met": ok} for a, b, c, ok in targets]
        results["refusals"] = [{"variant": a, "speedup": r.speedup, "change": r.change, "verdict": r.verdict}
                               for a, r in refusals]
        log("\n" + summary)
    results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    title = (f"# bench/compress.py ({'quick smoke run' if args.quick else 'full run'}), commit "
             f"{results['meta']['commit']}, load average {results['meta']['loadavg_start']} -> "
             f"{results['meta'].get('loadavg_end', '?')}\n")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "compress.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(RESULTS, "compress.md"), "w") as f:
        f.write(title + "\n" + "\n\n".join(f"## {k}\n\n```\n{v}\n```" for k, v in results["tables"].items())
                + "\n\n## targets\n\n" + (summary if not state.failed else "(incomplete)") + "\n")
    return 1 if state.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
