"""Sweeps: the same parameters run with several seeds at once, and the spread of what they
measured (``peer-relay simulate --seeds K``).

:func:`seeded` gives the runs of a sweep; :func:`run_local` runs them in a pool of processes on
this machine, :func:`run_dask` on a Dask cluster (:func:`connect_dask`); :func:`summarize`
gives each figure's mean, standard deviation, least and most over the runs. A run is the same
wherever it runs: its report has the digest :func:`~peer_relay.sim.runner.run_simulation` gives.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from .runner import SimParams, SimReport, SimulationTooLarge, memory_available, run_simulation

DASK_HINT = "--dask needs dask.distributed, which is not installed: pip install 'peer-relay[dask]'"
DASK_TIMEOUT = 5.0
"""Seconds to reach a Dask scheduler before giving up."""

Done = Callable[[SimReport], None]
"""Called in the process that started the sweep with each run's report as the run ends."""


class SweepError(ValueError):
    """A sweep cannot start (no Dask, or its scheduler out of reach); the message is one line
    that says what to do."""


@dataclass(frozen=True)
class Figure:
    """A figure of :class:`SimReport` a sweep sums up, and how the table writes it."""

    key: str
    """The report's field (or ``control_frames_per_peer``)."""
    label: str
    decimals: int
    unit: str = ""
    scale: float = 1.0
    receipts: bool = False
    """Only measured when messages go by ``deliver``."""

    def value(self, report: SimReport) -> float:
        """This figure of ``report``."""
        if self.key == "control_frames_per_peer":
            return report.control_frames / report.joined
        return float(getattr(report, self.key))


FIGURES = (
    Figure("delivery_ratio", "delivery", 2, "%", 100.0),
    Figure("receipt_ratio", "delivered by receipt", 2, "%", 100.0, receipts=True),
    Figure("receipt_p50", "time to receipt p50", 3, " s", receipts=True),
    Figure("receipt_p99", "time to receipt p99", 3, " s", receipts=True),
    Figure("hops_mean", "hops mean", 2),
    Figure("hops_p50", "hops p50", 1),
    Figure("hops_p90", "hops p90", 1),
    Figure("hops_p99", "hops p99", 1),
    Figure("hops_max", "hops max", 1),
    Figure("latency_mean", "latency mean", 3, " s"),
    Figure("latency_p99", "latency p99", 3, " s"),
    Figure("frames_per_delivered", "frames per delivered", 2),
    Figure("duplicates", "duplicates", 1),
    Figure("links_mean", "links per peer mean", 1),
    Figure("links_min", "links per peer min", 1),
    Figure("links_max", "links per peer max", 1),
    Figure("settle_time", "time to settle", 0, " s"),
    Figure("control_frames_per_peer", "control frames per peer", 0),
    Figure("max_rss_mib", "memory (peak RSS)", 0, " MiB"),
    Figure("wall_time", "wall time", 1, " s"),
)
"""What the table of a sweep shows, in order (those of ``format_reports``, one figure a row)."""


