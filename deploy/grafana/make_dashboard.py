"""Writes deploy/grafana/hotserve.json: the Grafana dashboard on hotserve's exported metrics,
with the panels of the built-in /dashboard page (requests/s, p50/p99 latency and errors per
version; what serves; versions' states; swaps, rollbacks and canary decisions; memory per version
and per worker; in-flight and queues; gates; storage; limits; learning).

    python deploy/grafana/make_dashboard.py          # rewrite hotserve.json
    python deploy/grafana/make_dashboard.py --check  # exit 1 if hotserve.json is not current

Queries sum over the `worker` label (--num_workers) and over pods, so they work for one
process, several workers and a fleet alike.
"""

from __future__ import annotations

import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hotserve.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model_name=~"$model"'  # TF Serving's metrics name the model model_name
H = 'model=~"$model"'  # hotserve's name it model

_ids = iter(range(1, 1000))


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(title: str, kind: str, x: int, y: int, w: int, h: int, targets: list[dict], unit: str = "short",
          description: str = "", **extra) -> dict:
    p = {"id": next(_ids), "type": kind, "title": title, "description": description, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 2, "fillOpacity": 10, "showPoints": "never"}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    p.update(extra)
    return p


def row(title: str, y: int) -> dict:
    return {"id": next(_ids), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def build() -> dict:
    panels = [
        row("Traffic per version (the built-in page's charts)", 0),
        panel("Requests / s by version", "timeseries", 0, 1, 8, 8, [
            target(f"sum by (model_name, model_version) (rate(:tensorflow:serving:request_count{{{M}}}[$__rate_interval]))",
                   "{{model_name}} v{{model_version}}")], "reqps",
              "Every answered model request, whichever worker or pod answered it."),
        panel("Latency p50 / p99 by version", "timeseries", 8, 1, 8, 8, [
            target("histogram_quantile(0.5, sum by (le, model_name, model_version) "
                   f"(rate(:tensorflow:serving:request_latency_bucket{{{M}}}[$__rate_interval]))) / 1000",
                   "{{model_name}} v{{model_version}} p50"),
            target("histogram_quantile(0.99, sum by (le, model_name, model_version) "
                   f"(rate(:tensorflow:serving:request_latency_bucket{{{M}}}[$__rate_interval]))) / 1000",
                   "{{model_name}} v{{model_version}} p99", "B")], "ms",
              "Server-side request latency (TF Serving's buckets: 10 us x 1.8^i)."),
        panel("Errors / s by version", "timeseries", 16, 1, 8, 8, [
            target("sum by (model_name, model_version, status) "
                   f"(rate(:tensorflow:serving:request_count{{{M},status!=\"OK\"}}[$__rate_interval]))",
                   "{{model_name}} v{{model_version}} {{status}}")], "reqps"),
        row("What serves", 9),
        panel("Default version", "stat", 0, 10, 4, 5, [
            target(f"max by (model) (hotserve_default_version{{{H}}})", "{{model}}")], "none",
              "The version default requests go to.", options={"reduceOptions": {"calcs": ["lastNotNull"]},
                                                             "textMode": "value_and_name"}),
        panel("Traffic share (canary split)", "timeseries", 4, 10, 8, 5, [
            target(f"max by (model, version) (hotserve_route_weight_percent{{{H}}})", "{{model}} v{{version}}")],
              "percent"),
        panel("Version states", "table", 12, 10, 12, 5, [
            target(f"max by (model, version, state) (hotserve_version_state{{{H}}}) == 1", "", instant=True)],
              "none", "Each known version's state (START, LOADING, AVAILABLE, UNLOADING, END)."),
        panel("Swaps, rollbacks, canary decisions", "timeseries", 0, 15, 12, 7, [
            target(f"sum by (model) (increase(hotserve_swaps_total{{{H}}}[$__rate_interval]))", "{{model}} swaps"),
            target(f"sum by (model, reason) (increase(hotserve_rollbacks_total{{{H}}}[$__rate_interval]))",
                   "{{model}} rollback ({{reason}})", "B"),
            target(f"sum by (model, decision) (increase(hotserve_canary_decisions_total{{{H}}}[$__rate_interval]))",
                   "{{model}} canary {{decision}}", "C")], "short",
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
              ),
        panel("Gate results", "table", 12, 15, 12, 7, [
            target(f"sum by (model, gate, outcome) (increase(hotserve_gate_results_total{{{H}}}[$__range]))", "",
                   instant=True),
        ], "none", "Gate verdicts on versions over the dashboard's time range."),
        row("Loads and memory", 22),
        panel("Load time (load + gates)", "timeseries", 0, 23, 8, 7, [
            target(f"sum by (model) (rate(hotserve_model_load_seconds_sum{{{H}}}[5m])) / "
                   f"sum by (model) (rate(hotserve_model_load_seconds_count{{{H}}}[5m]))", "{{model}} mean"),
            target(f"sum by (model, outcome) (increase(hotserve_model_loads_total{{{H}}}[$__rate_interval]))",
                   "{{model}} loads {{outcome}}", "B")], "s"),
        panel("Memory per version", "timeseries", 8, 23, 8, 7, [
            target(f"max by (model, version) (hotserve_version_memory_bytes{{{H},kind=\"measured\"}})",
                   "{{model}} v{{version}}")], "bytes", "RSS growth when the version loaded (per worker: max)."),
        panel("Memory per worker", "timeseries", 16, 23, 8, 7, [
            target("max by (instance, worker) (hotserve_process_resident_memory_bytes)", "{{instance}} w{{worker}}")],
              "bytes"),
        row("Load on the server", 30),
        panel("In flight by version", "timeseries", 0, 31, 8, 7, [
            target(f"sum by (model, version) (hotserve_requests_in_flight{{{H}}})", "{{model}} v{{version}}")], "short"),
        panel("Queues", "timeseries", 8, 31, 8, 7, [
            target("sum by (model) (hotserve_request_queue_depth)", "queued ({{model}})"),
            target(f"sum by (model) (hotserve_batch_queue_depth{{{H}}})", "{{model}} batches waiting", "B")], "short"),
        panel("Limit rejections / s", "timeseries", 16, 31, 8, 7, [
            target(f"sum by (model, limit) (rate(hotserve_limit_rejections_total{{{H}}}[$__rate_interval]))",
                   "{{model}} {{limit}}")], "reqps"),
        row("Repository and learning", 38),
        panel("Storage requests / s", "timeseries", 0, 39, 8, 7, [
            target("sum by (scheme, op, outcome) (rate(hotserve_storage_operations_total[$__rate_interval]))",
                   "{{scheme}} {{op}} {{outcome}}")], "reqps"),
        panel("Storage outages", "timeseries", 8, 39, 8, 7, [
            target(f"sum by (model) (increase(hotserve_storage_outages_total{{{H}}}[$__rate_interval]))",
                   "{{model}}")], "short"),
        panel("Learning freshness (label to serving)", "timeseries", 16, 39, 8, 7, [
            target("histogram_quantile(0.5, sum by (le, model) "
                   f"(rate(hotserve_learning_freshness_seconds_bucket{{{H}}}[15m])))", "{{model}} p50"),
            target(f"sum by (model, event) (increase(hotserve_events_total{{{H},event=~\"learn.*|delta.*\"}}[5m]))",
                   "{{model}} {{event}}", "B")], "s",
              "With continuous learning on: seconds from a label's arrival to the swap serving a version trained on "
              "it, and the learner's and deltas' events."),
        panel("Events by kind", "timeseries", 0, 46, 24, 7, [
            target(f"sum by (event) (increase(hotserve_events_total{{{H}}}[$__rate_interval]))", "{{event}}")],
              "short", "Every event on the bus (docs/observability.md lists the kinds)."),
    ]
    return {
        "__inputs": [],
        "title": "hotserve",
        "uid": "hotserve-overview",
        "description": "hotserve: traffic per version, what serves, hot swaps, rollbacks, canaries, memory, queues.",
        "tags": ["hotserve", "model-serving"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
             "current": {}, "hide": 0},
            {"name": "model", "type": "query", "datasource": DS, "label": "model",
             "query": {"query": "label_values(hotserve_version_state, model)", "refId": "models"},
             "definition": "label_values(hotserve_version_state, model)", "refresh": 2,
             "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}},
        ]},
        "annotations": {"list": [
            {"name": "swaps", "datasource": DS, "enable": True, "iconColor": "blue",
             "expr": f"changes(max by (model) (hotserve_default_version{{{H}}})[1m:15s]) > 0",
             "titleFormat": "{{model}}: default version changed", "step": "15s"},
            {"name": "rollbacks", "datasource": DS, "enable": True, "iconColor": "orange",
             "expr": f"sum by (model, reason) (increase(hotserve_rollbacks_total{{{H}}}[1m])) > 0",
             "titleFormat": "{{model}}: rollback ({{reason}})", "step": "15s"},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            print(f"{OUT} is not current: run python {sys.argv[0]}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT}")
