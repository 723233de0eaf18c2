"""Log output for operators: ``--log-format text`` (the default) or ``json``, one object per
line with ``time`` (ISO-8601, UTC), ``level``, ``logger``, ``message`` and, when a record
carries one, ``exception`` (the formatted traceback) and ``stack``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup_logging` installs (and replaces when called again)."""


def setup_logging(
    level: int | str = logging.INFO,
    fmt: str = "text",
    stream: TextIO | None = None,
    *,
    force: bool = False,
) -> logging.Handler | None:
    """Log ``peer_relay``'s records at ``level`` and up, everyone else's at WARNING and up, to
    ``stream`` (stderr) as ``fmt`` (``text`` or ``json``); return the handler installed.

    Like :func:`logging.basicConfig`, a root logger that has handlers already (an application
    that set up its logging, pytest) keeps them and gets none of ours, only the levels (None is
    returned); ``force=True`` installs ours next to them. Calling it again replaces what an
    earlier call installed."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    for old in ours:
        root.removeHandler(old)
        old.close()
    handler = None
    if force or not root.handlers:
        handler = _Handler(stream if stream is not None else sys.stderr)
        formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("peer_relay").setLevel(level)
    return handler


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format {text,json}`` to ``parser``."""
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="log lines as text (default) or as one JSON object per line (time in UTC, "
        "level, logger, message, exception)",
    )
