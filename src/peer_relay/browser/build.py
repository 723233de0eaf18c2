"""Assemble the web build: Pyodide, our package and its pure-Python dependency, and the pages.

The build is a folder a static web server can serve as it is::

    index.html, demo.js, blank.html   the demo page (and an empty page for tests)
    peer-relay.js                     the JavaScript entry (the original's API); it names the
                                      two versioned entries below
    peer_relay.<hash>.zip             peer_relay (the modules a browser peer needs) and rfc8785
    pyodide/<version>-<hash>/         from the npm package ``pyodide``: the loader, the .wasm,
                                      python_stdlib.zip and pyodide-lock.json

Versioned names, so that a browser may keep those files for good (``Cache-Control: immutable``,
see :mod:`peer_relay.browser.server`): ``<hash>`` is the start of the SHA-256 of the contents
(for Pyodide, of its five files), so a new build with other contents has other URLs and no
browser can mix an old file with a new one. Pyodide's folder also says its version, for people;
the version alone would not do, as what is served there is not exactly npm's (the
precompressed ``python_stdlib.zip``, below). The pages and ``peer-relay.js`` keep their names
(pages link to them) and are revalidated on every load.

Every file worth it is precompressed beside itself: ``NAME.gz`` (gzip, always) and ``NAME.br``
(brotli too, with the ``brotli`` package, a dependency; gzip alone without it); the server
picks one by the request's ``Accept-Encoding``, as nginx's ``gzip_static``/``brotli_static``
or Caddy's ``precompressed`` do. A zip file's members are compressed one by one, which leaves
little for HTTP compression to find, so the ``.gz`` and ``.br`` of a zip compress a copy whose
members are stored: the same members, a third smaller once compressed as a whole (the zip itself
stays as npm made it, for servers that do not compress). Compressing Pyodide's 9.6 MB of
WebAssembly with brotli at its best takes most of a minute, so compressed files are kept in the
cache by the SHA-256 of what they compress: only the first build pays.

The npm package is installed with ``npm`` into the cache (``.cache/`` in a source checkout, else
``~/.cache/peer-relay``, or ``$PEER_RELAY_CACHE``) the first time; nothing is fetched at run
time, and the page loads nothing from elsewhere.

``python -m peer_relay.browser.build [OUT]`` builds and prints the folder.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .._filelock import file_lock

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
ENTRY = "peer_relay.browser"
"""What the page imports: the zip holds the modules it imports, and theirs (see
:func:`browser_modules`), so that nothing the browser cannot use (the asyncio node, picows,
aiortc, the simulator, the testbed) is downloaded."""
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)

COMPRESSIBLE = {".html", ".js", ".mjs", ".json", ".wasm", ".zip", ".css", ".svg", ".map", ".txt"}
"""What is precompressed (when it shrinks): text, WebAssembly and zips (their stored copies)."""
MIN_SIZE = 512
"""Smaller files are served as they are: their headers outweigh what compression saves."""
ENCODINGS = {"br": ".br", "gzip": ".gz"}
"""Content-Encoding -> the suffix of its precompressed file, in the server's preference."""
GZIP_LEVEL = 9
BROTLI_QUALITY = 11
HASH_CHARS = 12
FILES_LINE = "const FILES = { pyodide: 'pyodide/', bundle: 'peer_relay.zip' }"
"""The line of ``peer-relay.js`` that names Pyodide's folder and our zip; the build writes the
versioned names there."""


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


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    """The modules ``path`` (the module ``module``) imports, wherever in it (functions too),
    except under ``if TYPE_CHECKING:``; ``from X import y`` counts ``X`` and ``X.y``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def walk(nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node.test):
                walk(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0]
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            walk(ast.iter_child_nodes(node))

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _module_file(module: str) -> Path | None:
    head, *parts = module.split(".")
    if head != "peer_relay":
        return None
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def browser_modules() -> dict[str, Path]:
    """peer_relay's modules that :data:`ENTRY` imports, directly or not, with their packages."""
    found: dict[str, Path] = {}
    todo = [ENTRY]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None or module in found:
            continue
        found[module] = path
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(path, module))
    return found


