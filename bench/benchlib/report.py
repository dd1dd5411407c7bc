"""Both tables, the servers' legend and issue 10's targets as aligned plain text (stdout),
Markdown and JSON (bench/results/latest.*)."""

from __future__ import annotations

import json
import math
import os

from benchlib.lineup import PEERS, RATIO_HEADERS, describe, label

MATRIX_COLUMNS = [
    # header, key, format, align
    ("server", "server", None, "<"),
    ("API", "api_label", None, "<"),
    ("batch", "batch", "{:d}", ">"),
    ("conc", "concurrency", "{:d}", ">"),
    ("req/s", "rps", "{:,.0f}", ">"),
    ("spread", "rps_spread_pct", "{:.0f}%", ">"),
    ("rows/s", "rows_s", "{:,.0f}", ">"),
    ("p50 ms", "p50_ms", "{:.2f}", ">"),
    ("p99 ms", "p99_ms", "{:.2f}", ">"),
    ("errors", "errors", "{:d}", ">"),
    ("RSS MiB", "rss_mib", "{:.0f}", ">"),
    ("srv CPU%", "server_cpu_pct", "{:.0f}", ">"),
    ("cli CPU%", "client_cpu_pct", "{:.0f}", ">"),
]


def matrix_columns(cells: list[dict]) -> list[tuple]:
    """The fixed columns, then one ratio column per peer present in the run."""
    present = {c["server"] for c in cells}
    return MATRIX_COLUMNS + [(RATIO_HEADERS[p], f"ratio_{p}", "{:.2f}x", ">") for p in PEERS if p in present]


def matrix_notes(meta: dict) -> list[str]:
    rounds = meta.get("rounds", 1)
    return [
        (f"Every figure is the median over {rounds} alternating rounds (the whole matrix once per round, the server order "
         f"rotated each round), each measure taken on its own; spread = (highest - lowest req/s) / median over the rounds; "
         f"errors are summed over the rounds." if rounds > 1 else
         "One round: every figure is from one measured run per cell (spread needs --rounds 2 or more)."),
        "req/s: 2xx answers per second of the measured run (after a separate warm-up run); rows/s = req/s x batch.",
        "p50/p99: latency percentiles of the measured run (wrk's histogram for REST; h2load's per-request log for gRPC).",
        "errors: non-2xx + socket errors (connect/read/write/timeout); for gRPC also calls whose answer carried no message (grpc-status != 0).",
        "RSS MiB: peak over samples every 0.2 s of the sum of VmRSS over the server's process tree (pages shared between processes count in each).",
        "srv CPU%: CPU time of the server's processes / wall time (200% = both cores); cli CPU%: the load tool's CPU time / wall time (100% = its core saturated: the figure is then client-bound).",
        "vs <peer>: the row's req/s over that peer's req/s at the same batch and concurrency, against the peer's row with the same API "
        "when it has one (KServe: V1 = REST TFS JSON, V2 JSON, V2 binary, gRPC V2), else the peer's JSON API (lean and naive: REST TFS JSON; "
        "MLServer: REST V2 JSON). hotserve rows get every peer; peer rows only the lean app, the reference of issue 10's targets.",
        "REST: wrk (one thread, pinned to the client core). gRPC: h2load, -c N connections with one stream each (-m 1), one thread pinned to the client core; C tools, so the client is not Python-bound.",
    ]


def _fmt(value, fmt) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if fmt is None:
        return str(value)
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def matrix_rows(cells: list[dict], meta: dict) -> list[list[str]]:
    rows = []
    for c in cells:
        row = []
        for _h, key, fmt, _a in matrix_columns(cells):
            if key == "server":
                row.append(label(c["server"], meta))
            elif "failed" in c and key not in ("api_label", "batch", "concurrency"):
                row.append("FAILED" if key == "rps" else "")
            else:
                row.append(_fmt(c.get(key), fmt))
        rows.append(row)
    return rows


