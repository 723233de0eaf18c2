"""Cost of a session's crypto: ``cryptography`` against the pure-Python ``peer_relay.purecrypto``.

    .venv/bin/python benchmarks/session_crypto.py [--runs 7] [--browser]

Measures, side by side in one run, the CPU time (``time.process_time``; median of ``--runs``
runs, each long enough to be measured well) of:

- one AEAD encryption plus decryption of a 100-byte and of a 1 KiB message, with
  ``cryptography``'s ChaCha20Poly1305 and AESGCM (OpenSSL) and with purecrypto's;
- making an AEAD object for a new key (a Noise handshake makes one per ``MixKey``);
- one X25519 DH (``cryptography``, purecrypto).

``--browser`` runs the purecrypto timings again in Pyodide in headless Chromium (Debian's, via
Playwright; everything served on 127.0.0.1), with the wall clock (``performance.now``; a
page's only thread), and WebCrypto's AES-GCM encryption plus decryption (``await
crypto.subtle...``) and X25519 ``deriveBits`` for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZES = (100, 1024)

# Run as it is here and, as source, in Pyodide: only the standard library and the module given.
TIMINGS = r'''
def pure_timings(pc, clock, runs, min_run=0.05):
    """{row name: median seconds per call} for purecrypto's AEADs and X25519."""
    import os
    import statistics

    def measure(fn):
        number = 1
        while True:  # calibrate: a run lasts at least min_run
            start = clock()
            for _ in range(number):
                fn()
            if clock() - start >= min_run:
                break
            number *= 2
        samples = []
        for _ in range(runs):
            start = clock()
            for _ in range(number):
                fn()
            samples.append((clock() - start) / number)
        return statistics.median(samples)

    out = {}
    key, nonce = os.urandom(32), os.urandom(12)
    for name, cls in (("ChaCha20Poly1305", pc.ChaCha20Poly1305), ("AESGCM", pc.AESGCM)):
        aead = cls(key)
        for size in SIZES:
            data = os.urandom(size)

            def roundtrip(aead=aead, data=data):
                aead.decrypt(nonce, aead.encrypt(nonce, data, b""), b"")

            out[f"{name} enc+dec {size} B"] = measure(roundtrip)
        out[f"{name} new key"] = measure(lambda cls=cls: cls(key))
    public = pc.x25519_base(os.urandom(32))
    out["X25519 DH"] = measure(lambda: pc.x25519(key, public))
    return out