def _package_files() -> list[tuple[Path, str]]:
    """(file, name in the zip) of peer_relay's browser modules and of rfc8785."""
    files = [
        (path, f"peer_relay/{path.relative_to(PACKAGE).as_posix()}")
        for path in browser_modules().values()
    ]
    files.append((PACKAGE / "py.typed", "peer_relay/py.typed"))
    spec = importlib.util.find_spec("rfc8785")
    if spec is None or spec.origin is None:
        raise RuntimeError("rfc8785 is not installed")
    rfc = Path(spec.origin).parent
    for path in sorted(rfc.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files.append((path, f"rfc8785/{path.relative_to(rfc).as_posix()}"))
    return sorted(files, key=lambda item: item[1])


def _package_zip() -> bytes:
    """The zip of :func:`_package_files`, deflated, the same bytes for the same files."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path, name in _package_files():
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())
    return out.getvalue()


def stored_zip(data: bytes) -> bytes:
    """The zip ``data`` with its members stored, not compressed (what HTTP compression then
    compresses as a whole): the same names, times, attributes and contents."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as copy:
        for member in source.infolist():
            info = zipfile.ZipInfo(member.filename, member.date_time)
            info.external_attr = member.external_attr
            info.compress_type = zipfile.ZIP_STORED
            copy.writestr(info, source.read(member))
    return out.getvalue()


def _brotli() -> Callable[[bytes], bytes] | None:
    try:
        module = importlib.import_module("brotli")
    except ImportError:
        return None
    compress: Callable[..., bytes] = module.compress
    return lambda data: compress(data, quality=BROTLI_QUALITY)


def compressors() -> dict[str, Callable[[bytes], bytes]]:
    """Content-Encoding -> compress function, for what is installed (gzip always)."""
    found: dict[str, Callable[[bytes], bytes]] = {}
    brotli = _brotli()
    if brotli is not None:
        found["br"] = brotli
    found["gzip"] = lambda data: gzip.compress(data, GZIP_LEVEL, mtime=0)
    return found


def _compressed(
    data: bytes, encoding: str, compress: Callable[[bytes], bytes], store: Path
) -> bytes:
    """``data`` compressed, from ``store`` when it was compressed before."""
    level = BROTLI_QUALITY if encoding == "br" else GZIP_LEVEL
    kept = store / f"{hashlib.sha256(data).hexdigest()}.{encoding}{level}"
    if kept.is_file():
        return kept.read_bytes()
    packed = compress(data)
    store.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
    tmp.write_bytes(packed)
    tmp.replace(kept)
    return packed


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists():
        have, new = dst.stat(), src.stat()
        if have.st_size == new.st_size and have.st_mtime >= new.st_mtime:
            return
    shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def precompress(path: Path, store: Path) -> None:
    """Write ``path``'s ``.br`` and ``.gz`` beside it (those that shrink it; see
    :data:`ENCODINGS`), and remove any other (stale) one."""
    size = path.stat().st_size
    data: bytes | None = None
    made = compressors() if path.suffix in COMPRESSIBLE and size >= MIN_SIZE else {}
    for encoding, suffix in ENCODINGS.items():
        variant = path.with_name(path.name + suffix)
        compress = made.get(encoding)
        if compress is not None:
            if data is None:
                data = path.read_bytes()
                if path.suffix == ".zip":
                    data = stored_zip(data)
            packed = _compressed(data, encoding, compress, store)
            if len(packed) < size:
                _write_if_changed(variant, packed)
                continue
        variant.unlink(missing_ok=True)


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()[:HASH_CHARS]


def build(out: Path | None = None, cache: Path | None = None) -> Path:
    """Build the web folder (default ``<cache>/web``) and return it. Builds that share a cache
    run one at a time (the later ones find the compressed files made)."""
    cache = cache or cache_dir()
    with file_lock(cache / "build.lock"):
        return _build(out or cache / "web", cache)


def _build(out: Path, cache: Path) -> Path:
    store = cache / "web-compressed"
    out.mkdir(parents=True, exist_ok=True)
    source = pyodide_dir(cache)

    # Pyodide, in a folder named by its version and contents; older folders go.
    folder = f"{PYODIDE_VERSION}-{_digest([source / name for name in PYODIDE_FILES])}"
    target = out / "pyodide" / folder
    target.mkdir(parents=True, exist_ok=True)
    for stale in (out / "pyodide").iterdir():
        if stale.name != folder:
            _remove(stale)
    for name in PYODIDE_FILES:
        _copy_if_changed(source / name, target / name)
        precompress(target / name, store)

    # Our package, named by its contents; older zips go.
    bundle_data = _package_zip()
    bundle = f"peer_relay.{hashlib.sha256(bundle_data).hexdigest()[:HASH_CHARS]}.zip"
    for stale in out.glob("peer_relay.*zip*"):
        if not stale.name.startswith(bundle):
            _remove(stale)
    _write_if_changed(out / bundle, bundle_data)
    precompress(out / bundle, store)

    # The pages, and the entry with the versioned names in it.
    for path in STATIC.iterdir():
        if path.is_file() and path.name != "peer-relay.js":
            _copy_if_changed(path, out / path.name)
            precompress(out / path.name, store)
    entry = (STATIC / "peer-relay.js").read_text(encoding="utf-8")
    if entry.count(FILES_LINE) != 1:
        raise RuntimeError(f"peer-relay.js must hold the line {FILES_LINE!r} once")
    versioned = f"const FILES = {{ pyodide: 'pyodide/{folder}/', bundle: '{bundle}' }}"
    _write_if_changed(out / "peer-relay.js", entry.replace(FILES_LINE, versioned).encode())
    precompress(out / "peer-relay.js", store)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m peer_relay.browser.build [OUT]``."""
    args = sys.argv[1:] if argv is None else argv
    print(build(Path(args[0]) if args else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
