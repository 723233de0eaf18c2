"""A small static HTTP server for the web build (``peer-relay serve --web``).

GET and HEAD of the files of one folder, plus ``/config.json`` (what the demo page should
bootstrap from). HTTP/1.1 without keep-alive; enough for a browser on the same machine or LAN,
not a production web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_log = logging.getLogger("peer_relay.web")

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".zip": "application/zip",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
MAX_REQUEST = 16 * 1024


class WebServer:
    """Serves ``root`` and ``/config.json``; :meth:`start` binds, :meth:`close` stops."""

    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root.resolve()
        self.config = config or {}
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

    def _resolve(self, target: str) -> tuple[bytes, str] | None:
        path = unquote(urlsplit(target).path)
        if path == "/config.json":
            return json.dumps(self.config).encode(), TYPES[".json"]
        if path.endswith("/"):
            path += "index.html"
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return None
        return file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method not in ("GET", "HEAD"):
                self._respond(writer, 405, b"method not allowed\n", "text/plain")
            else:
                found = self._resolve(target)
                if found is None:
                    self._respond(writer, 404, b"not found\n", "text/plain")
                else:
                    body, kind = found
                    self._respond(writer, 200, body, kind, head_only=method == "HEAD")
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
    def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        kind: str,
        *,
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        headers = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-cache\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(headers.encode("latin-1") + (b"" if head_only else body))
