"""A deterministic network of cores: virtual clock, seeded randomness, simulated links.

Each simulated peer runs the very same :class:`peer_relay.core.Core` as a live node, driven by the
very same pump (:class:`peer_relay.host.Pump`); this module only plays the part of the asyncio
host: it carries frames between cores with a latency drawn from a distribution, optionally loses
them, opens WebSocket-like links on dial, and fires timers.
Given the same seed and the same calls, a run is identical.

Failures it models: a clean leave (the core closes every link, the remotes see the close one
latency later, behind the frames sent before it, as over a WebSocket), a crash (no goodbye: the
links go silent and each remote notices only after a keepalive timeout, as a websockets ping
would), partitions (frames and dials across groups are lost; links that cross stay silent
until their keepalive timeout closes them) and frame loss.
And a misbehaving relay (:meth:`SimNetwork.swallow`): it drops the user and session messages it
relays while it answers pings and serves everything else, which only end-to-end receipts and
sending again over other first hops get around.

Sessions run as in a live node: without ``real_crypto``, each core gets a
:class:`~peer_relay.sealing.StandInSuite` (the protocol's messages, sizes and checks without
the cost of X25519 and ChaChaPoly), seeded from the peer's seed; with it, the real Noise suite
from its Ed25519 key, whose ephemeral keys come from the operating system: a real-crypto run
decides the same, but the bytes of its session messages differ from one run to the next.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import Config, Core
from ..events import (
    ConnectResult,
    Delivered,
    DeliveryResult,
    PeerLinked,
    PeerUnlinked,
    Reply,
    RequestReceived,
)
from ..host import Pump
from ..identity import Identity
from ..sealing import Handshake, StandInSuite

EPOCH = 1_700_000_000.0
"""Virtual time starts here, so that signed timestamps look like real ones."""

USER_MARK = b'"type":"user"'
"""Bytes every frame of a ``user`` message holds (canonical JSON has no spaces)."""
SEALED_MARK = b'"type":"sealed"'
"""Bytes every frame of a session message holds (see ``core/sessions.py``)."""
RESET_MARK = b'"type":"session-reset"'
"""Bytes every frame of a ``session-reset`` message holds."""
_SEALED_DATA = b'{"data":"'
"""What the base64 of a session message's bytes follows (``wire.sealed_data``)."""
SESSION_KINDS = {1: "key-ask", 2: "key", 3: "open", 4: "accept", 5: "sealed"}
"""What the first byte of a session message's bytes says it is (``core/sessions.py``)."""

_HANDSHAKE = (b'{"type":"Buffer"', b'{"pr":')
"""How link hellos and proofs start: ``loss`` spares them (a stream does not lose its first
frames and keep the rest; a lost handshake is a failed dial, which the model has already)."""

Draw = Callable[[random.Random], float]
"""A distribution: draws one value from the network's random source."""


class FastSigner:
    """A stand-in for Ed25519 in large simulations: a keyed hash of the same sizes.

    It is not a signature scheme (anyone who knows the public key can "sign"); it keeps every
    code path of signing and verification while costing a microsecond instead of a hundred.
    """

    __slots__ = ("public_key",)

    def __init__(self, seed: bytes) -> None:
        self.public_key = hashlib.sha256(b"sim-key" + seed).digest()

    def sign(self, message: bytes) -> bytes:
        return hashlib.blake2b(self.public_key + message, digest_size=64).digest()


