"""The bench's bookkeeping (bench/benchlib): alternating rounds and medians, ratios against
peers, issue 10's targets and the report's legend. Pure functions on made-up figures: no
server, no load, no timing."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import SimpleNamespace

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)  # after everything else: bench/'s scripts must not shadow other modules

from benchlib import matrix, report, targets  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_run", os.path.join(BENCH, "run.py"))
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)


def _srv(name: str, apis: list[str]):
    return SimpleNamespace(name=name, apis=apis)


def _run(rps: float, p50: float = 1.0, p99: float = 5.0, rss: float = 100.0, errors: int = 0, rnd: int = 1) -> dict:
    return {"round": rnd, "rps": rps, "rows_s": rps, "p50_ms": p50, "p99_ms": p99, "rss_mib": rss, "errors": errors,
            "requests": int(rps), "ok": int(rps), "server_cpu_pct": 100.0, "client_cpu_pct": 10.0,
            "errors_detail": {"non2xx": errors}, "server_processes": 1, "tool": "wrk"}


def _cell(server: str, api: str, batch: int, conc: int, rps: float, **kw) -> dict:
    base = {"server": server, "api": api, "api_label": api, "batch": batch, "concurrency": conc}
    return matrix.combine(base, [_run(rps, **kw)])


def test_rounds_rotate_the_server_order_and_keep_every_cell():
    servers = [_srv("hotserve", ["tfs-json", "grpc-tfs"]), _srv("lean", ["tfs-json"]), _srv("kserve", ["tfs-json"])]
    firsts = [matrix.plan_round(servers, [1], [8], r)[0][2].name for r in range(3)]
    assert firsts == ["hotserve", "lean", "kserve"]
    plans = [sorted((b, c, s.name, a) for b, c, s, a in matrix.plan_round(servers, [1, 32], [1, 64], r)) for r in range(3)]
    assert plans[0] == plans[1] == plans[2] and len(plans[0]) == 2 * 2 * 4
    # Within a round a server's APIs stay together, and batch/concurrency is the outer loop.
    order = [(b, c, s.name) for b, c, s, _a in matrix.plan_round(servers, [1], [8], 1)]
    assert [n for _b, _c, n in order] == ["lean", "kserve", "hotserve", "hotserve"]


def test_combine_takes_medians_sums_errors_and_reports_the_spread():
    base = {"server": "lean", "api": "tfs-json", "api_label": "REST TFS JSON", "batch": 1, "concurrency": 64}
    runs = [_run(1000, p99=9, rss=200, errors=1, rnd=1), _run(1200, p99=5, rss=220, rnd=2), _run(1100, p99=7, rss=210, rnd=3)]
    c = matrix.combine(base, runs)
    assert c["rps"] == 1100 and c["p99_ms"] == 7 and c["rss_mib"] == 210
    assert c["rss_mib_max"] == 220 and c["errors"] == 1 and c["rounds_ok"] == 3
    assert c["rps_spread_pct"] == pytest.approx(100 * 200 / 1100)
    one_failed = matrix.combine(base, [_run(1000, rnd=1), {"round": 2, "failed": "wrk exited with 1\nmore"}])
    assert one_failed["rps"] == 1000 and one_failed["failed_rounds"] == ["round 2: wrk exited with 1"]
    assert "failed" not in one_failed
    assert matrix.combine(base, [{"round": 1, "failed": "server exited"}])["failed"] == "server exited"


def test_ratios_use_the_same_api_when_the_peer_has_it_else_its_first():
    cells = [
        _cell("hotserve", "tfs-json", 1, 8, 3000), _cell("hotserve", "v2-bin", 1, 8, 4000),
        _cell("lean", "tfs-json", 1, 8, 2000),
        _cell("kserve", "tfs-json", 1, 8, 1000), _cell("kserve", "v2-bin", 1, 8, 500),
        _cell("mlserver", "v2-json", 1, 8, 400),
    ]
    matrix.add_ratios(cells)
    hot_json, hot_bin, lean, ks_json, ks_bin, mls = cells
    assert hot_json["ratio_lean"] == 1.5 and hot_json["ratio_kserve"] == 3.0 and hot_json["ratio_mlserver"] == 7.5
    assert hot_bin["ratio_lean"] == 2.0 and hot_bin["ratio_kserve"] == 8.0  # kserve's own binary row
    assert "ratio_lean" not in lean
    assert ks_bin["ratio_lean"] == 0.25 and "ratio_mlserver" not in ks_json  # peers: only vs lean
    assert "ratio_fastapi-naive" not in hot_json  # not in the run


def _target_cells(hot64=3000.0, lean64=2000.0, hot_p99=4.0, lean_p99=5.0) -> list[dict]:
    return [
        _cell("hotserve", "tfs-json", 1, 64, hot64, p99=hot_p99, rss=90),
        _cell("hotserve", "grpc-tfs", 1, 64, 2700),
        _cell("hotserve", "tfs-json", 1, 1, 900, p50=0.2),
        _cell("hotserve", "v2-bin", 32, 64, 400),
        _cell("lean", "tfs-json", 1, 64, lean64, p99=lean_p99, rss=220),
        _cell("lean", "tfs-json", 1, 1, 1000, p50=0.25),
        _cell("lean", "tfs-json", 32, 64, 100),
    ]


def test_targets_met_missed_and_not_measured():
    swaps = {"failed": 0, "requests": 5000, "publishes": 9, "ratio_median": 1.1, "ratio_worst": 1.4,
             "swap_window_p99_median_ms": 5.5, "steady_window_p99_median_ms": 5.0}
    rows = {t["target"]: t for t in targets.evaluate(_target_cells(), swaps, {"concurrency": [1, 64]})}
    status = {k: v["status"] for k, v in rows.items()}
    assert status == {
        "REST JSON batch 1, conc 64, default flags: req/s vs lean": "met",
        "REST JSON batch 1, conc 64, default flags: p99 vs lean": "met",
        "REST JSON batch 1, conc 1, default flags: p50 vs lean": "met",
        "gRPC Predict batch 1, conc 64 vs hotserve's REST JSON": "missed",
        "V2 binary batch 32 rows/s vs lean's JSON rows/s": "met",
        "swaps under load, default flags: failed requests": "met",
        "swaps under load: swap-window p99 / steady p99": "met",
        "RSS, default flags vs lean (process trees, peak)": "met",
    }
    assert rows["gRPC Predict batch 1, conc 64 vs hotserve's REST JSON"]["measured"] == "0.90x"
    assert rows["V2 binary batch 32 rows/s vs lean's JSON rows/s"]["measured"] == "4.00x (lowest)"

    missed = {t["target"]: t for t in targets.evaluate(_target_cells(hot64=2000, lean64=2000, hot_p99=6), None,
                                                      {"concurrency": [8]})}
    first = missed["REST JSON batch 1, conc 64, default flags: req/s vs lean"]
    assert first["status"] == "missed" and first["measured"] == "1.00x" and "short by 1.50x" in first["detail"]
    assert missed["REST JSON batch 1, conc 64, default flags: p99 vs lean"]["status"] == "missed"
    assert missed["swaps under load, default flags: failed requests"]["status"] == "not measured"
    assert missed["V2 binary batch 32 rows/s vs lean's JSON rows/s"]["status"] == "not measured"


def test_report_names_every_server_and_prints_the_targets():
    cells = _target_cells()
    matrix.add_ratios(cells)
    meta = {"mode": "quick", "started": "now", "cpus": 2, "loadavg_start": "0", "client_cpus": "1", "server_cpus": "",
            "hotserve_commit": "abc", "duration_s": 2, "warmup_s": 1, "rounds": 3, "concurrency": [1, 64],
            "versions": {"kserve": {"kserve": "0.21.0"}}}
    results = {"meta": meta, "matrix": cells, "targets": targets.evaluate(cells, None, meta)}
    text, md = report.render(results)
    assert "median of 3 alternating rounds" in text
    assert "  hotserve default: hotserve abc, default flags" in text
    assert "  lean app: the lean app, issue 10's reference" in text
    assert "vs lean" in text and "vs KServe" not in text  # only peers that ran get a column
    assert "Targets (issue 10)" in text and "not measured" in text and "| met |" in md


def test_peers_option_and_skips():
    o = bench_run.parse_args([])
    assert o.parts == {"hotserve", "hotserve-2w", "lean", "fastapi-naive", "kserve", "mlserver", "swaps"}
    assert o.rounds == 3 and o.kserve_apis == ["tfs-json", "v2-json", "v2-bin", "grpc-v2"]
    o = bench_run.parse_args(["--peers", "lean,fastapi", "--skip-fastapi", "--skip-swaps"])
    assert o.parts == {"hotserve", "hotserve-2w", "lean"}
    o = bench_run.parse_args(["--only", "hotserve,kserve", "--peers", "kserve,mlserver"])
    assert o.parts == {"hotserve", "kserve"}
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--peers", "triton"])
