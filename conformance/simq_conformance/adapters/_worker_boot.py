"""The app module a real ``celery worker`` process loads (internal).

The Celery adapter starts ``python -m celery -A simq_conformance.adapters._worker_boot
worker ...`` with the run's settings in the ``SIMQ_CONFORMANCE_WORKER`` environment
variable (JSON: ``{"conf": {...}, "sink": "<dir>", "worker": "worker-1"}``, and ``"mutant"``
when a planted bug of ``simq_conformance.mutants`` is under test). Importing
this module builds the app, registers the probes and installs the history recorder,
before the pool forks, so every child records too.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from simq_conformance.adapters._celery_recorder import CeleryRecorder
from simq_conformance.probes import SINK_SETTING, register_probes
from simq_conformance.sink import Sink

ENV = "SIMQ_CONFORMANCE_WORKER"

_config = json.loads(os.environ.get(ENV) or "{}")
if not _config:
    raise RuntimeError(
        f"{__name__} is started by simq_conformance's Celery adapter, which passes the "
        f"run's settings in ${ENV}; it was not set"
    )

if _config.get("mutant"):
    # Planted before the app and its tasks exist, and before the pool forks.
    from simq_conformance.mutants import plant

    plant(_config["mutant"]["name"], _config["mutant"]["driver"])

app = Celery("simq_conformance_worker", set_as_current=True)
app.conf.update(_config["conf"])
app.conf[SINK_SETTING] = _config["sink"]
probes = register_probes(app)
recorder = CeleryRecorder(Sink(_config["sink"]), worker=_config["worker"]).install()
