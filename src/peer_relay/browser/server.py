"""A small static HTTP server for the web build (``peer-relay serve --web``).

GET and HEAD of the files of one folder, plus ``/config.json`` (what the demo page should
bootstrap from). HTTP/1.1 without keep-alive; enough for a browser on the same machine or LAN,
not a production web server. What it does that matters for a page's first load:

- compression: a file with a precompressed sibling (``NAME.br``, ``NAME.gz``, written by
  :mod:`peer_relay.browser.build`) is served as that, with ``Content-Encoding``, when the
  request's ``Accept-Encoding`` allows it (brotli first), and ``Vary: Accept-Encoding``;
- caching: a file whose name or folder carries a content hash (``peer_relay.<hash>.zip``,
  ``pyodide/<version>-<hash>/...``: a dot- or dash-delimited run of 12 to 64 hex digits) never
  changes under its URL, so it is ``Cache-Control: public, max-age=31536000, immutable``;
  everything else (the pages, ``peer-relay.js``, ``config.json``) is ``no-cache``: kept, but
  revalidated on every load, which costs a ``304 Not Modified`` (by ``ETag``) when unchanged;
- ``Content-Type`` by suffix (``application/wasm`` for WebAssembly, which the browser needs to
  compile it while it downloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .build import ENCODINGS

_log = logging.getLogger("peer_relay.web")

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
MAX_REQUEST = 16 * 1024
_HASHED = re.compile(r"(?:^|[.-])[0-9a-f]{12,64}(?:[.-]|$)")
_REASONS = {200: "OK", 304: "Not Modified", 404: "Not Found", 405: "Method Not Allowed"}


def versioned(path: str) -> bool:
    """Whether a path (relative to the root) names content that never changes: a part of it
    (a folder, or the file's name) carries a content hash."""
    return any(_HASHED.search(part) for part in path.split("/"))


def accepted(header: str | None) -> set[str]:
    """The content codings an ``Accept-Encoding`` header allows (``q`` above 0; ``*`` stands
    for any other)."""
    allowed: set[str] = set()
    refused: set[str] = set()
    for item in (header or "").split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        (allowed if quality > 0 else refused).add(name.lower())
    if "*" in allowed:
        allowed |= {coding for coding in ENCODINGS if coding not in refused}
    return allowed


@dataclass(frozen=True)
class Reply:
    """What a request gets: status, headers and body (the body is not sent for HEAD)."""

    status: int
    headers: dict[str, str]
    body: bytes


class WebServer:
    """Serves ``root`` and ``/config.json``; :meth:`start` binds, :meth:`close` stops.

    ``encodings`` are the content codings it may answer with, in its preference (empty: always
    the files as they are, as a server that does not compress).
    """

    def __init__(
        self,
        root: Path,
        config: dict[str, Any] | None = None,
        encodings: Iterable[str] = tuple(ENCODINGS),
    ) -> None:
        self.root = root.resolve()
        self.config = config or {}
        self.encodings = tuple(name for name in encodings if name in ENCODINGS)
        self.url: str | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port); return the base URL."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = self._server.sockets[0].getsockname()
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound[1]}/"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> WebServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reply(self, target: str, headers: dict[str, str] | None = None) -> Reply:
        """The reply to a GET of ``target`` with these request headers (lower-case names)."""
        headers = headers or {}
        path = unquote(urlsplit(target).path)
        if path == "/config.json":
            body = json.dumps(self.config).encode()
            return Reply(200, {"Content-Type": TYPES[".json"], "Cache-Control": REVALIDATE}, body)
        if path.endswith("/"):
            path += "index.html"
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            not_found = {"Content-Type": "text/plain", "Cache-Control": REVALIDATE}
            return Reply(404, not_found, b"not found\n")
        fixed = versioned(file.relative_to(self.root).as_posix())
        out = {
            "Content-Type": TYPES.get(file.suffix, "application/octet-stream"),
            "Cache-Control": IMMUTABLE if fixed else REVALIDATE,
        }
        served, coding = file, None
        siblings = [(name, file.with_name(file.name + ENCODINGS[name])) for name in self.encodings]
        variants = [(name, sibling) for name, sibling in siblings if sibling.is_file()]
        if variants:
            out["Vary"] = "Accept-Encoding"
            allowed = accepted(headers.get("accept-encoding"))
            for name, sibling in variants:
                if name in allowed:
                    served, coding = sibling, name
                    break
        if coding is not None:
            out["Content-Encoding"] = coding
        stat = served.stat()
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}{"-" + coding if coding else ""}"'
        out["ETag"] = etag
        match = headers.get("if-none-match", "")
        if match.strip() == "*" or etag in (tag.strip() for tag in match.split(",")):
            return Reply(304, out, b"")
        return Reply(200, out, served.read_bytes())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if method not in ("GET", "HEAD"):
                reply = Reply(405, {"Content-Type": "text/plain"}, b"method not allowed\n")
            else:
                reply = self.reply(target, headers)
            self._respond(writer, reply, head_only=method == "HEAD")
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except (ConnectionError, OSError) as exc:
            _log.debug("web client failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, reply: Reply, *, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {reply.status} {_REASONS[reply.status]}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        if reply.status != 304:
            lines.append(f"Content-Length: {len(reply.body)}")
        lines += ["X-Content-Type-Options: nosniff", "Connection: close", "", ""]
        body = b"" if head_only or reply.status == 304 else reply.body
        writer.write("\r\n".join(lines).encode("latin-1") + body)
