"""An envelope in the form our peers write it, read whole by msgspec (see
:func:`peer_relay.wire.loads_members`): kept apart from ``wire`` because the compiled build
(mypyc) cannot compile msgspec's structs."""

from __future__ import annotations

import msgspec


class Auth(msgspec.Struct, forbid_unknown_fields=True):
    """An envelope's ``auth`` member."""

    key: str
    sig: str
    ts: int


class Envelope(msgspec.Struct, forbid_unknown_fields=True):
    """An envelope with only the members our peers write; the data is left as written."""

    to: str
    sender: str = msgspec.field(name="from")
    path: list[str]
    nonce: str
    data: msgspec.Raw
    auth: Auth | None = None
    route: list[str] | None = None


DECODER = msgspec.json.Decoder(Envelope)
