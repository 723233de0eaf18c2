"""The simulator: many real cores in one process, on a virtual clock with seeded randomness.

- :class:`SimNetwork` runs cores and carries their frames (latency, loss, crashes, partitions);
- :func:`run_simulation` runs one experiment (join, settle, messages with churn) and measures it;
- :mod:`peer_relay.sim.sweep` runs one experiment with many seeds at once (here or on Dask);
- :func:`peer_relay.sim.cli.main` is ``peer-relay simulate``.
"""

from .network import (
    EPOCH,
    FastSigner,
    SimNetwork,
    SimNode,
    fast_verify,
    lognormal_latency,
    uniform_delay,
)
from .runner import (
    STRATEGIES,
    SimParams,
    SimReport,
    SimulationTooLarge,
    check_params,
    run_simulation,
    strategy_config,
)

__all__ = [
    "EPOCH",
    "STRATEGIES",
    "FastSigner",
    "SimNetwork",
    "SimNode",
    "SimParams",
    "SimReport",
    "SimulationTooLarge",
    "check_params",
    "fast_verify",
    "lognormal_latency",
    "run_simulation",
    "strategy_config",
    "uniform_delay",
]