def text_table(headers: list[str] | None, rows: list[list[str]], aligns: list[str]) -> str:
    """Aligned columns; headers=None for a key/value table with no header line."""
    heads = headers or [""] * len(aligns)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths)).rstrip()

    out = [line(heads), "  ".join("-" * w for w in widths)] if headers else []
    out += [line(r) for r in rows]
    return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]], aligns: list[str]) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if a == ">" else "---" for a in aligns) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def swap_summary_rows(s: dict) -> list[list[str]]:
    f = lambda v, fmt="{:.2f}": _fmt(v, fmt)  # noqa: E731
    return [
        ["load", f"hotserve {s['api']}, batch {s['batch']}, concurrency {s['concurrency']}, {s['duration_s']:g} s; "
                 f"a new version every {s['interval_s']:g} s ({s['publishes']} publishes)"],
        ["requests / throughput", f"{s['requests']:,} / {s['rps']:,.0f} req/s"],
        ["failed requests", f"{s['failed']}" + ("" if s["failed"] == 0 else f"  {s['failed_detail']}")],
        ["steady p50 / p99", f"{f(s['steady_p50_ms'])} ms / {f(s['steady_p99_ms'])} ms  "
                             f"({s['steady_requests']:,} requests ending > {s['window_s']:g} s after any publish)"],
        [f"steady p99 per {s['window_s']:g} s window", f"median {f(s['steady_window_p99_median_ms'])} ms, worst {f(s['steady_window_p99_worst_ms'])} ms "
                                                      f"({s['steady_windows']} windows between publish windows)"],
        [f"p99 in the {s['window_s']:g} s after a publish", f"median {f(s['swap_window_p99_median_ms'])} ms, worst {f(s['swap_window_p99_worst_ms'])} ms "
                                                          f"({s['publishes']} publish windows)"],
        ["swap-window p99 / steady p99", f"median/median {f(s['ratio_median'])}x, worst/worst {f(s['ratio_worst'])}x"],
        ["publish -> served", f"median {f(s['publish_to_served_median_ms'], '{:.0f}')} ms, max {f(s['publish_to_served_max_ms'], '{:.0f}')} ms"],
        ["versions published / seen", f"{len(s['versions_published'])} / {len(s['versions_seen'])} (seen {s['versions_seen'][0] if s['versions_seen'] else '-'}..{s['versions_seen'][-1] if s['versions_seen'] else '-'}), went backwards {s['version_went_backwards']} times"],
        ["server RSS peak", f"{s['rss_peak_mib']:.0f} MiB (srv CPU {s['server_cpu_pct']:.0f}%, wrk CPU {s['client_cpu_pct']:.0f}%)"],
    ]


PER_VERSION_COLUMNS = [
    ("version", "version", "{:d}", ">"),
    ("published at s", "published_at_s", "{:.2f}", ">"),
    ("publish() ms", "publish_call_ms", "{:.0f}", ">"),
    ("publish->served ms", "publish_to_served_ms", "{:.0f}", ">"),
    ("window reqs", "window_requests", "{:,d}", ">"),
    ("window p50 ms", "window_p50_ms", "{:.2f}", ">"),
    ("window p99 ms", "window_p99_ms", "{:.2f}", ">"),
    ("window max ms", "window_max_ms", "{:.2f}", ">"),
]

SWAP_NOTES = [
    "Per-request start/end times, status and X-Model-Version are recorded by wrk itself (bench/wrk/swap.lua: "
    "request()/response() hooks, CLOCK_MONOTONIC via LuaJIT FFI, one wrk thread per connection); no side client.",
    "publish->served: from publish() returning to the end of the first response carrying that version in X-Model-Version "
    "(resolution: the gap between responses, well under 1 ms at these rates).",
    "a publish window is [publish() called, publish() returned + window); steady = every request ending outside all publish windows. "
    "Model files are generated before the load starts; publish() (copy, manifest, fsync, rename) runs in the bench process pinned to the client core.",
]


