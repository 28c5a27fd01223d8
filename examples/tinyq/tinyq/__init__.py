"""tinyq: a deliberately small task queue on Redis, and its conformance adapter.

Not Celery, not kombu: an example of certifying any queue with ``simq_conformance``.

* :mod:`tinyq.broker`: the reliable queue (LPUSH, BLMOVE into a per-worker processing
  list, LREM to ack, dead workers' lists reclaimed), countdowns, results;
* :mod:`tinyq.probes`: the suite's probe tasks, written for tinyq;
* :mod:`tinyq.worker`: one worker process (``python -m tinyq.worker``), which records
  every step it takes in the run's sink;
* :mod:`tinyq.run` and :mod:`tinyq.conformance`: the adapter
  (``pytest --conformance=tinyq.conformance:TinyqAdapter``).
"""
