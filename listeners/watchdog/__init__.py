"""The health engine behind supervisor-health and supervisor-httpok: probes, heartbeats and
silence judged per process (engine), the probes themselves (probes), the backoff schedule and
its state file (backoff), the mass-restart guard (guard). The tools bring the rules."""
