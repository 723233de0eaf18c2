"""The package's shape, checked from its source: no import cycles, a core without I/O, parts
that depend one way, and no module reaching into another object's private attributes."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer_relay.core import PARTS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peer_relay"
TESTS = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> Iterator[tuple[str, bool]]:
    """Modules of the package that ``name`` imports, and whether only for type checking."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            checking.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (
                (base + "." + node.module if node.module else base)
                if node.level
                else (node.module or "")
            )
            if not target.startswith("peer_relay"):
                continue
            known = modules()
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), id(node) in checking
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("peer_relay"):
                    yield alias.name, id(node) in checking


def graph(include_type_checking: bool) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, path in modules().items():
        out[name] = {
            target
            for target, only_typing in imports_of(name, path)
            if target != name and (include_type_checking or not only_typing)
        }
    return out


def test_no_import_cycles_not_even_for_type_checking() -> None:
    deps = graph(include_type_checking=True)
    # A package imports its own submodules (to re-export them); that is not a cycle.
    for name in deps:
        deps[name] = {d for d in deps[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(deps.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep in deps and not state.get(dep):
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(deps):
        if not state.get(name):
            visit(name)


def test_the_core_does_no_io_and_its_parts_depend_one_way() -> None:
    forbidden = ("asyncio", "socket", "websockets", "aiortc", "time", "threading")
    order = {name: i for i, name in enumerate(PARTS)}
    for name, path in modules().items():
        if not name.startswith("peer_relay.core.") and name != "peer_relay.core":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in forbidden, (name, alias.name)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                assert (node.module or "").split(".")[0] not in forbidden, (name, node.module)
        part = name.rpartition(".")[2]
        if part not in order or path.name == "__init__.py":
            continue
        for target, _typing in imports_of(name, path):
            if target.startswith("peer_relay.core."):
                dep = target.rpartition(".")[2]
                assert order[dep] < order[part], f"{part} depends on {dep}, a part above it"
            else:
                # Below the core: ids, wire, identity, events, table, the cryptography of
                # sessions; nothing that does I/O.
                assert target.split(".")[1] in {
                    "ids",
                    "wire",
                    "identity",
                    "events",
                    "table",
                    "_json",
                    "ed25519",
                    "sealing",
                    "noise",
                }, (name, target)


_AIORTC = "aiortc exposes no public handle on these (SCTP max-message-size, ICE sockets)"
_NOMINATED = "the test reads which ICE pair aioice nominated: nothing public names it"
_LOSE_SIGNALS = (
    "fault injection: the test replaces the core's send_signal to lose or delay the signals a "
    "relay would carry, and drives the node's pump after a delayed one"
)
PRIVATE_ACCESS_ALLOWED: dict[tuple[str, str], str] = {
    # (file relative to the repo, the expression) -> why it reaches into a private attribute
    ("src/peer_relay/transports/webrtc.py", "channel.transport._remote_max_message_size"): _AIORTC,
    ("src/peer_relay/transports/webrtc.py", "self._pc.sctp.transport.transport._connection"): (
        _AIORTC
    ),
    (
        "src/peer_relay/transports/webrtc.py",
        "self._pc.sctp.transport.transport._connection._protocols",
    ): _AIORTC,
    ("tests/interop/test_webrtc_interop.py", "node._rtc"): (
        "the test wraps the WebRTC adapter's add_signal to record the signals it is handed, and "
        "reads its links' ICE pairs"
    ),
    ("tests/interop/test_webrtc_interop.py", "link._pc"): _NOMINATED,
    ("tests/interop/test_webrtc_interop.py", "link._pc.sctp.transport.transport._connection"): (
        _NOMINATED
    ),
    ("tests/interop/test_webrtc_interop.py", "connection._nominated"): _NOMINATED,
    ("tests/test_webrtc.py", "b._core"): _LOSE_SIGNALS,
    ("tests/test_webrtc.py", "a._core"): _LOSE_SIGNALS,
    ("tests/test_webrtc.py", "b._flush"): _LOSE_SIGNALS,
    ("tests/test_auth.py", "d._core"): (
        "the test waits for the moment the duplicate filter forgets one message (to replay it "
        "then): nothing public names a message's key"
    ),
    ("tests/test_auth.py", "core._inbox"): "(the same)",
    ("tests/test_ice_settings.py", "peer._webrtc_adapter"): (
        "the test reads the settings aiortc is given (TURN credentials), which nothing public shows"
    ),
    ("tests/transports/test_webrtc_link.py", "webrtc._scoped_get_host_addresses"): (
        "the test checks that webrtc.py's scoped patch of aioice's address lookup is undone"
    ),
    ("tests/transports/test_webrtc_link.py", "webrtc._override_users"): "(the same)",
    ("tests/transports/test_webrtc_link.py", "webrtc._host_addresses"): (
        "a plain aiortc peer (the test's stand-in for a browser) gathers on loopback only"
    ),
    ("tests/transports/test_webrtc_link.py", "a.link._channel"): (
        "fault injection: the test sends binary frames, as a broken remote would, on the "
        "link's own data channel"
    ),
    ("tests/transports/test_webrtc_link.py", "aioice.ice._mdns"): (
        "the test checks that aioice opened no multicast socket: nothing public says so"
    ),
    ("tests/test_socket.py", "server._create_protocol"): (
        "kademlia's Server has no public way to run on a transport made elsewhere"
    ),
    ("tests/test_randomness.py", "os._exit"): (
        "a forked child must end without the parent's clean-up (pytest's included)"
    ),
}


def defined_privates(tree: ast.Module) -> set[str]:
    """Private names a module defines: methods, class attributes, ``self._x`` assignments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


def private_accesses(path: Path) -> Iterator[tuple[int, str]]:
    """``obj._name`` where ``obj`` is not ``self``/``cls`` and ``_name`` is not this module's."""
    tree = ast.parse(path.read_text())
    own = defined_privates(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in own:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        yield node.lineno, ast.unparse(node)


@pytest.mark.parametrize("root", [PACKAGE, TESTS], ids=["package", "tests"])
def test_no_module_reaches_into_another_modules_private_attributes(root: Path) -> None:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE.parents[1]))
        for line, text in private_accesses(path):
            if (relative, text) not in PRIVATE_ACCESS_ALLOWED:
                found.append(f"{relative}:{line}: {text}")
    assert not found, "private attributes reached from outside:\n" + "\n".join(found)
