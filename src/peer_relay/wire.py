"""What peers put on the wire: envelopes, link hellos and proofs, and the signed form.

Compatible with peer-relay 0.0.2 (see ``wire-0.0.2.md``): an envelope is
``{"to", "from", "path", "nonce", "data": {"type", "data"}}`` where ``to`` and ``from`` are hex or
Buffer JSON. Our additions ride in keys that 0.0.2 ignores and preserves: ``auth`` on envelopes,
``pr`` on the link hello, and a proof frame that is only ever sent to peers that said ``pr``.

Everything that parses network input raises :class:`WireError` with a stable ``reason`` (used as
the drop counter's name) and never anything else.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from dataclasses import dataclass
from typing import Any, Final

import rfc8785

from . import _json

try:
    import msgspec

    from . import _envelope
except ImportError:  # pragma: no cover - depends on the platform (Pyodide)
    msgspec = None  # type: ignore[assignment]
from .ids import ID_BYTES, ID_HEX, buffer_json, hex_from_wire, id_from_wire

MAX_HOPS: Final = 20
"""0.0.2 drops a message whose path already holds 20 ids; so do we."""

MAX_NONCE_CHARS: Final = 128
MAX_SAFE_INTEGER: Final = 2**53 - 1

MESSAGE_CONTEXT: Final = b"peer-relay/v1 message\n"
LINK_CONTEXT: Final = b"peer-relay/v1 link\n"

# Message types of the 0.0.2 wire.
USER: Final = "user"
FIND_PEERS: Final = "findPeers"
FOUND_PEERS: Final = "foundPeers"
HANDSHAKE_OFFER: Final = "handshake-offer"
HANDSHAKE_ANSWER: Final = "handshake-answer"
SIGNAL: Final = "signal"
# Ours: session messages (see core/sessions.py), and "I do not know that session" (signed).
SEALED: Final = "sealed"
SESSION_RESET: Final = "session-reset"
CONFIRMED: Final = frozenset((USER, SEALED))
"""Kinds of message that hop-by-hop confirmation keeps until a ping vouches for them."""


class WireError(Exception):
    """A frame from the network that cannot be used; ``reason`` names why, for the counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def b64encode(raw: bytes) -> str:
    """Unpadded base64url, the form keys, nonces and signatures take in our frames."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: Any, size: int) -> bytes | None:
    """Decode unpadded base64url of exactly ``size`` bytes, or return ``None``."""
    if type(text) is not str or len(text) > 2 * size + 4:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def loads(frame: bytes | str, max_size: int) -> Any:
    """Parse one frame as strict JSON, or raise :class:`WireError`."""
    if len(frame) > max_size:
        raise WireError("oversize", f"{len(frame)} > {max_size} bytes")
    try:
        return _json.loads(frame)
    except ValueError as exc:  # orjson's JSONDecodeError, or the json fallback's errors
        if str(exc).startswith("depth limit exceeded"):
            raise WireError("too-deep", "nested past 1,024 levels") from None
        raise WireError("malformed-json", str(exc)[:80]) from None
    except RecursionError:  # the json fallback, on nesting orjson refuses as malformed
        raise WireError("too-deep", "nested too deeply") from None


class Written:
    """A member of a frame kept as it was written: JSON bytes, read only if need be and passed
    on as they are."""

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json

    def __repr__(self) -> str:
        return f"Written({self.json[:40]!r})"


READ: Final = frozenset(("to", "from", "path", "nonce", "auth", "route", "pr"))
"""The members of a frame on an open link that a peer reads at once; every other one (the data,
members other implementations add) is kept as :class:`Written`."""

_MEMBERS: Final = None if msgspec is None else msgspec.json.Decoder(dict[str, msgspec.Raw])

_ENVELOPE: Final = None if msgspec is None else _envelope.DECODER
_DEPTH_CLAMP: Final = 1000


def loads_members(frame: bytes | str, max_size: int) -> dict[str, Any]:
    """Parse one frame on an open link: an object whose members in :data:`READ` are read as
    strict JSON and whose others are kept as :class:`Written` (their syntax checked, their
    contents not read). Raise :class:`WireError`.

    Reading a frame thus costs a few milliseconds per MiB whatever its data holds: a relay
    never reads the data, and a destination reads it only once its signature holds.
    """
    if len(frame) > max_size:
        raise WireError("oversize", f"{len(frame)} > {max_size} bytes")
    try:
        # Text that is not UTF-8 (bytes) or holds lone surrogates (str) is refused as every
        # JSON reader here refuses it, and a WebSocket could not carry it on.
        if isinstance(frame, str):
            frame = frame.encode("utf-8")
        else:
            frame.decode("utf-8")
    except UnicodeError:
        raise WireError("malformed-json", "not UTF-8") from None
    if _MEMBERS is None:
        obj = loads(frame, max_size)
        if type(obj) is not dict:
            raise WireError("not-envelope", "frame is not an object")
        for key, value in obj.items():
            if key not in READ:
                try:
                    obj[key] = Written(_json.dumps(value))
                except TypeError:
                    raise WireError("malformed-json", "nested too deeply") from None
        return obj
    limit = sys.getrecursionlimit()
    try:
        if limit > _DEPTH_CLAMP:
            # msgspec nests as deep as the recursion limit lets it: held at the default, it
            # never passes on a frame nested past the 1,024 levels every other reader takes.
            sys.setrecursionlimit(_DEPTH_CLAMP)
        try:
            common = _ENVELOPE.decode(frame)
        except msgspec.ValidationError:
            # Not in the form our peers write (a link control frame, an id as Buffer JSON,
            # members we do not know, or not an envelope at all): read member by member.
            members = _MEMBERS.decode(frame)
        else:
            return _common(common)
    except msgspec.ValidationError:
        raise WireError("not-envelope", "frame is not an object") from None
    except msgspec.DecodeError as exc:
        raise WireError("malformed-json", str(exc)[:80]) from None
    except RecursionError:  # also: the stack is already deeper than the clamp
        raise WireError("too-deep", "nested too deeply") from None
    finally:
        if limit > _DEPTH_CLAMP:
            sys.setrecursionlimit(limit)
    out: dict[str, Any] = {}
    read: list[bytes] = []
    for key, raw in members.items():
        if key in READ:
            out[key] = None  # its place, in the order received; read below
            read.append(bytes(raw))
        else:
            written = bytes(raw)
            if _out_of_range(written):
                try:  # only the strict reader can tell; such numbers are rare
                    _json.loads(written)
                except ValueError as exc:
                    raise WireError("malformed-json", str(exc)[:80]) from None
            out[key] = Written(written)
    if read:
        try:  # the members a peer reads, strictly, in one go
            values = _json.loads(b"[" + b",".join(read) + b"]")
        except ValueError as exc:
            raise WireError("malformed-json", str(exc)[:80]) from None
        for key, value in zip([key for key in out if key in READ], values, strict=True):
            out[key] = value
    return out


_BIG_EXPONENT: Final = re.compile(rb"[eE][+]?[0-9][0-9][0-9]")


def _common(env: Any) -> dict[str, Any]:
    """The members of an envelope read whole (see :func:`loads_members`)."""
    written = bytes(env.data)
    if _out_of_range(written):
        try:
            _json.loads(written)
        except ValueError as exc:
            raise WireError("malformed-json", str(exc)[:80]) from None
    out: dict[str, Any] = {
        "to": env.to,
        "from": env.sender,
        "path": env.path,
        "nonce": env.nonce,
        "data": Written(written),
    }
    auth = env.auth
    if auth is not None:
        out["auth"] = {"key": auth.key, "sig": auth.sig, "ts": auth.ts}
    if env.route is not None:
        out["route"] = env.route
    return out


def _out_of_range(text: bytes) -> bool:
    """Whether JSON ``text`` may hold a number beyond a double's range (which strict readers
    refuse and a syntax check passes): an exponent of three digits or more, or 309 digits in a
    row."""
    if _BIG_EXPONENT.search(text) is not None:
        return True
    return len(text) >= 309 and b"9" * 309 in text.translate(_NUMBER_SHAPES)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope. ``raw`` is the JSON object as received (its data and any member we do
    not read kept as :class:`Written`, when parsed by :func:`loads_members`) and is never
    modified."""

    raw: dict[str, Any]
    to: str
    """Target id, 40 lowercase hex digits."""
    sender: str
    """Claimed origin id (``from``), 40 lowercase hex digits; unproven until verified."""
    path: list[str]
    nonce: str


