"""The dashboard in a real browser: headless chromium (Debian's) driven by Playwright. A hot
swap under load shows in the timeline and the charts switch versions; rollback from the page
is refused without the admin token and works with it; with --num_workers the page shows the
whole server. Screenshots are saved as test artifacts (tmp dir) for a person to look at."""

import hashlib
import os
import re
import threading
import time

import httpx
import pytest

from browser import Shots, chromium_page, wait_js
from conftest import LoadClients, affine_version, wait_for

TOKEN = "dash-t0ken"
ASSETS = os.path.join(os.path.dirname(__file__), "..", "src", "hotserve", "server", "dashboard_assets")


def _switched(from_v: int, to_v: int) -> str:
    """JS: the requests/s chart has a second where only from_v answered, and a later one
    where only to_v did."""
    return f"""(() => {{
      const c = cards["m"]; if (!c || !c.plots.rps.plot) return false;
      const u = c.plots.rps.plot, names = u.series.map(s => s.label);
      const a = names.indexOf("v{from_v}"), b = names.indexOf("v{to_v}");
      if (a < 1 || b < 1) return false;
      const xs = u.data[0];
      let before = -1, after = -1;
      for (let i = 0; i < xs.length; i++) {{
        const va = u.data[a][i] || 0, vb = u.data[b][i] || 0;
        if (va > 0 && vb === 0 && before < 0) before = i;
        if (vb > 0 && va === 0 && before >= 0) after = i;
      }}
      return before >= 0 && after > before;
    }})()"""


def _seconds_with_traffic(version: int, n: int) -> str:
    """JS: at least n seconds of the chart's data have requests answered by `version`."""
    return f"""(() => {{
      let k = 0;
      for (const tick of S.ticks.values()) if ((tick.series["m/{version}"] || {{n: 0}}).n > 0) k++;
      return k >= {n};
    }})()"""


