"""ICE server settings are checked at once, the same for PeerRelay and the browser peer."""

from __future__ import annotations

from typing import Any

import pytest

from peer_relay import PeerRelay
from peer_relay.browser.peer import BrowserPeer

TURN = "turn:10.0.0.1:3478?transport=udp"


def _browser(**kwargs: Any) -> BrowserPeer:
    return BrowserPeer(emit=lambda name, args: None, **kwargs)


@pytest.mark.parametrize("make", [PeerRelay, _browser])
def test_ice_settings_refused_with_what_to_fix(make: Any) -> None:
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"ice_servers": "stun:10.0.0.1:3478"}, TypeError, "not one string"),
        ({"ice_servers": ["http://10.0.0.1"]}, ValueError, "must start with stun: or turn:"),
        ({"ice_servers": [3478]}, ValueError, "must start with stun: or turn:"),
        ({"ice_servers": [TURN]}, ValueError, "needs ice_username and ice_credential"),
        ({"ice_servers": [TURN], "ice_username": "u"}, ValueError, "together"),
        (
            {"ice_servers": ["stun:10.0.0.1"], "ice_username": "u", "ice_credential": "p"},
            ValueError,
            "for a turn: server",
        ),
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            make(**kwargs)


def test_turn_credentials_reach_the_webrtc_settings() -> None:
    peer = PeerRelay(
        wrtc=True,
        ice_servers=["stun:10.0.0.1:3478", TURN],
        ice_username="user",
        ice_credential="secret",
    )
    config = peer._webrtc_adapter().config
    assert config.ice_servers == ("stun:10.0.0.1:3478", TURN)
    assert (config.ice_username, config.ice_credential) == ("user", "secret")
    browser = _browser(ice_servers=[TURN], ice_username="user", ice_credential="secret")
    assert browser.ice_servers == (TURN,) and browser.ice_credential == "secret"