def fast_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Verifier matching :class:`FastSigner`."""
    return signature == hashlib.blake2b(public_key + message, digest_size=64).digest()


def lognormal_latency(median: float = 0.020, sigma: float = 0.5) -> Draw:
    """One-way link latency: log-normal around ``median`` seconds (a long tail, never zero)."""

    def draw(rng: random.Random) -> float:
        return median * rng.lognormvariate(0.0, sigma)

    return draw


def uniform_delay(low: float, high: float) -> Draw:
    """A delay drawn uniformly from ``[low, high)`` seconds."""

    def draw(rng: random.Random) -> float:
        return low + (high - low) * rng.random()

    return draw


def message_kind(frame: bytes) -> str | None:
    """What message a frame carries, for counting frames: ``user``, a session message's kind
    (``key-ask``, ``key``, ``open``, ``accept``, ``sealed``: the clear first byte of its bytes;
    a receipt is ``sealed`` like the message it answers), ``session-reset``, or None for the
    rest (links, discovery, connection handshakes)."""
    if USER_MARK in frame:
        return "user"
    if SEALED_MARK in frame:
        start = frame.find(_SEALED_DATA) + len(_SEALED_DATA)
        try:
            head = binascii.a2b_base64(frame[start : start + 4])
        except (binascii.Error, ValueError):
            head = b""
        return SESSION_KINDS.get(head[0], "sealed-other") if head else "sealed-other"
    if RESET_MARK in frame:
        return "session-reset"
    return None


_Carried = tuple["SimNode", int, float]
"""A carried link: (the remote node, its handle, when the last frame sent on it arrives)."""
_GONE = (None, 0, 0.0)
"""What :attr:`SimNode.links` gives for a handle it does not carry."""


@dataclass(eq=False, slots=True, repr=False)
class SimNode:
    """One simulated peer: its core, its URL (None if it cannot be dialled), what it received."""

    index: int
    core: Core
    url: str | None
    alive: bool = True
    inbox: list[Delivered] = field(default_factory=list)
    timer_at: float | None = None
    joined_at: float = 0.0
    left_at: float | None = None
    links: dict[int, _Carried] = field(default_factory=dict)
    """Carried links: our handle -> (remote node, its handle, arrival time of the last frame
    sent on it: links are ordered streams)."""
    pump: Pump = field(init=False)
    """Drives :attr:`core` (the same pump as a live node's)."""
    mark: bytes = b""
    """``"from":"<its id>"``: in the frames of the messages it sends as their origin, and not in
    those it relays."""
    swallows: bool = False
    """Set by :meth:`SimNetwork.swallow`: its host discards every user or session message it
    relays; its core does not know, and answers pings as ever."""

    @property
    def id(self) -> bytes:
        return self.core.id

    def __repr__(self) -> str:
        # Not the fields: through its links each peer reaches every other, and a repr that
        # followed them (pytest's, of a failed assertion) would grow with the whole network.
        return f"SimNode({self.index}, {self.core.hex[:8]}{'' if self.alive else ', gone'})"


class _LazyStandIn:
    """A simulated peer's :class:`~peer_relay.sealing.StandInSuite`, made at its first
    handshake: its random stream (seeded from the peer's seed, as ever) costs 2.5 KB, and many
    peers never open a session."""

    __slots__ = ("_public_key", "_seed", "_suite", "name")

    def __init__(self, public_key: bytes, seed: bytes) -> None:
        self.name = "stand-in"  # the stand-in's
        self._public_key = public_key
        self._seed = seed
        self._suite: StandInSuite | None = None

    def _made(self) -> StandInSuite:
        suite = self._suite
        if suite is None:
            rng = random.Random(b"sim-suite" + self._seed)
            suite = self._suite = StandInSuite(self._public_key, rng)
        return suite

    def initiator(self, prologue: bytes, remote_static: bytes) -> Handshake:
        return self._made().initiator(prologue, remote_static)

    def responder(self, prologue: bytes) -> Handshake:
        return self._made().responder(prologue)

    def cost_of_opening(self) -> int:
        return self._made().cost_of_opening()


class SimNetwork:
    """Runs many cores against a virtual clock. See the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: Draw | None = None,
        loss: float = 0.0,
        real_crypto: bool = False,
        keep_inbox: bool = True,
        keepalive: Draw | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.id_rng = random.Random(f"{seed}/ids")
        self.now = EPOCH
        self.latency = latency or lognormal_latency()
        self.loss = loss
        """Probability that an envelope frame is lost on its link."""
        self.real_crypto = real_crypto
        self.keep_inbox = keep_inbox
        self.keepalive = keepalive or uniform_delay(20.0, 40.0)
        """How long a peer takes to notice that a silent link is dead (ping interval + timeout)."""
        self.nodes: list[SimNode] = []
        self.by_url: dict[str, SimNode] = {}
        self.by_id: dict[bytes, SimNode] = {}
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.partition_of: dict[int, int] = {}
        self._partition_epoch = 0
        self.frames_sent = 0
        self.frames_lost = 0
        """Frames lost to ``loss`` or to a partition."""
        self.frames_dead = 0
        """Frames that reached a crashed peer."""
        self.count_user = False
        """While set, frames of messages are counted in :attr:`user_frames`."""
        self.user_frames = 0
        """Frames of user and session messages (and ``session-reset``) while counted."""
        self.message_frames: Counter[str] = Counter()
        """:attr:`user_frames` by :func:`message_kind`."""
        self.message_origins: Counter[str] = Counter()
        """Of :attr:`message_frames`, those sent by the message's origin (the rest are relayed):
        frames over origins is hops per message, one copy per hop."""
        self.frames_swallowed = 0
        """Frames that a peer which swallows what it relays did not send (see :meth:`swallow`)."""
        self.on_deliver: Callable[[SimNode, Delivered], None] | None = None
        self.on_event: Callable[[SimNode, object], None] | None = None
        self._on_trace: Callable[[SimNode, object], None] | None = None

    @property
    def on_trace(self) -> Callable[[SimNode, object], None] | None:
        """Called with every event of every core, in the order the cores emit them."""
        return self._on_trace

    @on_trace.setter
    def on_trace(self, trace: Callable[[SimNode, object], None] | None) -> None:
        self._on_trace = trace
        for node in self.nodes:
            node.pump.trace = None if trace is None else functools.partial(trace, node)

    # ---------------------------------------------------------------- building the network

    def add_node(
        self,
        config: Config | None = None,
        *,
        listen: bool = True,
        bootstrap: list[SimNode] | None = None,
    ) -> SimNode:
        """Create a peer now; it dials the URLs of ``bootstrap`` peers as a live peer would."""
        index = len(self.nodes)
        seed = self.id_rng.randbytes(32)
        if self.real_crypto:
            identity = Identity(seed)
            core = Core(identity, config, rng=random.Random(seed), now=self.now)
        else:
            identity = Identity(signer=FastSigner(seed))
            # The stand-in's ephemeral keys come from a random stream of their own: the
            # core's own draws stay those it would make with the real suite.
            suite = _LazyStandIn(identity.public_key, seed)
            core = Core(
                identity,
                config,
                rng=random.Random(seed),
                now=self.now,
                verify=fast_verify,
                suite=suite,
            )
        url = f"ws://sim-{index}" if listen else None
        core.set_url(url)
        node = SimNode(index, core, url, joined_at=self.now, mark=f'"from":"{core.hex}"'.encode())
        node.pump = Pump(core, _SimHost(self, node))
        if self._on_trace is not None:
            node.pump.trace = functools.partial(self._on_trace, node)
        self.nodes.append(node)
        self.by_id[node.id] = node
        if url is not None:
            self.by_url[url] = node
        if bootstrap:
            core.bootstrap([b.url for b in bootstrap if b.url], self.now)
        self.pump(node)
        return node

    def swallow(self, node: SimNode) -> None:
        """Make ``node`` a relay that silently drops the user and session messages it relays,
        while its core goes on as if it had sent them (it answers pings, it vouches for them)."""
        node.swallows = True

    def alive(self) -> list[SimNode]:
        """The peers that have neither left nor crashed, in creation order."""
        return [node for node in self.nodes if node.alive]

    def crash(self, node: SimNode) -> None:
        """The peer vanishes without a goodbye: its links go silent, then its remotes see close."""
        if not node.alive:
            return
        node.alive = False
        node.left_at = self.now
        for peer, peer_handle, _last in node.links.values():
            # Frames the remote sends meanwhile are carried to the dead peer and lost there.
            self.at(self.keepalive(self.rng), self._silent_close, peer, peer_handle, node)
        node.links.clear()
        if node.url is not None:
            self.by_url.pop(node.url, None)

    def leave(self, node: SimNode) -> None:
        """The peer shuts down cleanly: every link closes at once."""
        if not node.alive:
            return
        node.core.close(self.now)
        self.pump(node)
        node.alive = False
        node.left_at = self.now
        if node.url is not None:
            self.by_url.pop(node.url, None)

    def partition(self, groups: list[list[SimNode]]) -> None:
        """Split the network: frames and dials between different groups are lost.

        Peers in no group form one more group. Links that cross groups stay open but silent
        until their keepalive timeout closes them, unless :meth:`heal` comes first.
        """
        self.partition_of = {n.index: g for g, group in enumerate(groups) for n in group}
        self._partition_epoch += 1
        epoch = self._partition_epoch
        for node in self.nodes:
            if not node.alive:
                continue
            for handle, (peer, _peer_handle, _last) in node.links.items():
                if self._cut(node, peer):
                    delay = self.keepalive(self.rng)
                    self.at(delay, self._partition_timeout, node, handle, peer, epoch)

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self.partition_of = {}
        self._partition_epoch += 1

    def _cut(self, a: SimNode, b: SimNode) -> bool:
        part = self.partition_of
        return bool(part) and part.get(a.index, -1) != part.get(b.index, -1)

    def _partition_timeout(self, node: SimNode, handle: int, peer: SimNode, epoch: int) -> None:
        if epoch != self._partition_epoch or not node.alive:
            return
        if node.links.get(handle, _GONE)[0] is peer:
            self._remote_closed(node, handle, "keepalive timeout")

    # ---------------------------------------------------------------- the clock

    def at(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` ``delay`` virtual seconds from now."""
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn, args))

    def run(self, seconds: float) -> None:
        """Advance the virtual clock by ``seconds``, running everything due on the way."""
        until = self.now + seconds
        queue = self._queue
        pop = heapq.heappop
        while queue and queue[0][0] <= until:
            when, _seq, fn, args = pop(queue)
            self.now = when
            fn(*args)
        self.now = until

    def run_until(self, condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        """Run until ``condition()`` holds (checked every ``step``) or ``timeout`` passes."""
        deadline = self.now + timeout
        while self.now < deadline:
            if condition():
                return True
            self.run(step)
        return condition()

    # ---------------------------------------------------------------- carrying out core events

    def send(self, node: SimNode, to: bytes, data: Any) -> None:
        """The application of ``node`` sends ``data`` to ``to`` (``Core.send``)."""
        node.core.send(to, data, self.now)
        self.pump(node)

    def deliver(self, node: SimNode, to: bytes, data: Any, timeout: float = 10.0) -> int:
        """The application of ``node`` delivers ``data`` to ``to`` with a receipt
        (``Core.deliver``); a :class:`DeliveryResult` with the token returned here goes to
        :attr:`on_event`."""
        token = node.core.deliver(to, data, self.now, timeout)
        self.pump(node)
        return token

    def pump(self, node: SimNode) -> None:
        """Carry out what the core of ``node`` asked for (nothing once it is gone); call it after
        calling ``node.core`` directly."""
        if node.alive:
            node.pump.drive()

    def _fire(self, node: SimNode, when: float) -> None:
        if node.timer_at != when or not node.alive:
            return  # re-armed or disarmed since, or gone
        node.timer_at = None
        node.pump.timer_fired()

    def _undeliverable(self, node: SimNode, handle: int, frame: bytes) -> None:
        if node.alive:
            node.core.frame_undeliverable(handle, frame, self.now)
            node.pump.drive()

    def _arrive(self, peer: SimNode, handle: int, frame: bytes) -> None:
        if peer.alive:
            peer.core.frame_received(handle, frame, self.now)
            peer.pump.drive()
        else:
            self.frames_dead += 1

    def _connect(self, node: SimNode, handle: int, url: str) -> None:
        if not node.alive:
            return
        target = self.by_url.get(url)
        if target is None or not target.alive or self._cut(node, target):
            node.core.link_closed(handle, self.now, "connection refused")
            self.pump(node)
            return
        # Each simulated peer is a host of its own: its index is its source address.
        peer_handle = target.core.link_accepted(self.now, "ws", f"sim-{node.index}")
        node.links[handle] = (target, peer_handle, 0.0)
        target.links[peer_handle] = (node, handle, 0.0)
        node.core.link_connected(handle, self.now)
        self.pump(target)
        self.pump(node)

    def _silent_close(self, node: SimNode, handle: int, dead: SimNode) -> None:
        if node.links.get(handle, _GONE)[0] is dead:
            self._remote_closed(node, handle, "keepalive timeout")

    def _close_reached(self, node: SimNode, handle: int, peer: SimNode, peer_handle: int) -> None:
        """The close of ``node``'s link reached ``peer``, which closes its end and answers;
        ``node`` learns the link is gone once that answer arrives, behind every frame the
        peer sent before it (until then they still arrive, as over a real WebSocket)."""
        answered = self.now + self.latency(self.rng)
        remote, _handle, last = peer.links.get(peer_handle, _GONE)
        if remote is node:
            answered = max(answered, last + 1e-6)
            self._remote_closed(peer, peer_handle)
        self.at(answered - self.now, self._remote_closed, node, handle, "closed")

    def _remote_closed(self, node: SimNode, handle: int, reason: str = "remote closed") -> None:
        node.links.pop(handle, None)
        if node.alive:
            node.core.link_closed(handle, self.now, reason)
            node.pump.drive()


class _SimHost:
    """Carries out the events of one simulated peer's core on the network's virtual links."""

    __slots__ = ("net", "node")

    def __init__(self, net: SimNetwork, node: SimNode) -> None:
        self.net = net
        self.node = node

    def now(self) -> float:
        return self.net.now

    def set_timer(self, when: float | None) -> None:
        net = self.net
        self.node.timer_at = when
        if when is not None:  # an entry left behind by a re-arm is skipped by _fire
            net._seq += 1
            entry = (max(when, net.now), net._seq, net._fire, (self.node, when))
            heapq.heappush(net._queue, entry)

    def send_frame(self, handle: int, frame: bytes) -> bool:
        net, node = self.net, self.node
        carried = node.links.get(handle)
        if carried is None:
            # The link is gone on our side: the adapter reports the frame back, as a live one does.
            net.at(0.0, net._undeliverable, node, handle, frame)
            return True
        if (
            node.swallows
            and (USER_MARK in frame or SEALED_MARK in frame)
            and node.mark not in frame
        ):
            net.frames_swallowed += 1
            return True
        peer, peer_handle, last = carried
        net.frames_sent += 1
        if net.count_user:
            kind = message_kind(frame)
            if kind is not None:
                net.user_frames += 1
                net.message_frames[kind] += 1
                if node.mark in frame:
                    net.message_origins[kind] += 1
        if (net.partition_of and net._cut(node, peer)) or (
            net.loss and not frame.startswith(_HANDSHAKE) and net.rng.random() < net.loss
        ):
            net.frames_lost += 1
            return True
        # Links are ordered streams: a frame never overtakes the one before it.
        arrive = net.now + net.latency(net.rng)
        if arrive <= last:
            arrive = last + 1e-6
        node.links[handle] = (peer, peer_handle, arrive)
        net._seq += 1
        heapq.heappush(net._queue, (arrive, net._seq, net._arrive, (peer, peer_handle, frame)))
        return True

    def close_link(self, handle: int, reason: str) -> None:
        net, node = self.net, self.node
        peer, peer_handle, last = node.links.pop(handle, _GONE)
        if peer is not None and peer.links.get(peer_handle, _GONE)[0] is node:
            # A WebSocket's close frame follows the frames sent before it on the stream.
            reach = max(net.now + net.latency(net.rng), last + 1e-6)
            net.at(reach - net.now, net._close_reached, node, handle, peer, peer_handle)
        else:
            net.at(2 * net.latency(net.rng), net._remote_closed, node, handle, "closed")

    def dial_websocket(self, handle: int, url: str, expected_id: bytes | None) -> None:
        net = self.net
        net.at(net.latency(net.rng), net._connect, self.node, handle, url)

    def start_webrtc(self, handle: int, peer_id: bytes, initiator: bool) -> None:
        pass  # the simulator carries WebSocket-like links only

    def signal_in(self, handle: int, signal: Any) -> None:
        pass

    def delivered(self, event: Delivered) -> None:
        net = self.net
        if net.keep_inbox:
            self.node.inbox.append(event)
        if net.on_deliver is not None:
            net.on_deliver(self.node, event)

    def peer_linked(self, event: PeerLinked) -> None:
        self._app_event(event)

    def peer_unlinked(self, event: PeerUnlinked) -> None:
        self._app_event(event)

    def connect_result(self, event: ConnectResult) -> None:
        self._app_event(event)

    def delivery_result(self, event: DeliveryResult) -> None:
        self._app_event(event)

    def request_received(self, event: RequestReceived) -> None:
        self._app_event(event)

    def reply(self, event: Reply) -> None:
        self._app_event(event)

    def _app_event(self, event: object) -> None:
        if self.net.on_event is not None:
            self.net.on_event(self.node, event)
