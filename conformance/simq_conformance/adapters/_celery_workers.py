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
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simq_conformance.adapters import _brokers

if TYPE_CHECKING:
    from simq_conformance.adapters.celery_adapter import _Run

__all__ = ["InProcessWorkers", "ProcessWorkers"]

class _Workers:
    """What both kinds share: slots, names, the client app."""

    def __init__(self, run: _Run) -> None:
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
        self.run.sink.record("revoke", task_id=task_id, terminate=terminate,
                             signal=signal_name, workers=self.online_names())
        self.client().control.revoke(task_id, terminate=terminate,
                                     signal=signal_name or "SIGTERM")

    def online_names(self) -> list[str]:
        return list(self.names)


class ProcessWorkers(_Workers):
    """Real ``celery worker`` processes, one process group each."""

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: dict[str, int] = {}
        self._due: list[tuple[float, int, str | None]] = []  # (when, slot, name or new)
        self._awaiting: set[str] = set()
        self._stopping: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start_slot(self, slot: int, name: str | None = None) -> str:
        """Start the worker of ``slot`` (a fresh name unless ``name`` is given)."""
        from simq_conformance.adapters.celery_adapter import worker_command, worker_env

        name = name or self.new_name()
        if slot < len(self.names):
            self.names[slot] = name
        else:
            self.names.append(name)
        self.generation[name] = self.generation.get(name, 0) + 1
        stem = self.run.directory / f"{name}.{self.generation[name]}"
        with open(f"{stem}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                worker_command(self.run, name, Path(f"{stem}.log")),
                env=worker_env(self.run, name, slot), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.run.directory, start_new_session=True)
        self._awaiting.add(name)
        return name

    def _online(self, name: str) -> bool:
        return len(self.run.reader.find("worker-online", worker=name)) >= self.generation[name]

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
                    raise RuntimeError(f"{name} exited with {code} before it was ready:\n"
                                       + "\n".join(self.log_tails(name)))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(sorted(self._awaiting))} not ready after "
                                   f"{timeout} s:\n" + "\n".join(self.log_tails()))
            time.sleep(0.05)

    def tick(self) -> None:
        """Start replacements that are due; notice workers that came online or exited."""
        now = time.monotonic()
        for entry in [d for d in self._due if d[0] <= now]:
            self._due.remove(entry)
            self.start_slot(entry[1], entry[2])
        self._awaiting = {n for n in self._awaiting if not self._online(n)}
        for name, proc in list(self._stopping.items()):
            if proc.poll() is not None:
                del self._stopping[name]
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
        self.run.sink.record("worker-crashed", worker=name, restart_after=restart_after)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.run.sink.record("worker-offline", worker=name, reason="crashed")
        if restart_after is not None:
            index = self.names.index(name)
            self._due.append((time.monotonic() + restart_after, index, name))

    def shutdown(self, slot: int | str | None, warm: bool, replace_after: float) -> None:
        """SIGTERM (warm) or SIGQUIT (cold) the worker; a fresh one takes its slot."""
        name = self.name_of(slot)
        proc = self.procs[name]
        if proc.poll() is not None or name in self._stopping:
            return
        self.run.sink.record("shutdown", worker=name, warm=warm)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM if warm else signal.SIGQUIT)
        self._stopping[name] = proc
        self._due.append((time.monotonic() + replace_after, self.names.index(name), None))

    def cut(self, slot: int | str | None) -> None:
        """Cut the worker's broker connections under it (G7); Celery reconnects."""
        name = self.name_of(slot)
        proc = self.procs[name]
        if proc.poll() is not None:
            return
        adapter = self.run.adapter
        label = self.run.connection_name(self.names.index(name))
        self.run.sink.record("connection-lost", worker=name)
        if adapter.transport == "redis":
            cut = _brokers.redis_cut(adapter.broker_url, label)
        else:
            cut = _brokers.tcp_cut(proc.pid, _brokers.port_of(adapter.broker_url))
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
        return [n for n in self.names if self.procs[n].poll() is None
                and n not in self._stopping]

    def log_tails(self, only: str | None = None, lines: int = 15) -> list[str]:
        tails = []
        for path in sorted(self.run.directory.glob("*.log")) + sorted(
                self.run.directory.glob("*.out")):
            if only is not None and not path.name.startswith(f"{only}."):
                continue
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name}\n" + "\n".join(text))
        return tails


class InProcessWorkers(_Workers):
    """Embedded workers in the test process (``celery.contrib.testing``), for memory://."""

    def __init__(self, run: _Run) -> None:
        from celery import _state

        super().__init__(run)
        self._stack = contextlib.ExitStack()
        # start_worker makes the run's app the default and current app: undone at stop.
        self._apps = (_state.default_app, getattr(_state._tls, "current_app", None))

    def start_slot(self, slot: int, name: str | None = None) -> str:
        from celery.contrib.testing.worker import start_worker

        settings = self.run.workload.settings
        name = name or self.new_name()
        self.names.append(name)
        app = self.client()
        app.conf.worker_hijack_root_logger = False
        self._stack.enter_context(start_worker(
            app, concurrency=settings.concurrency,
            pool="solo" if settings.concurrency == 1 else "threads",
            loglevel="WARNING", perform_ping_check=False, shutdown_timeout=10.0,
            hostname=f"{name}@simq", prefetch_multiplier=settings.prefetch_multiplier,
            queues=[self.run.queue]))
        # The embedded worker does not send worker_ready (the CLI worker does).
        self.run.sink.record("worker-online", worker=name, concurrency=settings.concurrency,
                             queues=[self.run.queue],
                             prefetch_multiplier=settings.prefetch_multiplier)
        return name

    def wait_online(self, timeout: float) -> None:
        """start_worker returns once the worker consumes."""

    def tick(self) -> None:
        """Nothing happens behind the run's back in process."""

    def settled(self) -> bool:
        return True

    def stop_all(self) -> None:
        from celery import _state

        try:
            self._stack.close()
        finally:
            _state.default_app, _state._tls.current_app = self._apps
            self.close_client()

    def is_child(self, pid: int) -> bool:
        return False

    def log_tails(self, only: str | None = None, lines: int = 15) -> list[str]:
        return []