def parse_envelope(obj: Any, max_hops: int = MAX_HOPS) -> Envelope:
    """Check the parts of an envelope a relay needs (ids, path, nonce); raise WireError.

    The path starts with the origin (every peer that sends a message, its origin included,
    appends its id): otherwise the next relay would pass on a message that looks like its own.
    """
    if type(obj) is not dict or "to" not in obj or "path" not in obj:
        raise WireError("not-envelope", "missing to or path")
    to = hex_from_wire(obj.get("to"))
    sender = hex_from_wire(obj.get("from"))
    if to is None or sender is None:
        raise WireError("bad-id", "to/from is not a 20-byte id")
    path = obj.get("path")
    if type(path) is not list:
        raise WireError("not-envelope", "path is not a list")
    if len(path) > max_hops:
        raise WireError("too-many-hops", f"path has {len(path)} ids")
    for hop in path:
        if type(hop) is not str or len(hop) != ID_HEX:
            raise WireError("bad-path", "path entry is not a hex id")
    if not path or path[0].lower() != sender:
        raise WireError("bad-path", "path does not start with the origin")
    nonce = obj.get("nonce")
    if type(nonce) is not str or not nonce or len(nonce) > MAX_NONCE_CHARS:
        raise WireError("bad-nonce", "nonce is not a short string")
    return Envelope(obj, to, sender, path, nonce)


