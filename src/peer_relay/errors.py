"""The errors that :meth:`PeerRelay.deliver` and :meth:`PeerRelay.request` raise."""

from __future__ import annotations


class DeliveryError(ConnectionError):
    """A message was not confirmed delivered in time; the message says why and what to try."""


class RemoteError(Exception):
    """The remote's request handler failed; the message is the one it raised."""
