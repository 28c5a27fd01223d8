"""A history sink that works across processes: one append-only JSON Lines file per process.

A real deployment's history is written by many processes at once: the test process
publishes, each worker's parent receives and acks, each pool child runs task bodies and
writes results. Every process appends its events to ``<directory>/<pid>.jsonl``
(``O_APPEND``, one ``write`` per line, so a line is never torn and a SIGKILL loses at
most the event being written), and :func:`collect` merges the files into one
:class:`simq.history.History` ordered by ``(time, pid, seq)``::

    sink = Sink(run_dir)
    sink.record("published", task_id=tid, message_id=mid, task="probes.ret", queue="q")
    history = collect(run_dir)

Lines hold one event in simq's vocabulary (``kind``, ``time``, ``task_id``,
``message_id``, ``worker``, ``details``) plus ``pid`` and the per-process ``seq``.
The sink needs nothing but a directory every process can write, so it works with any
broker.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from simq.history import Event, History

__all__ = ["Record", "Sink", "SinkReader", "collect"]

_SUFFIX = ".jsonl"


def _jsonable(value: Any) -> Any:
    # Details come from signal handlers: anything that is not JSON is kept as its repr
    # rather than losing the event.
    return repr(value)


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_jsonable).encode


class Sink:
    """Appends events to ``<directory>/<pid>.jsonl`` for the calling process.

    Safe to share across ``fork`` (the child opens its own file on first use) and
    across threads (each line is one ``os.write`` on an ``O_APPEND`` descriptor).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._pid: int | None = None
        self._fd: int | None = None
        self._seq: Iterator[int] = itertools.count()

    def record(
        self,
        kind: str,
        task_id: str | None = None,
        message_id: str | None = None,
        worker: str | None = None,
        *,
        at: float | None = None,
        **details: Any,
    ) -> None:
        """Append one event, stamped ``at`` (epoch seconds) or now (``time.time()``)."""
        fd = self._descriptor()
        line = _dumps(
            {
                "kind": kind,
                "time": time.time() if at is None else at,
                "task_id": task_id,
                "message_id": message_id,
                "worker": worker,
                "details": details,
                "pid": self._pid,
                "seq": next(self._seq),
            }
        )
        os.write(fd, (line + "\n").encode())

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # A forked child inherits the parent's descriptor; it must write its own file.
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{pid}{_SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pid = pid
            self._seq = itertools.count()
        return self._fd

    def close(self) -> None:
        """Close this process's file (a later ``record`` reopens it)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __repr__(self) -> str:
        return f"<Sink {str(self.directory)!r}>"


@attrs.frozen
class Record:
    """One sink line: the event and the process that wrote it."""

    pid: int
    seq: int
    event: Event

    @property
    def order(self) -> tuple[float, int, int]:
        return (self.event.time, self.pid, self.seq)


class SinkReader:
    """Reads a sink directory incrementally: each :meth:`poll` returns the new lines.

    The adapter polls while a run is live (to find a worker's readiness or the pid of
    the child running a task); :func:`collect` reads everything at the end.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._offsets: dict[Path, int] = {}
        self.records: list[Record] = []

    def poll(self) -> list[Record]:
        """Records appended since the previous poll, in file order."""
        new: list[Record] = []
        if not self.directory.is_dir():
            return new
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            # Only whole lines: a line being written right now is read on the next poll.
            end = data.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for raw in data[:end].splitlines():
                if raw.strip():
                    new.append(_parse(path, raw))
        self.records.extend(new)
        return new

    def find(self, kind: str, **criteria: Any) -> list[Record]:
        """Records read so far of ``kind`` whose event fields or details match."""
        out = []
        for record in self.records:
            event = record.event
            if event.kind != kind:
                continue
            if all(
                (
                    getattr(event, key)
                    if key in ("task_id", "message_id", "worker")
                    else event.details.get(key)
                )
                == want
                for key, want in criteria.items()
            ):
                out.append(record)
        return out


def _parse(path: Path, raw: bytes) -> Record:
    try:
        data = json.loads(raw)
        event = Event(
            kind=data["kind"],
            time=data["time"],
            task_id=data["task_id"],
            message_id=data["message_id"],
            worker=data["worker"],
            details=data["details"],
        )
        return Record(pid=int(data["pid"]), seq=int(data["seq"]), event=event)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a sink line ({exc}): {raw[:200]!r}") from exc


def collect(directory: str | os.PathLike[str]) -> History:
    """Merge every process's file of ``directory`` into one history.

    Events are ordered by ``(time, pid, seq)``: wall-clock time first (all processes
    run on one machine), then a stable tie-break that keeps each process's own order.
    """
    reader = SinkReader(directory)
    reader.poll()
    return History(r.event for r in sorted(reader.records, key=lambda r: r.order))
