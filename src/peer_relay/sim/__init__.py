"""The simulator: many real cores in one process, on a virtual clock with seeded randomness."""

from .network import EPOCH, FastSigner, SimNetwork, SimNode, fast_verify, lognormal_latency

__all__ = ["EPOCH", "FastSigner", "SimNetwork", "SimNode", "fast_verify", "lognormal_latency"]
