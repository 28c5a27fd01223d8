"""Starting, faulting and stopping a run's Celery workers (internal).

:class:`ProcessWorkers` runs each worker as a real ``celery worker`` subprocess (prefork,
its own process group) and injects faults for real: SIGKILL of the process group, a
SIGKILL of one pool child, the broker connections cut under the worker, SIGTERM/SIGQUIT
shutdowns, revoke broadcasts. :class:`InProcessWorkers` runs embedded workers in the
test process (``memory://``), where no fault can be injected.

Worker slots are numbered from 0 (a fault's ``target``); the worker serving slot ``i``
is called ``worker-<i+1>`` until a shutdown replaces it with a fresh, newly named one,
as the reference adapter does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simq_conformance.adapter import RunError
from simq_conformance.adapters import _brokers
from simq_conformance.adapters._celery_reconcile import ATTEMPT_ENDS

if TYPE_CHECKING:
    from simq_conformance.adapters._celery_run import Run

__all__ = ["InProcessWorkers", "ProcessWorkers", "WorkersNotReady"]


class WorkersNotReady(RunError, RuntimeError):
    """Workers did not come online in time (a loaded machine): the run did not happen."""

    def __init__(self, summary: str, details: str = "") -> None:
        super().__init__(f"{summary}:\n{details}" if details else summary)
        self.summary = summary


class _Workers:
    """What both kinds share: slots, names, the client app."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.names: list[str] = []
        self._count = 0
        self._client: Any = None

    def new_name(self) -> str:
        self._count += 1
        return f"worker-{self._count}"

    def client(self) -> Any:
        """The app the test process publishes with (probes registered by the caller)."""
        from celery import Celery

        if self._client is None:
            self._client = Celery(f"simq-client-{self.run.run_id}", set_as_current=False)
            self._client.conf.update(self.run.conf)
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    def revoke(self, task_id: str, terminate: bool) -> None:
        signal_name = "SIGTERM" if terminate else None
        self.run.sink.record(
            "revoke",
            task_id=task_id,
            terminate=terminate,
            signal=signal_name,
            workers=self.online_names(),
        )
        self.client().control.revoke(task_id, terminate=terminate, signal=signal_name or "SIGTERM")

    def online_names(self) -> list[str]:
        return list(self.names)

    # Faults: only process workers have a process to signal (capabilities say which).

    def kill(self, slot: int | str | None, restart_after: float | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot kill a worker")

    def cut(self, slot: int | str | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot cut a connection")

    def shutdown(self, slot: int | str | None, warm: bool, replace_after: float) -> bool:
        raise NotImplementedError(f"{type(self).__name__} cannot shut a worker down")


class ProcessWorkers(_Workers):
    """Real ``celery worker`` processes, one process group each."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: dict[str, int] = {}
        self._due: list[tuple[float, int, str | None]] = []  # (when, slot, name or new)
        self._awaiting: set[str] = set()
        #: ``worker-online`` events of each name recorded before its latest start.
        self._onlines_before: dict[str, int] = {}
        self._stopping: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start_slot(self, slot: int, name: str | None = None) -> str:
        """Start the worker of ``slot`` (a fresh name unless ``name`` is given)."""
        name = name or self.new_name()
        if slot < len(self.names):
            self.names[slot] = name
        else:
            self.names.append(name)
        self.generation[name] = self.generation.get(name, 0) + 1
        self.run.reader.poll()
        self._onlines_before[name] = len(self.run.reader.find("worker-online", worker=name))
        stem = self.run.directory / f"{name}.{self.generation[name]}"
        with open(f"{stem}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                worker_command(self.run, name, Path(f"{stem}.log")),
                env=worker_env(self.run, name, slot),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.run.directory,
                start_new_session=True,
            )
        self._awaiting.add(name)
        return name

    def _online(self, name: str) -> bool:
        """Whether the latest process started under ``name`` said it is ready.

        Counted from its start: a process killed before it came online never says so,
        and its successor under the same name must not wait for it.
        """
        seen = len(self.run.reader.find("worker-online", worker=name))
        return seen > self._onlines_before.get(name, 0)

    def _still_awaited(self, name: str) -> bool:
        """Awaited until online, or until its process is gone (killed or shut down while
        it started): a run waits for nothing that cannot come."""
        return not self._online(name) and self.procs[name].poll() is None

    def is_online(self, name: str) -> bool:
        """Whether ``name`` is running and has come online."""
        self.run.reader.poll()
        return self._online(name) and self.procs[name].poll() is None

    def wait_online(self, timeout: float) -> None:
        """Block until every started worker has said it is ready."""
        deadline = time.monotonic() + timeout
        while True:
            self.run.reader.poll()
            self._awaiting = {n for n in self._awaiting if not self._online(n)}
            if not self._awaiting:
                return
            for name in self._awaiting:
                code = self.procs[name].poll()
                if code is not None:
                    raise RuntimeError(
                        f"{name} exited with {code} before it was ready:\n"
                        + "\n".join(self.log_tails(name))
                    )
            if time.monotonic() > deadline:
                raise WorkersNotReady(
                    f"{', '.join(sorted(self._awaiting))} not ready after {timeout} s",
                    "\n".join(self.log_tails()),
                )
            time.sleep(0.05)

    def tick(self) -> None:
        """Start replacements that are due; notice workers that came online or exited."""
        now = time.monotonic()
        for entry in [d for d in self._due if d[0] <= now]:
            self._due.remove(entry)
            self.start_slot(entry[1], entry[2])
        self._awaiting = {n for n in self._awaiting if self._still_awaited(n)}
        for name, proc in list(self._stopping.items()):
            if proc.poll() is not None:
                del self._stopping[name]
                # The worker says so itself when its task channel closes; if it died
                # before that, say it now.
                if not self.run.reader.find("worker-offline", worker=name):
                    self.run.sink.record("worker-offline", worker=name, reason="shutdown")

    def settled(self) -> bool:
        """No replacement pending, none starting, no shutdown in progress."""
        return not self._due and not self._awaiting and not self._stopping

    def stop_all(self) -> None:
        """SIGKILL every worker's process group.

        The run is over and its history collected, so nothing is left to finish; a warm
        shutdown would only cost seconds (and on RabbitMQ often hangs for its grace).
        """
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.close_client()

    # -- faults ------------------------------------------------------------------------

    def name_of(self, slot: int | str | None) -> str:
        return self.names[int(slot or 0) % len(self.names)]

    def kill(self, slot: int | str | None, restart_after: float | None) -> None:
        """SIGKILL the worker's whole process group (G4); a fresh one may follow."""
        name = self.name_of(slot)
        proc = self.procs[name]
        if proc.poll() is not None or name in self._stopping:
            return
        crashed_at = time.time()
        self.run.sink.record(
            "worker-crashed", worker=name, restart_after=restart_after, at=crashed_at
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._record_losses(name, crashed_at)
        if self.run.adapter.traits.loses_unacked_on_kill:
            self._record_unacked_losses(name)
        self.run.sink.record("worker-offline", worker=name, reason="crashed")
        if restart_after is not None:
            index = self.names.index(name)
            self._due.append((time.monotonic() + restart_after, index, name))

    def _record_losses(self, name: str, crashed_at: float) -> None:
        """Record ``lost`` for each attempt the kill cut short after its early ack (G4).

        The dead worker cannot say it: the attempts that started and were acked on it
        before the crash, with no outcome, are read back from the sink.
        """
        reader = self.run.reader
        reader.poll()
        started: dict[str, Any] = {}
        acked: set[str] = set()
        ended: set[str] = set()
        for record in reader.records:
            e = record.event
            attempt = e.details.get("attempt")
            if e.worker != name or attempt is None or e.time > crashed_at:
                continue
            if e.kind == "started":
                started[attempt] = e
            elif e.kind == "acked":
                acked.add(attempt)
            elif e.kind in ATTEMPT_ENDS:
                ended.add(attempt)
        for attempt, e in started.items():
            if attempt in acked and attempt not in ended:
                self._record_lost(name, e)

    def shutdown(self, slot: int | str | None, warm: bool, replace_after: float) -> bool:
        """SIGTERM (warm) or SIGQUIT (cold) the worker; a fresh one takes its slot.

        False (the fault waits) while the slot's worker is starting: a signal before
        Celery installed its handlers would kill it outright, not shut it down.
        """
        name = self.name_of(slot)
        proc = self.procs[name]
        if proc.poll() is not None or name in self._stopping:
            return True
        if name in self._awaiting and not self._online(name):
            return False
        self.run.sink.record("shutdown", worker=name, warm=warm)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM if warm else signal.SIGQUIT)
        self._stopping[name] = proc
        self._due.append((time.monotonic() + replace_after, self.names.index(name), None))
        return True

    def _record_unacked_losses(self, name: str) -> None:
        """Record ``lost`` for each message the killed worker held unacked, on a
        transport that keeps them only in the consumer's memory (a declared deviation
        from G4: kombu's virtual QoS dies with the process)."""
        reader = self.run.reader
        reader.poll()
        holder: dict[str | None, Any] = {}
        for record in sorted(reader.records, key=lambda r: r.order):
            e = record.event
            ref = e.message_id or e.task_id
            if e.kind == "delivered":
                holder[ref] = e if e.worker == name else None
            elif e.kind in ("acked", "rejected", "lost"):
                holder.pop(ref, None)
        for e in holder.values():
            if e is not None:
                self._record_lost(name, e)

    def _record_lost(self, name: str, e: Any) -> None:
        """``lost`` [worker-crashed] for the attempt of event ``e`` on killed worker ``name``."""
        self.run.sink.record(
            "lost",
            task_id=e.task_id,
            message_id=e.message_id,
            worker=name,
            reason="worker-crashed",
            attempt=e.details.get("attempt"),
        )

    def cut(self, slot: int | str | None) -> None:
        """Cut the worker's broker connections under it (G7); Celery reconnects."""
        name = self.name_of(slot)
        proc = self.procs[name]
        if proc.poll() is not None:
            return
        adapter = self.run.adapter
        label = self.run.connection_name(self.names.index(name))
        self.run.sink.record("connection-lost", worker=name)
        if adapter.driver == "redis":
            cut = _brokers.redis_cut(adapter.url, label)
        else:
            cut = _brokers.tcp_cut(proc.pid, _brokers.port_of(adapter.url))
        if not cut:
            self.run.notes.append(f"cut_connection: {name} had no broker connection to cut")

    def is_child(self, pid: int) -> bool:
        """Whether ``pid`` is a pool child of one of this run's live workers."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return any(p.pid == ppid and p.poll() is None for p in self.procs.values())

    def online_names(self) -> list[str]:
        return [n for n in self.names if self.procs[n].poll() is None and n not in self._stopping]

    def log_tails(self, only: str | None = None, lines: int = 15) -> list[str]:
        tails = []
        for path in sorted(self.run.directory.glob("*.log")) + sorted(
            self.run.directory.glob("*.out")
        ):
            if only is not None and not path.name.startswith(f"{only}."):
                continue
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name}\n" + "\n".join(text))
        return tails


class InProcessWorkers(_Workers):
    """Embedded workers in the test process (``celery.contrib.testing``), for memory://.

    Each is a ``TestWorkController`` on its own thread, as ``start_worker`` makes them,
    but without its logging setup (it reconfigures the test run's root logger) and
    stopped with ``WorkController.stop`` (``start_worker`` takes 3.5 s to stop).
    """

    def __init__(self, run: Run) -> None:
        from celery import _state

        super().__init__(run)
        self._workers: list[tuple[Any, threading.Thread]] = []
        # An in-process pool runs tasks in the *default* app (trace_task_ret uses
        # current_app, and the worker thread has no current app of its own): the run's
        # app is made the default while it runs, and the previous one put back after.
        self._apps = (_state.default_app, getattr(_state._tls, "current_app", None))

    def start_slot(self, slot: int, name: str | None = None) -> str:
        from celery.contrib.testing.worker import TestWorkController

        settings = self.run.workload.settings
        name = name or self.new_name()
        self.names.append(name)
        app = self.client()
        app.finalize()
        app.set_default()
        app.set_current()
        worker = TestWorkController(
            app=app,
            hostname=f"{name}@simq",
            concurrency=settings.concurrency,
            pool="solo" if settings.concurrency == 1 else "threads",
            prefetch_multiplier=settings.prefetch_multiplier,
            queues=[self.run.queue],
            loglevel="WARNING",
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        thread = threading.Thread(target=worker.start, name=f"simq-{name}", daemon=True)
        thread.start()
        self._workers.append((worker, thread))
        if not worker._on_started.wait(self.run.adapter.startup_timeout):
            raise WorkersNotReady(f"{name} (in process) did not start consuming")
        # The embedded worker does not send worker_ready (the CLI worker does).
        self.run.sink.record(
            "worker-online",
            worker=name,
            concurrency=settings.concurrency,
            queues=[self.run.queue],
            prefetch_multiplier=settings.prefetch_multiplier,
        )
        return name

    def wait_online(self, timeout: float) -> None:
        """start_slot returns once the worker consumes."""

    def tick(self) -> None:
        """Nothing happens behind the run's back in process."""

    def settled(self) -> bool:
        return True

    def stop_all(self) -> None:
        for worker, _ in self._workers:
            with contextlib.suppress(Exception):
                worker.stop(in_sighandler=False)
        for _, thread in self._workers:
            thread.join(10.0)
        stuck = [t.name for _, t in self._workers if t.is_alive()]
        if stuck:
            self.run.notes.append(f"in-process workers still running: {', '.join(stuck)}")
        from celery import _state
        from celery.result import _set_task_join_will_block

        _state.default_app, _state._tls.current_app = self._apps
        # An embedded worker marks the process as "inside a worker" (result.get() then
        # refuses to block); the test process is not a worker once they stopped.
        _set_task_join_will_block(False)
        self.close_client()

    def is_child(self, pid: int) -> bool:
        return False

    def log_tails(self, only: str | None = None, lines: int = 15) -> list[str]:
        return []


def worker_command(run: Run, name: str, log: Path) -> list[str]:
    """The ``celery worker`` command line of worker ``name``."""
    settings = run.workload.settings
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "simq_conformance.adapters._worker_boot",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(settings.concurrency),
        "--prefetch-multiplier",
        str(settings.prefetch_multiplier),
        "-n",
        f"{name}@%h",
        "-Q",
        run.queue,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "warning",
        "--logfile",
        str(log),
    ]


def worker_env(run: Run, name: str, slot: int) -> dict[str, str]:
    """The environment of worker ``name``: the run's settings as JSON."""
    config: dict[str, Any] = {
        "conf": run.worker_conf(slot),
        "sink": str(run.directory),
        "worker": name,
    }
    mutant = getattr(run.adapter, "mutant", None)
    if mutant:
        # A planted bug (simq_conformance.mutants): the worker plants it as it boots.
        config["mutant"] = {"name": mutant, "driver": run.adapter.driver}
    try:
        payload = json.dumps(config)
    except TypeError as exc:
        raise ValueError(
            f"the workload's settings must be JSON values to reach a worker process: {exc}"
        ) from exc
    return {**os.environ, "SIMQ_CONFORMANCE_WORKER": payload}
