"""The simulated system: broker, workers, result backend. Internal: not a public API."""
