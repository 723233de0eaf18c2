"""Messages for us and messages we relay: duplicate filters, the replay guard, verification.

Two duplicate filters, each bounded in time (``seen_ttl``) and size (``max_seen``): one for the
messages we relay, one for those delivered to us. Signed messages must be dated within
``replay_window`` of our clock and are refused at or below the replay floor: the newest message
the bounded filter had to forget early (see :meth:`Inbox._remember`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import wire
from ..identity import Verifier, id_for_key
from ..wire import Envelope, WireError
from .bounded import DatedKeys, KeyFilter
from .budgets import REQUESTS, ControlBudgets, Source
from .context import Context
from .link import Link


def message_key(sender_hex: str, nonce: str) -> int:
    """How duplicate filters remember a message: the hash of its origin and nonce.

    A third of the memory of the text, and no collision an attacker can aim for (str hashes
    are keyed per process).
    """
    return hash((sender_hex, nonce))


class Received(NamedTuple):
    """A message for us that passed every check."""

    kind: str
    payload: Any
    has_payload: bool
    sender: bytes
    verified: bool
    hops: int
    via: Source
    """Where it came from, for the budgets (see :data:`~peer_relay.core.budgets.Source`)."""
    key: bytes | None = None
    """The sender's Ed25519 key, when its signature was checked."""


