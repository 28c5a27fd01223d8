"""One run of a Celery adapter: settings, workers, publishing, faults, waiting (internal).

:class:`Run` owns a run's directory (the sink), its queue and its workers; it
publishes the probe calls, injects the faults at their times, and decides when the
run is over by reading the sink: every message acked or dropped, no attempt running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from simq.history import Event
from simq_conformance.adapter import Fault, RunResult, Workload
from simq_conformance.adapters import _brokers
from simq_conformance.adapters._celery_reconcile import (
    ATTEMPT_ENDS,
    WORKER_GONE,
    crashes_after,
    death_of_publisher,
    dying_attempts,
    missing_states,
    read_stored,
    stored_message_ids,
    unreceived_loss,
)
from simq_conformance.adapters._celery_recorder import CeleryRecorder
from simq_conformance.adapters._celery_workers import InProcessWorkers, ProcessWorkers
from simq_conformance.probes import SINK_SETTING, register_probes
from simq_conformance.sink import Record, Sink, SinkReader, collect

if TYPE_CHECKING:
    from simq_conformance.adapters.celery_adapter import CeleryAdapter

__all__ = ["RECOVERY", "Run"]

#: Seconds until a killed worker is replaced, or a shut-down one: the reference
#: adapter's RECOVERY, so both deployments recover alike.
RECOVERY = 1.0
#: Seconds a kill_child fault waits for its call to start on a real worker before it
#: is skipped: startup latency, not timing jitter (the measured slack is far shorter).
START_WAIT = 2.0

#: Settings the adapter adds unless the workload sets them: shorter latencies only.
_DEFAULT_CONF: dict[str, Any] = {
    # How long the parent waits for a dead child's result before WorkerLostError;
    # Celery's 10 s makes every G3 run slow and changes no outcome.
    "worker_lost_wait": 1.0,
    "broker_connection_retry_on_startup": True,
}

#: Polling intervals (s) of the virtual transports that take one.
_POLLING = {"memory": 0.05, "filesystem": 0.1}


class Run:
    """One run's live state: directory, queue, workers, pending faults."""

    def __init__(self, adapter: CeleryAdapter, workload: Workload) -> None:
        self.adapter = adapter
        self.workload = workload
        self.run_id = uuid.uuid4().hex[:10]
        self.directory = Path(tempfile.mkdtemp(prefix=f"simq-{adapter.name}-"))
        self.queue = f"simq.{self.run_id}"
        self.sink = Sink(self.directory)
        self.reader = SinkReader(self.directory)
        self.notes: list[str] = []
        self.task_ids: dict[str, str] = {}
        self.complete = False
        self.stopped_at: float | None = None  # when a run that timed out was stopped
        self._orphaned_since: float | None = None
        # Messages no live worker holds, whose loss a death explains, missing from the
        # broker's store: since when (monotonic); and when they were last looked for.
        self._gone_since: dict[str, float] = {}
        self._store_read_at = 0.0
        self.conf = self._conf()
        self.workers = InProcessWorkers(self) if adapter.in_process else ProcessWorkers(self)

    # -- settings ----------------------------------------------------------------------

    def _conf(self) -> dict[str, Any]:
        adapter, settings = self.adapter, self.workload.settings
        conf: dict[str, Any] = {
            "broker_url": adapter.broker_url,
            "result_backend": adapter.backend_url,
        }
        conf.update(_DEFAULT_CONF)
        conf.update(adapter.conf)
        for name in ("broker_url", "result_backend", "task_default_queue"):
            if name in settings.conf:
                self.notes.append(f"the workload's {name} is replaced by the adapter's")
        conf.update(settings.conf)
        remote = any(f.kind in ("revoke", "terminate") for f in self.workload.faults)
        conf.update(
            {
                "broker_url": adapter.broker_url,
                "result_backend": adapter.backend_url,
                "task_default_queue": self.queue,
                "worker_prefetch_multiplier": settings.prefetch_multiplier,
                "worker_concurrency": settings.concurrency,
                # Remote control only for revokes: otherwise it adds pidbox queues and
                # connections the run does not need.
                "worker_enable_remote_control": remote,
                SINK_SETTING: str(self.directory),
            }
        )
        # The adapter's transport options (folders, paths, ...), then the workload's.
        options = {**adapter.transport_options, **(conf.get("broker_transport_options") or {})}
        if adapter.traits.visibility_timeout and adapter.visibility_timeout is not None:
            options.setdefault("visibility_timeout", adapter.visibility_timeout)
        if adapter.driver == "redis":
            # Sweep for expired unacked messages every 0.5 s (kombu: every 100 s), so
            # redelivery follows the visibility timeout closely.
            options.setdefault("unacked_restore_interval", 0.5)
            options.setdefault("unacked_restore_throttle", 1)
            # kombu keeps one unacked index per database: a run of another test process
            # on the same database (with its own visibility timeout) would restore this
            # run's messages early. Each run gets its own.
            for key in ("unacked_key", "unacked_index_key", "unacked_mutex_key"):
                options.setdefault(key, f"{key.removesuffix('_key')}.{self.run_id}")
        elif adapter.driver in _POLLING:
            # kombu polls virtual transports every second: a countdown or a redelivery
            # would wait up to that long. (Not sqla: kombu's SQLAlchemy transport hands
            # every option it does not know to create_engine, which refuses this one.)
            options.setdefault("polling_interval", _POLLING[adapter.driver])
        conf["broker_transport_options"] = options
        return conf

    def worker_conf(self, slot: int) -> dict[str, Any]:
        """The settings of the worker in ``slot``: its broker connections carry a label."""
        conf = dict(self.conf)
        if self.adapter.driver == "redis":
            options = dict(conf["broker_transport_options"])
            options["client_name"] = self.connection_name(slot)
            conf["broker_transport_options"] = options
        return conf

    def connection_name(self, slot: int) -> str:
        return f"simq-{self.run_id}-slot{slot}"

    # -- the run -----------------------------------------------------------------------

    def execute(self) -> RunResult:
        recorder = CeleryRecorder(self.sink, publish_only=not self.adapter.in_process)
        history = None
        try:
            recorder.install()
            probes = register_probes(self.workers.client())
            if not self.adapter.in_process and self.adapter.driver not in ("amqp", "redis"):
                # Virtual transports in files or a database: one declaration up front, not
                # a race between the workers' own.
                _brokers.kombu_declare(
                    self.adapter.url,
                    self.conf.get("broker_transport_options"),
                    self.queue,
                )
            for slot in range(self.workload.settings.workers):
                self.workers.start_slot(slot)
            self.workers.wait_online(self.adapter.startup_timeout)
            self._publish(probes)
            self._drive()
            self._reconcile_states()
            history = collect(self.directory)
        finally:
            with contextlib.suppress(Exception):
                self.workers.stop_all()
            recorder.uninstall()
            self._cleanup()
        caps = self.adapter.capabilities
        if self.adapter.traits.visibility_timeout:
            # The workload may set its own visibility timeout: report the one in force.
            effective = self.conf["broker_transport_options"].get("visibility_timeout")
            caps = attrs.evolve(caps, visibility_timeout=effective)
        return RunResult(
            history=history,
            complete=self.complete,
            capabilities=caps,
            workload=self.workload,
            notes=tuple(self.notes),
            task_ids=dict(self.task_ids),
            stopped_at=self.stopped_at,
        )

    def _publish(self, probes: dict[str, Any]) -> None:
        for i, call in enumerate(self.workload.calls):
            options = dict(call.options)
            task_id = str(options.pop("task_id", None) or uuid.uuid4())
            probes[call.probe].apply_async(tuple(call.args), task_id=task_id, **options)
            self.task_ids.setdefault(call.key or f"call-{i + 1}", task_id)

    def _drive(self) -> None:
        """Inject faults at their times; stop once every call is settled (or at timeout)."""
        start = time.monotonic()
        deadline = start + self.adapter.timeout
        pending = sorted(self.workload.faults, key=lambda f: f.at)
        quiet_since: float | None = None
        while True:
            self.reader.poll()
            now = time.monotonic()
            pending = [
                f for f in pending if not (f.at <= now - start and self._inject(f, now - start))
            ]
            self.workers.tick()
            if self.adapter.driver == "amqp":
                self._drop_expired(now)
            elif self.adapter.traits.loses_unacked_on_kill:
                self._unreceived(now)
            busy = self._busy()
            if not pending and not busy and self.workers.settled():
                # Settled twice, 0.3 s apart: a restored duplicate may still be in flight.
                if quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= 0.3:
                    self.complete = True
                    return
            else:
                quiet_since = None
            if now > deadline:
                self.notes.append(
                    f"timed out after {self.adapter.timeout} s; unsettled calls: "
                    f"{', '.join(sorted(busy)) or 'none'}; faults not injected: "
                    f"{', '.join(f'{f.kind}@{f.at}' for f in pending) or 'none'}; "
                    f"files kept in {self.directory}"
                )
                self.notes.extend(self.workers.log_tails())
                self.stopped_at = time.time()
                return
            time.sleep(0.05)

    def _busy(self) -> set[str]:
        """Keys of calls with a message not yet acked or dropped, or an attempt running."""
        return _progress(self.reader.records, self.task_ids)[0]

    def _drop_expired(self, now: float) -> None:
        """Record ``lost`` for messages RabbitMQ dropped at their TTL (no worker saw them).

        Celery sends ``expires`` as the AMQP ``expiration`` (G9), so an expired message
        waiting in the queue (never delivered, or returned by a dead worker) is dropped
        by the broker. It counts as dropped once no live worker holds it, its expiry is
        past, and the queue has been seen empty twice, a second apart.
        """
        orphans = [
            p
            for p in _progress(self.reader.records, self.task_ids)[1]
            if (_epoch(p.details.get("expires")) or float("inf")) < time.time() - 0.5
        ]
        if not orphans:
            self._orphaned_since = None
            return
        if self._orphaned_since is None:
            self._orphaned_since = now
            return
        if now - self._orphaned_since < 1.0:
            return
        self._orphaned_since = now
        if _brokers.amqp_queue_depth(self.adapter.broker_url, self.queue) == 0:
            for p in orphans:
                self.sink.record(
                    "lost", task_id=p.task_id, message_id=p.message_id, reason="expired"
                )

    def _unreceived(self, now: float) -> None:
        """Record ``lost`` for messages nobody received that a death explains.

        On a virtual transport a message may vanish unseen: its publisher (a pool
        child) killed before kombu wrote it, or a worker killed between fetching it and
        recording the delivery (its QoS held it in memory: the G4 deviation). The run
        would wait for it until its deadline. A message held by no live worker, with
        such a death, and missing from the store at two reads a second apart (a live
        worker records a fetch within milliseconds), is recorded lost; see
        :func:`~simq_conformance.adapters._celery_reconcile.unreceived_loss`.
        """
        if now - self._store_read_at < 0.5:
            return
        self._store_read_at = now
        records = self.reader.records
        if not any(r.event.kind in ("worker-crashed", "child-lost") for r in records):
            return
        publications = {r.event.message_id: r for r in records if r.event.kind == "published"}
        orphans: dict[str, Record] = {
            p.message_id: publications[p.message_id]
            for p in _progress(records, self.task_ids)[1]
            if p.message_id is not None and p.message_id in publications
        }
        orphans = {
            m: r
            for m, r in orphans.items()
            if death_of_publisher(r, records) is not None or crashes_after(r, records)
        }
        if not orphans:
            self._gone_since.clear()
            return
        adapter = self.adapter
        try:
            stored = stored_message_ids(
                adapter.traits.driver_name,
                adapter.broker_url,
                self.conf["broker_transport_options"],
                self.queue,
            )
        except Exception as exc:  # a store busy right now (SQLite locked): read it later
            note = f"reading the broker's store failed (read again later): {exc!r}"
            if note not in self.notes:
                self.notes.append(note)
            return
        if stored is None:
            return
        self._gone_since = {m: self._gone_since.get(m, now) for m in orphans if m not in stored}
        for m, since in self._gone_since.items():
            if now - since >= 1.0:
                lost = unreceived_loss(orphans[m], records, time.time() - (now - since))
                if lost is not None:
                    lost.record(self.sink)

    def _reconcile_states(self) -> None:
        """Record the final states a dying process stored but could not record.

        Read back from the result backend, for the tasks whose attempt died; see
        :func:`~simq_conformance.adapters._celery_reconcile.missing_states`.
        """
        if self.adapter.in_process:
            return
        self.reader.poll()
        events = [r.event for r in sorted(self.reader.records, key=lambda r: r.order)]
        task_ids = sorted({d.task_id for d in dying_attempts(events)})
        if not task_ids:
            return
        try:
            stored = read_stored(self.workers.client().backend, task_ids)
        except Exception as exc:  # the run's own outcome matters more than this repair
            self.notes.append(f"reading the result backend back failed: {exc!r}")
            return
        for event in missing_states(events, stored):
            event.record(self.sink)

    # -- faults ------------------------------------------------------------------------

    def _inject(self, fault: Fault, elapsed: float) -> bool:
        """Inject ``fault`` now; False if it must wait (its target is not running yet)."""
        workers = self.workers
        kind = fault.kind
        if kind == "kill_worker":
            workers.kill(fault.target, self.adapter.restart_killed_after)
        elif kind == "cut_connection":
            workers.cut(fault.target)
        elif kind in ("warm_shutdown", "cold_shutdown"):
            return workers.shutdown(
                fault.target, warm=kind == "warm_shutdown", replace_after=RECOVERY
            )
        elif kind in ("revoke", "terminate"):
            task_id = self.task_ids.get(str(fault.target))
            if task_id is None:
                self.notes.append(f"{kind}: no call has key {fault.target!r}; fault skipped")
            else:
                workers.revoke(task_id, terminate=kind == "terminate")
        elif kind == "kill_child":
            return self._kill_child(str(fault.target), late=elapsed - fault.at)
        else:  # _validate refused it
            raise AssertionError(kind)
        return True

    def _kill_child(self, key: str, late: float) -> bool:
        task_id = self.task_ids.get(key)
        if task_id is None:
            self.notes.append(f"kill_child: no call has key {key!r}; fault skipped")
            return True
        attempt = self._running_attempt(task_id)
        if attempt is None:
            # Real latency: a call published at 0 may start a little after the fault's
            # time (a worker still taking its first messages), so wait up to
            # START_WAIT, unless its ETA is still ahead (then, as in the reference,
            # nothing runs it now and nothing is killed).
            nominal = time.time() - late
            eta = max(
                (
                    _epoch(r.event.details.get("eta")) or 0.0
                    for r in self.reader.find("published", task_id=task_id)
                ),
                default=0.0,
            )
            waiting = key in self._busy() and late < START_WAIT
            if waiting and eta <= nominal + 0.1:
                return False
            self.notes.append(f"kill_child {key!r}: no child was running it; fault skipped")
            return True
        e = attempt.event
        if not self.workers.is_child(attempt.pid):
            self.notes.append(
                f"kill_child {key!r}: pid {attempt.pid} is not a live pool "
                "child of this run; fault skipped"
            )
            return True
        self.sink.record(
            "child-killed",
            task_id=task_id,
            message_id=e.message_id,
            worker=e.worker,
            exitcode=-signal.SIGKILL,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(attempt.pid, signal.SIGKILL)
        return True

    def _running_attempt(self, task_id: str) -> Record | None:
        """The newest ``started`` of ``task_id`` with no end yet."""
        open_starts: dict[tuple[str | None, str | None], Record] = {}
        for record in sorted(self.reader.records, key=lambda r: r.order):
            e = record.event
            if e.task_id != task_id:
                continue
            ref = (e.message_id, e.worker)
            if e.kind == "started":
                open_starts[ref] = record
            elif e.kind in ATTEMPT_ENDS:
                open_starts.pop(ref, None)
            elif e.kind == "worker-crashed":
                open_starts = {k: v for k, v in open_starts.items() if k[1] != e.worker}
        return max(open_starts.values(), key=lambda r: r.order, default=None)

    # -- cleanup -----------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Remove what the run left in the broker and the backend, each step on its own:
        a failed one is noted and never skips the next (the result purge above all)."""
        for what, step in self._cleanup_steps():
            try:
                step()
            except Exception as exc:  # cleanup must not hide the run's own outcome
                self.notes.append(f"cleanup failed ({what}): {exc!r}")
        if self.complete:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _cleanup_steps(self) -> list[tuple[str, Callable[[], None]]]:
        adapter = self.adapter
        task_ids = list(self.task_ids.values())
        steps: list[tuple[str, Callable[[], None]]] = []
        if adapter.driver == "redis":
            steps.append(
                (
                    "the run's Redis keys",
                    lambda: _brokers.redis_purge(adapter.url, self.run_id, self.queue, task_ids),
                )
            )
        elif adapter.driver == "amqp":
            steps.append(
                ("the run's queue", lambda: _brokers.amqp_delete_queue(adapter.url, self.queue))
            )
        elif not adapter.in_process:
            options = self.conf["broker_transport_options"]
            steps.append(
                (
                    "the run's queue",
                    lambda: _brokers.kombu_purge(adapter.url, options, self.queue),
                )
            )
        backend = adapter.backend_url
        if backend.startswith("redis") and backend != adapter.url:
            steps.append(
                (
                    "the run's results",
                    lambda: _brokers.redis_purge(backend, self.run_id, self.queue, task_ids),
                )
            )
        elif backend.startswith("file://"):
            steps.append(
                ("the run's results", lambda: _brokers.file_backend_purge(backend, task_ids))
            )
        return steps


def _epoch(iso: Any) -> float | None:
    """Epoch seconds of an ISO 8601 header value (``eta``, ``expires``), if any."""
    if not iso:
        return None
    try:
        return dt.datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


def _progress(records: list[Record], task_ids: dict[str, str]) -> tuple[set[str], list[Event]]:
    """What is left of a run, read from its sink records.

    Returns the keys of calls with a message not yet acked, rejected or lost, or an
    attempt still running; and the ``published`` events of unsettled messages that no
    live worker holds (never delivered, or returned by a worker that crashed, lost its
    connection or went offline).
    """
    keys_by_task = {tid: key for key, tid in task_ids.items()}
    published: dict[str | None, Event] = {}
    unsettled: dict[str | None, str | None] = {}
    holder: dict[str | None, str | None] = {}
    # By attempt: two attempts of one message may run on one worker at once (a
    # visibility-timeout copy); the first one ending says nothing of the other.
    running: dict[tuple[str | None, str | None, Any], str | None] = {}
    for record in sorted(records, key=lambda r: r.order):
        e = record.event
        ref = e.message_id or e.task_id
        attempt = e.details.get("attempt")
        if e.kind == "published":
            published[ref] = e
            unsettled[ref], holder[ref] = e.task_id, None
        elif e.kind == "delivered":
            unsettled[ref], holder[ref] = e.task_id, e.worker
        elif e.kind in ("acked", "lost") or (e.kind == "rejected" and not e.details.get("requeue")):
            unsettled.pop(ref, None)
        elif e.kind == "rejected":
            holder[ref] = None
        elif e.kind == "started":
            running[(ref, e.worker, attempt)] = e.task_id
        elif e.kind in ATTEMPT_ENDS:
            running.pop((ref, e.worker, attempt), None)
        if e.kind in WORKER_GONE:
            holder = {m: (None if w == e.worker else w) for m, w in holder.items()}
            if e.kind == "worker-crashed":
                running = {k: v for k, v in running.items() if k[1] != e.worker}
    tids = set(unsettled.values()) | set(running.values())
    busy = {keys_by_task[t] for t in tids if t in keys_by_task}
    orphans = [published[m] for m in unsettled if holder.get(m) is None and m in published]
    return busy, orphans
