"""The testbed's network layer on real namespaces: reachability, delay, loss, partitions, both
NAT kinds, STUN and TURN through coturn, cleanup (close, exceptions, SIGTERM, stale leftovers)
and refusals of what cannot be built."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer_relay.testbed import (
    HostSpec,
    Shape,
    Testbed,
    TestbedError,
    check_requirements,
    cleanup_stale,
)
from peer_relay.testbed import net as tbnet

ECHO_PORT = 7000

# Probes run inside the hosts as `python -I -c PROBE MODE ARGS...`.
PROBE = r"""
import json, socket, sys, time
mode, args = sys.argv[1], sys.argv[2:]
if mode == "tcpserve":  # tcpserve PORT: per connection, read to EOF, answer [ip, port, bytes]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(args[0])))
    s.listen()
    print("ready", flush=True)
    while True:
        c, addr = s.accept()
        n = 0
        while chunk := c.recv(65536):
            n += len(chunk)
        c.sendall(json.dumps([addr[0], addr[1], n]).encode())
        c.close()
elif mode == "tcpsend":  # tcpsend HOST PORT BYTES: send BYTES, print the server's answer
    c = socket.create_connection((args[0], int(args[1])), timeout=10)
    c.sendall(b"x" * int(args[2]))
    c.shutdown(socket.SHUT_WR)
    print(c.recv(4096).decode())
    sys.exit(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "echo":  # echo PORT: answer each datagram with [sender ip, sender port, data]
    s.bind(("0.0.0.0", int(args[0])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(4096)
        s.sendto(json.dumps([addr[0], addr[1], data.decode()]).encode(), addr)
elif mode == "ask":  # ask SPORT TIMEOUT TRIES LISTEN HOST:PORT...: one question to each,
    # print {target: answer}; then print the sources of what else arrives in LISTEN seconds
    s.bind(("0.0.0.0", int(args[0])))
    s.settimeout(float(args[1]))
    answers = {}
    for target in args[4:]:
        host, port = target.rsplit(":", 1)
        for _ in range(int(args[2])):
            s.sendto(target.encode(), (host, int(port)))
            try:
                while True:
                    answer = json.loads(s.recvfrom(4096)[0])
                    if answer[2] == target:
                        break
            except TimeoutError:
                continue
            answers[target] = answer
            break
    print(json.dumps(answers), flush=True)
    others = []
    end = time.monotonic() + float(args[3])
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            others.append(list(s.recvfrom(4096)[1]))
        except TimeoutError:
            break
    print(json.dumps(others), flush=True)
elif mode == "rtt":  # rtt HOST PORT N: N round trips one after the other, print their seconds
    s.settimeout(2.0)
    out = []
    for i in range(int(args[2])):
        t = time.perf_counter()
        s.sendto(str(i).encode(), (args[0], int(args[1])))
        while json.loads(s.recvfrom(4096)[0])[2] != str(i):
            pass
        out.append(time.perf_counter() - t)
    print(json.dumps(out))
elif mode == "count":  # count PORT QUIET: count datagrams until QUIET seconds without one
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root): room for them all
    s.bind(("0.0.0.0", int(args[0])))
    print("ready", flush=True)
    s.settimeout(10.0)
    n = 0
    try:
        while True:
            s.recvfrom(4096)
            n += 1
            s.settimeout(float(args[1]))
    except TimeoutError:
        pass
    print(n, flush=True)
elif mode == "send":  # send SPORT HOST PORT N: N datagrams, 25 every 2 ms
    s.bind(("0.0.0.0", int(args[0])))
    for i in range(int(args[3])):
        s.sendto(b"%d" % i, (args[1], int(args[2])))
        if i % 25 == 24:
            time.sleep(0.002)
"""

STUN_PROBE = r"""
import json, socket, sys
from aioice import stun
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(float(sys.argv[4]) if len(sys.argv) > 4 else 1.0)
request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
for _ in range(3):
    s.sendto(bytes(request), (sys.argv[1], int(sys.argv[2])))
    try:
        response = stun.parse_message(s.recvfrom(2048)[0])
        break
    except TimeoutError:
        continue
else:
    sys.exit("no STUN answer")
print(json.dumps(list(response.attributes["XOR-MAPPED-ADDRESS"])))
"""

TURN_PROBE = r"""
import asyncio, json, sys
from aioice.turn import create_turn_endpoint

async def main():
    server, user, password, peer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    host, port = server.rsplit(":", 1)
    peer_host, peer_port = peer.rsplit(":", 1)
    got = asyncio.get_running_loop().create_future()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result((data, addr))

    transport, _ = await create_turn_endpoint(
        Protocol, server_addr=(host, int(port)), username=user, password=password
    )
    relayed = transport.get_extra_info("sockname")
    transport.sendto(b"via-turn", (peer_host, int(peer_port)))
    data, addr = await asyncio.wait_for(got, 5)
    print(json.dumps({"relayed": list(relayed), "answer": json.loads(data), "from": list(addr)}))
    transport.close()

asyncio.run(main())
"""


def probe(tb: Testbed, host: str, *args: object, timeout: float = 30) -> str:
    """Run the probe in ``host``; its stdout (failing the test if it failed)."""
    done = tb.run(host, [sys.executable, "-I", "-c", PROBE, *map(str, args)], timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_probe(tb: Testbed, host: str, *args: object) -> subprocess.Popen[str]:
    """Start a server probe in ``host`` and wait for its "ready"."""
    p: subprocess.Popen[str] = tb.popen(
        host,
        [sys.executable, "-I", "-c", PROBE, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def ask(
    tb: Testbed, host: str, targets: list[str], *, sport: int = 0, timeout: float = 0.5
) -> dict[str, Any]:
    """Ask the echo servers ``targets`` (hosts) from ``host``; {target host: [ip, port]}."""
    where = {f"{tb.address(t)}:{ECHO_PORT}": t for t in targets}
    tries = 3 if timeout >= 0.5 else 1  # a short timeout: to see that nothing answers
    answers = json.loads(probe(tb, host, "ask", sport, timeout, tries, 0, *where).splitlines()[0])
    return {where[target]: answer[:2] for target, answer in answers.items()}


@pytest.fixture(scope="module")
def net(testbed_ready: None) -> Iterator[Testbed]:
    """Public hosts p1..p3 (each with a UDP echo on port 7000), c1 behind a cone NAT, s1
    behind a symmetric NAT, and coturn."""
    hosts = [HostSpec("p1"), HostSpec("p2"), HostSpec("p3")]
    hosts += [HostSpec("c1", nat="cone"), HostSpec("s1", nat="symmetric")]
    with Testbed(hosts, turn=True, seed=1) as tb:
        for host in ("p1", "p2", "p3"):
            start_probe(tb, host, "echo", ECHO_PORT)
        yield tb


@pytest.fixture
def tb(net: Testbed) -> Iterator[Testbed]:
    """The shared testbed, healed and unshaped again after the test."""
    yield net
    net.heal()
    net.set_shape(Shape())


def own_namespaces(tb: Testbed) -> list[str]:
    return [n for n in os.listdir(tbnet.NETNS_DIR) if n.startswith(tb.id + "-")]


# --- reachability -----------------------------------------------------------------------------


def test_layout(tb: Testbed) -> None:
    assert tb.namespace("p1") == f"{tb.id}-p1"
    assert tb.address("p1") == tb.public_address("p1") == "10.77.0.1"
    assert tb.address("c1") == "192.168.1.2" and tb.public_address("c1") == "10.77.0.4"
    assert tb.address("s1") == "192.168.2.2" and tb.public_address("s1") == "10.77.0.5"
    assert tb.stun_url == "stun:10.77.0.254:3478"
    assert tb.turn_url == "turn:10.77.0.254:3478?transport=udp"
    assert tb.turn_username and tb.turn_credential
    assert sorted(own_namespaces(tb)) == sorted(tb.namespaces())
    assert set(tb.counters()) >= {
        "received",
        "forwarded",
        "dropped_loss",
        "dropped_partition",
        "dropped_no_route",
        "dropped_queue",
        "queued",
    }
    assert tb.forwarder_pid is not None
    with pytest.raises(TestbedError, match="no host named 'zz'"):
        tb.address("zz")


def test_udp_and_tcp_between_hosts_and_through_nat(tb: Testbed) -> None:
    answers = ask(tb, "p1", ["p2", "p3"], sport=40000)
    assert answers == {"p2": ["10.77.0.1", 40000], "p3": ["10.77.0.1", 40000]}
    server = start_probe(tb, "p2", "tcpserve", 7100)
    try:
        for client in ("p1", "c1", "s1"):
            seen = json.loads(probe(tb, client, "tcpsend", tb.address("p2"), 7100, 1_000_000))
            assert seen[0] == tb.public_address(client) and seen[2] == 1_000_000
    finally:
        server.kill()
        server.wait()


# --- shape ------------------------------------------------------------------------------------


def test_delay_adds_to_the_round_trip(tb: Testbed) -> None:
    quick = json.loads(probe(tb, "p1", "rtt", tb.address("p2"), ECHO_PORT, 5))
    tb.set_shape(Shape(delay=0.030))
    slow = json.loads(probe(tb, "p1", "rtt", tb.address("p2"), ECHO_PORT, 10))
    # 30 ms each way: every round trip takes at least 60 ms, and a loaded machine adds little
    assert min(slow) >= 0.059, slow
    assert statistics.median(slow) < 0.2, slow
    assert statistics.median(quick) < 0.05, quick


def test_jitter_spreads_the_delay(tb: Testbed) -> None:
    tb.set_shape(Shape(delay=0.020, jitter=0.015))
    rtts = json.loads(probe(tb, "p1", "rtt", tb.address("p3"), ECHO_PORT, 20))
    # each way 5..35 ms: round trips in 10..70 ms (plus scheduling), and not all alike
    assert min(rtts) >= 0.0099, rtts
    assert statistics.median(rtts) < 0.2, rtts
    assert max(rtts) - min(rtts) > 0.005, rtts


def test_loss_drops_a_binomial_fraction(tb: Testbed) -> None:
    before = tb.counters()
    tb.set_shape(Shape(loss=0.2))
    counter = start_probe(tb, "p2", "count", 7200, 1.0)
    probe(tb, "p1", "send", 0, tb.address("p2"), 7200, 500)
    out, _ = counter.communicate(timeout=15)
    received = int(out)
    after = tb.counters()
    # 500 draws at 20%: 400 expected, sd 8.9; 340..460 is 6.7 sd either way, and 0% loss fails
    assert 340 <= received <= 460, received
    lost = after["dropped_loss"] - before["dropped_loss"]
    assert lost + after["forwarded"] - before["forwarded"] == 500
    assert lost == 500 - received


def test_partition_and_heal(tb: Testbed) -> None:
    tb.partition([{"p1", "c1"}, {"p2", "p3"}])
    assert ask(tb, "p1", ["p2"], timeout=0.2) == {}
    assert ask(tb, "c1", ["p2"], timeout=0.2) == {}
    assert set(ask(tb, "c1", ["p1"])) == {"p1"}
    assert set(ask(tb, "p2", ["p3"])) == {"p3"}
    # s1 is named in no group: it is with the other unnamed hosts, i.e. alone here
    assert ask(tb, "s1", ["p1", "p2"], timeout=0.2) == {}
    assert tb.counters()["dropped_partition"] > 0
    tb.heal()
    assert set(ask(tb, "p1", ["p2"])) == {"p2"}
    assert set(ask(tb, "s1", ["p1", "p2"])) == {"p1", "p2"}
    with pytest.raises(TestbedError, match="in two groups"):
        tb.partition([{"p1"}, {"p1", "p2"}])
    with pytest.raises(TestbedError, match="no host named"):
        tb.partition([{"p9"}])


# --- NAT --------------------------------------------------------------------------------------


def test_cone_nat_keeps_one_mapping_and_lets_nobody_in(tb: Testbed) -> None:
    targets = [f"{tb.address(t)}:{ECHO_PORT}" for t in ("p1", "p2")]
    asker = tb.popen(
        "c1",
        [sys.executable, "-I", "-c", PROBE, "ask", "40001", "0.5", "3", "1.0", *targets],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert asker.stdout is not None
    answers = json.loads(asker.stdout.readline())
    seen = {tuple(answers[t][:2]) for t in targets}
    # the same external address and port for both destinations: endpoint-independent mapping
    assert seen == {(tb.public_address("c1"), 40001)}
    # dial in to the mapping from a host it never sent to, and from p1 but another port
    for host, sport in (("p3", 7300), ("p1", 7301)):
        probe(tb, host, "send", sport, tb.public_address("c1"), 40001, 5)
    assert json.loads(asker.stdout.readline()) == []
    asker.wait(timeout=5)


def test_symmetric_nat_maps_each_destination_anew(tb: Testbed) -> None:
    answers = ask(tb, "s1", ["p1", "p2", "p3"], sport=40002)
    assert {ip for ip, _ in answers.values()} == {tb.public_address("s1")}
    ports = [port for _, port in answers.values()]
    assert len(ports) == 3 and len(set(ports)) >= 2, ports  # all alike: 1 in ~10^9


# --- STUN and TURN ----------------------------------------------------------------------------


def test_stun_through_nat_returns_the_public_address(tb: Testbed) -> None:
    for host, port in (("c1", 40003), ("s1", 40004), ("p1", 40005)):
        done = tb.run(
            host,
            [
                sys.executable,
                "-c",
                STUN_PROBE,
                tbnet.INFRA_ADDRESS,
                str(tbnet.TURN_PORT),
                str(port),
            ],
        )
        assert done.returncode == 0, done.stderr
        ip, mapped_port = json.loads(done.stdout)
        assert ip == tb.public_address(host)
        if host != "s1":
            assert mapped_port == port


def test_turn_allocation_relays(tb: Testbed) -> None:
    assert tb.turn_username and tb.turn_credential
    done = tb.run(
        "c1",
        [
            sys.executable,
            "-c",
            TURN_PROBE,
            f"{tbnet.INFRA_ADDRESS}:{tbnet.TURN_PORT}",
            tb.turn_username,
            tb.turn_credential,
            f"{tb.address('p1')}:{ECHO_PORT}",
        ],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["relayed"][0] == tbnet.INFRA_ADDRESS
    # p1 saw the relay's address and port, and its answer came back through the relay
    assert result["answer"][:2] == result["relayed"]
    assert result["from"] == [tb.address("p1"), ECHO_PORT]


def test_a_partition_can_cut_the_turn_server(tb: Testbed) -> None:
    tb.partition([{"p1", "p2", "p3", "c1", "s1"}, {tbnet.TURN_SERVER}])
    done = tb.run(
        "p1",
        [
            sys.executable,
            "-c",
            STUN_PROBE,
            tbnet.INFRA_ADDRESS,
            str(tbnet.TURN_PORT),
            "40006",
            "0.1",
        ],
    )
    assert done.returncode != 0 and "no STUN answer" in done.stderr
    assert set(ask(tb, "p1", ["p2"])) == {"p2"}


# --- cleanup ----------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


def test_close_removes_everything_even_after_an_exception(net: Testbed) -> None:
    tb = Testbed([HostSpec("a"), HostSpec("b", nat="symmetric")], Shape(delay=0.01), turn=True)
    with pytest.raises(ZeroDivisionError), tb:
        sleeper = tb.popen("b", ["sleep", "60"])
        # a process that left our process group (a session of its own) is found by its netns
        escaper = tb.popen(
            "a", ["sh", "-c", "setsid sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True
        )
        assert escaper.stdout is not None
        escaped = int(escaper.stdout.readline())
        deadline = time.monotonic() + 5
        while os.getsid(escaped) != escaped:  # setsid(1) has not run yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        workdir = tb.workdir
        assert workdir is not None and workdir.is_dir()
        assert len(own_namespaces(tb)) == 4
        1 / 0  # noqa: B018
    assert own_namespaces(tb) == []
    assert gone(sleeper.pid)
    assert workdir is not None
    time.sleep(0.05)
    assert not workdir.exists()
    assert not (tbnet.OWNER_DIR / f"{tb.id}.json").exists()
    assert gone(escaped)
    assert escaper.wait(timeout=5) is not None
    # the other testbed (the module's) lives on
    assert set(ask(net, "p1", ["p2"])) == {"p2"}
    tb.close()  # again: nothing to do, no error
    with pytest.raises(TestbedError, match="closed"):
        tb.popen("a", ["true"])
    with pytest.raises(TestbedError, match="closed"):
        tb.counters()


OWNER_SCRIPT = """
import json, signal, sys, time
from peer_relay.testbed import HostSpec, Testbed
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in the background
tb = Testbed([HostSpec("a"), HostSpec("b", nat="cone")], turn=True)
tb.start()
p = tb.popen("b", ["sleep", "60"])
print(json.dumps({"id": tb.id, "pid": p.pid}), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_sigterm_or_sigint_of_the_owner_removes_everything(
    testbed_ready: None, sig: signal.Signals, status: int
) -> None:
    """SIGTERM: the module's handler closes the testbed, then dies of SIGTERM as it would have;
    SIGINT: KeyboardInterrupt, the testbed is closed at exit, and Python dies of SIGINT."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(tbnet.__file__).parents[2])},
    )
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
        assert any(n.startswith(info["id"] + "-") for n in os.listdir(tbnet.NETNS_DIR))
        record = json.loads((tbnet.OWNER_DIR / f"{info['id']}.json").read_text())
        helpers = [pid for pid, _ in record["helpers"]]  # the forwarder and coturn
        assert len(helpers) == 2 and not any(gone(pid) for pid in helpers)
        owner.send_signal(sig)
        assert owner.wait(timeout=15) == status
    finally:
        if owner.poll() is None:  # the test failed: what the owner left is stale now
            owner.kill()
            owner.wait()
            cleanup_stale()
    assert not [n for n in os.listdir(tbnet.NETNS_DIR) if n.startswith(info["id"] + "-")]
    assert all(gone(pid) for pid in [info["pid"], *helpers])
    assert not Path(record["workdir"]).exists()
    assert not (tbnet.OWNER_DIR / f"{info['id']}.json").exists()


def test_cleanup_stale_removes_only_dead_owners_leftovers(testbed_ready: None) -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    prefix = f"pz{secrets.token_hex(2)}-"  # no other test run's names
    dead, live = f"{prefix}dead00", f"{prefix}11fe00"
    for tid in (dead, live):
        subprocess.run([ip, "netns", "add", f"{tid}-h1"], check=True)
    sleeper = subprocess.Popen(
        [ip, "netns", "exec", f"{dead}-h1", "sleep", "60"], start_new_session=True
    )
    me = os.getpid()
    start = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19]
    tbnet.OWNER_DIR.mkdir(parents=True, exist_ok=True)
    (tbnet.OWNER_DIR / f"{live}.json").write_text(json.dumps({"pid": me, "start_time": int(start)}))
    (tbnet.OWNER_DIR / f"{dead}.json").write_text(json.dumps({"pid": 2**22 + 1}))
    try:
        ns_inode = os.stat(tbnet.NETNS_DIR / f"{dead}-h1").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino != ns_inode:  # ip has not setns'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cleanup_stale(prefix) == 1
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        names = os.listdir(tbnet.NETNS_DIR)
        assert f"{dead}-h1" not in names and f"{live}-h1" in names
        assert not (tbnet.OWNER_DIR / f"{dead}.json").exists()
    finally:
        sleeper.kill()
        (tbnet.OWNER_DIR / f"{live}.json").unlink(missing_ok=True)
        assert cleanup_stale(prefix) == 1  # the owner record is gone: now it is stale


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Testbed([]), "at least one host"),
        (lambda: Testbed([HostSpec("a"), HostSpec("a", nat="cone")]), "duplicate host names: a"),
        (lambda: HostSpec("A"), "bad host name 'A'"),
        (lambda: HostSpec("toolongname"), "bad host name"),
        (lambda: HostSpec("a-b"), "bad host name"),
        (lambda: HostSpec("a", nat="full"), "bad NAT kind 'full'"),  # type: ignore[arg-type]
        (lambda: Shape(loss=1.5), "loss is a fraction"),
        (lambda: Shape(loss=-0.1), "loss must be finite and >= 0"),
        (lambda: Shape(delay=-1), "delay must be finite and >= 0"),
        (lambda: Shape(jitter=float("nan")), "jitter must be finite"),
        (lambda: Shape(delay="1"), "must be a number"),  # type: ignore[arg-type]
        (lambda: Testbed(["a"]), "must be HostSpec"),  # type: ignore[list-item]
    ],
)
def test_bad_specs_are_refused(make: Any, message: str) -> None:
    with pytest.raises(TestbedError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_missing_requirements_are_refused_before_anything_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TestbedError, match="needs root"):
        check_requirements()
    with pytest.raises(TestbedError, match="needs root"):
        Testbed([HostSpec("a")]).start()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which

    def which(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name in ("nft", "turnserver") else real_which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    with pytest.raises(
        TestbedError, match=r"nft \(Debian package nftables\), turnserver \(Debian package coturn\)"
    ):
        check_requirements(turn=True)
    tb = Testbed([HostSpec("a")])
    with pytest.raises(TestbedError, match="nftables"):
        tb.start()
    assert not (tbnet.OWNER_DIR / f"{tb.id}.json").exists()
    tb.close()
