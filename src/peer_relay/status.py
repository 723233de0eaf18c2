"""A node's status for an operator: the snapshot behind ``/status.json``, the page at ``/``,
and ``peer-relay status URL``, which prints the same in the terminal.

The snapshot is read from the node's public read-outs (:attr:`PeerRelay.stats`,
:meth:`~PeerRelay.inspect`, :meth:`~PeerRelay.bounds`) when it is asked for: nothing is counted
on the node's paths. The terminal client needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TextIO
from urllib.parse import urlsplit, urlunsplit

COUNTERS = (
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "originated",
    "delivered",
    "relayed",
    "rerouted",
    "links_opened",
    "links_closed",
)
"""The counters of :class:`~peer_relay.core.Stats` a snapshot carries (drops apart)."""


class Observed(Protocol):
    """What is read of a node (a :class:`~peer_relay.PeerRelay`): its public read-outs, and
    its ``peer`` and ``peer-closed`` events (for the age of its links)."""

    @property
    def id(self) -> bytes: ...

    @property
    def url(self) -> str | None: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    @property
    def peers(self) -> list[bytes]: ...

    def inspect(self) -> dict[str, Any]: ...

    def bounds(self) -> dict[str, tuple[int, int]]: ...

    def on(self, event: str, callback: Callable[..., Any]) -> None: ...

    def off(self, event: str, callback: Callable[..., Any]) -> None: ...


def rss_bytes() -> int | None:
    """This process's resident set size now, in bytes (None where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGESIZE")


def snapshot(
    peer: Observed,
    opened: Mapping[bytes, float] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """What ``/status.json`` serves: the node's id, URL, links, counters, drops and bounds.

    ``opened`` maps a linked peer's id to the ``time.monotonic()`` its link opened at, where
    known (a link's age is null otherwise); ``started`` is the ``time.monotonic()`` since which
    the node has been watched (``uptime``). Counters are totals since the node started.
    """
    from . import __version__

    now = time.monotonic()
    wall = time.time()
    stats = peer.stats
    readout = peer.inspect()
    bounds = peer.bounds()
    links = []
    for link in readout.get("links", ()):
        peer_hex = link.get("peer")
        since = None if peer_hex is None or opened is None else opened.get(bytes.fromhex(peer_hex))
        opened_at = link.get("opened_at")
        age: float | None = None
        if link.get("state") == "open":
            # The core's clock is the wall clock on a live node; events cover any other host.
            age = wall - opened_at if opened_at else (None if since is None else now - since)
        links.append(
            {
                "peer": peer_hex,
                "transport": link.get("transport"),
                "state": link.get("state"),
                "outbound": link.get("outbound"),
                "authenticated": link.get("authenticated"),
                "age": age,
                "traffic": link.get("traffic"),
            }
        )
    links.sort(key=lambda x: (x["state"] != "open", x["peer"] or ""))
    sessions = bounds.get("sessions")
    return {
        "time": time.time(),
        "id": peer.id.hex(),
        "url": peer.url,
        "version": __version__,
        "running": bool(stats),
        "uptime": None if started is None else now - started,
        "links": links,
        "counters": {name: int(stats.get(name, 0)) for name in COUNTERS},
        "dropped": dict(sorted(stats.get("dropped", {}).items())),
        "sessions": None if sessions is None else sessions[0],
        "bounds": {name: list(pair) for name, pair in sorted(bounds.items())},
        "rss_bytes": rss_bytes(),
    }


# ----------------------------------------------------------------------------- the page

PAGE_SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let previous = null;

function bytes(n) {
  if (n === null || n === undefined) return "\u2014";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "\u2014";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
  const m = Math.floor(s / 60) % 60, sec = s % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + sec + "s";
  return sec + "s";
}

function rate(x) {
  return x === null ? "\u2014" : (x >= 100 ? x.toFixed(0) : x.toFixed(1));
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty, "empty");
    td.colSpan = columns;
    tbody.appendChild(tr);
    return;
  }
  for (const r of rows) tbody.appendChild(r);
}

