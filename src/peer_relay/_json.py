"""The JSON backend of the wire: ``orjson`` when it can be imported, else the standard library.

``orjson`` is fast but compiled, so it is missing where wheels cannot be installed (Pyodide in a
browser, offline). The fallback parses with :mod:`json` held to orjson's strictness, so a frame
is accepted or refused alike by either backend:

- ``NaN``, ``Infinity``, numbers that overflow a double, lone surrogates (escaped or raw, even in
  a value a duplicate key replaces), invalid UTF-8, a byte order mark, control characters in
  strings and nesting deeper than :data:`MAX_DEPTH` are refused;
- nesting up to :data:`MAX_DEPTH` is accepted however deep the caller's stack already is;
- integers outside the 64-bit range are read as doubles, as orjson reads them;
- duplicate keys keep the last value (both do).

Both raise a ``ValueError`` for every refused frame. ``dumps`` writes compact UTF-8 without
escaping non-ASCII; the one difference in output is the spelling of some floats' exponents
(orjson ``1e-7``, json ``1e-07``: the same number). :class:`Fragment` splices ready-made JSON
bytes into a document, like ``orjson.Fragment``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any, Final

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the platform
    _orjson = None  # type: ignore[assignment]

MAX_DEPTH: Final = 1024
"""Deepest nesting of arrays and objects accepted (orjson's limit)."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# An escaped surrogate (\uD800-\uDFFF); whether it is paired is checked string by string.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# A string literal, or an unterminated one up to the end of the text: a match never fails once
# begun, so a scan is linear (an unterminated string full of escaped quotes made a pattern that
# can fail take quadratic time). In a document json accepted, every '"' outside a string opens one.
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Strings and brackets: enough to measure nesting without being fooled by brackets in strings.
_DEPTH_TOKEN = re.compile(_STRING_LITERAL.pattern + r"|[\[\]{}]", re.DOTALL)


class Fragment:
    """Ready-made JSON (bytes or text) that :func:`dumps` writes as it is."""

    __slots__ = ("contents",)

    def __init__(self, contents: bytes | str) -> None:
        self.contents = contents


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number is infinity when parsed as double")
    return value


def _parse_int(text: str) -> int | float:
    if len(text) <= 20:
        value = int(text)
        if _INT_MIN <= value <= _INT_MAX:
            return value
    return _parse_float(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_refuse_constant, strict=True
)


def _depth(text: str) -> int:
    depth = deepest = 0
    for match in _DEPTH_TOKEN.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif token == "]" or token == "}":
            depth -= 1
    return deepest


def _escapes_lone_surrogate(text: str) -> bool:
    """Whether a string literal in ``text`` (a document json accepted) escapes a lone surrogate.

    The literals are checked, not the parsed value: a duplicate key's earlier value is gone from
    the value, and orjson refuses the document all the same.
    """
    for match in _STRING_LITERAL.finditer(text):
        literal = match.group()
        if _ESCAPED_SURROGATE.search(literal):
            try:
                _decoder.decode(literal).encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _decode_deep(text: str) -> Any:
    """Decode ``text`` (nested at most :data:`MAX_DEPTH` deep) with room on the stack for every
    level, however deep the caller already is: json recurses once per level (the pure-Python
    decoder twice)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 3 * _depth(text) + 100)
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise ValueError("depth limit exceeded") from None
    finally:
        sys.setrecursionlimit(limit)


def std_loads(frame: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON document with the standard library, as strictly as orjson does."""
    if isinstance(frame, str):
        text = frame
        text.encode("utf-8")  # raw lone surrogates raise UnicodeEncodeError, a ValueError
    else:
        text = bytes(frame).decode("utf-8")  # strict: invalid UTF-8 and surrogates raise
    if not text.strip(" \t\n\r"):
        raise ValueError("Input is a zero-length, empty document")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise ValueError("depth limit exceeded")
    try:
        value = _decoder.decode(text)
    except RecursionError:  # the caller's stack was deep already, or the document is
        value = _decode_deep(text)
    if _ESCAPED_SURROGATE.search(text) and _escapes_lone_surrogate(text):
        raise ValueError("no low surrogate in string")
    return value


_PLACEHOLDER: Final = "\x00peer-relay fragment\x00"
_PLACEHOLDER_JSON: Final = json.dumps(_PLACEHOLDER)


def std_dumps(value: Any) -> bytes:
    """Serialise like ``orjson.dumps``: compact UTF-8; NaN, infinities and surrogates refused."""
    fragments: list[str] = []

    def default(item: Any) -> Any:
        if isinstance(item, Fragment):
            contents = item.contents
            fragments.append(contents if isinstance(contents, str) else contents.decode("utf-8"))
            return _PLACEHOLDER
        raise TypeError(f"Type is not JSON serializable: {type(item).__name__}")

    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default
        )
    except ValueError as exc:  # NaN or an infinity: orjson raises a TypeError
        raise TypeError(str(exc)) from None
    if fragments:
        parts = text.split(_PLACEHOLDER_JSON)
        if len(parts) != len(fragments) + 1:
            raise TypeError("a string in the document collides with the fragment marker")
        text = "".join(part + frag for part, frag in zip(parts, [*fragments, ""], strict=True))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError("str is not valid UTF-8: surrogates not allowed") from None


def std_dumps_sorted(value: Any) -> bytes:
    """Like :func:`std_dumps`, with object keys sorted (by code point); no fragments."""
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
        )
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise TypeError(str(exc)) from None


def _orjson_dumps_sorted(value: Any) -> bytes:
    return _orjson.dumps(value, option=_orjson.OPT_SORT_KEYS)


loads: Callable[[Any], Any]
dumps: Callable[[Any], bytes]
dumps_sorted: Callable[[Any], bytes]
"""Compact UTF-8 with object keys sorted; raises ``TypeError`` for what is not JSON."""
fragment: Callable[[bytes], Any]
BACKEND = ""


def use(backend: str) -> None:
    """Switch the backend: ``"orjson"`` or ``"json"`` (for tests; the default is the best one)."""
    global loads, dumps, dumps_sorted, fragment, BACKEND
    if backend == "orjson":
        if _orjson is None:
            raise RuntimeError("orjson is not installed")
        loads, dumps, fragment = _orjson.loads, _orjson.dumps, _orjson.Fragment
        dumps_sorted = _orjson_dumps_sorted
    elif backend == "json":
        loads, dumps, fragment = std_loads, std_dumps, Fragment
        dumps_sorted = std_dumps_sorted
    else:
        raise ValueError(f"unknown JSON backend {backend!r}")
    BACKEND = backend


use("json" if _orjson is None else "orjson")