def written_data(env: Envelope) -> bytes | None:
    """The envelope's data as it was written (None if it has none): what its signature covers
    when every relay passed it on unchanged."""
    data = env.raw.get("data")
    if type(data) is Written:
        return data.json
    if "data" not in env.raw:
        return None
    try:
        return _json.dumps(data)
    except TypeError:
        return None


def data_value(env: Envelope) -> Any:
    """The envelope's data, read; raise WireError if it is not JSON."""
    data = env.raw.get("data")
    if type(data) is not Written:
        return data
    try:
        return _json.loads(data.json)
    except ValueError as exc:
        raise WireError("malformed-data", str(exc)[:80]) from None
    except RecursionError:
        raise WireError("malformed-data", "nested too deeply") from None


def delivered_data(env: Envelope) -> Any:
    """The envelope's data, read as its origin meant it: integers of 2**53 and beyond are the
    doubles a JavaScript origin wrote (see :func:`canonical_received`). Raise WireError."""
    data = env.raw.get("data")
    return _as_meant(data_value(env), data.json if type(data) is Written else b"")


def _as_meant(value: Any, text: bytes) -> Any:
    """``value``, read from JSON ``text``, with integers of 2**53 and beyond made the doubles
    a JavaScript origin wrote; raise WireError."""
    if b"9999999999999999" in text.translate(_NUMBER_SHAPES):
        try:
            return _big_ints_as_doubles(value)
        except (RecursionError, OverflowError):
            raise WireError("bad-data", "data is not interoperable JSON") from None
    return value


_SEALED_HEAD: Final = b'{"data":"'
_SEALED_TAIL: Final = b'","type":"sealed"}'


def sealed_data(blob: bytes) -> bytes:
    """The data of a session message carrying ``blob`` (see ``core/sessions.py``)."""
    return _SEALED_HEAD + binascii.b2a_base64(blob, newline=False) + _SEALED_TAIL


