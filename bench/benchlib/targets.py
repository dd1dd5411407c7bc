"""Issue 10's targets, checked against one run's figures (cell medians over the rounds):
hotserve with default flags against the lean app, and against itself across protocols."""

from __future__ import annotations

from benchlib.lineup import REFERENCE

HOT = "hotserve"  # the default-flags shape: every target is about the defaults


def _cell(cells: list[dict], server: str, api: str, batch: int, conc: int) -> dict | None:
    for c in cells:
        if (c["server"], c["api"], c["batch"], c["concurrency"]) == (server, api, batch, conc) and "rps" in c:
            return c
    return None


def _row(name: str, goal: str, measured: str | None, met: bool | None, detail: str) -> dict:
    status = "not measured" if met is None else ("met" if met else "missed")
    return {"target": name, "goal": goal, "measured": measured or "-", "status": status, "detail": detail}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 'es' if noun.endswith('s') else 's'}"


def _need(what: str) -> str:
    return f"not in this run: needs {what}"


def evaluate(cells: list[dict], swaps: dict | None, meta: dict) -> list[dict]:
    out = []
    hot64, lean64 = _cell(cells, HOT, "tfs-json", 1, 64), _cell(cells, REFERENCE, "tfs-json", 1, 64)
    need64 = _need("hotserve and the lean app at batch 1, concurrency 64 (--batches 1 --concurrency 64)")
    name = "REST JSON batch 1, conc 64, default flags: req/s vs lean"
    if hot64 and lean64:
        r = hot64["rps"] / lean64["rps"]
        out.append(_row(name, ">= 1.50x", f"{r:.2f}x", r >= 1.5,
                        f"hotserve {hot64['rps']:,.0f} req/s, lean {lean64['rps']:,.0f} req/s"
                        + ("" if r >= 1.5 else f"; short by {1.5 / r:.2f}x ({1.5 * lean64['rps'] - hot64['rps']:,.0f} req/s)")))
        r99 = hot64["p99_ms"] / lean64["p99_ms"]
        out.append(_row("REST JSON batch 1, conc 64, default flags: p99 vs lean", "<= lean's p99 (<= 1.00x)",
                        f"{r99:.2f}x", r99 <= 1.0, f"hotserve {hot64['p99_ms']:.2f} ms, lean {lean64['p99_ms']:.2f} ms"))
    else:
        out.append(_row(name, ">= 1.50x", None, None, need64))
        out.append(_row("REST JSON batch 1, conc 64, default flags: p99 vs lean", "<= lean's p99", None, None, need64))

    hot1, lean1 = _cell(cells, HOT, "tfs-json", 1, 1), _cell(cells, REFERENCE, "tfs-json", 1, 1)
    name = "REST JSON batch 1, conc 1, default flags: p50 vs lean"
    if hot1 and lean1:
        r = hot1["p50_ms"] / lean1["p50_ms"]
        out.append(_row(name, "<= lean's p50 (<= 1.00x)", f"{r:.2f}x", r <= 1.0,
                        f"hotserve {hot1['p50_ms']:.3f} ms, lean {lean1['p50_ms']:.3f} ms"))
    else:
        out.append(_row(name, "<= lean's p50", None, None, _need("batch 1, concurrency 1 (--concurrency 1,...)")))

    grpc64 = _cell(cells, HOT, "grpc-tfs", 1, 64)
    name = "gRPC Predict batch 1, conc 64 vs hotserve's REST JSON"
    if grpc64 and hot64:
        r = grpc64["rps"] / hot64["rps"]
        v2 = _cell(cells, HOT, "grpc-v2", 1, 64)
        out.append(_row(name, ">= 1.00x", f"{r:.2f}x", r >= 1.0,
                        f"gRPC TFS Predict {grpc64['rps']:,.0f} req/s, REST TFS JSON {hot64['rps']:,.0f} req/s"
                        + (f"; gRPC V2 ModelInfer {v2['rps']:,.0f} req/s ({v2['rps'] / hot64['rps']:.2f}x)" if v2 else "")))
    else:
        out.append(_row(name, ">= 1.00x", None, None,
                        _need("hotserve's grpc-tfs and tfs-json at batch 1, concurrency 64")))

    name = "V2 binary batch 32 rows/s vs lean's JSON rows/s"
    pairs = [(c, _cell(cells, HOT, "v2-bin", 32, c), _cell(cells, REFERENCE, "tfs-json", 32, c))
             for c in meta.get("concurrency", [])]
    pairs = [(c, h, l) for c, h, l in pairs if h and l]
    if pairs:
        ratios = [(c, h["rows_s"] / l["rows_s"]) for c, h, l in pairs]
        worst = min(r for _c, r in ratios)
        out.append(_row(name, ">= 3.00x (at every concurrency)", f"{worst:.2f}x (lowest)", worst >= 3.0,
                        "; ".join(f"conc {c}: {h['rows_s']:,.0f} vs {l['rows_s']:,.0f} rows/s = {h['rows_s'] / l['rows_s']:.2f}x"
                                  for c, h, l in pairs)))
    else:
        out.append(_row(name, ">= 3.00x", None, None, _need("batch 32 with hotserve's v2-bin and the lean app")))

    name = "swaps under load, default flags: failed requests"
    if swaps:
        out.append(_row(name, "0", str(swaps["failed"]), swaps["failed"] == 0,
                        f"{swaps['requests']:,} requests, {swaps['publishes']} publishes"))
        r, worst = swaps.get("ratio_median"), swaps.get("ratio_worst")
        ok = r is not None and r == r  # not NaN
        out.append(_row("swaps under load: swap-window p99 / steady p99", "<= 1.20x",
                        f"{r:.2f}x" if ok else None, (r <= 1.2) if ok else None,
                        (f"median/median: {swaps['swap_window_p99_median_ms']:.2f} ms / "
                         f"{swaps['steady_window_p99_median_ms']:.2f} ms; worst/worst {worst:.2f}x") if ok
                        else "too few windows (lengthen --swap-duration)"))
    else:
        out.append(_row(name, "0", None, None, _need("the swaps part")))
        out.append(_row("swaps under load: swap-window p99 / steady p99", "<= 1.20x", None, None, _need("the swaps part")))

    name = "RSS, default flags vs lean (process trees, peak)"
    hot_rss = [c["rss_mib_max"] for c in cells if c["server"] == HOT and "rss_mib_max" in c]
    lean_rss = [c["rss_mib_max"] for c in cells if c["server"] == REFERENCE and "rss_mib_max" in c]
    if hot_rss and lean_rss:
        h, l = max(hot_rss), max(lean_rss)
        hp = max(c.get("server_processes", 0) for c in cells if c["server"] == HOT)
        lp = max(c.get("server_processes", 0) for c in cells if c["server"] == REFERENCE)
        out.append(_row(name, "<= 1.00x", f"{h / l:.2f}x", h <= l,
                        f"hotserve {h:.0f} MiB ({_n(hp, 'process')}), lean {l:.0f} MiB ({_n(lp, 'process')}): the highest "
                        f"sample of each in any cell of the run"))
    else:
        out.append(_row(name, "<= 1.00x", None, None, _need("hotserve and the lean app in table 1")))
    return out
