"""The conformance suite's tests; collected by ``pytest --conformance=ADAPTER``."""
