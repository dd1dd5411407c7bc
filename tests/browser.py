"""Headless Debian chromium driven by Playwright for Python (its own browser download is never
used: `executable_path` points at /usr/bin/chromium; `playwright install` is never run)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HOTSERVE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Every wait in the browser tests is bounded by this (ms) unless it says otherwise.
WAIT_MS = 20_000
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def need_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (Debian package chromium; scripts/install_system_deps.sh)")
    pytest.importorskip("playwright.sync_api")


@contextmanager
def chromium_page(profile_dir: Path, width: int = 1500, height: int = 1000):
    """A page in a fresh chromium profile; everything is closed on exit."""
    from playwright.sync_api import sync_playwright

    need_chromium()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": width, "height": height}, timeout=30_000)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.js_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            ctx.close()


class Shots:
    """Screenshots as test artifacts under the test's tmp dir; with HOTSERVE_DOCS_SCREENSHOTS=1
    the final ones are also copied into docs/img/ (how the docs' pictures are made)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page, name: str, for_docs: bool = False) -> Path:
        path = self.dir / f"{len(self.taken):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        if for_docs and os.environ.get("HOTSERVE_DOCS_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS_IMG / f"dashboard-{name}.png")
        return path


def wait_js(page, expression: str, timeout_ms: int = WAIT_MS, what: str = "") -> None:
    """Wait (bounded) until a JavaScript expression is truthy in the page."""
    try:
        page.wait_for_function(expression, timeout=timeout_ms, polling=100)
    except Exception as exc:
        raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what or expression}; "
                             f"page errors: {getattr(page, 'js_errors', [])}") from exc