class Inbox:
    """Filters what arrives; owns the duplicate filters and the replay floor."""

    def __init__(self, ctx: Context, verify: Verifier, budgets: ControlBudgets, now: float) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.verify = verify
        self.budgets = budgets
        self.started_ms = int(now * 1000)
        """Signed messages dated before we started are refused: a restart with the same
        identity forgets which messages it had, and so cannot tell their replays."""
        self.blame = False
        """Whether the last message refused by :meth:`accept` was refused for its sender's
        fault (a failed signature check, its sender past its budget), not a relay's."""
        self.seen = KeyFilter(cfg.max_seen)
        """Messages we relayed (their keys)."""
        self.delivered = DatedKeys(cfg.max_seen)
        """Messages delivered to us (their keys, dated by their signed ts or -1)."""
        # Every signed message at or below (ts, key) is refused: those forgotten to keep the
        # duplicate filter bounded are all there (it forgets the lowest first).
        self.replay_floor: tuple[int, int] = (-1, 0)

    def first_relay(self, env: Envelope, now: float) -> bool:
        """Whether ``env`` (for another peer) is new; remember it. A repeat is dropped."""
        key = message_key(env.sender, env.nonce)
        seen = self.seen
        if key in seen.keys:
            self.ctx.drop("duplicate", env.nonce)
            return False
        seen.add(key, now + self.ctx.config.seen_ttl)
        return True

    def accept(self, env: Envelope, now: float, link: Link) -> Received | None:
        """Check a message addressed to us that arrived through ``link``; None (and a counted
        drop) if it fails a check. Cheap checks and the budgets come first, then the signature
        over the data as it was written, and only then is the data read."""
        ctx = self.ctx
        self.blame = False
        key = message_key(env.sender, env.nonce)
        if key in self.delivered.keys:
            ctx.drop("duplicate", env.nonce)
            return None
        injected, via = self.came(env, link)
        budgets = self.budgets
        if budgets.checks_refused(injected, via, now):
            ctx.drop("check-budget", env.sender)
            return None
        kind = wire.data_kind(env)
        if kind in REQUESTS:
            reason = budgets.refusal(env.sender, via, now)
            if reason is not None:
                ctx.drop(reason, env.sender)
                if kind == wire.HANDSHAKE_OFFER:
                    budgets.refused_offers.touch(env.sender, now + ctx.config.connect_timeout)
                self.blame = reason == "rate-limited-peer"
                return None
        ts = -1
        raw_auth = env.raw.get("auth")
        signer = None
        try:
            if raw_auth is not None:
                checked = self._verify(env, raw_auth, key, (injected, via), now)
                if checked is None:
                    return None
                ts, data, signer = checked
                verified = True
            elif ctx.config.require_auth:
                ctx.drop("unsigned", env.sender)
                return None
            else:
                data = wire.delivered_data(env)
                verified = False
            kind, payload, has_payload = wire.message_body(data)
        except WireError as exc:
            ctx.drop(exc.reason, exc.detail)
            self.blame = True  # its origin wrote it so (a relay passes data on as written)
            return None
        self._remember(key, ts, now)
        sender = bytes.fromhex(env.sender)
        return Received(kind, payload, has_payload, sender, verified, len(env.path), via, signer)

    @staticmethod
    def came(env: Envelope, link: Link) -> tuple[Source, Source]:
        """Whom a message is charged to if it fails its check: (the injector, the link).

        Forgeries are charged to the link, and to the hop before: the peer that handed the
        message to our peer (each peer checks the last hop is the one it got it from). One
        who injects forgeries through an honest relay spends its own budget, not everyone's.
        """
        via: Source = link.handle if link.source is None else link.source
        injected: Source = f"{via}<{env.path[-2]}" if len(env.path) > 1 else via
        return injected, via

    def fresh(self, sender_hex: str, opener: bytes, ts_ms: int, now: float) -> str | None:
        """Why a session handshake from ``sender_hex`` (its ephemeral key ``opener``, dated
        ``ts_ms``) is refused as not new, or None (and it is remembered): the replay guard of
        signed messages, with the ephemeral key in place of the nonce."""
        if abs(ts_ms - now * 1000) >= self.ctx.config.replay_window * 1000:
            return "expired"
        if ts_ms < self.started_ms:
            return "before-start"
        key = hash((sender_hex, opener))
        if key in self.delivered.keys or (ts_ms, key) <= self.replay_floor:
            return "replay"
        self._remember(key, ts_ms, now)
        return None

    def _verify(
        self, env: Envelope, raw_auth: Any, key: int, came: tuple[Source, Source], now: float
    ) -> tuple[int, Any, bytes] | None:
        """Check a message's date, replay and signature; return (ts, its data read, the key) or
        None.

        The signature covers the data's canonical form, which is how our origins write it, so
        it is first checked against the data as written: one hash, no reading. Only when that
        fails (a relay that wrote the data again, as 0.0.2 relays do, or a forgery) is the data
        read and its canonical form made, within the budget of the link it came through.
        """
        ctx = self.ctx
        try:
            auth = wire.parse_auth(raw_auth)
        except WireError as exc:
            ctx.drop(exc.reason, exc.detail)
            return None
        if id_for_key(auth.key).hex() != env.sender:
            ctx.drop("key-mismatch", env.sender)
            self.blame = True
            return None
        if abs(auth.ts - now * 1000) >= ctx.config.replay_window * 1000:
            ctx.drop("expired", env.nonce)
            return None
        if auth.ts < self.started_ms:
            ctx.drop("before-start", env.nonce)
            return None
        if (auth.ts, key) <= self.replay_floor:
            ctx.drop("replay", env.nonce)
            return None
        written = wire.written_data(env)
        if written is None:
            ctx.drop("bad-data", "no data")
            return None
        if self._signed(env, auth, written):
            return auth.ts, wire.delivered_data(env), auth.key
        if self.budgets.slow_refused(came[1], len(written), now):
            self._failed(env, came, now, "check-budget", 0)
            return None
        try:
            value = wire.data_value(env)
            text, exact = wire.quick_canonical(value)
            if not exact:
                # Numbers or keys the C serializer writes unlike RFC 8785: the slow form.
                text, value = wire.canonical_received(value)
        except (WireError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, WireError) else "bad-data"
            self._failed(env, came, now, reason, len(written))
            return None
        if text != written and self._signed(env, auth, text):
            return auth.ts, value, auth.key
        self._failed(env, came, now, "bad-signature", len(written))
        return None

    def _signed(self, env: Envelope, auth: wire.Auth, data: bytes) -> bool:
        """Whether ``auth`` signs ``env`` with ``data`` as its canonical data."""
        signed = wire.signed_bytes(env.to, env.sender, env.nonce, auth.ts, data)
        return self.verify(auth.key, auth.sig, signed)

    def _failed(
        self, env: Envelope, came: tuple[Source, Source], now: float, reason: str, size: int
    ) -> None:
        """A message failed its check: count it, charge whoever handed it on and the link it
        came through (``came``; and the ``size`` bytes read for nothing), blame the sender."""
        self.ctx.drop(reason, env.sender)
        budgets = self.budgets
        injected, via = came
        budgets.failed(injected, via, now)
        if size:
            budgets.slow_failed(via, size, now)
        self.blame = True

    def _remember(self, key: int, ts: int, now: float) -> None:
        cfg = self.ctx.config
        # Over max_seen, the filter forgets the message dated earliest, not the one received
        # first: the floor rises as little as it can, and one message dated late in the window
        # (from any signer) cannot lift the floor above every honest clock and make honest
        # messages look replayed.
        forgot = self.delivered.add(key, ts, now + cfg.seen_ttl)
        if forgot is not None:
            self.replay_floor = max(self.replay_floor, forgot)

    def expire(self, now: float) -> None:
        """Forget the messages whose time in the filters is over."""
        self.seen.expire(now)
        self.delivered.expire(now)

    def first_expiries(self) -> list[float]:
        """When the oldest entry of each filter expires (for the timer)."""
        heads = []
        for first in (self.seen.first_expiry(), self.delivered.first_expiry()):
            if first is not None:
                heads.append(first)
        return heads
