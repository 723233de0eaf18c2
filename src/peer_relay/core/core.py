"""The core: a small dispatcher that wires the parts and owns the one timer.

Events from the host (a link opened, a frame arrived, the application sends, time is now T) go
to the part that owns what they touch; the parts' outputs collect in one outbox, drained with
:meth:`Core.events`. See ``docs/architecture.md`` for the parts and the path of a message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from .. import wire
from ..events import ConnectResult, Delivered, DeliveryResult, Event
from ..identity import Identity, Verifier, verify_ed25519
from ..ids import parse_id, short
from ..sealing import NoiseSuite, Suite
from ..wire import Envelope, WireError
from . import readout
from .bootstrap import Bootstrap
from .budgets import ControlBudgets
from .config import Config, Stats
from .confirm import Confirmation
from .connect import Connector
from .context import Context, log
from .delivery import DELIVER, REQUEST, Delivery
from .direct import DirectPaths
from .discovery import Discovery
from .inbox import Inbox, Received
from .link import DIALING, HELLO, OPEN, Link
from .links import Links
from .neighbours import Neighbours
from .population import for_strategy
from .routing import Router
from .sessions import KEY as SESSION_KEY
from .sessions import KEY_ASK, SEALED, Sessions
from .sessions import OPEN as SESSION_OPEN

FORGED = frozenset(("bad-handshake", "bad-ciphertext", "key-mismatch", "bad-sealed"))
"""Why a session message is dropped that is charged like a forged signature."""


class Core:
    """One peer's decisions. See the package docstring for the contract."""

    def __init__(
        self,
        identity: Identity,
        config: Config | None = None,
        *,
        rng: random.Random,
        now: float,
        verify: Verifier = verify_ed25519,
        suite: Suite | None = None,
    ) -> None:
        """``suite`` is the cryptography of sessions: by default Noise with keys derived from
        ``identity`` (None where its key cannot be exported: no sessions then)."""
        cfg = config or Config()
        self._ctx = ctx = Context(identity, cfg, rng)
        self.identity = identity
        self.id = identity.id
        self.hex = ctx.hex
        self.stats: Stats = ctx.stats
        self._budgets = budgets = ControlBudgets(ctx, now)
        self._links = links = Links(
            ctx,
            verify,
            evict=self._evict,
            refused=self._refused,
            opened=self._opened,
            gone=self._gone,
        )
        self._neighbours = neighbours = Neighbours(ctx, links)
        self._router = router = Router(ctx, links, Confirmation(ctx), neighbours)
        links.listing = neighbours.listing
        links.listed = neighbours.received
        strategy = for_strategy(cfg)
        self._discovery = discovery = Discovery(
            ctx,
            links,
            router,
            budgets,
            lists_candidates=strategy.lists_candidates,
            lookups=strategy.lookups,
        )
        self._connector = connector = Connector(
            ctx, links, router, discovery.candidates, budgets, now
        )
        self._bootstrap = bootstrap = Bootstrap(ctx, links, connector)
        self._population = population = strategy(
            ctx, links, router, discovery, connector, bootstrap
        )
        connector.would_link = population.would_link
        self._direct = direct = DirectPaths(ctx, links, connector)
        population.busy = direct.busy
        attempts = connector.attempts
        budgets.expected = lambda sender_hex: bytes.fromhex(sender_hex) in attempts
        self._inbox = inbox = Inbox(ctx, verify, budgets, now)
        if suite is None:
            try:
                suite = NoiseSuite(identity.private_bytes())
            except ValueError:
                suite = None
        self._delivery = delivery = Delivery(ctx, self._seal, self._withdraw)
        self._sessions = Sessions(
            ctx,
            suite,
            router.send_sealed,
            delivered=delivery.received,
            sent=delivery.sent,
            failed=delivery.failed,
            reset=self._send_reset,
            fresh=inbox.fresh,
        )
        self._dispatch: dict[str, Callable[[Received, float], None]] = {
            wire.USER: self._on_user,
            wire.FIND_PEERS: discovery.on_find_peers,
            wire.FOUND_PEERS: self._on_found_peers,
            wire.HANDSHAKE_OFFER: connector.on_offer,
            wire.HANDSHAKE_ANSWER: connector.on_answer,
            wire.SIGNAL: connector.on_signal,
            wire.SESSION_RESET: self._on_reset,
        }
        ctx.next_tick = now + cfg.tick_interval * rng.random()
        self._next_refresh = now + population.interval * (0.5 + rng.random())

    # ------------------------------------------------------------------ outputs and timers

    @property
    def config(self) -> Config:
        """The bounds and policies in force (``url`` as last set)."""
        return self._ctx.config

    @property
    def url(self) -> str | None:
        """The WebSocket URL this peer advertises, if it can be dialled."""
        return self._ctx.url

    def events(self) -> list[Event]:
        """Take every pending output, in order."""
        ctx = self._ctx
        out, ctx.events = ctx.events, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None once closed."""
        ctx = self._ctx
        return None if ctx.closed else ctx.next_tick

    def handle_timer(self, now: float) -> None:
        """Expire what has expired and run periodic maintenance.

        It ticks every ``tick_interval`` while something waits on a deadline (a handshake, an
        attempt, a ping out, a draining link, strikes to forgive), when a ping is due to go,
        else only at the next refresh: an idle peer costs its host nothing between refreshes.
        Called over ``confirm_timeout / 4`` past :meth:`get_timer`, it takes its host for
        stalled: pings then overdue get more time (see ``Config.confirm_timeout``).
        """
        ctx = self._ctx
        if ctx.closed or now < ctx.next_tick:
            return
        cfg = ctx.config
        # Run this late, the host was blocked: pongs may wait unread in its sockets.
        stalled = now - ctx.next_tick > cfg.confirm_timeout / 4
        ctx.next_tick = float("inf")
        self._inbox.expire(now)
        self._router.routes.expire(now)
        self._connector.expire(now)
        links = self._links
        confirmation = self._router.confirmation
        for link in list(links.by_handle.values()):
            if confirmation.tick(link, now, stalled):
                self._unresponsive(link, now)
            else:
                links.expire(link, now)
        self._connector.timeouts(now)
        self._direct.expire(now)
        self._sessions.expire(now)
        self._delivery.expire(now)
        self._bootstrap.tick(now)
        if now >= self._next_refresh:
            jitter = 0.75 + 0.5 * ctx.rng.random()
            self._next_refresh = now + self._population.interval * jitter
            self._population.refresh(now)
        self._neighbours.tick(now)
        busy = bool(self._connector.attempts) or links.busy()
        after = now + cfg.tick_interval if busy else self._next_refresh
        # Remembered message ids are forgotten within an eighth of their lifetime of expiring.
        for expiry in self._inbox.first_expiries():
            after = min(after, max(expiry, now + cfg.seen_ttl / 8))
        for due in (self._sessions.next_due(), self._delivery.next_due()):
            if due is not None:
                after = min(after, max(due, now))
        ctx.next_tick = min(ctx.next_tick, after, max(self._bootstrap.due, now))

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Every bounded structure's size now, next to its limit (per link: the largest)."""
        out = readout.bounds(self._ctx.config, self._parts())
        cfg = self._ctx.config
        sizes = {**self._sessions.sizes(), **self._delivery.sizes()}
        out["sessions"] = (sizes["sessions"], cfg.max_sessions)
        out["session_queue"] = (sizes["session_queue"], cfg.max_session_queue)
        out["peer_keys"] = (sizes["peer_keys"], cfg.max_budgets)
        out["deliveries"] = (sizes["deliveries"], cfg.max_deliveries)
        out["requests_in"] = (sizes["requests_in"], cfg.max_requests)
        out["delivered_ids"] = (sizes["delivered_ids"], cfg.max_seen)
        out["direct"] = (len(self._direct.tallies), max(1, cfg.max_sessions))
        out["listed"] = (self._neighbours.largest(), cfg.max_listed)
        return out

    def inspect(self) -> dict[str, Any]:
        """Whom this peer deals with now, as plain values (ids in hex), for diagnostics: every
        link with its state, the attempts in flight, the peers whose offer it answered, the
        peers it leaves alone for a while, and the peers it has a WebRTC link with."""
        out = readout.inspect(self._parts())
        out["sessions"] = self._sessions.readout()
        now_busy = [p.hex() for p, t in self._direct.tallies.entries.items() if t.busy_until]
        out["direct"] = {"busy": now_busy, "upgrades": self._direct.upgrades}
        return out

    def _parts(self) -> readout.Parts:
        return readout.Parts(
            self._links, self._router, self._inbox, self._discovery, self._connector
        )

    # ------------------------------------------------------------------ application API

    @property
    def peers(self) -> list[bytes]:
        """Ids of the open direct links."""
        return [link.peer_id for link in self._links.open]

    def route(self, to: object) -> bytes | None:
        """The linked peer a message for ``to`` would go to first now, by our links and what
        our peers list of theirs (a route hint learnt from ``to``'s own messages may take it
        another way); None if it would be dropped (no route)."""
        target = parse_id(to)
        hops = self._router.next_hops(target.hex(), (self.hex,))
        return hops[0].peer_id if hops else None

    def waiting(self) -> int:
        """Messages of ours waiting for a first link or for a session to open."""
        return len(self._router.queue) + self._sessions.queued()

    def link_transport(self, peer_id: bytes) -> str | None:
        """The transport of the open link to ``peer_id``, if any."""
        link = self._links.table.get(peer_id)
        return None if link is None else link.transport

    def set_url(self, url: str | None) -> None:
        """Set the WebSocket URL this peer advertises (known once its server listens)."""
        ctx = self._ctx
        ctx.url = url
        ctx.config = replace(ctx.config, url=url)

    def bootstrap(self, urls: Iterable[str], now: float) -> None:
        """Dial these WebSocket URLs now, and again whenever every link is lost."""
        self._bootstrap.start(urls, now)

    def send(self, to: object, data: Any, now: float) -> None:
        """Send ``data`` (any I-JSON value) to peer ``to``, end to end encrypted through a
        session unless ``sessions`` is off; raise at once if either is malformed."""
        target = parse_id(to)
        self._ensure_open()
        if target == self.id:
            wire.canonical({"type": wire.USER, "data": data})  # the checks of any message
            self.stats.delivered += 1
            self._ctx.events.append(Delivered(data, self.id, True, 0))
            return
        if self._ctx.config.sessions and self._sessions.suite is not None:
            self._delivery.send(target.hex(), self._body(data), now)
        else:
            self._router.originate(target.hex(), wire.USER, data, now)
        self._direct.note(target, now)

    def deliver(self, to: object, data: Any, now: float, timeout: float = 10.0) -> int:
        """Send ``data`` to ``to`` through a session and wait for its receipt, sending it again
        over other first hops when it is late; a :class:`DeliveryResult` with the token
        returned here says how it ended, within ``timeout`` seconds. Raise at once on bad
        arguments."""
        target, body = self._session_call(to, data, timeout)
        if target == self.id:
            token = self._delivery.new_id()
            self.stats.delivered += 1
            self._ctx.events.append(Delivered(data, self.id, True, 0))
            self._ctx.events.append(DeliveryResult(token, True, ""))
            return token
        token = self._delivery.start(target.hex(), DELIVER, body, now, timeout)
        self._direct.note(target, now)
        return token

    def request(self, to: object, data: Any, now: float, timeout: float = 10.0) -> int:
        """Send a request to ``to``'s handler; a :class:`Reply` with the token returned here
        brings its answer, or why there is none, within ``timeout`` seconds. The handler gets
        it at most once, however often it is sent again."""
        target, body = self._session_call(to, data, timeout)
        if target == self.id:
            return self._delivery.ask_self(data, now, timeout)
        token = self._delivery.start(target.hex(), REQUEST, body, now, timeout)
        self._direct.note(target, now)
        return token

    def respond(self, token: int, value: Any, now: float, error: str | None = None) -> bool:
        """Answer the request of a :class:`RequestReceived`: with ``value`` (any I-JSON value),
        or with ``error`` (a line of text the caller gets as the handler's error). False if
        it was answered already."""
        self._ensure_open()
        body = None if error is not None else self._body(value)
        return self._delivery.answer(token, body, error, now)

    def _session_call(self, to: object, data: Any, timeout: float) -> tuple[bytes, bytes]:
        target = parse_id(to)
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        body = self._body(data)
        self._ensure_open()
        if self._sessions.suite is None:
            raise RuntimeError(
                "this peer's identity cannot be exported, and sessions need its key: "
                "create the peer with an Identity made from its private bytes"
            )
        return target, body

    def _body(self, data: Any) -> bytes:
        """``data`` as the JSON a session carries; raise if it is not I-JSON or too large."""
        body = wire.canonical(data)
        cfg = self._ctx.config
        # Sealed, base64, in an envelope, relayed over max_hops.
        relayed = (len(body) + 64) * 4 // 3 + 256 + cfg.max_hops * wire.HOP_BYTES
        if relayed > cfg.max_frame:
            raise ValueError(
                f"message of {len(body)} bytes exceeds max_frame ({cfg.max_frame} bytes) once "
                f"sealed and relayed over max_hops ({cfg.max_hops}); send less data or raise "
                "max_frame"
            )
        return body

    def connect(self, peer: object, now: float) -> None:
        """Ask ``peer`` for a direct link; a :class:`ConnectResult` reports the outcome."""
        peer_id = parse_id(peer)
        self._ensure_open()
        if peer_id == self.id:
            raise ValueError("cannot connect to our own id")
        if peer_id in self._links.table:
            self._ctx.events.append(ConnectResult(peer_id, True, "already linked"))
            return
        attempt = self._connector.attempts.get(peer_id)
        if attempt is not None:
            attempt.user = True
            return
        self._connector.start(peer_id, now, user=True)

    def disconnect(self, peer: object, now: float) -> bool:
        """Close the direct link to ``peer``; return whether there was one."""
        link = self._links.table.get(parse_id(peer))
        if link is None:
            return False
        self._links.close(link, "disconnect", now)
        return True

    def close(self, now: float) -> None:
        """Close every link; the core does nothing more afterwards."""
        ctx = self._ctx
        if ctx.closed:
            return
        for link in list(self._links.by_handle.values()):
            self._links.close(link, "shutdown", now)
        for peer_id in list(self._connector.attempts):
            self._connector.fail(peer_id, "shutdown", now)
        self._router.queue.clear()
        self._delivery.close()
        ctx.closed = True

    def _ensure_open(self) -> None:
        if self._ctx.closed:
            raise RuntimeError("this peer has been destroyed")

    # ------------------------------------------------------------------ links (from the host)

    def link_accepted(self, now: float, transport: str = "ws", source: str | None = None) -> int:
        """An inbound connection arrived; returns its handle (already sent its hello, or closed
        at once when the handshake budgets are spent).

        ``source`` names where it came from (an address, see :func:`peer_relay.host.source_of`):
        the unit of the per-source handshake budget; None where the host cannot tell.
        """
        return self._links.accept(now, transport, source)

    def link_connected(self, handle: int, now: float) -> None:
        """Outbound link ``handle`` (a dial or a WebRTC link) is open."""
        link = self._links.by_handle.get(handle)
        if link is None or link.state != DIALING:
            return
        if link.transport == "webrtc":
            # The channel is open here, which does not mean the remote took it: the original's
            # browser build never does in current Chromium, and messages sent on such a link are
            # lost. Greet the remote on it (findPeers, as 0.0.2 sends on a new link); the link
            # opens on the remote's first frame.
            assert link.expected is not None
            link.state = HELLO
            link.deadline = now + self._ctx.config.link_timeout
            greeting = self._router.envelope(
                link.expected.hex(), wire.FIND_PEERS, self.hex, now, None
            )
            self.stats.originated += 1
            self._ctx.send(link.handle, greeting)
        else:
            self._links.connected(link, now)

    def admits(self, source: str | None) -> bool:
        """Whether a connection from ``source`` would be taken into a handshake now: a host
        may turn one away before its WebSocket upgrade when not (see ``link_accepted``)."""
        return self._links.admits(source)

    def has_link(self, handle: int) -> bool:
        """Whether ``handle`` is a link the core keeps (opening, open or draining): False for a
        connection it refused at once, which the host may then drop without ceremony."""
        return handle in self._links.by_handle

    def link_closed(self, handle: int, now: float, reason: str = "closed") -> None:
        """Link ``handle`` closed (or a dial failed) on the host's side."""
        link = self._links.by_handle.get(handle)
        if link is not None:
            # Messages the remote did not confirm may have died with it: they go another way
            # (a copy that did arrive is dropped as a duplicate by its destination).
            unconfirmed = Confirmation.unconfirmed(link)
            self._links.forget(link, reason, now)
            for frame in unconfirmed:
                self._router.reroute(frame, now)

    def frame_undeliverable(self, handle: int, frame: bytes, now: float) -> None:
        """The host could not send ``frame`` on link ``handle`` (closing, gone or full).

        The link leaves routing, and an envelope goes out on the next best link instead of being
        lost; anything else (a hello, a proof) is dropped.
        """
        link = self._links.by_handle.get(handle)
        if link is not None and link.state == OPEN:
            self._links.close(link, "send failed", now)
        self._router.reroute(frame, now)

    def send_signal(self, handle: int, signal: Any, now: float) -> None:
        """Relay a WebRTC signal of link ``handle`` to its remote."""
        self._connector.send_signal(handle, signal, now)

    def frame_received(self, handle: int, frame: bytes | str, now: float) -> None:
        """One frame arrived on link ``handle``."""
        links = self._links
        link = links.by_handle.get(handle)
        if link is None:
            return
        ctx = self._ctx
        stats = ctx.stats
        stats.frames_in += 1
        stats.bytes_in += len(frame)
        try:
            if link.state < OPEN and link.transport != "webrtc":
                links.handshake(link, wire.loads(frame, ctx.config.max_frame), now)
                return
            obj = wire.loads_members(frame, ctx.config.max_frame)
            if "pr" in obj and "to" not in obj:
                pr = obj["pr"]
                if type(pr) is dict and len(pr) == 1 and "links" in pr and len(obj) == 1:
                    self._neighbours.received(link, pr["links"], now)
                else:
                    self._router.confirmation.control(link, obj, now)
                return
            env = wire.parse_envelope(obj, ctx.config.max_hops)
        except WireError as exc:
            if exc.reason == "too-deep" and link.state == OPEN:
                # Readers differ a little in how deep they go: a relay may have passed it on.
                ctx.drop(exc.reason, exc.detail)
            else:
                links.strike(link, exc, now)
            return
        if link.state < OPEN:
            # The remote's first frame on a WebRTC link (see link_connected). Its id is proven if
            # the description that carried its DTLS fingerprint was signed.
            assert link.expected is not None
            links.establish(link, link.expected, link.authenticated, now)
            if link.state != OPEN:
                return
        if env.path[-1].lower() != link.peer_hex:
            # Every peer that sends a message adds its id to the path: the last hop is the peer
            # at the other end of this link, or it lies about who handed it the message.
            links.strike(link, WireError("bad-path", "the last hop is not the sender"), now)
            return
        if env.to == self.hex:
            self._receive(env, link, now)
        elif self._inbox.first_relay(env, now):
            self._router.forward(env, now)

    # ------------------------------------------------------------------ messages for us

    def _receive(self, env: Envelope, link: Link, now: float) -> None:
        inbox = self._inbox
        if wire.data_kind(env) == wire.SEALED:
            self._sealed(env, link, now)
            return
        received = inbox.accept(env, now, link)
        if received is None:
            if inbox.blame and env.sender == link.peer_hex and len(env.path) == 1:
                # The fault of the peer at the other end of the link (a forgery, a flood), not of
                # one it relayed for.
                self._links.misbehaved(link, now)
            return
        self._router.learn(env, now)
        if received.key is not None:
            self._sessions.learn_key(env.sender, received.key)
        handler = self._dispatch.get(received.kind)
        if handler is None:
            self._ctx.drop("unknown-type", received.kind[:32])
        else:
            handler(received, now)

    def _sealed(self, env: Envelope, link: Link, now: float) -> None:
        """A session message for us: its checks are the session's; the budgets are ours."""
        ctx = self._ctx
        injected, via = self._inbox.came(env, link)
        budgets = self._budgets
        if budgets.checks_refused(injected, via, now):
            ctx.drop("check-budget", env.sender)
            return
        sender = env.sender
        own = sender == link.peer_hex and len(env.path) == 1
        try:
            blob = wire.sealed_blob(env)
        except WireError as exc:
            ctx.drop(exc.reason, exc.detail)
            if own:
                self._links.misbehaved(link, now)
            return
        kind = blob[0] if blob else 0
        if kind in (KEY_ASK, SESSION_OPEN):
            # What costs us an answer or a key exchange is a request, and budgeted as one.
            reason = budgets.unproven_refusal(sender, injected, via, now)
            if reason is not None:
                ctx.drop(reason, sender)
                if own and reason == "rate-limited-peer":
                    self._links.misbehaved(link, now)
                return
        # What the message prompts (a KEY, an ACCEPT, a receipt, a reply) goes out before
        # receive() returns, and had better take the way the message came: a way that works.
        # Learnt at once, and kept only from a message that proves its sender (a forger must
        # not steer our messages: KEY_ASK and KEY carry a public key only).
        router = self._router
        before = router.learn(env, now)
        reason = self._sessions.receive(sender, blob, len(env.path), now)
        if reason is None and kind == SESSION_OPEN:
            budgets.proven(sender, now)
        if reason is not None or kind in (KEY_ASK, SESSION_KEY):
            router.unlearn(sender, before)
        elif kind in (SESSION_OPEN, SEALED):  # what carries messages, not the handshake's answer
            self._direct.note(bytes.fromhex(sender), now)
        if reason in FORGED:
            budgets.failed(injected, via, now)
            if own:
                self._links.misbehaved(link, now)

    def _seal(
        self,
        to_hex: str,
        inner: bytes,
        now: float,
        avoid: tuple[str, ...],
        only_new: bool,
    ) -> str | None:
        return self._sessions.send(to_hex, inner, now, avoid, only_new)

    def _withdraw(self, to_hex: str, inner: bytes, now: float) -> None:
        self._sessions.withdraw(to_hex, inner, now)

    def _send_reset(self, peer_hex: str, sid: int, first: int, now: float) -> None:
        # A reset costs a signature, and anyone can name a session we do not know under any
        # id: resets share the budget of answered requests (``control_rate``).
        if self._ctx.config.sign and self._budgets.overall.take(now):
            first = min(first, wire.MAX_SAFE_INTEGER)
            payload = [sid, first, self._inbox.started_ms]
            self._router.originate(peer_hex, wire.SESSION_RESET, payload, now)

    def _on_reset(self, msg: Received, now: float) -> None:
        """A signed ``session-reset``: ``sid``, or ``[sid, first nonce it could not open, when
        it started (ms)]``."""
        payload = msg.payload
        if not msg.verified or not self._budgets.spend(msg.sender.hex(), msg.via, now):
            return
        if type(payload) is int:
            self._sessions.reset(msg.sender.hex(), payload, now)
        elif (
            type(payload) is list
            and len(payload) == 3
            and all(type(x) is int and 0 <= x <= wire.MAX_SAFE_INTEGER for x in payload)
        ):
            lost = (payload[1], payload[2] / 1000)
            self._sessions.reset(msg.sender.hex(), payload[0], now, lost)
        else:
            self._ctx.drop("bad-data", "session-reset")

    def _on_user(self, msg: Received, now: float) -> None:
        self.stats.delivered += 1
        self._direct.note(msg.sender, now)
        self._ctx.events.append(Delivered(msg.payload, msg.sender, msg.verified, msg.hops))

    def _on_found_peers(self, msg: Received, now: float) -> None:
        if self._discovery.on_found_peers(msg.payload, msg.sender.hex(), now):
            self._population.populate(now)

    # ------------------------------------------------------------------ wiring of the parts

    def _unresponsive(self, link: Link, now: float) -> None:
        """The remote did not answer a ping in time: close the link, re-route what it held."""
        self._ctx.drop("unresponsive", link.peer_hex)
        frames = link.awaiting + link.pending
        self._links.close(link, "unresponsive", now)
        for frame in frames:
            self._router.reroute(frame, now)

    def _evict(self, newcomer: bytes, now: float) -> Link | None:
        return self._population.victim(newcomer, now)

    def _refused(self, peer_id: bytes, reason: str, now: float) -> None:
        self._connector.fail(peer_id, reason, now)

    def _opened(self, link: Link, now: float) -> None:
        self._discovery.candidates.add(link.peer_id, now, replace_oldest=True)
        self._neighbours.opened(link, now)
        if link.remote_key is not None and link.authenticated:
            self._sessions.learn_key(link.peer_hex, link.remote_key)
        self._connector.linked(link.peer_id)
        self._bootstrap.linked(link, now)
        log.debug("%s linked %s over %s", short(self.hex), short(link.peer_id), link.transport)
        if self._population.asks_new_link(link):
            self._discovery.ask(link.peer_hex, self.hex, now)
        self._router.flush_queue(now)

    def _gone(self, link: Link, reason: str, was_open: bool, now: float) -> None:
        if was_open:
            self._neighbours.gone(link, now)
        self._budgets.link_gone(link.handle)
        self._connector.link_gone(link, reason, was_open, now)
        self._bootstrap.link_gone(link, was_open, now)
