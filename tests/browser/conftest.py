"""Fixtures for tests that run the original's browser build in headless Chromium.

Chromium is Debian's (``/usr/bin/chromium``, or ``$PEER_RELAY_CHROMIUM``), driven by the PyPI
``playwright`` package through ``executable_path``: no browser is ever downloaded. The page and
the original's ``bundle.js`` (from the npm package peer-relay@0.0.2, installed by the interop
harness into ``.cache/npm-original``) are served by the test itself on 127.0.0.1.

Without Chromium, Playwright, Node/npm or the npm package these tests are SKIPPED with the
reason; with ``PEER_RELAY_REQUIRE_ORIGINAL=1`` (``.ci/run``) they FAIL instead.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from interop.original import OriginalUnavailable, ensure_original

HERE = Path(__file__).resolve().parent
PAGE = HERE / "original_page.html"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Quiet and offline: no update checks, no sync, no field trials fetched."""


def _unavailable(reason: str) -> None:
    if os.environ.get("PEER_RELAY_REQUIRE_ORIGINAL") == "1":
        pytest.fail(f"browser test required but cannot run: {reason}")
    pytest.skip(reason)


def chromium_path() -> str | None:
    configured = os.environ.get("PEER_RELAY_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def original_bundle() -> Path:
    """``bundle.js`` of the npm package peer-relay@0.0.2 (the original's browser build)."""
    try:
        node_modules = ensure_original()
    except OriginalUnavailable as exc:
        _unavailable(f"the npm package peer-relay@0.0.2 is unavailable: {exc}")
        raise
    bundle = node_modules / "peer-relay" / "bundle.js"
    if not bundle.is_file():
        _unavailable(f"{bundle} is missing from the npm package")
    return bundle


@pytest.fixture(scope="session")
def web_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our web build (``peer_relay.browser.build``), made once per session, for the Pyodide
    tests; skipped (failed where they are required) when it cannot be made."""
    from peer_relay.browser.build import build

    try:
        return build(tmp_path_factory.mktemp("web"))
    except Exception as exc:  # no npm, no network for the first install, ...
        required = ("PEER_RELAY_REQUIRE_BROWSER", "PEER_RELAY_REQUIRE_ORIGINAL")
        if any(os.environ.get(name) == "1" for name in required):
            pytest.fail(f"the browser tests are required: web build unavailable: {exc!r}")
        pytest.skip(f"web build unavailable: {exc!r}")
        raise


@dataclass(frozen=True)
class StaticSite:
    url: str
    """``http://127.0.0.1:PORT``"""


class _Handler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[Path, str]]] = {}

    def do_GET(self) -> None:
        entry = self.files.get(self.path.split("?", 1)[0])
        if entry is None:
            self.send_error(404)
            return
        path, content_type = entry
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def static_site(original_bundle: Path) -> Iterator[StaticSite]:
    """The test page and the original's bundle, served on 127.0.0.1 (a free port)."""
    handler = type(
        "Handler",
        (_Handler,),
        {
            "files": {
                "/": (PAGE, "text/html; charset=utf-8"),
                "/bundle.js": (original_bundle, "text/javascript; charset=utf-8"),
            }
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield StaticSite(url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
async def chromium_browser() -> AsyncIterator[Any]:
    """A headless Debian Chromium driven by Playwright (a new one per test)."""
    executable = chromium_path()
    if executable is None:
        where = os.environ.get("PEER_RELAY_CHROMIUM") or "/usr/bin/chromium or on PATH"
        _unavailable(f"Chromium not found ({where}); install Debian's: apt-get install chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
        raise
    async with async_playwright() as playwright:
        try:
            instance = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_FLAGS, timeout=30_000
            )
        except Exception as exc:  # a Chromium that cannot start here
            _unavailable(f"Chromium at {executable} did not start: {exc}")
            raise
        try:
            yield instance
        finally:
            await instance.close()
