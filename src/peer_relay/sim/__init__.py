"""The simulator: many real cores in one process, on a virtual clock with seeded randomness.

- :class:`SimNetwork` runs cores and carries their frames (latency, loss, crashes, partitions);
- :func:`run_simulation` runs one experiment (join, settle, messages with churn) and measures it;
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
from .runner import STRATEGIES, SimParams, SimReport, run_simulation, strategy_config

__all__ = [
    "EPOCH",
    "STRATEGIES",
    "FastSigner",
    "SimNetwork",
    "SimNode",
    "SimParams",
    "SimReport",
    "fast_verify",
    "lognormal_latency",
    "run_simulation",
    "strategy_config",
    "uniform_delay",
]
