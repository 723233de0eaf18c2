"""Real attacks on real nodes over loopback WebSockets (issue 13: hostile networks)."""
