"""The web build served compressed and cached: what a page downloads on its first load and after.

The build and the server are checked without a browser, on a stand-in of the npm package
``pyodide`` (small files, so no npm and no minute of brotli); then, in Chromium, a first load of
the real build must stay within :data:`FIRST_LOAD_BUDGET` bytes, and a second visit must fetch
none of the versioned files again.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import io
import json
import re
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from peer_relay.browser import build as web
from peer_relay.browser.server import IMMUTABLE, REVALIDATE, WebServer, accepted, versioned

from .test_pyodide_browser import CHROMIUM, FLAGS, _unavailable, record

FIRST_LOAD_BUDGET = 5_000_000
"""Bytes a page may download (bodies and headers) from blank to ``ready``."""
HAVE_BROTLI = importlib.util.find_spec("brotli") is not None


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


@pytest.fixture
def fake_cache(tmp_path: Path) -> Path:
    """A cache holding a small stand-in of the npm package pyodide (so no npm is run)."""
    folder = tmp_path / "cache" / "web-npm" / "node_modules" / "pyodide"
    folder.mkdir(parents=True)
    stdlib = {f"mod{i}.py": f"VALUE = {i}\n".encode() * 200 for i in range(20)}
    contents = {
        "pyodide.mjs": b"export async function loadPyodide () {}\n" * 100,
        "pyodide.asm.mjs": b"// the module\n" * 2000,
        "pyodide.asm.wasm": b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 200,
        "python_stdlib.zip": _zip(stdlib),
        "pyodide-lock.json": json.dumps({"info": {}, "packages": {}}).encode() * 30,
    }
    for name in web.PYODIDE_FILES:
        (folder / name).write_bytes(contents[name])
    return tmp_path / "cache"


def test_build_names_what_never_changes_by_its_contents(fake_cache: Path, tmp_path: Path) -> None:
    out = web.build(tmp_path / "web", fake_cache)
    [folder] = (out / "pyodide").iterdir()
    assert re.fullmatch(rf"{re.escape(web.PYODIDE_VERSION)}-[0-9a-f]{{12}}", folder.name)
    [bundle] = out.glob("peer_relay.*.zip")
    assert re.fullmatch(r"peer_relay\.[0-9a-f]{12}\.zip", bundle.name)
    entry = (out / "peer-relay.js").read_text()
    assert web.FILES_LINE not in entry
    assert (
        f"const FILES = {{ pyodide: 'pyodide/{folder.name}/', bundle: '{bundle.name}' }}" in entry
    )
    for name in web.PYODIDE_FILES:
        assert (folder / name).read_bytes() == (web.pyodide_dir(fake_cache) / name).read_bytes()
    # The zip holds what the page imports, not the node, the simulator or the testbed.
    names = set(_members(bundle.read_bytes()))
    assert {"peer_relay/browser/peer.py", "peer_relay/core/core.py", "rfc8785/_impl.py"} <= names
    assert {"peer_relay/purecrypto.py", "peer_relay/transports/signals.py"} <= names
    assert not any(name.startswith(("peer_relay/sim/", "peer_relay/testbed/")) for name in names), (
        names
    )
    assert "peer_relay/node.py" not in names and "peer_relay/browser/build.py" not in names

    # Precompressed beside each file: gzip always, brotli when installed; none for tiny files.
    for path in (folder / "pyodide.asm.wasm", out / "peer-relay.js", bundle):
        assert (path.with_name(path.name + ".gz")).is_file(), path
        assert (path.with_name(path.name + ".br")).is_file() is HAVE_BROTLI, path
    assert not (out / "blank.html.gz").exists()
    wasm = folder / "pyodide.asm.wasm"
    assert gzip.decompress((folder / "pyodide.asm.wasm.gz").read_bytes()) == wasm.read_bytes()
    # A zip's compressed forms hold a stored copy: the same members, compressed as a whole.
    for path in (folder / "python_stdlib.zip", bundle):
        unpacked = gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
        assert _members(unpacked) == _members(path.read_bytes())
        with zipfile.ZipFile(io.BytesIO(unpacked)) as copy:
            assert {info.compress_type for info in copy.infolist()} == {zipfile.ZIP_STORED}

    # Another Pyodide: a new folder, the old one gone; the same build again changes nothing.
    npm = web.pyodide_dir(fake_cache)
    (npm / "pyodide.asm.mjs").write_bytes(b"// another module\n" * 2000)
    again = web.build(out, fake_cache)
    [new_folder] = (again / "pyodide").iterdir()
    assert new_folder.name != folder.name and not folder.exists()
    assert f"pyodide/{new_folder.name}/" in (again / "peer-relay.js").read_text()
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    web.build(out, fake_cache)
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before


def test_precompress_removes_what_is_stale(tmp_path: Path) -> None:
    page = tmp_path / "page.js"
    page.write_text("console.log('one')\n" * 100)
    (tmp_path / "page.js.br").write_bytes(b"left by a build with brotli")
    store = tmp_path / "store"
    web.precompress(page, store)
    assert gzip.decompress((tmp_path / "page.js.gz").read_bytes()) == page.read_bytes()
    assert (tmp_path / "page.js.br").exists() is HAVE_BROTLI
    if HAVE_BROTLI:
        assert (tmp_path / "page.js.br").read_bytes() != b"left by a build with brotli"
    page.write_text("x")  # too small to be worth it: served as it is
    web.precompress(page, store)
    assert not (tmp_path / "page.js.gz").exists() and not (tmp_path / "page.js.br").exists()


def test_versioned_paths_and_accepted_encodings() -> None:
    assert versioned("pyodide/314.0.7-0123456789ab/pyodide.asm.wasm")
    assert versioned("peer_relay.0123456789ab.zip")
    for path in ("index.html", "peer-relay.js", "pyodide/pyodide.mjs", "config.json", "demo.js"):
        assert not versioned(path), path
    assert not versioned("pyodide/314.0.7/pyodide.mjs")  # a version alone is not a content hash
    assert accepted("gzip, deflate, br, zstd") == {"gzip", "deflate", "br", "zstd"}
    assert accepted("gzip;q=0.5, br;q=0") == {"gzip"}
    assert accepted("*;q=0.1, gzip;q=0") == {"*", "br"}
    assert accepted("identity") == {"identity"} and accepted(None) == set()


def test_server_negotiates_encoding_type_and_caching(fake_cache: Path, tmp_path: Path) -> None:
    out = web.build(tmp_path / "web", fake_cache)
    [folder] = (out / "pyodide").iterdir()
    server = WebServer(out, {"bootstrap": ["ws://127.0.0.1:1"]})
    wasm = f"/pyodide/{folder.name}/pyodide.asm.wasm"
    best = "br" if HAVE_BROTLI else "gzip"

    reply = server.reply(wasm, {"accept-encoding": "gzip, deflate, br, zstd"})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/wasm"
    assert reply.headers["Content-Encoding"] == best
    assert reply.headers["Vary"] == "Accept-Encoding"
    assert reply.headers["Cache-Control"] == IMMUTABLE
    suffix = web.ENCODINGS[best]
    assert reply.body == (folder / f"pyodide.asm.wasm{suffix}").read_bytes()
    gz = server.reply(wasm, {"accept-encoding": "gzip"})
    assert gz.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(gz.body) == (folder / "pyodide.asm.wasm").read_bytes()
    plain = server.reply(wasm, {"accept-encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    assert plain.body == (folder / "pyodide.asm.wasm").read_bytes()
    assert len({reply.headers["ETag"], gz.headers["ETag"], plain.headers["ETag"]}) == 3
    # Revalidation of what is not versioned: 304 by ETag.
    page = server.reply("/peer-relay.js", {"accept-encoding": "gzip"})
    assert page.headers["Cache-Control"] == REVALIDATE
    assert page.headers["Content-Type"] == "text/javascript; charset=utf-8"
    same = server.reply(
        "/peer-relay.js", {"accept-encoding": "gzip", "if-none-match": page.headers["ETag"]}
    )
    assert (same.status, same.body) == (304, b"")
    assert server.reply("/", {}).headers["Cache-Control"] == REVALIDATE
    assert server.reply("/", {}).headers["Content-Type"] == "text/html; charset=utf-8"
    config = server.reply("/config.json", {"accept-encoding": "gzip"})
    assert (config.headers["Cache-Control"], config.headers["Content-Type"]) == (
        REVALIDATE,
        "application/json",
    )
    assert json.loads(config.body) == {"bootstrap": ["ws://127.0.0.1:1"]}
    for missing in ("/nothing.js", "/../pyproject.toml", f"/pyodide/{folder.name}/x.wasm"):
        assert server.reply(missing, {}).status == 404, missing
    # A server told not to compress serves the files as they are.
    uncompressed = WebServer(out, encodings=()).reply(wasm, {"accept-encoding": "br, gzip"})
    assert "Content-Encoding" not in uncompressed.headers and "Vary" not in uncompressed.headers


async def test_server_speaks_http(fake_cache: Path, tmp_path: Path) -> None:
    out = web.build(tmp_path / "web", fake_cache)
    async with WebServer(out) as server:
        base = await server.start("127.0.0.1", 0)
        port = int(base.rsplit(":", 1)[1].rstrip("/"))

        async def fetch(request: str) -> tuple[str, dict[str, str], bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request.encode() + b"\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            head, _, body = response.partition(b"\r\n\r\n")
            status, *lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.split(": ", 1) for line in lines)
            return status, {k.lower(): v for k, v in fields.items()}, body

        status, fields, body = await fetch("GET /peer-relay.js HTTP/1.1\r\nAccept-Encoding: gzip")
        assert status == "HTTP/1.1 200 OK"
        assert fields["content-encoding"] == "gzip" and int(fields["content-length"]) == len(body)
        assert gzip.decompress(body) == (out / "peer-relay.js").read_bytes()
        status, head_fields, body = await fetch(
            "HEAD /peer-relay.js HTTP/1.1\r\nAccept-Encoding: gzip"
        )
        assert (status, body) == ("HTTP/1.1 200 OK", b"")
        assert head_fields["content-length"] == fields["content-length"]
        etag = fields["etag"]
        status, fields, body = await fetch(
            f"GET /peer-relay.js HTTP/1.1\r\nAccept-Encoding: gzip\r\nIf-None-Match: {etag}"
        )
        assert (status, body) == ("HTTP/1.1 304 Not Modified", b"")
        assert fields["etag"] == etag and fields["cache-control"] == REVALIDATE
        status, _, _ = await fetch("POST / HTTP/1.1")
        assert status == "HTTP/1.1 405 Method Not Allowed"


# ----------------------------------------------------------------------------- in Chromium

LOAD = """async () => {
  const t0 = performance.now()
  const { PeerRelay } = await import('/peer-relay.js')
  const peer = new PeerRelay({ options: { refresh_interval: 3600 } })
  await peer.ready
  const ms = performance.now() - t0
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')]
  peer.destroy()
  return { ms, files: entries.map((e) => ({ name: e.name, transfer: e.transferSize,
                                            body: e.encodedBodySize, size: e.decodedBodySize })) }
}"""


class CountingServer(WebServer):
    """A WebServer that keeps what it answered: (path, status, bytes on the wire)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sent: list[tuple[str, int, int]] = []

    def reply(self, target: str, headers: dict[str, str] | None = None) -> Any:
        answer = super().reply(target, headers)
        head = sum(len(k) + len(v) + 4 for k, v in answer.headers.items()) + 120
        self.sent.append((target, answer.status, head + len(answer.body)))
        return answer


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed")
        raise
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.mark.browser
@pytest.mark.timeout(240)
async def test_first_load_downloads_at_most_5_mb_and_a_second_visit_reuses_it(
    chromium: Any, web_build: Path
) -> None:
    if not HAVE_BROTLI:
        _unavailable("the brotli package (a dependency of peer-relay) is not installed")
    server = CountingServer(web_build)
    base = await server.start("127.0.0.1", 0)
    try:
        context = await chromium.new_context()  # its own, empty HTTP cache
        encodings: dict[str, str] = {}

        def seen(response: Any) -> None:
            encodings[response.url] = response.headers.get("content-encoding", "")

        context.on("response", seen)
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(base + "blank.html")
        first = await asyncio.wait_for(page.evaluate(LOAD), 120)
        record(
            "first load, compressed: navigation to ready", (time.perf_counter() - started) * 1000
        )
        browser_bytes = sum(f["transfer"] for f in first["files"])
        server_bytes = sum(size for _, _, size in server.sent)
        print(
            f"first load: {len(first['files'])} files, {browser_bytes} bytes transferred "
            f"(server: {server_bytes}), "
            f"{sum(f['size'] for f in first['files'])} decoded, ready in {first['ms']:.0f} ms"
        )
        assert browser_bytes <= FIRST_LOAD_BUDGET, first["files"]
        assert server_bytes <= FIRST_LOAD_BUDGET, server.sent
        assert abs(browser_bytes - server_bytes) < 0.02 * server_bytes  # both count the same
        big = [url for url in encodings if url.endswith((".wasm", ".zip", ".asm.mjs"))]
        assert len(big) == 4 and all(encodings[url] == "br" for url in big), encodings
        assert all(status == 200 for _, status, _ in server.sent), server.sent

        # A second visit: versioned files come from the cache without a request; the rest
        # is revalidated (304).
        server.sent.clear()
        again = await context.new_page()
        await again.goto(base + "blank.html")
        second = await asyncio.wait_for(again.evaluate(LOAD), 120)
        record("second visit: navigation to ready", second["ms"])
        requested = {target for target, _, _ in server.sent}
        assert not any(versioned(target.lstrip("/")) for target in requested), requested
        assert sum(size for _, _, size in server.sent) < 20_000, server.sent
        print(f"second visit: {server.sent}, ready in {second['ms']:.0f} ms")
        await context.close()
    finally:
        await server.close()