def test_hot_swap_and_rollback_in_the_browser(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--admin_token", TOKEN)
    shots = Shots(tmp_path / "screenshots")
    with chromium_page(tmp_path / "profile") as page, LoadClients(server.url, n=3, max_seconds=90, allow_backwards=True) as load:
        page.goto(server.url + "/dashboard")
        page.wait_for_selector("#conn.conn-live")
        page.wait_for_selector('[data-model="m"] .serving[data-serving="1"]')
        wait_js(page, 'document.querySelector(\'[data-model="m"] [data-rps]\') && '
                      '+document.querySelector(\'[data-model="m"] [data-rps]\').dataset.rps > 0', what="requests in the chart")
        wait_js(page, _seconds_with_traffic(1, 4), what="4 seconds of v1 traffic in the chart")

        # A hot swap while the load runs: the timeline shows it, the chart switches versions.
        affine_version(base, 2, build)
        page.wait_for_selector('#timeline li[data-kind="swap"]:has-text("serving v2 (was v1)")')
        page.wait_for_selector('[data-model="m"] .serving[data-serving="2"]')
        wait_js(page, _switched(1, 2), what="the requests/s chart to switch from v1 to v2")
        wait_js(page, _seconds_with_traffic(2, 4), what="4 seconds of v2 traffic in the chart")
        wait_for(lambda: 2 in load.versions, 10, "clients to see version 2")
        shots.take(page, "hot-swap", for_docs=True)
        assert page.locator('#timeline li[data-kind="load_done"]:has-text("v2 loaded")').count() >= 1
        row = page.locator('[data-model="m"] tr[data-version="2"]')
        assert "AVAILABLE" in row.inner_text() and "default" in row.inner_text()

        # Rollback without the token: refused, nothing changes.
        page.click('[data-model="m"] button[data-action="rollback"]')
        page.wait_for_selector("#notice.error")
        notice = page.inner_text("#notice")
        assert "refused (HTTP 401)" in notice and "missing admin token" in notice, notice
        shots.take(page, "rollback-refused", for_docs=True)
        assert page.locator('[data-model="m"] .serving').get_attribute("data-serving") == "2"

        # With the token: rollback to v1, the timeline and the charts show it.
        page.fill("#token", TOKEN)
        page.click('[data-model="m"] button[data-action="rollback"]')
        page.wait_for_selector("#notice.ok")
        assert "now serves v1" in page.inner_text("#notice")
        page.wait_for_selector('#timeline li[data-kind="rollback"]:has-text("rollback v2 → v1 (manual)")')
        page.wait_for_selector('[data-model="m"] .serving[data-serving="1"]')
        page.wait_for_selector('[data-model="m"] .pill.pin:has-text("pinned to v1")')
        wait_js(page, _switched(2, 1), what="the requests/s chart to switch back to v1")
        wait_js(page, _seconds_with_traffic(1, 7), what="3 more seconds of v1 traffic in the chart")
        shots.take(page, "rollback", for_docs=True)
    assert page.js_errors == [], page.js_errors
    assert load.errors == [], load.errors[:5]
    assert all(p.stat().st_size > 10_000 for p in shots.taken)


def test_dashboard_shows_every_worker(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--num_workers", "2", "--admin_token", TOKEN)

    def workers() -> list[str]:
        return sorted(w["worker"] for w in httpx.get(server.url + "/dashboard/state", timeout=10).json()["workers"])

    # Any worker answers for both, once the second one is up (it may still be starting).
    wait_for(lambda: workers() == ["0", "1"], 20, "both workers in the dashboard's state")
    shots = Shots(tmp_path / "screenshots")
    with chromium_page(tmp_path / "profile") as page, LoadClients(server.url, n=4, max_seconds=60) as load:
        page.goto(server.url + "/dashboard")
        page.wait_for_selector('#workers .worker[data-worker="0"]')
        page.wait_for_selector('#workers .worker[data-worker="1"]')
        assert page.inner_text("#workers").startswith("2 workers")
        wait_js(page, _seconds_with_traffic(1, 3), what="3 seconds of v1 traffic in the chart")
        affine_version(base, 2, build)
        # One timeline line for the swap, with both workers' badges.
        page.wait_for_selector('#timeline li[data-kind="swap"]:has-text("serving v2"):has(.wk:text("w0")):has(.wk:text("w1"))')
        wait_js(page, _switched(1, 2), what="the merged chart to switch to v2")
        wait_js(page, _seconds_with_traffic(2, 3), what="3 seconds of v2 traffic in the chart")
        shots.take(page, "two-workers", for_docs=True)
    assert page.js_errors == [], page.js_errors


def test_dashboard_assets_are_vendored_and_pinned():
    """uPlot is served from the package (no CDN) at the version VENDORED.txt records."""
    vendored = open(os.path.join(ASSETS, "VENDORED.txt")).read()
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256(open(os.path.join(ASSETS, name), "rb").read()).hexdigest()
        assert f"{name}  sha256 {digest}" in re.sub(r" +", " ", vendored).replace(f"{name} sha256", f"{name}  sha256")
    assert "uPlot 1.6.32" in vendored and "/*! https://github.com/leeoniya/uPlot (v1.6.32) */" in open(
        os.path.join(ASSETS, "uPlot.iife.min.js")).read(200)
    page = open(os.path.join(ASSETS, "index.html")).read()
    assert not re.search(r"(src|href)=\"https?://", page), "the page must load nothing from the network"


def test_dashboard_http_endpoints(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with httpx.Client(timeout=10) as c:
        r = c.get(server.url + "/dashboard")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert c.get(server.url + "/dashboard/assets/uPlot.iife.min.js").headers["content-type"].startswith("text/javascript")
        r = c.get(server.url + "/dashboard/assets/..%2F..%2Fserve.py")
        assert r.status_code == 404 and "no dashboard asset" in r.json()["error"]
        r = c.post(server.url + "/dashboard/state")
        assert r.status_code == 405
        for _ in range(5):
            c.post(server.url + "/v1/models/m:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]})
        # The stream: a state, the backlog of events, then ticks with this second's requests.
        seen = {"state": 0, "event": 0, "tick": 0}
        requests = 0
        with c.stream("GET", server.url + "/dashboard/stream") as r:
            assert r.headers["content-type"] == "text/event-stream"
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    seen[kind] = seen.get(kind, 0) + 1
                elif line.startswith("data: ") and kind == "tick":
                    import json

                    requests += json.loads(line[6:])["series"].get("m/1", {}).get("n", 0)
                if requests >= 5 and seen["state"] and seen["event"]:
                    break
    assert seen["state"] >= 1 and seen["event"] >= 5 and requests == 5
    # A page left open does not hold up a shutdown: the stream ends, the server exits cleanly.
    opened = threading.Event()

    def watch():
        with httpx.stream("GET", server.url + "/dashboard/stream", timeout=30) as r:
            for _ in r.iter_lines():
                opened.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert opened.wait(10)
    t0 = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - t0 < 10
    watcher.join(10)
    assert not watcher.is_alive()