def seeded(params: SimParams, seeds: int) -> list[SimParams]:
    """``params`` with the seeds ``params.seed`` to ``params.seed + seeds - 1``, in order."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1 (got {seeds})")
    return [replace(params, seed=params.seed + k) for k in range(seeds)]


def run_local(
    runs: Sequence[SimParams], jobs: int | None = None, done: Done | None = None
) -> list[SimReport]:
    """Run each of ``runs`` in a pool of at most ``jobs`` processes (default: one per CPU),
    forked where the system can; their reports in the order of ``runs``.

    The runs at once share the memory: unless a run's ``memory_limit`` is lower already, each
    may hold the memory available (:func:`memory_available`, now) divided by the runs at once,
    so that a sweep too large for the machine stops early instead of swapping. The first
    run to fail cancels those not started, and is raised once the running ones end.
    """
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (got {jobs})")
    at_once = min(jobs, len(runs))
    runs = share_memory(runs, at_once)
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork") if fork else None
    with ProcessPoolExecutor(max(1, at_once), mp_context=context) as pool:
        futures = [pool.submit(run_simulation, params) for params in runs]
        try:
            for future in as_completed(futures):
                report = future.result()
                if done is not None:
                    done(report)
        except SimulationTooLarge as exc:
            pool.shutdown(cancel_futures=True)
            if at_once == 1:
                raise
            raise SimulationTooLarge(
                f"{exc}; or run fewer at once (--jobs): {at_once} runs shared the memory"
            ) from None
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        return [future.result() for future in futures]


def share_memory(runs: Sequence[SimParams], at_once: int) -> list[SimParams]:
    """``runs``, each with a ``memory_limit`` of at most its share of the memory available
    (unchanged when one runs at a time, which measures what is available as it goes)."""
    available = memory_available() if at_once > 1 else None
    if available is None:
        return list(runs)
    share = available // at_once
    return [replace(p, memory_limit=min(p.memory_limit or share, share)) for p in runs]


def connect_dask(address: str, timeout: float = DASK_TIMEOUT) -> Any:
    """A ``distributed.Client`` of the Dask scheduler at ``address`` (``tcp://host:port``).
    Raise :class:`SweepError` if Dask is not installed or the scheduler is out of reach within
    ``timeout`` seconds."""
    try:
        from distributed import Client
        from distributed.comm.addressing import get_address_host_port
    except ImportError:
        raise SweepError(DASK_HINT) from None
    try:
        host, port = get_address_host_port(address)
        # A plain connection first: Dask retries a refused one until its timeout.
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise SweepError(_unreachable(address, exc)) from None
    try:
        # Then a Dask handshake, bounded here: the client waits forever on a server that
        # accepts connections but never answers one.
        asyncio.run(asyncio.wait_for(_identify(address, timeout), timeout))
        return Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]
    except TimeoutError:
        raise SweepError(
            _unreachable(address, f"no Dask answer within {timeout:g} s (is it a scheduler?)")
        ) from None
    except (OSError, ValueError) as exc:
        raise SweepError(_unreachable(address, exc)) from None


def _unreachable(address: str, why: BaseException | str) -> str:
    """The line saying that the scheduler at ``address`` is out of reach, and why."""
    reason = why if isinstance(why, str) else (str(why) or type(why).__name__).splitlines()[0]
    return (
        f"cannot reach the Dask scheduler at {address}: {reason}; "
        "start one with `dask scheduler` or drop --dask"
    )


async def _identify(address: str, timeout: float) -> None:
    """Ask the Dask server at ``address`` who it is (a handshake, then one request)."""
    from distributed.core import rpc

    server = rpc(address, timeout=timeout)  # type: ignore[no-untyped-call]
    try:
        await server.identity()
    finally:
        await server.close_rpc()  # type: ignore[no-untyped-call]


def run_dask(client: Any, runs: Sequence[SimParams], done: Done | None = None) -> list[SimReport]:
    """Run each of ``runs`` as a task on the Dask cluster of ``client``
    (:func:`connect_dask`); their reports in the order of ``runs``. The workers need this
    version of ``peer_relay`` installed; each run checks the memory of the machine it runs
    on. The first run to fail cancels the others and is raised."""
    from distributed import as_completed

    futures = [client.submit(run_simulation, params, pure=False) for params in runs]
    try:
        for future in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
            report: SimReport = future.result()
            if done is not None:
                done(report)
    except BaseException:
        client.cancel(futures)
        raise
    return [future.result() for future in futures]


@dataclass(frozen=True)
class Spread:
    """A figure over the runs of a sweep."""

    mean: float
    sd: float
    """Sample standard deviation (0 for one run)."""
    min: float
    max: float

    def text(self, figure: Figure) -> str:
        """``99.95% ±0.03 (99.91-99.98)``: mean, standard deviation, least-most."""
        d, k = figure.decimals, figure.scale
        return (
            f"{self.mean * k:.{d}f}{figure.unit} ±{self.sd * k:.{d}f} "
            f"({self.min * k:.{d}f}-{self.max * k:.{d}f})"
        )


def spread(values: Sequence[float]) -> Spread:
    """Mean, standard deviation, least and most of ``values`` (at least one)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), sd, min(values), max(values))


def figures(reports: Sequence[SimReport]) -> list[Figure]:
    """The :data:`FIGURES` that ``reports`` (runs of one sweep) measured."""
    receipts = reports[0].params.get("sending") == "deliver"
    return [f for f in FIGURES if receipts or not f.receipts]


def summarize(reports: Sequence[SimReport]) -> dict[str, Spread]:
    """Each figure's :class:`Spread` over ``reports`` (runs of one strategy), by its key."""
    return {f.key: spread([f.value(r) for r in reports]) for f in figures(reports)}
