"""Direct paths in the simulator: the same core forms a link to a busy peer it has no link to,
from the traffic alone, and not below the threshold or with the setting off."""

from __future__ import annotations

from peer_relay.core import Config
from peer_relay.sim import SimNetwork, SimNode


def _pair(direct_after: int) -> tuple[SimNetwork, SimNode, SimNode, SimNode]:
    net = SimNetwork(seed=4)
    hub = net.add_node(Config(control_rate=0))  # answers no discovery: the ends stay apart
    config = Config(
        max_connecting=0, refresh_interval=600.0, direct_after=direct_after, direct_window=10.0
    )
    a = net.add_node(config, listen=False, bootstrap=[hub])
    c = net.add_node(config, bootstrap=[hub])
    net.run(3.0)
    assert c.id not in a.core.peers
    return net, hub, a, c


def test_a_busy_pair_links_by_itself_and_every_message_arrives() -> None:
    net, hub, a, c = _pair(direct_after=10)
    for i in range(30):
        net.send(a, c.id, i)
        net.run(0.05)
    net.run(3.0)
    assert sorted(d.data for d in c.inbox) == list(range(30))
    assert c.id in a.core.peers and a.id in c.core.peers
    assert a.core.inspect()["direct"]["upgrades"] == 1
    hops = [d.hops for d in c.inbox]
    assert hops[0] == 2 and hops[-1] == 1, hops
    relayed = hub.core.stats.relayed
    net.send(a, c.id, "direct")
    net.run(1.0)
    assert c.inbox[-1].data == "direct" and hub.core.stats.relayed == relayed


def test_below_the_threshold_or_turned_off_the_pair_stays_on_the_overlay() -> None:
    for direct_after, count in ((0, 40), (50, 40)):
        net, _hub, a, c = _pair(direct_after)
        for i in range(count):
            net.send(a, c.id, i)
            net.run(0.05)
        net.run(3.0)
        assert len(c.inbox) == count
        assert c.id not in a.core.peers
        assert a.core.inspect()["direct"]["upgrades"] == 0


def test_the_count_restarts_after_the_window() -> None:
    net, _hub, a, c = _pair(direct_after=10)
    for i in range(18):  # 9 a window: never 10 within one
        net.send(a, c.id, i)
        net.run(0.05 if i % 9 else 11.0)
    net.run(3.0)
    assert len(c.inbox) == 18 and c.id not in a.core.peers