def render(results: dict) -> tuple[str, str]:
    """(plain text, markdown)."""
    meta = results["meta"]
    text, md = [], []
    title = f"hotserve bench — {meta['mode']} run, {meta['started']}"
    text += [title, "=" * len(title), _meta_line(meta), ""]
    md += [f"# {title}", "", _meta_line(meta), ""]
    if meta.get("incomplete"):
        text += [f"INCOMPLETE: {meta['incomplete']}", ""]
        md += [f"**INCOMPLETE:** {meta['incomplete']}", ""]
    cells = results.get("matrix")
    if cells:
        cols = matrix_columns(cells)
        headers, aligns = [c[0] for c in cols], [c[3] for c in cols]
        rows = matrix_rows(cells, meta)
        rounds = meta.get("rounds", 1)
        t1 = (f"Table 1: throughput and latency ({meta['duration_s']:g} s per cell after {meta['warmup_s']:g} s warm-up, "
              + (f"median of {rounds} alternating rounds)" if rounds > 1 else "one round)"))
        legend = server_legend(cells, meta)
        text += [t1, "", "Servers (every row's server, what it is):"]
        text += [f"  {lab}: {what}" for lab, what in legend] + [""]
        text += [text_table(headers, rows, aligns), ""]
        text += ["  " + n for n in matrix_notes(meta)]
        md += [f"## {t1}", "", "Servers:", ""] + [f"- **{lab}**: {what}" for lab, what in legend] + [""]
        md += [md_table(headers, rows, aligns), ""]
        md += ["- " + n for n in matrix_notes(meta)]
        for c in cells:
            where = f"{label(c['server'], meta)} {c['api_label']} batch {c['batch']} conc {c['concurrency']}"
            msgs = ([f"FAILED {where}: {c['failed'].splitlines()[0]}"] if "failed" in c else
                    [f"FAILED in some rounds, {where}: {m}" for m in c.get("failed_rounds", [])])
            text += ["  " + m for m in msgs]
            md += ["- " + m for m in msgs]
        text.append("")
        md.append("")
    s = results.get("swaps")
    if s:
        t2 = "Table 2: swaps under load"
        text += [t2, "", text_table(None, swap_summary_rows(s), ["<", "<"]), ""]
        md += [f"## {t2}", "", md_table(["measure", "value"], swap_summary_rows(s), ["<", "<"]), ""]
        headers = [c[0] for c in PER_VERSION_COLUMNS]
        aligns = [c[3] for c in PER_VERSION_COLUMNS]
        rows = [[_fmt(p.get(k), fmt) for _h, k, fmt, _a in PER_VERSION_COLUMNS] for p in s["per_publish"]]
        text += [text_table(headers, rows, aligns), ""]
        text += ["  " + n for n in SWAP_NOTES]
        md += [md_table(headers, rows, aligns), ""]
        md += ["- " + n for n in SWAP_NOTES]
    elif results.get("swaps_error"):
        text += [f"Table 2: swaps under load FAILED: {results['swaps_error']}"]
        md += ["## Table 2: swaps under load", "", f"FAILED: {results['swaps_error']}"]
    tg = results.get("targets")
    if tg:
        t3 = "Targets (issue 10): hotserve with default flags, ratios from this run"
        headers, aligns = ["target", "goal", "measured", "status", "detail"], ["<", "<", ">", "<", "<"]
        rows = [[t["target"], t["goal"], t["measured"], t["status"].upper() if t["status"] == "missed" else t["status"],
                 t["detail"]] for t in tg]
        summary = ", ".join(f"{sum(t['status'] == k for t in tg)} {k}" for k in ("met", "missed", "not measured"))
        text += ["", t3, "", text_table(headers, rows, aligns), "", f"  {summary}.",
                 "  Figures are table 1's cell medians and table 2's run; a target is met or missed on this run alone "
                 "(see the spread column for how much the rounds agreed)."]
        md += ["", f"## {t3}", "", md_table(headers, rows, aligns), "", f"{summary}."]
    return "\n".join(text).rstrip() + "\n", "\n".join(md).rstrip() + "\n"


def server_legend(cells: list[dict], meta: dict) -> list[tuple[str, str]]:
    """(label, what it is) for every server in table 1, in table order."""
    out = []
    for name in dict.fromkeys(c["server"] for c in cells):
        procs = max((c.get("server_processes", 0) for c in cells if c["server"] == name), default=0)
        out.append((label(name, meta), describe(name, meta, procs or None)))
    return out


def _meta_line(meta: dict) -> str:
    parts = [f"{meta['cpus']} cores", f"load avg at start {meta['loadavg_start']}", f"at end {meta.get('loadavg_end', '?')}",
             f"client on CPU {meta['client_cpus']}", f"servers on CPU {meta['server_cpus'] or 'any'}",
             f"hotserve {meta['hotserve_commit']}"]
    return "; ".join(parts)


def _jsonable(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write(results: dict, results_dir: str) -> tuple[str, str, str]:
    os.makedirs(results_dir, exist_ok=True)
    jpath, mpath = os.path.join(results_dir, "latest.json"), os.path.join(results_dir, "latest.md")
    # The figures first: they survive a rendering bug (`python bench/run.py --render latest.json`).
    with open(jpath, "w") as f:
        json.dump(_jsonable(results), f, indent=1)
        f.write("\n")
    text, md = render(results)
    with open(mpath, "w") as f:
        f.write(md)
    return text, jpath, mpath
