"""Discovery: findPeers and foundPeers, the candidate table, introducers, lookups.

A peer asks linked or known peers for the ids they know nearest a target (``findPeers``) and
keeps the answers as candidates to link to. Who named a candidate (its introducer) is kept for a
while: an offer to the candidate goes through the introducer as a route hint. Lookups for our
own neighbourhood go by messages alone (at most ``LOOKUP_PARALLEL`` questions out at once).
"""

from __future__ import annotations

import heapq
from typing import Any

from .. import wire
from ..ids import ID_BYTES, hex_from_wire
from ..table import KBucketTable
from .bounded import BoundedMap
from .budgets import ControlBudgets
from .context import Context
from .inbox import Received
from .link import Link
from .links import Links
from .routing import Router

INTRODUCERS_PER_K = 4
"""Introducers remembered, per ``k``."""
LOOKUP_PARALLEL = 2
"""Questions of a lookup round out at once."""
LOOKUP_TIMEOUT = 2.0
"""Seconds an unanswered lookup question holds back the dialling of near links."""


class Discovery:
    """Owns the candidates, their introducers and the current lookup round."""

    def __init__(
        self,
        ctx: Context,
        links: Links,
        router: Router,
        budgets: ControlBudgets,
        *,
        lists_candidates: bool,
        lookups: bool,
    ) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.links = links
        self.router = router
        self.budgets = budgets
        self.lists_candidates = lists_candidates
        """Answer findPeers with candidates too (0.0.2), not only open links."""
        self.lookups = lookups
        """Follow foundPeers answers with more questions (iterative lookups)."""
        # Asked about whole buckets, never about one id: no dict of every entry.
        self.candidates: KBucketTable[float] = KBucketTable(ctx.id, cfg.k, lookups=False)
        self.introducers: BoundedMap[bytes, str] = BoundedMap(INTRODUCERS_PER_K * cfg.k)
        """Who (hex) listed each of the most recent candidates in a foundPeers."""
        self.asked: BoundedMap[bytes, float] = BoundedMap(4 * LOOKUP_PARALLEL + cfg.near_count)
        """Peers asked in this lookup round: when their answer is due, 0.0 once it came."""

    def ask(self, link_hex: str, target_hex: str, now: float) -> None:
        """Ask peer ``link_hex`` for the ids it knows nearest ``target_hex``."""
        self.router.originate(link_hex, wire.FIND_PEERS, target_hex, now)

    def on_find_peers(self, msg: Received, now: float) -> None:
        """Answer with the ids we know nearest the asked one.

        Without ``lists_candidates`` only open links are listed: each is alive and one hop from
        us, so the asker can reach it through us. With it, candidates too, as 0.0.2.
        """
        ctx = self.ctx
        sender = msg.sender
        target_hex = hex_from_wire(msg.payload)
        if target_hex is None:
            ctx.drop("bad-data", "findPeers without an id")
            return
        if not self.budgets.spend(msg.sender.hex(), msg.via, now):
            return
        if self.lookups and msg.verified and target_hex == sender.hex() and self._neighbour(sender):
            # A peer looking for its own neighbourhood is there: a newcomer among our nearest
            # is known to us at once (as in Kademlia, where every request adds its sender to
            # the table). Only then: ids anyone can make up do not fill our table.
            self.candidates.add(sender, now, replace_oldest=True)
        k = ctx.config.k
        t = int(target_hex, 16)
        if not self.lists_candidates:
            links = heapq.nsmallest(k + 1, self.links.open, key=lambda link: link.peer_int ^ t)
            nearest = [link.peer_hex for link in links if link.peer_id != sender][:k]
        else:
            known = {link.peer_id for link in self.links.open}
            known.update(self.candidates.closest(bytes.fromhex(target_hex), k))
            known.discard(sender)
            ids = sorted(known, key=lambda i: int.from_bytes(i, "big") ^ t)[:k]
            nearest = [i.hex() for i in ids]
        self.router.originate(sender.hex(), wire.FOUND_PEERS, nearest, now)

    def _neighbour(self, peer_id: bytes) -> bool:
        """Whether ``peer_id``, not linked to us, is nearer us than one of our ``near_count``
        nearest links (or we have fewer)."""
        links = self.links
        if peer_id in links.table:
            return False
        me = self.ctx.int
        count = self.ctx.config.near_count
        if count <= 0:
            return False
        if len(links.open) < count:
            return True
        near = heapq.nsmallest(count, (link.peer_int ^ me for link in links.open))
        return int.from_bytes(peer_id, "big") ^ me < near[-1]

    def on_found_peers(self, payload: Any, introducer: str, now: float) -> bool:
        """Keep the ids of an answer as candidates (``introducer``, its sender, named them);
        return False (a counted drop) if the answer is malformed."""
        ctx = self.ctx
        if type(payload) is not list:
            ctx.drop("bad-data", "foundPeers is not a list")
            return False
        linked = {link.peer_hex for link in self.links.open}
        linked.add(ctx.hex)
        place = self.candidates.place
        introducers = self.introducers
        for entry in payload[: ctx.config.k]:
            if type(entry) is str and len(entry) == 40 and entry.islower():
                hex_id = entry  # the common case, as our peers and 0.0.2 write ids
                try:
                    peer_id = bytes.fromhex(entry)
                except ValueError:
                    continue
            else:
                parsed = hex_from_wire(entry)
                if parsed is None:
                    continue
                hex_id, peer_id = parsed, bytes.fromhex(parsed)
            if hex_id in linked:
                continue
            kept = place(peer_id, now)
            if introducer != hex_id:
                # Keyed by the table's copy of the id: a known id is not kept twice.
                introducers.touch(peer_id if kept is None else kept, introducer)
        if self.lookups:
            asked = self.asked.entries
            sender = bytes.fromhex(introducer)
            if sender in asked:
                asked[sender] = 0.0
            self.lookup_step(now)
        return True

    def lookup_step(self, now: float) -> None:
        """Ask the nearest candidates not asked yet in this round for their links nearest us.

        Near links are dialled once the round settles, instead of linking every step of the
        way and evicting the steps later.
        """
        asked = self.asked
        budget = LOOKUP_PARALLEL - sum(1 for due in asked.entries.values() if due > now)
        if budget <= 0:
            return
        table = self.links.table
        for peer_id in self.nearest_candidates(self.ctx.config.near_count + 2):
            if peer_id in asked.entries or peer_id in table:
                continue
            self.hint_via_introducer(peer_id, now)
            self.ask(peer_id.hex(), self.ctx.hex, now)
            asked.put(peer_id, now + LOOKUP_TIMEOUT)
            budget -= 1
            if budget <= 0:
                return

    def new_round(self, near: list[Link], now: float) -> None:
        """Start a lookup round by asking ``near`` links (nearest first) about us."""
        asked = self.asked
        asked.entries.clear()
        for link in near:
            asked.put(link.peer_id, now + LOOKUP_TIMEOUT)
            self.ask(link.peer_hex, self.ctx.hex, now)

    def lookup_pending(self, now: float) -> bool:
        """Whether a question of the lookup round is still out."""
        return any(due > now for due in self.asked.entries.values())

    def nearest_candidates(self, n: int) -> list[bytes]:
        """The ``n`` candidates nearest our own id, nearest first (walks the low buckets only)."""
        out: list[bytes] = []
        if n <= 0:
            return out
        cand = self.candidates
        me = self.ctx.int
        for index in cand.bucket_sizes():
            ids = sorted(cand.bucket(index), key=lambda i: int.from_bytes(i, "big") ^ me)
            out.extend(ids[: n - len(out)])
            if len(out) >= n:
                break
        return out

    def hint_via_introducer(self, peer_id: bytes, now: float) -> None:
        """Make the next message to ``peer_id`` go through the linked peer that named it."""
        via = self.introducers.entries.get(peer_id)
        if via is None or bytes.fromhex(via) not in self.links.table:
            return
        self.router.hint_via(peer_id.hex(), via, now)

    def random_id_in_bucket(self, index: int) -> bytes:
        """A random id in our bucket ``index`` (sharing exactly ``159 - index`` bits with us)."""
        flip = 1 << index
        low = self.ctx.rng.getrandbits(index) if index else 0
        value = ((self.ctx.int ^ flip) >> index << index) | low
        return value.to_bytes(ID_BYTES, "big")
