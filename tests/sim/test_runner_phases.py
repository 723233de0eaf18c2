"""The runner's phases: progress reports and wall-time split (the digests are pinned elsewhere)."""

from __future__ import annotations

from peer_relay.sim.runner import SimParams, run_simulation


def test_progress_and_wall_phases_follow_the_phases() -> None:
    calls: list[tuple[str, float, float, float]] = []
    params = SimParams(nodes=40, messages=50, seed=4, churn=0.1, settle_max=10.0)
    report = run_simulation(params, lambda *call: calls.append(call))
    assert list(report.wall_phases) == ["join", "settle", "messages"]
    assert all(seconds >= 0 for seconds in report.wall_phases.values())
    phases = [phase for phase, *_ in calls]
    assert phases == sorted(phases, key=["join", "settle", "messages"].index)
    finished = [(phase, done, total) for phase, done, total, _ in calls if done >= total]
    assert finished[0] == ("join", 40, 40)
    assert finished[-1][0] == "messages" and finished[-1][1] == finished[-1][2] > 50
    seconds = [virtual for *_, virtual in calls]
    assert seconds == sorted(seconds)
    assert report.virtual_time >= seconds[-1]