def sealed_blob(env: Envelope) -> bytes:
    """The bytes a session message carries (base64 in ``data.data``); raise WireError."""
    data = env.raw.get("data")
    text: Any = None
    if type(data) is Written:
        json = data.json
        if json.startswith(_SEALED_HEAD) and json.endswith(_SEALED_TAIL):
            text = json[len(_SEALED_HEAD) : -len(_SEALED_TAIL)]
        else:
            value = data_value(env)
            text = value.get("data") if type(value) is dict else None
    elif type(data) is dict:
        text = data.get("data")
    if type(text) is str:
        text = text.encode("ascii", "replace")
    if type(text) is not bytes:
        raise WireError("bad-sealed", "no data")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise WireError("bad-sealed", "not base64") from None


def loads_data(text: bytes, max_size: int) -> Any:
    """Data its origin wrote as JSON ``text``, read as it meant it (see
    :func:`delivered_data`: integers of 2**53 and beyond are a JavaScript origin's doubles);
    raise WireError."""
    return _as_meant(loads(text, max_size), text)


def message_body(data: Any) -> tuple[str, Any, bool]:
    """Return ``(type, payload, has_payload)`` of an envelope's data (read); raise WireError."""
    if type(data) is not dict:
        raise WireError("bad-data", "data is not an object")
    kind = data.get("type")
    if type(kind) is not str:
        raise WireError("bad-data", "data.type is not a string")
    return kind, data.get("data"), "data" in data


_PEEK: Final = 1024


def data_kind(env: Envelope) -> str | None:
    """The type of an envelope's message, told cheaply: from the forms origins write (keys
    sorted, so ``type`` last, as ours sign it; ``type`` first, as 0.0.2 writes it), else by
    reading small data. None if it cannot be told (the destination reads it in the end)."""
    data = env.raw.get("data")
    if type(data) is not Written:
        kind = data.get("type") if type(data) is dict else None
        return kind if type(kind) is str else None
    text = data.json
    if text.endswith(b',"type":"user"}'):
        return USER
    if text.endswith(_SEALED_TAIL):
        return SEALED
    if text.endswith(b'"}'):
        at = text.rfind(b'"type":"')
        if at > 0 and text[at - 1] in b",{":
            kind = text[at + 8 : -2]
            if b'"' not in kind and b"\\" not in kind:
                return kind.decode("utf-8", "replace")
    if len(text) > _PEEK:
        if text.startswith(b'{"type":"'):
            kind = text[9 : text.find(b'"', 9)]
            if b"\\" not in kind:
                return kind.decode("utf-8", "replace")
        return None
    try:
        value = _json.loads(text)
    except ValueError:
        return None
    kind = value.get("type") if type(value) is dict else None
    return kind if type(kind) is str else None


HOP_BYTES: Final = 43
"""What each relay adds to a frame: ``,"<40 hex digits>"`` in its path."""


def relay_frame(env: Envelope, own_hex: str) -> bytes:
    """The frame to forward: a copy of the envelope with our id appended to its path, every
    member we did not read passed on as it was written.

    Raise :class:`WireError` if it cannot be written again (nested too deeply to serialise).
    """
    obj = {
        key: _json.fragment(value.json) if type(value) is Written else value
        for key, value in env.raw.items()
    }
    obj["path"] = [*env.path, own_hex]
    try:
        return _json.dumps(obj)
    except (TypeError, ValueError, RecursionError) as exc:  # orjson's nesting limit, or json's
        raise WireError("too-deep", str(exc)[:80]) from None


