"""Who may cost us work, per source: requests answered per sender id, per arrival link and in
all, and signature checks that may fail per arrival link.

A request (``findPeers``, ``handshake-offer``) costs us a signature check and an answer. Its
claimed sender and the link it came through (the address of the peer at its other end, for a
link that peer dialled) are looked at before the check, and refused unchecked
when either has spent its budget; the budgets are spent only once the signature holds, so a
forger cannot spend an honest peer's budget by naming it. Checks that fail are charged to the
link they arrived through: a link that keeps bringing forgeries has what comes through it
refused unchecked until its budget refills, and its link stays open (the forger may be further
away). Every budget has a setting (see :class:`~peer_relay.core.config.Config`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .. import wire
from .bounded import BoundedMap, Budgets, TokenBucket, expires_at
from .context import Context

REQUESTS: Final = frozenset((wire.FIND_PEERS, wire.HANDSHAKE_OFFER, wire.SESSION_RESET))
"""Message types that cost us an answer (a reset: a new handshake, and messages sealed again)."""

Source = str | int
"""What a link's budgets are kept under: the address of the peer that dialled us (so that one
that links again, under a fresh id if it likes, finds its budgets spent), else the link's
handle."""


class ControlBudgets:
    """The per-source budgets of one core."""

    __slots__ = (
        "by_link",
        "by_sender",
        "ctx",
        "expected",
        "failures",
        "link_failures",
        "overall",
        "refused_offers",
        "slow",
    )

    def __init__(self, ctx: Context, now: float) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.overall = TokenBucket(cfg.control_rate, 2 * cfg.control_rate, now)
        limit = cfg.max_budgets
        self.by_sender: Budgets[str] = Budgets(
            cfg.peer_control_rate, 2 * cfg.peer_control_rate, limit
        )
        self.by_link: Budgets[Source] = Budgets(
            cfg.link_control_rate, 2 * cfg.link_control_rate, limit
        )
        self.failures: Budgets[Source] = Budgets(
            cfg.link_control_rate, 2 * cfg.link_control_rate, limit
        )
        # What one link brings from all the peers behind it: four of them at full tilt.
        self.link_failures: Budgets[Source] = Budgets(
            4 * cfg.link_control_rate, 8 * cfg.link_control_rate, limit
        )
        self.slow: Budgets[Source] = Budgets(cfg.slow_check_rate, 2 * cfg.slow_check_rate, limit)
        self.refused_offers: BoundedMap[str, float] = BoundedMap(4 * cfg.max_connecting, expires_at)
        """Peers whose connection offer a budget refused lately (-> until when remembered)."""
        self.expected: Callable[[str], bool] = lambda sender_hex: False
        """Whether we asked this peer for a link ourselves (the core wires in the attempts):
        its requests answer ours, and no budget holds them up (there are at most
        ``max_connecting``)."""

    def refusal(self, sender_hex: str, via: Source, now: float) -> str | None:
        """Why a request from ``sender_hex`` arriving through link ``via`` is refused now, or
        None. Spends nothing: see :meth:`spend`."""
        if self.expected(sender_hex):
            return None
        if self.by_sender.spent(sender_hex, now):
            return "rate-limited-peer"
        if self.by_link.spent(via, now):
            return "rate-limited-link"
        if self.overall.full(now):
            return "rate-limited"
        return None

    def spend(self, sender_hex: str, via: Source, now: float) -> bool:
        """Spend one request of every budget it falls under; False (a counted drop) if one
        of them is spent."""
        reason = self.refusal(sender_hex, via, now)
        if reason is not None:
            # It passed the check before its signature only by not looking like a request:
            # the check was spent for nothing, and the link it came through pays for it.
            self.ctx.drop(reason, sender_hex)
            self.failed(via, via, now)
            return False
        self.by_sender.take(sender_hex, now)
        self.by_link.take(via, now)
        self.overall.take(now)
        return True

    def unproven_refusal(
        self, sender_hex: str, injected: Source, via: Source, now: float
    ) -> str | None:
        """Why a session handshake message (``KEY_ASK``, ``OPEN``: an answer or a key exchange,
        before anything proves who sent it) is refused now, or None and its cost is spent.

        Its claimed sender's budget is only looked at (spent once an ``OPEN`` proves its
        sender, :meth:`proven`): forgeries in an honest peer's name do not spend it. What is
        spent is the budget of who handed it to our peer and of the link, as for requests."""
        if self.expected(sender_hex):
            return None
        if self.by_sender.spent(sender_hex, now):
            return "rate-limited-peer"
        if self.by_link.spent(injected, now) or self.by_link.spent(via, now):
            return "rate-limited-link"
        if self.overall.full(now):
            return "rate-limited"
        self.by_link.take(injected, now)
        if via != injected:
            self.by_link.take(via, now)
        self.overall.take(now)
        return None

    def proven(self, sender_hex: str, now: float) -> None:
        """A session handshake proved its sender: it spends that sender's budget."""
        if not self.expected(sender_hex):
            self.by_sender.take(sender_hex, now)

    def checks_refused(self, injected: Source, via: Source, now: float) -> bool:
        """Whether what comes through link ``via`` from the hop before it, ``injected``, is
        refused unchecked now: one of them brought too many forgeries lately."""
        return self.failures.spent(injected, now) or self.link_failures.spent(via, now)

    def failed(self, injected: Source, via: Source, now: float) -> None:
        """A signature check of a message handed on by ``injected`` through ``via`` failed."""
        self.failures.charge(injected, now, 1.0)
        self.link_failures.charge(via, now, 1.0)

    def slow_refused(self, via: Source, size: int, now: float) -> bool:
        """Whether ``size`` bytes of data written again on their way (so that their canonical
        form must be made before their check) are refused unchecked on ``via`` now: the
        link's budget does not hold that many (it never holds more than its burst)."""
        return self.slow.spent(via, now, float(size))

    def slow_failed(self, via: Source, size: int, now: float) -> None:
        """``size`` bytes of data were put in the slow canonical form, and their check failed."""
        self.slow.charge(via, now, float(size))

    def link_gone(self, via: Source) -> None:
        """Forget the budgets kept under a link's handle once it closed (handles are never
        reused; those kept under an address stay, within ``max_budgets``)."""
        self.by_link.forget(via)
        self.failures.forget(via)
        self.link_failures.forget(via)
        self.slow.forget(via)

    def sizes(self) -> int:
        """How many per-source budgets are remembered, the largest of the maps."""
        maps = (self.by_sender, self.by_link, self.failures, self.link_failures, self.slow)
        return max(len(budgets) for budgets in maps)
