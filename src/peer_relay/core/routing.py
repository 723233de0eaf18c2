"""Routing: building and signing envelopes, next hops, route hints, forwarding, re-routing, and
the queue of messages waiting for a first link.

Greedy XOR forwarding: a message goes to the open link whose id is closest to its target
(``redundancy`` links with the original's strategy), skipping peers already on its path. A route
hint (the reversed path of a message the target sent) is followed first where one of its hops is
linked: it reaches peers that greedy routing cannot find yet.
"""

from __future__ import annotations

from collections import deque
from sys import intern
from typing import Any

from .. import wire
from ..wire import Envelope, WireError
from .bounded import BoundedMap
from .confirm import Confirmation
from .context import Context
from .link import Link
from .links import Links
from .neighbours import Neighbours


def _route_expiry(entry: tuple[float, list[str]]) -> float:
    return entry[0]


class Router:
    """Sends what the node originates, forwards what it relays, remembers reverse paths."""

    def __init__(
        self, ctx: Context, links: Links, confirmation: Confirmation, neighbours: Neighbours
    ) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.links = links
        self.confirmation = confirmation
        self.neighbours = neighbours
        self.routes: BoundedMap[str, tuple[float, list[str]]] = BoundedMap(
            cfg.max_routes, _route_expiry
        )
        """Reverse paths learnt from verified messages, by origin (hex): (until, path)."""
        self.queue: deque[tuple[str, bytes, bool]] = deque()
        """Messages originated before the first link opened: (to, frame, confirm)."""

    # ---------------------------------------------------------------- what we originate

    def hint(self, to_hex: str, now: float) -> list[str] | None:
        """The route hint held for ``to_hex``, if one is still fresh."""
        route = self.routes.entries.get(to_hex)
        return route[1] if route is not None and route[0] > now else None

    def envelope(
        self, to_hex: str, kind: str, payload: Any, now: float, hint: list[str] | None
    ) -> bytes:
        """A new envelope of ours for ``to_hex``, signed when ``sign`` is set, carrying the
        route ``hint`` if one is given."""
        ctx = self.ctx
        data = wire.canonical({"type": kind, "data": payload})
        nonce = str(ctx.rng.getrandbits(63))
        auth = None
        if ctx.config.sign:
            ts = int(now * 1000)
            signature = ctx.identity.sign(wire.signed_bytes(to_hex, ctx.hex, nonce, ts, data))
            auth = {"key": ctx.key_b64, "sig": wire.b64encode(signature), "ts": ts}
        return wire.origin_frame(to_hex, ctx.hex, nonce, data, auth, hint)

    def originate(self, to_hex: str, kind: str, payload: Any, now: float) -> None:
        """Send a new message of ours; raise ValueError if it exceeds ``max_frame``."""
        ctx = self.ctx
        cfg = ctx.config
        hint = self.hint(to_hex, now)
        frame = self.envelope(to_hex, kind, payload, now, hint)
        # Every relay adds its id to the path: the frame must still fit after the last hop.
        relayed = len(frame) + cfg.max_hops * wire.HOP_BYTES
        if relayed > cfg.max_frame:
            raise ValueError(
                f"message of {len(frame)} bytes exceeds max_frame ({cfg.max_frame} bytes) once "
                f"relayed over max_hops ({cfg.max_hops}); send less data or raise max_frame"
            )
        ctx.stats.originated += 1
        if not self.links.open:
            if len(self.queue) >= ctx.config.max_queue:
                ctx.drop("queue-full", to_hex)
            else:
                self.queue.append((to_hex, frame, kind == wire.USER))
            return
        self._route_new(to_hex, frame, kind == wire.USER, now, hint)

    def send_sealed(
        self,
        to_hex: str,
        data: bytes,
        now: float,
        avoid: tuple[str, ...] = (),
        only_new: bool = False,
    ) -> str | None:
        """Send a session message (``data``: its data, already JSON) in a new unsigned envelope
        (the session authenticates it); return the first hop (None: queued or no route).

        ``avoid`` names first hops to keep away from, where another way exists: a message sent
        again after its receipt did not come takes a way it has not taken. ``only_new``: send
        nothing (None) unless such a way exists.
        """
        ctx = self.ctx
        if only_new and not self.next_hops(to_hex, (ctx.hex, *avoid)):
            return None
        nonce = str(ctx.rng.getrandbits(63))
        hint = self.hint(to_hex, now)
        if hint is not None and avoid and any(hop in avoid for hop in hint):
            hint = None
        frame = wire.origin_frame(to_hex, ctx.hex, nonce, data, None, hint)
        ctx.stats.originated += 1
        if not self.links.open:
            if len(self.queue) >= ctx.config.max_queue:
                ctx.drop("queue-full", to_hex)
            else:
                self.queue.append((to_hex, frame, True))
            return None
        own = (ctx.hex,)
        hops = self.next_hops(to_hex, own + avoid, hint) if avoid else []
        if not hops:
            # Every first hop tried: any but the last one tried, else the best.
            hops = self.next_hops(to_hex, own + avoid[-1:], hint) if avoid else []
            if not hops:
                hops = self.next_hops(to_hex, own, hint)
        if not hops:
            ctx.drop("no-route", to_hex)
            return None
        self._send(hops, frame, True, now)
        return hops[0].peer_hex

    def flush_queue(self, now: float) -> None:
        """Send the messages that waited for a first link."""
        queue = self.queue
        while queue:
            to_hex, frame, confirm = queue.popleft()
            self._route_new(to_hex, frame, confirm, now, self.hint(to_hex, now))

    def _route_new(
        self, to_hex: str, frame: bytes, confirm: bool, now: float, hint: list[str] | None
    ) -> None:
        hops = self.next_hops(to_hex, (self.ctx.hex,), hint)
        if not hops:
            self.ctx.drop("no-route", to_hex)
        self._send(hops, frame, confirm, now)

    def _send(self, hops: list[Link], frame: bytes, confirm: bool, now: float) -> None:
        send = self.ctx.send
        for link in hops:
            send(link.handle, frame)
            if confirm:
                self.confirmation.track(link, frame, now)

    # ---------------------------------------------------------------- what we relay

    def forward(self, env: Envelope, now: float) -> None:
        """Relay an envelope for another peer (its duplicates already filtered)."""
        ctx = self.ctx
        if len(env.path) >= ctx.config.max_hops:
            ctx.drop("too-many-hops", env.nonce)
            return
        if ctx.hex in env.path:
            ctx.drop("loop", env.nonce)
            return
        hops = self.next_hops(env.to, env.path, env.raw.get("route"))
        if not hops:
            ctx.drop("no-route", env.to)
            return
        if not all(link.authenticated for link in hops):
            # A 0.0.2 peer is next (our peers always prove their id): it must not get a frame
            # that would crash it. Our own peers check the same before they hand it to one.
            hazard = wire.hazard_to_original(env)
            if hazard is not None:
                ctx.drop("unsafe-for-original", hazard)
                return
        try:
            frame = wire.relay_frame(env, ctx.hex)
        except WireError as exc:
            ctx.drop(exc.reason, exc.detail)
            return
        if len(frame) > ctx.config.max_frame:
            # The next hop would refuse it and take us for a faulty peer: drop it here.
            ctx.drop("too-large-to-relay", f"{len(frame)} bytes")
            return
        ctx.stats.relayed += 1
        self._send(hops, frame, wire.data_kind(env) in wire.CONFIRMED, now)

    def reroute(self, frame: bytes, now: float) -> None:
        """Send an envelope we already sent once on the best link left (a ping never came back,
        or the link failed); anything that is not an envelope is dropped."""
        ctx = self.ctx
        try:
            obj = wire.loads_members(frame, ctx.config.max_frame)
            env = wire.parse_envelope(obj, ctx.config.max_hops)
        except WireError:
            return
        hops = self.next_hops(env.to, env.path, env.raw.get("route"))
        if not hops:
            ctx.drop("no-route", env.to)
            return
        ctx.stats.rerouted += 1
        self._send(hops[:1], frame, wire.data_kind(env) in wire.CONFIRMED, now)

    # ---------------------------------------------------------------- next hops

    def next_hops(
        self, to_hex: str, path: list[str] | tuple[str, ...], route: Any = None
    ) -> list[Link]:
        """Links to forward a message for ``to_hex`` to, best first (empty: no route).

        ``route`` is a route hint: the reversed path of a message the target sent, carried by
        replies so that they reach peers that greedy routing cannot find yet (a newcomer known
        only to its bootstrap peer). A hop on the hint is followed when linked; else greedy.
        """
        cfg = self.ctx.config
        if type(route) is list and 0 < len(route) <= cfg.max_hops:
            hinted = self._follow_hint(route, path)
            if hinted is not None:
                return [hinted]
        target = int(to_hex, 16)
        redundancy = cfg.redundancy
        if redundancy == 1:
            best: Link | None = None
            best_d = -1
            for link in self.links.open:
                d = link.peer_int ^ target
                if (best is None or d < best_d) and link.peer_hex not in path:
                    best, best_d = link, d
            if best_d == 0:
                return [best] if best is not None else []
            neighbours = self.neighbours
            if neighbours.enabled:
                # A peer linked to one closer than any of ours, and than we are (else it is a
                # detour, and one of our own links takes it, as far as detours go).
                own_d = self.ctx.int ^ target
                within = own_d if best is None or best_d > own_d else best_d
                via = neighbours.via(target, within, path)
                if via is not None and (
                    # A peer no closer than we are, for what a list says: lists can be stale,
                    # and such hops count as detours.
                    via.peer_int ^ target < own_d or self.detours(target, path) < cfg.max_detours
                ):
                    return [via]
            ranked = [] if best is None else [best]
        else:
            ranked = sorted(
                (link for link in self.links.open if link.peer_hex not in path),
                key=lambda link: link.peer_int ^ target,
            )[:redundancy]
            best_d = ranked[0].peer_int ^ target if ranked else -1
        if not ranked:
            return ranked
        if best_d == 0:
            return ranked[:1]
        if best_d >= self.ctx.int ^ target and (
            not cfg.detour or self.detours(target, path) >= cfg.max_detours
        ):
            return []
        return ranked

    def detours(self, target: int, path: list[str] | tuple[str, ...]) -> int:
        """How many hops in a row, up to and including us, the message has taken without coming
        closer to ``target`` than its path had come before (0: we are the closest yet)."""
        best = 1 << 160
        stale = 0
        own = self.ctx.hex
        # Ours (a message we send, or send again): the path up to us; what follows us in it
        # are first hops to avoid, not hops taken.
        walked = path[: path.index(own) + 1] if own in path else (*path, own)
        for hop in walked:
            try:
                d = int(hop, 16) ^ target
            except ValueError:
                d = best
            if d < best:
                best, stale = d, 0
            else:
                stale += 1
        return stale

    def _follow_hint(self, route: list[Any], path: list[str] | tuple[str, ...]) -> Link | None:
        """The linked hop farthest along a route hint after us, if any (else: greedy).

        Taking the farthest linked hop, the target itself when linked, short-cuts the hint.
        """
        try:
            position = route.index(self.ctx.hex)
        except ValueError:
            position = -1
        table = self.links.table
        for index in range(len(route) - 1, position, -1):
            hop = route[index]
            if type(hop) is not str or len(hop) != 40:
                return None
            if hop in path:
                continue
            try:
                link = table.get(bytes.fromhex(hop))
            except ValueError:
                return None
            if link is not None:
                return link
        return None

    # ---------------------------------------------------------------- route hints

    def learn(self, env: Envelope, now: float) -> tuple[float, list[str]] | None:
        """Remember the reversed path of a verified message that started at its sender;
        return what was remembered before (see :meth:`unlearn`)."""
        before = self.routes.entries.get(env.sender)
        if env.path and env.path[0] == env.sender:
            # Interned: the same few ids recur in every peer's routes.
            path = [intern(hop) for hop in reversed(env.path)]
            self.routes.touch(env.sender, (now + self.ctx.config.route_ttl, path))
        return before

    def unlearn(self, sender_hex: str, before: tuple[float, list[str]] | None) -> None:
        """Put back the route to ``sender_hex`` that :meth:`learn` replaced (the message it
        learnt from failed its checks)."""
        if before is None:
            self.routes.entries.pop(sender_hex, None)
        else:
            self.routes.touch(sender_hex, before)

    def hint_via(self, peer_hex: str, via: str, now: float) -> None:
        """Make the next message to ``peer_hex`` go through linked peer ``via``, unless a
        direct enough route to it is known."""
        known = self.routes.entries.get(peer_hex)
        if known is None or known[0] <= now or len(known[1]) > 2:
            self.routes.touch(peer_hex, (now + self.ctx.config.route_ttl, [via, peer_hex]))