def hazard_to_original(env: Envelope) -> str | None:
    """Why this envelope would crash a 0.0.2 peer that receives it, or None.

    A 0.0.2 node throws (and its whole process dies) on a ``data`` that is not an object, a
    ``findPeers`` whose id is not a string, a ``foundPeers`` that is not a list of strings, and a
    ``handshake-answer`` whose ``ws`` is truthy but not a URL it can parse (when the answerer is
    not one of its direct peers). Relays check this before handing a frame to a 0.0.2 peer.
    """
    try:
        data = data_value(env)
    except WireError:
        return "data is not JSON"
    if type(data) is not dict:
        return "data is not an object"
    kind = data.get("type")
    if type(kind) is not str:
        return "data.type is not a string"
    body = data.get("data")
    if kind == FIND_PEERS:
        if type(body) is not str:
            return "findPeers id is not a string"
    elif kind == FOUND_PEERS:
        if type(body) is not list or not all(type(entry) is str for entry in body):
            return "foundPeers is not a list of strings"
    elif kind == HANDSHAKE_ANSWER and type(body) is dict:
        ws = body.get("ws")
        if _js_truthy(ws) and not is_ws_url(ws):
            return "handshake-answer ws is not a WebSocket URL"
    return None


def _js_truthy(value: Any) -> bool:
    if value is None or value is False or value == "":
        return False
    return not (type(value) in (int, float) and value == 0)


_WS_URL = re.compile(
    r"wss?://(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?(?:[/?#][\x21-\x7e]*)?",
    re.IGNORECASE,
)


def is_ws_url(value: Any) -> bool:
    """Whether ``value`` is a plain ``ws://``/``wss://`` URL with a host and a valid port.

    Stricter than what 0.0.2 accepts (it throws on a URL without a host or with a port beyond
    65535, and on anything that is not a string): only what every peer can dial passes.
    """
    if type(value) is not str or len(value) > 2048:
        return False
    match = _WS_URL.fullmatch(value)
    return match is not None and (match.group(1) is None or int(match.group(1)) <= 65535)


# ----------------------------------------------------------------------------- origin side


MAX_NESTING: Final = 128
"""Deepest nesting of arrays and objects in a message's data (what ``send()`` takes). The
envelope adds two levels (its ``data`` object holds the type and the data), and every relay must
be able to write the envelope again (orjson writes at most 254 levels)."""


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels deep."""
    kind = type(value)
    if kind is not list and kind is not dict:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item
        for child in children:
            if type(child) is list or type(child) is dict:
                stack.append((child, depth + 1))
    return False


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` (an envelope's ``data`` object); raise
    ``ValueError`` if it is not I-JSON or the data it holds nests deeper than
    :data:`MAX_NESTING` levels.

    I-JSON excludes NaN and infinities, integers beyond +-(2**53 - 1), lone surrogates and
    non-string keys: values that JavaScript peers could not carry unchanged.
    """
    if too_deep(value, MAX_NESTING + 1):
        raise ValueError(
            f"data nests deeper than {MAX_NESTING} levels of arrays and objects; "
            "send it flatter (or as a string)"
        )
    if _plain(value):
        try:
            return _json.dumps_sorted(value)
        except TypeError:  # a lone surrogate, or nesting orjson refuses: let rfc8785 judge
            pass
    try:
        return rfc8785.dumps(value)
    except RecursionError:
        raise ValueError("data is nested too deeply") from None
    except rfc8785.FloatDomainError as exc:
        found = str(exc).split(" ", 1)[0]
        raise ValueError(
            f"data must be JSON: NaN and Infinity are not JSON (found {found}); "
            "send null or a string instead"
        ) from None
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"data is not interoperable JSON: {exc}") from None


_PLAIN_CONTAINERS: Final = 65_536


def _plain(value: Any) -> bool:
    """Whether compact JSON with sorted keys is already RFC 8785's form of ``value``.

    True for strings, safe integers, booleans, null, and arrays and objects of those whose keys
    are ASCII (where sorting by code point and by UTF-16 unit agree). Floats are not plain: only
    RFC 8785 writes them as JavaScript does. Strings need no check: both escape alike.
    """
    stack = [value]
    pop, push = stack.pop, stack.extend
    safe = MAX_SAFE_INTEGER
    containers = 0
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -safe <= item <= safe:
                continue
            return False
        containers += 1
        if containers > _PLAIN_CONTAINERS:
            return False  # huge, or a cycle: the slow path decides
        if kind is list:
            push(item)
        elif kind is dict:
            for key in item:
                if type(key) is not str or not key.isascii():
                    return False
            push(item.values())
        else:
            return False
    return True


