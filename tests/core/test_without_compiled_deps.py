"""Without orjson, msgspec, cryptography, picows, websockets and aiortc (as in Pyodide), the
core still runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, random, sys

    BLOCKED = ("orjson", "msgspec", "cryptography", "picows", "websockets", "aiortc", "aioice")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import peer_relay
    from peer_relay import _json, ed25519
    from peer_relay.browser import BrowserPeer  # noqa: F401 (importable anywhere)
    from peer_relay.core import Config, Core
    from peer_relay.events import Delivered, PeerLinked, SendFrame
    from peer_relay.identity import Identity

    assert _json.BACKEND == "json", _json.BACKEND
    now = 1_700_000_000.0
    ida, idb = Identity.generate(), Identity.generate()
    assert isinstance(ida.signer, ed25519.PureSigner)
    a = Core(ida, Config(), rng=random.Random(1), now=now)
    b = Core(idb, Config(url="ws://b"), rng=random.Random(2), now=now)
    a.bootstrap(["ws://b"], now)
    hb = b.link_accepted(now)
    a.link_connected(1, now)
    out = []
    for _ in range(20):
        moved = False
        for core, other, handle in ((a, b, hb), (b, a, 1)):
            for event in core.events():
                if isinstance(event, SendFrame):
                    other.frame_received(handle, event.frame, now)
                    moved = True
                elif isinstance(event, (Delivered, PeerLinked)):
                    out.append(event)
        if not moved:
            if not any(isinstance(e, Delivered) for e in out):
                a.send(idb.id, {"hi": "without compiled dependencies"}, now)
                continue
            break
    linked = [e for e in out if isinstance(e, PeerLinked)]
    got = [e for e in out if isinstance(e, Delivered)]
    assert len(linked) == 2 and all(e.authenticated for e in linked), linked
    assert [(g.data, g.sender, g.verified) for g in got] == [
        ({"hi": "without compiled dependencies"}, ida.id, True)
    ], got
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
    print("ok")
    """
)


def test_core_runs_without_compiled_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
