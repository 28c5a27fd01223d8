"""Deterministic discrete-event core of simq. Internal: not a public API."""
