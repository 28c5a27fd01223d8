"""Benchmarks for simq, run with ``nox -s bench`` (``python -m bench``)."""