'''.replace("SIZES", repr(SIZES))


def _pure_timings(runs: int) -> dict[str, float]:
    from peer_relay import purecrypto

    namespace: dict[str, Any] = {}
    exec(TIMINGS, namespace)
    result: dict[str, float] = namespace["pure_timings"](purecrypto, time.process_time, runs)
    return result


def _measure(fn: Callable[[], object], runs: int, min_run: float = 0.05) -> float:
    """The calibrated median of ``pure_timings`` in ``TIMINGS``, for one callable."""
    number = 1
    while True:
        start = time.process_time()
        for _ in range(number):
            fn()
        if time.process_time() - start >= min_run:
            break
        number *= 2
    samples = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(number):
            fn()
        samples.append((time.process_time() - start) / number)
    return statistics.median(samples)


def _openssl_timings(runs: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    out: dict[str, float] = {}
    key, nonce = os.urandom(32), os.urandom(12)
    classes: tuple[tuple[str, Any], ...] = (
        ("ChaCha20Poly1305", ChaCha20Poly1305),
        ("AESGCM", AESGCM),
    )
    for name, cls in classes:
        aead = cls(key)
        for size in SIZES:
            data = os.urandom(size)

            def roundtrip(aead: Any = aead, data: bytes = data) -> None:
                aead.decrypt(nonce, aead.encrypt(nonce, data, b""), b"")

            out[f"{name} enc+dec {size} B"] = _measure(roundtrip, runs)
        out[f"{name} new key"] = _measure(lambda cls=cls: cls(key), runs)  # type: ignore[misc]
    private = X25519PrivateKey.generate()
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    out["X25519 DH"] = _measure(
        lambda: private.exchange(X25519PublicKey.from_public_bytes(public)), runs
    )
    return out


# --- In the browser ----------------------------------------------------------------------------

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_RUN = """async ({ code, runs, sizes }) => {
  const { loadRuntime } = await import('/peer-relay.js')
  const pyodide = await loadRuntime()
  pyodide.globals.set('timings_source', code)
  pyodide.globals.set('runs', runs)
  const pure = JSON.parse(pyodide.runPython(`
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location(
    "purecrypto", "/home/pyodide/pkg/peer_relay/purecrypto.py")
pc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pc)
ns = {}
exec(timings_source, ns)
json.dumps({"version": sys.version.split()[0],
            "rows": ns["pure_timings"](pc, time.perf_counter, runs)})
`))
  // WebCrypto, for reference: the same calibrated median, every call awaited
  async function measure (fn) {
    let number = 1
    for (;;) {
      const t0 = performance.now()
      for (let i = 0; i < number; i++) await fn()
      if (performance.now() - t0 >= 50) break
      number *= 2
    }
    const samples = []
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now()
      for (let i = 0; i < number; i++) await fn()
      samples.push((performance.now() - t0) / number / 1000)
    }
    samples.sort((a, b) => a - b)
    return samples[Math.floor(samples.length / 2)]
  }
  const subtle = crypto.subtle
  const raw = crypto.getRandomValues(new Uint8Array(32))
  const key = await subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt'])
  const iv = crypto.getRandomValues(new Uint8Array(12))
  for (const size of sizes) {
    const data = crypto.getRandomValues(new Uint8Array(size))
    pure.rows[`WebCrypto AES-GCM enc+dec ${size} B`] = await measure(async () => {
      const sealed = await subtle.encrypt({ name: 'AES-GCM', iv }, key, data)
      await subtle.decrypt({ name: 'AES-GCM', iv }, key, sealed)
    })
  }
  pure.rows['WebCrypto AES-GCM new key'] = await measure(
    () => subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt']))
  try {
    const a = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits'])
    const b = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits'])
    pure.rows['WebCrypto X25519 DH'] = await measure(
      () => subtle.deriveBits({ name: 'X25519', public: b.publicKey }, a.privateKey, 256))
  } catch (err) {
    pure.x25519Error = String(err)
  }
  pure.userAgent = navigator.userAgent
  return pure
}"""


async def _browser_timings(runs: int, chromium: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from peer_relay.browser.build import build
    from peer_relay.browser.server import WebServer

    with tempfile.TemporaryDirectory(prefix="session-crypto-web-") as tmp:
        root = await asyncio.to_thread(build, Path(tmp))
        async with WebServer(Path(root)) as web, async_playwright() as pw:
            base = await web.start("127.0.0.1", 0)
            browser = await pw.chromium.launch(executable_path=chromium, args=FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(base + "blank.html")
                result: dict[str, Any] = await page.evaluate(
                    BROWSER_RUN, {"code": TIMINGS, "runs": runs, "sizes": list(SIZES)}
                )
            finally:
                await browser.close()
    return result


# --- Report ------------------------------------------------------------------------------------


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:10.1f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:8.0f}x"


def _table(openssl: dict[str, float], pure: dict[str, float], browser: dict[str, Any]) -> None:
    rows = browser.get("rows", {})
    webcrypto = bool(rows)
    head = f"{'operation':<32}{'OpenSSL us':>12}{'pure us':>12}{'pure/OpenSSL':>14}"
    if webcrypto:
        head += f"{'Pyodide us':>12}{'Pyodide/OpenSSL':>17}{'WebCrypto us':>14}"
    print(head)
    print("-" * len(head))
    for op in [f"enc+dec {size} B" for size in SIZES] + ["new key"]:
        for name in ("ChaCha20Poly1305", "AESGCM"):
            row = f"{name} {op}"
            line = (
                f"{row:<32}{_us(openssl.get(row)):>12}{_us(pure.get(row)):>12}"
                f"{_ratio(pure.get(row), openssl.get(row)):>14}"
            )
            if webcrypto:
                web = rows.get(f"WebCrypto AES-GCM {op}") if name == "AESGCM" else None
                line += (
                    f"{_us(rows.get(row)):>12}{_ratio(rows.get(row), openssl.get(row)):>17}"
                    f"{_us(web):>14}"
                )
            print(line)
    row = "X25519 DH"
    line = (
        f"{row:<32}{_us(openssl[row]):>12}{_us(pure[row]):>12}{_ratio(pure[row], openssl[row]):>14}"
    )
    if webcrypto:
        line += (
            f"{_us(rows.get(row)):>12}{_ratio(rows.get(row), openssl[row]):>17}"
            f"{_us(rows.get('WebCrypto X25519 DH')):>14}"
        )
    print(line)
    print()
    for size in SIZES:
        chacha, aes = f"ChaCha20Poly1305 enc+dec {size} B", f"AESGCM enc+dec {size} B"
        line = f"pure AESGCM / pure ChaCha20Poly1305, {size:>4} B: "
        line += f"CPython {pure[aes] / pure[chacha]:.2f}"
        if webcrypto:
            line += f", Pyodide {rows[aes] / rows[chacha]:.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--browser", action="store_true", help="also in Pyodide in Chromium")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()

    started = datetime.datetime.now().astimezone()
    load_before = _load()
    openssl = _openssl_timings(args.runs)
    pure = _pure_timings(args.runs)
    load_after = _load()
    browser: dict[str, Any] = {}
    if args.browser:
        browser = asyncio.run(_browser_timings(args.runs, args.chromium))
    print(f"{started:%Y-%m-%d %H:%M:%S %z}  {platform.node()}  {os.cpu_count()} CPUs")
    print(f"CPython {platform.python_version()} on {platform.machine()}")
    print("load average (1, 5, 15 min):")
    print(f"  before {load_before}, after CPython timings {load_after}, at end {_load()}")
    print(f"CPU time per call, median of {args.runs} runs (Pyodide and WebCrypto: wall clock)")
    if browser:
        print(f"Pyodide: Python {browser['version']}; {browser['userAgent']}")
        if "x25519Error" in browser:
            print(f"WebCrypto X25519: {browser['x25519Error']}")
    print()
    _table(openssl, pure, browser)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": started.isoformat(),
                    "load": [load_before, load_after],
                    "openssl": openssl,
                    "purecrypto": pure,
                    "browser": browser,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