function render(s) {
  const dt = previous ? s.time - previous.time : 0;
  const per = (now, before) => (previous && dt > 0 ? Math.max(0, now - before) / dt : null);
  const c = s.counters, p = previous ? previous.counters : c;
  $("node-id").textContent = s.id;
  $("node-url").textContent = s.url || "(no server: not dialable)";
  $("version").textContent = "peer-relay " + s.version;
  $("uptime").textContent = duration(s.uptime);
  $("rss").textContent = bytes(s.rss_bytes);
  $("sessions").textContent = s.sessions === null ? "\u2014" : String(s.sessions);
  const open = s.links.filter((l) => l.state === "open");
  const ws = open.filter((l) => l.transport === "ws").length;
  $("link-count").textContent = open.length + " open (ws " + ws + ", webrtc " +
    (open.length - ws) + ")" + (s.links.length > open.length ?
      ", " + (s.links.length - open.length) + " opening or closing" : "");

  const rates = [
    ["messages delivered", per(c.delivered, p.delivered), c.delivered],
    ["messages relayed", per(c.relayed, p.relayed), c.relayed],
    ["messages originated", per(c.originated, p.originated), c.originated],
    ["messages rerouted", per(c.rerouted, p.rerouted), c.rerouted],
    ["frames in", per(c.frames_in, p.frames_in), c.frames_in],
    ["frames out", per(c.frames_out, p.frames_out), c.frames_out],
  ];
  const rateRows = rates.map(([name, r, total]) => {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    cell(tr, name);
    cell(tr, rate(r), "num rate");
    cell(tr, String(total), "num");
    return tr;
  });
  for (const [name, now, before] of [["bytes in", c.bytes_in, p.bytes_in],
                                     ["bytes out", c.bytes_out, p.bytes_out]]) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    cell(tr, name);
    const r = per(now, before);
    cell(tr, r === null ? "\u2014" : bytes(r) + "/s", "num rate");
    cell(tr, bytes(now), "num");
    rateRows.push(tr);
  }
  fill($("rates").tBodies[0], rateRows, "", 3);

  const linkRows = s.links.map((l) => {
    const tr = document.createElement("tr");
    tr.dataset.peer = l.peer || "";
    cell(tr, l.peer ? l.peer : "(not known yet)", "mono");
    cell(tr, l.transport || "");
    cell(tr, l.state || "", l.state === "open" ? "ok" : "warn");
    cell(tr, l.outbound ? "out" : "in");
    cell(tr, l.authenticated ? "yes" : "no");
    cell(tr, duration(l.age), "num");
    const t = l.traffic;
    cell(tr, t ? t.frames_in + " / " + bytes(t.bytes_in) : "", "num");
    cell(tr, t ? t.frames_out + " / " + bytes(t.bytes_out) : "", "num");
    return tr;
  });
  fill($("links").tBodies[0], linkRows, "no links", 8);

  const before = previous ? previous.dropped : {};
  const dropRows = Object.entries(s.dropped).map(([reason, n]) => {
    const tr = document.createElement("tr");
    tr.dataset.reason = reason;
    cell(tr, reason, "mono");
    cell(tr, rate(previous ? per(n, before[reason] || 0) : null), "num rate");
    cell(tr, String(n), "num");
    return tr;
  });
  fill($("drops").tBodies[0], dropRows, "no drops", 3);
  $("updated").textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();
  previous = s;
}

async function refresh() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    $("error").hidden = true;
    document.body.dataset.state = "ok";
  } catch (e) {
    $("error").textContent = "cannot reach the node: " + e.message +
      " (is it still running?) \u2014 retrying every second";
    $("error").hidden = false;
    document.body.dataset.state = "error";
  }
}