def canonical_received(value: Any) -> tuple[bytes, Any]:
    """The canonical JSON a signed envelope's ``data`` was signed as, and the value it denotes.

    An origin writes numbers as JavaScript does, so an integral double of 2**53 or more leaves it
    as plain digits (``2.0**53`` as ``9007199254740992``, ``1e19`` as ``10000000000000000000``),
    and a JSON parser reads those back as integers beyond I-JSON's range, which :func:`canonical`
    refuses. Such integers are taken as the doubles they denote (what JavaScript, and so every
    0.0.2 relay, does) and the value returned is the one with doubles. Raise ``ValueError`` if
    it still is not I-JSON.
    """
    try:
        return canonical(value), value
    except ValueError:
        if too_deep(value, MAX_NESTING + 1):
            raise
    try:
        value = _big_ints_as_doubles(value)
    except (RecursionError, OverflowError):
        raise ValueError("data is not interoperable JSON") from None
    return canonical(value), value


_NUMBER_SHAPES: Final = bytes(
    ord("9") if ord("0") <= byte <= ord("9") else ord("e") if byte == ord("E") else byte
    for byte in range(256)
)
"""Every digit as 9 and E as e: numbers the serializer writes unlike RFC 8785 show as
``9e`` (an exponent), ``9.9``-less ``.0`` endings and sixteen 9s."""
_ASTRAL_LEADS: Final = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
_SHAPED: Final = (b"9e", b"9999999999999999")
_WHOLE_FLOATS: Final = (b".0,", b".0]", b".0}")
_MAX_LOOKS: Final = 256


def quick_canonical(value: Any) -> tuple[bytes, bool]:
    """``value`` (a parsed envelope's ``data``) as the C serializer writes it, and whether that
    is its RFC 8785 form (if not, only :func:`canonical_received` can tell it). Raise
    ``ValueError`` if it nests past what the serializer writes.

    It is what a receiver checks a signature against before any work in Python, and costs a few
    milliseconds per MiB whatever the data: one serialisation and byte scans. The serializer
    writes some values unlike RFC 8785: a float ending in ``.0`` or with an exponent
    (JavaScript writes ``1`` and ``0.000001``), an integer of 16 digits or more (beyond 2**53
    it stands for a double), and keys beyond the BMP (sorted by code point, not UTF-16 units).
    Those are looked for outside strings; a character beyond the BMP anywhere is enough.
    """
    try:
        text = _json.dumps_sorted(value)
    except TypeError:  # nested past what the serializer writes
        raise ValueError("data is nested too deeply") from None
    if any(lead in text for lead in _ASTRAL_LEADS):
        return text, False
    shapes = text.translate(_NUMBER_SHAPES)
    suspects = [
        (where, pattern)
        for where, patterns in ((shapes, _SHAPED), (text, _WHOLE_FLOATS))
        for pattern in patterns
        if pattern in where
    ]
    exact = not text.endswith(b".0") and not (suspects and _outside_strings(text, suspects))
    return text, exact


def _outside_strings(text: bytes, suspects: list[tuple[bytes, bytes]]) -> bool:
    """Whether one of the patterns occurs outside the strings of JSON ``text`` (each pattern
    is searched in its own byte-for-byte transform of ``text``, of the same length)."""
    # Blank out escaped backslashes, then escaped quotes: the quotes left delimit strings.
    plain = text.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in text else text
    for where, pattern in suspects:
        looks = 0
        counted = quotes = 0
        at = where.find(pattern)
        while at >= 0:
            quotes += plain.count(b'"', counted, at)
            counted = at
            if quotes % 2 == 0:
                return True
            looks += 1
            if looks > _MAX_LOOKS:  # many in strings: blank them all out at once
                outside = b"".join(plain.split(b'"')[0::2])
                return any(
                    p in outside.translate(_NUMBER_SHAPES) or p in outside for _w, p in suspects
                )
            at = where.find(pattern, at + 1)
    return False


