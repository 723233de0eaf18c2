"""Assemble the web build: Pyodide, our package and its pure-Python dependency, and the pages.

The build is a folder a static web server can serve as it is::

    index.html, demo.js, blank.html   the demo page (and an empty page for tests)
    peer-relay.js                     the JavaScript entry (the original's API)
    peer_relay.zip                    peer_relay (the modules a browser peer needs) and rfc8785
    pyodide/                          from the npm package ``pyodide``: the loader, the .wasm,
                                      python_stdlib.zip and pyodide-lock.json

The npm package is installed with ``npm`` into the cache (``.cache/`` in a source checkout, else
``~/.cache/peer-relay``, or ``$PEER_RELAY_CACHE``) the first time; nothing is fetched at run
time, and the page loads nothing from elsewhere.

``python -m peer_relay.browser.build [OUT]`` builds and prints the folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PYODIDE_VERSION = "314.0.7"
PYODIDE_FILES = (
    "pyodide.mjs",
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "python_stdlib.zip",
    "pyodide-lock.json",
)
STATIC = Path(__file__).with_name("static")
PACKAGE = Path(__file__).resolve().parents[1]
# Modules a browser peer does not need (they import picows, aiortc or asyncio servers).
EXCLUDED = {"node.py", "socket.py", "cli.py", "sim", "static"} | {
    "build.py",
    "server.py",
}
# Of transports/, only the pure signal checks the browser's WebRTC links share with aiortc's.
TRANSPORTS_KEPT = {"__init__.py", "signals.py"}
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def cache_dir() -> Path:
    """Where the npm package and the default build live."""
    env = os.environ.get("PEER_RELAY_CACHE")
    if env:
        return Path(env)
    root = PACKAGE.parents[1]
    if (root / "pyproject.toml").is_file() and (root / "src" / "peer_relay").is_dir():
        return root / ".cache"
    return Path.home() / ".cache" / "peer-relay"


def pyodide_dir(cache: Path | None = None) -> Path:
    """The npm package ``pyodide`` in the cache, installed with npm if it is missing."""
    prefix = (cache or cache_dir()) / "web-npm"
    folder = prefix / "node_modules" / "pyodide"
    if all((folder / name).is_file() for name in PYODIDE_FILES):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once, to install the npm package pyodide")
    prefix.mkdir(parents=True, exist_ok=True)
    if not (prefix / "package.json").exists():
        (prefix / "package.json").write_text('{"private": true}\n')
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"pyodide@{PYODIDE_VERSION}"],
        cwd=prefix,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def _package_files() -> list[tuple[Path, str]]:
    """(file, name in the zip) of peer_relay's browser modules and of rfc8785."""
    files: list[tuple[Path, str]] = []
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(PACKAGE)
        if path.is_dir() or any(part in EXCLUDED for part in rel.parts):
            continue
        if rel.parts[0] == "transports" and rel.name not in TRANSPORTS_KEPT:
            continue
        if path.suffix == ".py" or path.name == "py.typed":
            files.append((path, f"peer_relay/{rel.as_posix()}"))
    spec = importlib.util.find_spec("rfc8785")
    if spec is None or spec.origin is None:
        raise RuntimeError("rfc8785 is not installed")
    rfc = Path(spec.origin).parent
    for path in sorted(rfc.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files.append((path, f"rfc8785/{path.relative_to(rfc).as_posix()}"))
    return files


def _write_zip(target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path, name in _package_files():
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())
    tmp.replace(target)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists():
        have, new = dst.stat(), src.stat()
        if have.st_size == new.st_size and have.st_mtime >= new.st_mtime:
            return
    shutil.copy2(src, dst)


def build(out: Path | None = None, cache: Path | None = None) -> Path:
    """Build the web folder (default ``<cache>/web``) and return it."""
    cache = cache or cache_dir()
    out = out or cache / "web"
    (out / "pyodide").mkdir(parents=True, exist_ok=True)
    source = pyodide_dir(cache)
    for name in PYODIDE_FILES:
        _copy_if_changed(source / name, out / "pyodide" / name)
    for path in STATIC.iterdir():
        if path.is_file():
            _copy_if_changed(path, out / path.name)
    _write_zip(out / "peer_relay.zip")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m peer_relay.browser.build [OUT]``."""
    args = sys.argv[1:] if argv is None else argv
    print(build(Path(args[0]) if args else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