refresh();
setInterval(refresh, 1000);
"""

PAGE_STYLE = """
:root { color-scheme: light dark; --muted: #777; --line: #8883; --ok: #2a7; --warn: #c80; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1.2em; max-width: 72em; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.mono, #node-id { font-family: ui-monospace, monospace; font-size: .93em; word-break: break-all; }
.muted { color: var(--muted); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: .6em 0; }
dt { color: var(--muted); }
dd { margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid var(--line); }
th { font-weight: 600; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ok { color: var(--ok); }
td.warn { color: var(--warn); }
td.empty { color: var(--muted); font-style: italic; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(22em, 1fr)); gap: 0 2em; }
#error { background: #c003; border: 1px solid #c008; padding: .5em .8em; border-radius: 4px; }
footer { margin-top: 1.5em; font-size: .85em; }
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>peer-relay status</title>
<link rel="icon" href="data:,">
<style>{PAGE_STYLE}</style>
</head>
<body data-state="loading">
<h1>peer-relay node</h1>
<div id="error" role="alert" hidden></div>
<dl>
  <dt>id</dt><dd id="node-id">\u2026</dd>
  <dt>url</dt><dd id="node-url" class="mono">\u2026</dd>
  <dt>links</dt><dd id="link-count">\u2026</dd>
  <dt>sessions</dt><dd id="sessions">\u2026</dd>
  <dt>watched for</dt><dd id="uptime">\u2026</dd>
  <dt>memory (RSS)</dt><dd id="rss">\u2026</dd>
</dl>
<div class="cols">
<section>
<h2>Traffic</h2>
<table id="rates">
  <thead><tr><th></th><th class="num">per second</th><th class="num">total</th></tr></thead>
  <tbody></tbody>
</table>
</section>
<section>
<h2>Drops by reason</h2>
<table id="drops">
  <thead><tr><th>reason</th><th class="num">per second</th><th class="num">total</th></tr></thead>
  <tbody></tbody>
</table>
</section>
</div>
<h2>Links</h2>
<table id="links">
  <thead><tr><th>peer</th><th>transport</th><th>state</th><th>direction</th>
  <th>authenticated</th><th class="num">age</th><th class="num">in (frames / bytes)</th>
  <th class="num">out (frames / bytes)</th></tr></thead>
  <tbody></tbody>
</table>
<footer class="muted">
  <span id="version"></span> &middot; <span id="updated">not updated yet</span> &middot;
  refreshed every second from <a href="status.json">status.json</a> &middot;
  <a href="metrics">metrics</a> (Prometheus) &middot;
  traffic per link: message payloads
</footer>
<script>{PAGE_SCRIPT}</script>
</body>
</html>
"""
"""The status page: self-contained (no external assets), it polls ``status.json``."""


def page_script_hash() -> str:
    """The CSP source (``'sha256-...'``) that allows the page's one inline script."""
    import base64
    import hashlib

    digest = hashlib.sha256(PAGE_SCRIPT.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# ----------------------------------------------------------------------------- the terminal


def status_url(target: str) -> str:
    """The ``/status.json`` URL for what the operator typed: a ``--metrics`` address
    (``HOST:PORT``), a base URL, the page's URL or the JSON's URL itself."""
    text = target.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http:// URL or HOST:PORT: {target!r}")
    path = parts.path
    if not path.endswith("/status.json"):
        path = path.removesuffix("/status").removesuffix("/metrics").rstrip("/") + "/status.json"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class StatusUnavailable(Exception):
    """The status could not be fetched; the message says why and what to check."""


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url`` (a ``/status.json``) and return the snapshot, or raise StatusUnavailable."""
    hint = "check that the node runs with --metrics HOST:PORT and that this is that address"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(16 << 20)
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(
            f"{url} answered HTTP {exc.code} {exc.reason}: is it a peer-relay --metrics address?"
        ) from None
    except urllib.error.URLError as exc:
        raise StatusUnavailable(f"could not reach {url} ({_why(exc.reason)}); {hint}") from None
    except (OSError, TimeoutError) as exc:
        raise StatusUnavailable(f"could not reach {url} ({_why(exc)}); {hint}") from None
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if not isinstance(status, dict) or "id" not in status or "counters" not in status:
        raise StatusUnavailable(
            f"{url} did not answer with a peer-relay status: is it a --metrics address?"
        )
    return status


def _why(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, hours, minutes, secs = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_status(status: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> str:
    """The snapshot as text; with the one before it, rates per second too."""
    counters: Mapping[str, int] = status["counters"]
    dt = 0.0 if previous is None else float(status["time"]) - float(previous["time"])

    def per(now: float, before: float | None) -> float | None:
        if previous is None or dt <= 0 or before is None:
            return None
        return max(0.0, now - before) / dt

    def shown(rate: float | None) -> str:
        return "" if rate is None else f"{rate:.1f}/s"

    before_counters: Mapping[str, int] = {} if previous is None else previous["counters"]
    links: Sequence[Mapping[str, Any]] = status["links"]
    open_links = [x for x in links if x.get("state") == "open"]
    ws = sum(1 for x in open_links if x.get("transport") == "ws")
    lines = [
        f"peer      {status['id']}",
        f"url       {status.get('url') or '(no server: not dialable)'}",
        f"links     {len(open_links)} open (ws {ws}, webrtc {len(open_links) - ws})"
        + (
            f", {len(links) - len(open_links)} opening or closing"
            if len(links) > len(open_links)
            else ""
        ),
        f"sessions  {'-' if status.get('sessions') is None else status['sessions']}",
        f"watched   {human_duration(status.get('uptime'))}    "
        f"rss {human_bytes(status.get('rss_bytes'))}    version {status.get('version', '?')}",
        "",
        f"{'traffic':<28}{'total':>10}{'rate':>14}",
    ]
    for name in ("delivered", "relayed", "originated", "rerouted", "frames_in", "frames_out"):
        value = counters.get(name, 0)
        label = name.replace("_", " ") if name.startswith("frames") else f"messages {name}"
        rate = shown(per(value, before_counters.get(name)))
        lines.append(f"  {label:<26}{value:>10}{rate:>14}")
    for name in ("bytes_in", "bytes_out"):
        value = counters.get(name, 0)
        byte_rate = per(value, before_counters.get(name))
        rate = "" if byte_rate is None else human_bytes(byte_rate) + "/s"
        lines.append(f"  {name.replace('_', ' '):<26}{human_bytes(value):>10}{rate:>14}")
    lines += ["", "links" if links else "links     none"]
    if links:
        lines.append(
            f"  {'PEER':<42}{'TRANSPORT':<11}{'STATE':<10}{'DIR':<5}{'AUTH':<6}{'AGE':<10}IN / OUT"
        )
    for link in links:
        traffic = link.get("traffic")
        moved = (
            f"{human_bytes(traffic['bytes_in'])} / {human_bytes(traffic['bytes_out'])}"
            if traffic
            else ""
        )
        lines.append(
            f"  {link.get('peer') or '(not known yet)':<42}{link.get('transport') or '':<11}"
            f"{link.get('state') or '':<10}{'out' if link.get('outbound') else 'in':<5}"
            f"{'yes' if link.get('authenticated') else 'no':<6}"
            f"{human_duration(link.get('age')):<10}{moved}"
        )
    dropped: Mapping[str, int] = status["dropped"]
    before_drops: Mapping[str, int] = {} if previous is None else previous["dropped"]
    lines += ["", "drops" if dropped else "drops     none"]
    for reason, count in dropped.items():
        rate = shown(per(count, before_drops.get(reason, 0)))
        lines.append(f"  {reason:<26}{count:>10}{rate:>14}")
    return "\n".join(line.rstrip() for line in lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.05 and 3600 seconds, got {text}")
    return value


def status_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="peer-relay status",
        description="Print a running node's status (links, traffic, drops by reason), read from "
        "the /status.json of its --metrics server.",
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="the node's --metrics address: HOST:PORT or http://HOST:PORT[/status.json]",
    )
    parser.add_argument(
        "--watch", action="store_true", help="refresh until interrupted, with rates per second"
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_interval,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for an answer (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    return parser


def status_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``peer-relay status URL [--watch]``: 0 once printed; 1 (one line on stderr, no
    traceback) when the node cannot be reached; 2 for bad arguments."""
    stdout = out or sys.stdout
    args = status_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        url = status_url(args.url)
    except ValueError as exc:
        print(f"peer-relay status: {exc}", file=sys.stderr)
        return 2
    previous: dict[str, Any] | None = None
    clear = args.watch and stdout.isatty()
    try:
        while True:
            try:
                status = fetch_status(url, args.timeout)
            except StatusUnavailable as exc:
                print(f"peer-relay status: {exc}", file=sys.stderr, flush=True)
                return 1
            if args.json:
                text = json.dumps(status, indent=None if args.watch else 2)
            else:
                text = format_status(status, previous)
            if clear:
                stdout.write("\x1b[H\x1b[2J")
            elif args.watch and previous is not None and not args.json:
                stdout.write("\n")
            stdout.write(text + "\n")
            stdout.flush()
            if not args.watch:
                return 0
            previous = status
            time.sleep(args.interval)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            stdout.flush()
        return 0
