"""Helpers for the review and studio tests: the studio on a loopback port in a thread, raw HTTP
requests (a ``../`` path must reach the server as typed), and headless Chromium.

Chromium is Debian's ``chromium`` driven through Playwright with ``executable_path``
(Playwright's own browser download is not reachable here); ``.ci/run`` installs it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """Debian's chromium, or skip (``.ci/run`` installs it, so CI never skips)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run "
                    "installs it)")
    return path


@contextmanager
def browser() -> Iterator:
    """A headless Chromium (Playwright's sync API)."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A Playwright page that records console errors and failed requests."""

    def __init__(self, browser, width: int = 1280, height: int = 900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def images_loaded(self) -> list[dict]:
        """Load every image of the page (lazy ones too); return ``[{src, w}]`` of each."""
        self.page.evaluate("() => document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        self.page.wait_for_function(
            "() => Array.from(document.images).every(i => i.complete)", timeout=20_000)
        return self.page.evaluate(
            "() => Array.from(document.images).map(i => ({src: i.src, w: i.naturalWidth}))")


@contextmanager
def running_studio(root: Path) -> Iterator[tuple[str, object]]:
    """The studio of the project at ``root`` on a free loopback port: ``(base URL, Studio)``."""
    import uvicorn

    from cloops.data.project import load_project, reset
    from cloops.steer.review.studio import Studio, create_app

    reset()
    proj = load_project(root)
    studio = Studio(proj)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(studio), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", studio
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def raw(base: str, method: str, path: str, *, headers: dict | None = None,
        body: dict | str | None = None) -> tuple[int, str]:
    """One HTTP request with the path sent exactly as given; ``(status, body text)``."""
    host, port = base.removeprefix("http://").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=60)
    data = json.dumps(body) if isinstance(body, dict) else body
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    con.putrequest(method, path, skip_host="Host" in hdrs or "host" in hdrs)
    for k, v in hdrs.items():
        con.putheader(k, v)
    if data is not None:
        con.putheader("Content-Length", str(len(data.encode())))
    con.endheaders(data.encode() if data is not None else None)
    resp = con.getresponse()
    text = resp.read().decode("utf-8", "replace")
    con.close()
    return resp.status, text
