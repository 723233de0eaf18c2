"""A deterministic network of cores: virtual clock, seeded randomness, simulated links.

Each simulated peer runs the very same :class:`peer_relay.core.Core` as a live node; this module
only plays the part of the asyncio adapter: it carries frames between cores with a latency drawn
from a distribution, optionally loses them, opens WebSocket-like links on dial, and fires timers.
Given the same seed and the same calls, a run is identical.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import Config, Core
from ..events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DialWebSocket,
    PeerLinked,
    PeerUnlinked,
    SendFrame,
)
from ..identity import Identity

EPOCH = 1_700_000_000.0
"""Virtual time starts here, so that signed timestamps look like real ones."""


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


def lognormal_latency(
    median: float = 0.020, sigma: float = 0.5
) -> Callable[[random.Random], float]:
    """One-way link latency: log-normal around ``median`` seconds (a long tail, never zero)."""

    def draw(rng: random.Random) -> float:
        return median * rng.lognormvariate(0.0, sigma)

    return draw


@dataclass(eq=False)
class SimNode:
    """One simulated peer: its core, its URL (None if it cannot be dialled), what it received."""

    index: int
    core: Core
    url: str | None
    alive: bool = True
    inbox: list[Delivered] = field(default_factory=list)
    timer_at: float | None = None

    @property
    def id(self) -> bytes:
        return self.core.id


class SimNetwork:
    """Runs many cores against a virtual clock. See the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: Callable[[random.Random], float] | None = None,
        loss: float = 0.0,
        real_crypto: bool = False,
        keep_inbox: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = EPOCH
        self.latency = latency or lognormal_latency()
        self.loss = loss
        self.real_crypto = real_crypto
        self.keep_inbox = keep_inbox
        self.nodes: list[SimNode] = []
        self.by_url: dict[str, SimNode] = {}
        self.by_id: dict[bytes, SimNode] = {}
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._pairs: dict[tuple[int, int], tuple[SimNode, int]] = {}
        self._link_clock: dict[tuple[int, int], float] = {}
        self.partition_of: dict[int, int] = {}
        self.frames_sent = 0
        self.frames_lost = 0
        self.on_deliver: Callable[[SimNode, Delivered], None] | None = None
        self.on_event: Callable[[SimNode, object], None] | None = None

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
        seed = self.rng.randbytes(32)
        if self.real_crypto:
            identity = Identity(seed)
            core = Core(identity, config, rng=random.Random(seed), now=self.now)
        else:
            identity = Identity(signer=FastSigner(seed))
            core = Core(identity, config, rng=random.Random(seed), now=self.now, verify=fast_verify)
        url = f"ws://sim-{index}" if listen else None
        core.set_url(url)
        node = SimNode(index, core, url)
        self.nodes.append(node)
        self.by_id[node.id] = node
        if url is not None:
            self.by_url[url] = node
        if bootstrap:
            core.bootstrap([b.url for b in bootstrap if b.url], self.now)
        self._pump(node)
        return node

    def crash(self, node: SimNode) -> None:
        """The peer vanishes without a goodbye: its links go silent, then its remotes see close."""
        if not node.alive:
            return
        node.alive = False
        for (index, handle), (peer, peer_handle) in list(self._pairs.items()):
            if index == node.index:
                del self._pairs[(index, handle)]
                self._pairs.pop((peer.index, peer_handle), None)
                # A dead TCP peer is noticed after a keepalive timeout.
                self.at(20.0 + self.rng.random() * 10, self._remote_closed, peer, peer_handle)
        if node.url is not None:
            self.by_url.pop(node.url, None)

    def leave(self, node: SimNode) -> None:
        """The peer shuts down cleanly: every link closes at once."""
        if not node.alive:
            return
        node.core.close(self.now)
        self._pump(node)
        node.alive = False
        if node.url is not None:
            self.by_url.pop(node.url, None)

    def partition(self, groups: list[list[SimNode]]) -> None:
        """Split the network: frames and dials between different groups are lost."""
        self.partition_of = {n.index: g for g, group in enumerate(groups) for n in group}

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self.partition_of = {}

    def _cut(self, a: SimNode, b: SimNode) -> bool:
        part = self.partition_of
        return bool(part) and part.get(a.index, -1) != part.get(b.index, -1)

    # ---------------------------------------------------------------- the clock

    def at(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` ``delay`` virtual seconds from now."""
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn, args))

    def run(self, seconds: float) -> None:
        """Advance the virtual clock by ``seconds``, running everything due on the way."""
        until = self.now + seconds
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _seq, fn, args = heapq.heappop(queue)
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
        """The application of ``node`` sends ``data`` to ``to``."""
        node.core.send(to, data, self.now)
        self._pump(node)

    def _pump(self, node: SimNode) -> None:
        if not node.alive:
            return
        core = node.core
        for event in core.events():
            kind = type(event)
            if kind is SendFrame:
                assert isinstance(event, SendFrame)
                self._carry(node, event.handle, event.frame)
            elif kind is Delivered:
                assert isinstance(event, Delivered)
                if self.keep_inbox:
                    node.inbox.append(event)
                if self.on_deliver is not None:
                    self.on_deliver(node, event)
            elif kind is DialWebSocket:
                assert isinstance(event, DialWebSocket)
                self.at(self.latency(self.rng), self._connect, node, event.handle, event.url)
            elif kind is CloseLink:
                assert isinstance(event, CloseLink)
                pair = self._pairs.pop((node.index, event.handle), None)
                if pair is not None:
                    peer, peer_handle = pair
                    self._pairs.pop((peer.index, peer_handle), None)
                    self.at(self.latency(self.rng), self._remote_closed, peer, peer_handle)
            elif self.on_event is not None and kind in (PeerLinked, PeerUnlinked, ConnectResult):
                self.on_event(node, event)
        timer = core.get_timer()
        if timer is not None and (node.timer_at is None or timer < node.timer_at):
            node.timer_at = timer
            self.at(max(0.0, timer - self.now), self._fire, node, timer)

    def _fire(self, node: SimNode, when: float) -> None:
        if node.timer_at != when or not node.alive:
            return
        node.timer_at = None
        node.core.handle_timer(self.now)
        self._pump(node)

    def _carry(self, node: SimNode, handle: int, frame: bytes) -> None:
        pair = self._pairs.get((node.index, handle))
        if pair is None:
            return
        peer, peer_handle = pair
        self.frames_sent += 1
        if self._cut(node, peer) or (self.loss and self.rng.random() < self.loss):
            self.frames_lost += 1
            return
        # Links are ordered streams: a frame never overtakes the one before it.
        key = (node.index, handle)
        arrive = max(self.now + self.latency(self.rng), self._link_clock.get(key, 0.0) + 1e-6)
        self._link_clock[key] = arrive
        self._seq += 1
        heapq.heappush(self._queue, (arrive, self._seq, self._arrive, (peer, peer_handle, frame)))

    def _arrive(self, peer: SimNode, handle: int, frame: bytes) -> None:
        if peer.alive:
            peer.core.frame_received(handle, frame, self.now)
            self._pump(peer)

    def _connect(self, node: SimNode, handle: int, url: str) -> None:
        if not node.alive:
            return
        target = self.by_url.get(url)
        if target is None or not target.alive or self._cut(node, target):
            node.core.link_closed(handle, self.now, "connection refused")
            self._pump(node)
            return
        peer_handle = target.core.link_accepted(self.now)
        self._pairs[(node.index, handle)] = (target, peer_handle)
        self._pairs[(target.index, peer_handle)] = (node, handle)
        node.core.link_connected(handle, self.now)
        self._pump(target)
        self._pump(node)

    def _remote_closed(self, node: SimNode, handle: int) -> None:
        self._link_clock.pop((node.index, handle), None)
        if node.alive:
            node.core.link_closed(handle, self.now, "remote closed")
            self._pump(node)