def _big_ints_as_doubles(value: Any) -> Any:
    kind = type(value)
    if kind is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    if kind is list:
        return [_big_ints_as_doubles(item) for item in value]
    if kind is dict:
        return {key: _big_ints_as_doubles(item) for key, item in value.items()}
    return value


def signed_bytes(to_hex: str, from_hex: str, nonce: str, ts: int, data_canonical: bytes) -> bytes:
    """The exact bytes an origin signs: context, ids, nonce, timestamp and canonical data."""
    return b"".join(
        (
            MESSAGE_CONTEXT,
            to_hex.encode(),
            from_hex.encode(),
            _json.dumps(nonce),
            b",",
            str(ts).encode(),
            b",",
            data_canonical,
        )
    )


def origin_frame(
    to_hex: str,
    from_hex: str,
    nonce: str,
    data_canonical: bytes,
    auth: dict[str, Any] | None,
    route: list[str] | None = None,
) -> bytes:
    """A new envelope leaving its origin, its path holding the origin's own id.

    ``route`` is an optional route hint (see ``Core._next_hops``); it is not signed: it can only
    steer the message it rides on, as any relay on the path could.
    """
    obj: dict[str, Any] = {
        "to": to_hex,
        "from": from_hex,
        "path": [from_hex],
        "nonce": nonce,
        "data": _json.fragment(data_canonical),
    }
    if auth is not None:
        obj["auth"] = auth
    if route:
        obj["route"] = route
    return _json.dumps(obj)


@dataclass(frozen=True, slots=True)
class Auth:
    """The ``auth`` member of a signed envelope, decoded."""

    key: bytes
    sig: bytes
    ts: int


_keys: dict[str, bytes] = {}
"""Keys decoded lately: a peer signs every message with the same one."""
_MAX_KEYS: Final = 4096


def parse_auth(value: Any) -> Auth:
    """Decode an envelope's ``auth`` member; raise WireError."""
    if type(value) is not dict:
        raise WireError("bad-auth", "auth is not an object")
    text = value.get("key")
    if type(text) is not str:
        raise WireError("bad-auth", "key is not 32 bytes of base64url")
    key = _keys.get(text)
    if key is None:
        key = b64decode(text, 32)
        if key is None:
            raise WireError("bad-auth", "key is not 32 bytes of base64url")
        if len(_keys) >= _MAX_KEYS:
            _keys.clear()
        _keys[text] = key
    sig = b64decode(value.get("sig"), 64)
    if sig is None:
        raise WireError("bad-signature", "sig is not 64 bytes of base64url")
    ts = value.get("ts")
    if type(ts) is not int or not 0 <= ts <= MAX_SAFE_INTEGER:
        raise WireError("bad-auth", "ts is not a timestamp")
    return Auth(key, sig, ts)


# ----------------------------------------------------------------------------- link hellos


def hello_frame(own_id: bytes, key: bytes | None, nonce: bytes | None) -> bytes:
    """The first frame on a WebSocket link: our id as Buffer JSON, plus our ``pr`` offer."""
    obj = buffer_json(own_id)
    if key is not None and nonce is not None:
        obj["pr"] = {"v": 1, "key": b64encode(key), "nonce": b64encode(nonce)}
    return _json.dumps(obj)


@dataclass(frozen=True, slots=True)
class Hello:
    """A remote's link hello: its claimed id and, for our peers, its key and challenge."""

    peer_id: bytes
    key: bytes | None
    nonce: bytes | None


