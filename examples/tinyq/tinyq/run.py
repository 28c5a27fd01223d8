"""One conformance run on tinyq: start workers, publish, inject faults, wait, collect.

Worker processes are real (``subprocess.Popen``), and ``kill_worker`` really SIGKILLs
one. Each worker slot's process is replaced a second after a fault, under a fresh name,
as the suite's fault vocabulary says (``simq_conformance.FAULTS``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from simq_conformance import Fault, RunError, RunResult, Workload
from simq_conformance.sink import Sink, SinkReader, collect
from tinyq.broker import Broker, iso, log_field
from tinyq.events import publish, record

#: Seconds after publishing that a run is cut (L1 then fails, naming what is left).
DEADLINE = 30.0
#: Seconds a worker has to come online.
STARTUP = 15.0
#: Seconds before a killed or shut-down worker's slot gets a fresh worker.
REPLACE_AFTER = 1.0
#: Kinds that end an attempt (a started attempt without one is still running).
_ENDS = frozenset({"succeeded", "failed", "retried", "ignored", "declined", "revoked", "lost"})
_ROOT = str(Path(__file__).resolve().parents[1])  # examples/tinyq, for the workers' path


class Run:
    def __init__(self, adapter: Any, workload: Workload) -> None:
        self.adapter, self.workload = adapter, workload
        self.folder = Path(tempfile.mkdtemp(prefix="tinyq-run-"))
        self.sink, self.reader = Sink(self.folder), SinkReader(self.folder)
        self.broker = Broker.connect(adapter.url, f"{adapter.prefix}{uuid.uuid4().hex[:8]}:")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # name -> process
        self.slots: list[str] = []  # slot index -> the name of the worker serving it
        self.due: list[tuple[float, int]] = []  # (monotonic time, slot): replacements
        self.stopping: set[str] = set()  # workers told to shut down
        self.notes: list[str] = []

    def execute(self) -> RunResult:
        try:
            for slot in range(self.workload.settings.workers):
                self.slots.append("")
                self.start(slot)
            self.wait_online(list(self.procs))
            task_ids = self.publish_all()
            complete = self.drive(time.monotonic())
            stopped_at = None if complete else time.time()
        finally:
            self.stop_all()
        history = collect(self.folder)
        self.broker.purge()
        for path in self.folder.rglob("*"):
            path.unlink()
        self.folder.rmdir()
        caps = self.adapter.capabilities
        return RunResult(
            history, complete, caps, self.workload, tuple(self.notes), task_ids, stopped_at
        )

    # -- workers ------------------------------------------------------------------------

    def start(self, slot: int) -> None:
        generation = sum(1 for name in self.procs if name.startswith(f"worker-{slot + 1}"))
        name = f"worker-{slot + 1}" + (f"-{generation + 1}" if generation else "")
        conf = json.dumps(dict(self.workload.settings.conf))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, *sys.path])}
        argv = [self.adapter.url, self.broker.prefix, name, str(self.folder), conf]
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "tinyq.worker", *argv], env=env)
        self.slots[slot] = name

    def online(self, name: str) -> bool:
        self.reader.poll()
        return bool(self.reader.find("worker-online", worker=name))

    def wait_online(self, names: list[str]) -> None:
        limit = time.monotonic() + STARTUP
        while not all(self.online(n) for n in names):
            if time.monotonic() > limit or any(self.procs[n].poll() is not None for n in names):
                raise RunError(f"tinyq workers {names} not online after {STARTUP:g} s")
            time.sleep(0.02)

    def stop_all(self) -> None:
        # The run is over (or failed): nothing left to finish, so no shutdown ceremony.
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    # -- the run ------------------------------------------------------------------------

    def publish_all(self) -> dict[str, str]:
        task_ids = {}
        for call in self.workload.calls:
            task_id, now = str(uuid.uuid4()), time.time()
            countdown, expires = call.options.get("countdown"), call.options.get("expires")
            message = {
                "id": uuid.uuid4().hex, "task_id": task_id, "task": f"probes.{call.probe}",
                "args": list(call.args), "retries": 0, "redelivered": False,
                "eta": iso(None if countdown is None else now + countdown),
                "expires": iso(None if expires is None else now + expires),
            }  # fmt: skip
            publish(self.broker, self.sink, message, publisher="adapter")
            task_ids[call.key] = task_id
        return task_ids

    def drive(self, start: float) -> bool:
        """Inject each fault at its time, replace workers, until nothing is left open."""
        faults = sorted(self.workload.faults, key=lambda f: f.at)
        while time.monotonic() - start < DEADLINE:
            now = time.monotonic()
            while faults and start + faults[0].at <= now and self.inject(faults[0]):
                faults.pop(0)
            for entry in [d for d in self.due if d[0] <= now]:
                self.due.remove(entry)
                self.start(entry[1])
            if not faults and not self.due and self.finished():
                return True
            time.sleep(0.02)
        self.notes.append(f"cut after {DEADLINE:g} s: messages still open")
        return False

    def finished(self) -> bool:
        """Every message settled (acked, dropped, lost) and every attempt ended."""
        self.reader.poll()
        open_: dict[str, bool] = {}
        running: dict[str, str | None] = {}  # attempt -> worker
        for r in sorted(self.reader.records, key=lambda r: r.order):
            e, attempt = r.event, str(r.event.details.get("attempt"))
            if e.kind in ("published", "delivered", "requeued"):
                open_[e.message_id or ""] = True
            elif e.kind in ("acked", "lost") or (e.kind == "rejected" and not e["requeue"]):
                open_[e.message_id or ""] = False
            if e.kind == "started":
                running[attempt] = e.worker
            elif e.kind in _ENDS:
                running.pop(attempt, None)
            elif e.kind == "worker-crashed":  # its attempts died with it
                running = {a: w for a, w in running.items() if w != e.worker}
        return not any(open_.values()) and not running

    # -- faults -------------------------------------------------------------------------

    def inject(self, fault: Fault) -> bool:
        """Inject ``fault``; False while its worker is still starting (it waits)."""
        slot = int(fault.target or 0) % len(self.slots)
        name = self.slots[slot]
        proc = self.procs[name]
        if proc.poll() is not None or name in self.stopping:
            # No worker on the event: the gone worker must record nothing more (G4).
            reason = f"slot {slot}: {name} is gone or going; its replacement is due"
            self.sink.record("fault-skipped", fault=fault.kind, reason=reason)
            return True
        if not self.online(name):
            return False
        if fault.kind == "kill_worker":
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # Recorded once it is dead: whatever the worker recorded came before.
            self.sink.record("worker-crashed", worker=name, restart_after=REPLACE_AFTER)
            self.record_losses(name)
            self.sink.record("worker-offline", worker=name, reason="crashed")
        else:  # warm_shutdown: the worker records it, finishes its task, goes offline
            proc.send_signal(signal.SIGTERM)
            self.stopping.add(name)
        self.due.append((time.monotonic() + REPLACE_AFTER, slot))
        return True

    def record_losses(self, name: str) -> None:
        """Record what the killed worker could not: the events its last writes logged but
        it did not live to record, then ``lost`` for each attempt cut short after its
        early ack (G4)."""
        self.reader.poll()
        recorded = {log_field(attrs.asdict(r.event)) for r in self.reader.records}
        for e in self.broker.log(name):
            if log_field(e) not in recorded:
                record(self.sink, e)
        self.reader.poll()
        kinds: dict[str, set[str]] = {}  # attempt -> the kinds recorded for it
        starts: dict[str, Any] = {}
        for r in self.reader.records:
            attempt = r.event.details.get("attempt")
            if r.event.worker == name and attempt is not None:
                kinds.setdefault(attempt, set()).add(r.event.kind)
                if r.event.kind == "started":
                    starts[attempt] = r.event
        for attempt, e in starts.items():
            if "acked" in kinds[attempt] and not kinds[attempt] & _ENDS:
                self.sink.record(
                    "lost", e.task_id, e.message_id, name, reason="worker-crashed", attempt=attempt
                )
