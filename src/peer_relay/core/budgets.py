"""Who may cost us work, per source: requests answered per sender id, per arrival link and in
all, and signature checks that may fail per arrival link.

A request (``findPeers``, ``handshake-offer``) costs us a signature check and an answer. Its
claimed sender and the link it came through are looked at before the check, and refused unchecked
when either has spent its budget; the budgets are spent only once the signature holds, so a
forger cannot spend an honest peer's budget by naming it. Checks that fail are charged to the
link they arrived through: a link that keeps bringing forgeries has what comes through it
refused unchecked until its budget refills, and its link stays open (the forger may be further
away). Every budget has a setting (see :class:`~peer_relay.core.config.Config`).
"""

from __future__ import annotations

from typing import Final

from .. import wire
from .bounded import Budgets, TokenBucket
from .context import Context

REQUESTS: Final = frozenset((wire.FIND_PEERS, wire.HANDSHAKE_OFFER))
"""Message types that cost us an answer."""


class ControlBudgets:
    """The per-source budgets of one core."""

    __slots__ = ("by_link", "by_sender", "ctx", "failures", "overall", "slow")

    def __init__(self, ctx: Context, now: float) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.overall = TokenBucket(cfg.control_rate, 2 * cfg.control_rate, now)
        limit = cfg.max_budgets
        self.by_sender: Budgets[str] = Budgets(
            cfg.peer_control_rate, 2 * cfg.peer_control_rate, limit
        )
        self.by_link: Budgets[int] = Budgets(
            cfg.link_control_rate, 2 * cfg.link_control_rate, limit
        )
        self.failures: Budgets[int] = Budgets(
            cfg.link_control_rate, 2 * cfg.link_control_rate, limit
        )
        self.slow: Budgets[int] = Budgets(cfg.slow_check_rate, 2 * cfg.slow_check_rate, limit)

    def refusal(self, sender_hex: str, via: int, now: float) -> str | None:
        """Why a request from ``sender_hex`` arriving through link ``via`` is refused now, or
        None. Spends nothing: see :meth:`spend`."""
        if self.by_sender.spent(sender_hex, now):
            return "rate-limited-peer"
        if self.by_link.spent(via, now):
            return "rate-limited-link"
        if self.overall.full(now):
            return "rate-limited"
        return None

    def spend(self, sender_hex: str, via: int, now: float) -> bool:
        """Spend one request of every budget it falls under; False (a counted drop) if one
        of them is spent."""
        reason = self.refusal(sender_hex, via, now)
        if reason is not None:
            # It passed the check before its signature only by not looking like a request:
            # the check was spent for nothing, and the link it came through pays for it.
            self.ctx.drop(reason, sender_hex)
            self.failed(via, now)
            return False
        self.by_sender.take(sender_hex, now)
        self.by_link.take(via, now)
        self.overall.take(now)
        return True

    def checks_refused(self, via: int, now: float) -> bool:
        """Whether link ``via`` has brought so many forgeries lately that what comes through
        it is not checked now."""
        return self.failures.spent(via, now)

    def failed(self, via: int, now: float) -> None:
        """A signature check of a message that came through ``via`` failed."""
        self.failures.charge(via, now, 1.0)

    def slow_refused(self, via: int, now: float) -> bool:
        """Whether data needing the slow canonical form is refused unchecked on ``via`` now."""
        return self.slow.spent(via, now)

    def slow_failed(self, via: int, size: int, now: float) -> None:
        """``size`` bytes of data were put in the slow canonical form, and their check failed."""
        self.slow.charge(via, now, float(size))

    def link_gone(self, via: int) -> None:
        """Forget the budgets of a link that closed (handles are never reused)."""
        self.by_link.forget(via)
        self.failures.forget(via)
        self.slow.forget(via)

    def sizes(self) -> int:
        """How many per-source budgets are remembered, the largest of the maps."""
        return max(len(self.by_sender), len(self.by_link), len(self.failures), len(self.slow))