def parse_hello(obj: Any) -> Hello:
    """Decode a link hello (Buffer JSON or hex id, optional ``pr``); raise WireError."""
    if type(obj) is dict:
        peer_id = id_from_wire({"type": obj.get("type"), "data": obj.get("data")})
    else:
        peer_id = id_from_wire(obj)
    if peer_id is None:
        raise WireError("bad-hello", "first frame is not an id")
    pr = obj.get("pr") if type(obj) is dict else None
    if pr is None:
        return Hello(peer_id, None, None)
    if type(pr) is not dict or pr.get("v") != 1:
        raise WireError("bad-hello", "unknown pr version")
    key = b64decode(pr.get("key"), 32)
    nonce = b64decode(pr.get("nonce"), 16)
    if key is None or nonce is None:
        raise WireError("bad-hello", "pr key or nonce malformed")
    return Hello(peer_id, key, nonce)


def link_proof_bytes(
    verifier_nonce: bytes,
    prover_nonce: bytes,
    verifier: bytes,
    prover: bytes,
    *,
    prover_dialled: bool = True,
) -> bytes:
    """What a prover signs to show the verifier on this link that it holds its key.

    The prover's role on the connection (it dialled, or it accepted) is signed too. Without it a
    man in the middle that dials two peers could pass each one's hello and proof to the other,
    and both would take the middleman's two connections for a direct link between them: both
    accepted their connection, so each expects a proof made by a dialler and refuses the other's.
    """
    role = b"D" if prover_dialled else b"A"
    return LINK_CONTEXT + role + verifier_nonce + prover_nonce + verifier + prover


def proof_frame(signature: bytes, links: bytes | None = None) -> bytes:
    """The second frame on a link between two of our peers, with the list of our links (see
    :func:`links_frame`) if given."""
    pr = {"proof": b64encode(signature)}
    if links is not None:
        pr["links"] = b64encode(links)
    return _json.dumps({"pr": pr})


def link_control_frame(kind: str, number: int) -> bytes:
    """A ping (``kind`` "ping") or its answer ("pong") on a link between two of our peers."""
    return _json.dumps({"pr": {kind: number}})


def parse_link_control(obj: dict[str, Any]) -> tuple[str, int]:
    """Decode a ping or pong frame to ``(kind, number)``; raise WireError."""
    pr = obj.get("pr")
    if type(pr) is dict and len(pr) == 1 and len(obj) == 1:
        kind, number = next(iter(pr.items()))
        if kind in ("ping", "pong") and type(number) is int and 0 <= number <= MAX_SAFE_INTEGER:
            return kind, number
    raise WireError("bad-link-control", "expected a ping or a pong")


def links_frame(ids: bytes) -> bytes:
    """The list of our links (``ids``: their 20-byte ids, one after the other) for a link
    between two of our peers: routing there looks two hops ahead (see ``core/neighbours.py``)."""
    return _json.dumps({"pr": {"links": b64encode(ids)}})


def parse_links(text: Any, most: int) -> tuple[bytes, bool]:
    """Decode the list of a links frame (or of a proof) to the ids it lists, 20 bytes each, at
    most ``most`` of them, and whether it listed more (then cut); raise WireError."""
    if type(text) is str:
        bound = most * ID_BYTES
        # Reading past the bound is not needed to know that the frame lists too many.
        cut = len(text) * 3 // 4 > bound
        if cut:
            text = text[: (bound * 4 + 2) // 3]
        raw = b64decode(text, len(text) * 3 // 4)
        if raw is not None and (cut or len(raw) % ID_BYTES == 0):
            return raw[:bound], cut
    raise WireError("bad-link-control", "expected a list of links")


def parse_proof(obj: Any) -> bytes:
    """Decode a proof frame to its signature; raise WireError."""
    pr = obj.get("pr") if type(obj) is dict else None
    sig = b64decode(pr.get("proof"), 64) if type(pr) is dict else None
    if sig is None:
        raise WireError("bad-proof", "expected a link proof frame")
    return sig
