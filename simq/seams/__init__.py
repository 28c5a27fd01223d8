"""The seams: the only places where simq touches Celery's code. Internal.

Each seam is a small class implementing an interface Celery or kombu already defines:

* :mod:`simq.seams.transport`: a kombu virtual transport whose channel publishes into
  the simulated broker, so Celery's own producer, routing and serializers run;
* :mod:`simq.seams.backend`: a key-value result backend over the simulation's store,
  so Celery's tracer, chords and ``AsyncResult`` run unchanged;
* :mod:`simq.seams.pool`: a pool that runs Celery's tracer in a child-slot fiber and
  reports accept, success, failure, time limits and lost children the way billiard does
  to Celery's ``Request``;
* :mod:`simq.seams.install`: installs all of these on an app and restores the app and
  the interpreter exactly as they were.
"""
