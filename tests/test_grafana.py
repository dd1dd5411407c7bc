"""The Grafana dashboard and the scrape manifests: current, built on metrics hotserve exports."""

import json
import os
import re
import subprocess
import sys

import yaml

from hotserve.observability import metrics

ROOT = os.path.join(os.path.dirname(__file__), "..")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "hotserve.json")
MONITORING = os.path.join(ROOT, "deploy", "kubernetes", "monitoring")
# Defined by the learning module (continuous learning), not by observability's registry.
ELSEWHERE = {"hotserve_learning_freshness_seconds"}


def _exprs(doc: dict) -> list[str]:
    out = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    return out + [a["expr"] for a in doc["annotations"]["list"]]


def test_dashboard_json_is_current():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "grafana", "make_dashboard.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_dashboard_queries_use_exported_metrics_only():
    doc = json.load(open(DASHBOARD))
    exported = {m.name for m in metrics.REGISTRY._metrics}
    used = set()
    for expr in _exprs(doc):
        for name in re.findall(r"(:?[a-zA-Z_][a-zA-Z0-9_:]*)\{", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name) if name not in exported else name)
    assert used, "no metric found in the dashboard's queries"
    assert used - exported - ELSEWHERE == set()
    # The built-in page's three charts are there, per version.
    titles = [p["title"] for p in doc["panels"]]
    for t in ("Requests / s by version", "Latency p50 / p99 by version", "Errors / s by version", "Memory per worker"):
        assert t in titles
    assert all(p["datasource"]["uid"] == "${datasource}" for p in doc["panels"] if p["type"] != "row")


def test_scrape_manifests():
    monitors = list(yaml.safe_load_all(open(os.path.join(MONITORING, "servicemonitor.yaml"))))
    [sm] = monitors
    assert sm["kind"] == "ServiceMonitor" and sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["path"] == "/monitoring/prometheus/metrics"
    [cm] = list(yaml.safe_load_all(open(os.path.join(MONITORING, "prometheus-scrape.yaml"))))
    scrape = yaml.safe_load(cm["data"]["hotserve-scrape.yaml"])
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/monitoring/prometheus/metrics" and job["kubernetes_sd_configs"][0]["role"] == "pod"
