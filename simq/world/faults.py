"""Faults: crashes, dead children, lost connections, broker restarts, shutdowns, revokes.

Internal. ``Simulation`` exposes these as ``sim.crash_worker(...)`` and friends. Every
fault is an event in the history, scheduled ``at`` seconds from now or at a datetime
(now when omitted), and a fault aimed at a worker or task that does not exist is an
UnknownTarget naming what exists. What each fault does follows CELERY_SEMANTICS.md §3
(G3, G4, G7, G10, G17) and the transport model (G6).
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.platforms import signals as platform_signals
from celery.worker.request import Request as CeleryRequest

from simq import validate
from simq.exceptions import UnknownTarget
from simq.seams.pool import Slot
from simq.world.polling import PollingBroker
from simq.world.request import RequestState
from simq.world.worker import Worker

if TYPE_CHECKING:
    from simq.world.request import Delivery as Request

__all__ = ["Faults"]

#: How to say "never" for a crashed worker's restart.
_NO_INFINITY = "; for a worker that never comes back, leave restart_after=None (the default)"

#: Celery 5.6+ lets the consumer cancel without storing RETRY (``emit_retry``).
_CANCEL_TAKES_EMIT_RETRY = "emit_retry" in inspect.signature(CeleryRequest.cancel).parameters


class Faults:
    """The fault-injection side of one simulation."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    # -- scheduling --------------------------------------------------------------------

    def _when(self, at: float | None, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` now, or schedule it ``at`` (already checked by :meth:`at`)."""
        if at is None:
            fn(*args)
        else:
            self.sim.loop.call_at(at, fn, *args)

    def at(self, call: str, at: float | dt.datetime | None) -> float | None:
        """``at`` as epoch seconds (None: now); InvalidArgument names a bad one."""
        return validate.moment(call, at, self.sim.loop.now)

    def _worker(self, name: str) -> Worker:
        return self.sim.worker(name)  # type: ignore[no-any-return]

    # -- G4: the whole worker dies -----------------------------------------------------

    def crash_worker(
        self, name: str, at: float | dt.datetime | None = None, restart_after: float | None = None
    ) -> None:
        """Power failure of worker ``name``; with ``restart_after``, an empty one returns."""
        when = self.at("crash_worker()", at)
        restart_after = validate.seconds(
            "crash_worker()", "restart_after", restart_after, none=True,
            fix=_NO_INFINITY if restart_after == float("inf") else "",
        )  # fmt: skip
        self._worker(name)
        self._when(when, self._crash, name, restart_after)

    def _crash(self, name: str, restart_after: float | None) -> None:
        worker = self._worker(name)
        if not worker.alive:
            return
        self.sim.record("worker-crashed", worker=name, restart_after=restart_after)
        for slot in worker.slots:
            request = slot.request
            if request is not None and request.acked and not request.orphaned:
                # Acked at start (G4): the broker has nothing to redeliver, so the task
                # itself is lost here, and its history says so.
                worker.note("lost", request, reason="worker-crashed")
        _go_offline(worker, "worker-crashed", kill_children=True)
        worker.alive = False
        self.sim.record("worker-offline", worker=name, reason="crashed")
        if restart_after is not None:
            self.sim.loop.call_later(restart_after, self._restart, worker)

    def _restart(self, old: Worker) -> None:
        new = Worker(
            self.sim,
            old.name,
            concurrency=old.concurrency,
            queues=old.queues,
            prefetch_multiplier=old.prefetch_multiplier,
        )
        self.sim.workers[old.name] = new
        new.start()

    # -- G3: one child dies ------------------------------------------------------------

    def kill_child(
        self,
        task_id: str,
        at: float | dt.datetime | None = None,
        exitcode: int = -9,
        attempt: str | None = None,
    ) -> None:
        """The child process running ``task_id`` dies (default SIGKILL, exit code -9).

        With ``attempt`` (a delivery's ``attempt`` id, e.g. ``"m1.2"``), the child running
        that attempt; without it, the first child found running the task.
        """
        if attempt is not None and not isinstance(attempt, str):
            raise validate.invalid(
                "kill_child()",
                "attempt",
                "an attempt id (a str such as 'm1.2', the 'attempt' of the task's events)",
                attempt,
            )
        when = self.at("kill_child()", at)
        if not isinstance(task_id, str):
            raise validate.invalid("kill_child()", "task_id", "a task id (a str)", task_id)
        if (
            isinstance(exitcode, bool)
            or not isinstance(exitcode, int)
            or not -64 <= exitcode <= 255
        ):
            raise validate.invalid(
                "kill_child()",
                "exitcode",
                "an int: an exit status 0-255, or minus a signal number (-9 is SIGKILL)",
                exitcode,
            )
        if when is None:
            self._kill(task_id, exitcode, attempt)
        else:
            self.sim.loop.call_at(when, self._kill_if_running, task_id, exitcode, attempt)

    def _running(self, task_id: str, attempt: str | None = None) -> tuple[Worker, Slot]:
        for worker in self.sim.workers.values():
            for slot in worker.slots:
                request = slot.request
                if (
                    request is not None
                    and request.id == task_id
                    and (attempt is None or request.tag == attempt)
                ):
                    return worker, slot
        if attempt is not None:
            mine = sorted(
                s.request.tag or "?"
                for w in self.sim.workers.values()
                for s in w.slots
                if s.request is not None and s.request.id == task_id
            )
            raise UnknownTarget(
                f"no child is running attempt {attempt!r} of task {task_id!r}; its running "
                f"attempts: {', '.join(mine) if mine else 'none'}"
            )
        running = sorted(
            s.request.id
            for w in self.sim.workers.values()
            for s in w.slots
            if s.request is not None
        )
        raise UnknownTarget(
            f"no child is running task {task_id!r}; running now: "
            f"{', '.join(running) if running else 'none'}"
        )

    def _kill_if_running(self, task_id: str, exitcode: int, attempt: str | None) -> None:
        # A kill planned for a moment when the task no longer (or not yet) runs acts on
        # nothing, as `kill` of a pid that is gone: recorded, and the run goes on.
        try:
            self._running(task_id, attempt)
        except UnknownTarget as exc:
            self.sim.record("fault-skipped", task_id=task_id, fault="kill_child", reason=str(exc))
            return
        self._kill(task_id, exitcode, attempt)

    def _kill(self, task_id: str, exitcode: int, attempt: str | None = None) -> None:
        worker, slot = self._running(task_id, attempt)
        running = slot.request
        assert running is not None
        request = running
        worker.note("child-killed", request, exitcode=exitcode)
        worker.pool.kill(slot, exitcode)

    # -- G7: the broker connection drops -----------------------------------------------

    def lose_connection(
        self, worker: str, at: float | dt.datetime | None = None, reconnect_after: float = 5.0
    ) -> None:
        """Worker ``worker`` loses its broker connection, reconnecting after a while."""
        when = self.at("lose_connection()", at)
        reconnect_after = validate.seconds("lose_connection()", "reconnect_after", reconnect_after)
        self._worker(worker)
        self._when(when, self._lose_connection, worker, reconnect_after)

    def _lose_connection(self, name: str, reconnect_after: float | None) -> None:
        worker = self._worker(name)
        if not worker.alive or not worker.online:
            return
        self.sim.record("connection-lost", worker=name)
        cancel = bool(self.sim.app.conf.worker_cancel_long_running_tasks_on_connection_loss)
        _go_offline(worker, "connection-lost", kill_children=False, cancel_late=cancel)
        if reconnect_after is not None:
            self.sim.loop.call_later(reconnect_after, self._reconnect, worker)

    def _reconnect(self, worker: Worker) -> None:
        if (
            not worker.alive
            or worker.online
            or worker.stopping
            or self.sim.workers.get(worker.name) is not worker
        ):
            return  # a worker shutting down does not consume again
        self.sim.record("connection-restored", worker=worker.name)
        worker.online = True
        for queue in worker.queues:
            self.sim.broker.consume(queue, worker)

    # -- the broker restarts -----------------------------------------------------------

    def restart_broker(self, at: float | dt.datetime | None = None, down_for: float = 1.0) -> None:
        """The broker restarts: every connection drops; durable queues survive (amqp, sqs);
        this Redis keeps nothing on disk, so its messages are lost."""
        when = self.at("restart_broker()", at)
        down_for = validate.seconds("restart_broker()", "down_for", down_for)
        self._when(when, self._restart_broker, down_for)

    def _restart_broker(self, down_for: float) -> None:
        # A worker in warm shutdown still holds its running tasks' channel: it closes too.
        online = [w for w in self.sim.workers.values() if w.alive and (w.online or w.stopping)]
        # The broker is down: no consumer may take a requeued message while the
        # connections drop one by one.
        for worker in online:
            for queue in worker.queues:
                self.sim.broker.cancel(queue, worker)
        for worker in online:
            self.sim.record("connection-lost", worker=worker.name)
            _go_offline(
                worker,
                "broker-restart",
                kill_children=False,
                cancel_late=bool(
                    self.sim.app.conf.worker_cancel_long_running_tasks_on_connection_loss
                ),
            )
        lost = self.sim.broker.restart()
        self.sim.record("broker-restarted", lost=lost, transport=self.sim.broker.transport)
        for worker in online:
            self.sim.loop.call_later(down_for, self._reconnect, worker)

    # -- G17: shutdown -----------------------------------------------------------------

    def shutdown_worker(
        self, name: str, at: float | dt.datetime | None = None, warm: bool = True
    ) -> None:
        """Stop worker ``name``: warm lets running tasks finish; cold cancels them."""
        when = self.at("shutdown_worker()", at)
        validate.flag("shutdown_worker()", "warm", warm)
        self._worker(name)
        self._when(when, self._shutdown, name, warm)

    def _shutdown(self, name: str, warm: bool) -> None:
        worker = self._worker(name)
        if not worker.alive:
            return
        self.sim.record("shutdown", worker=name, warm=warm)
        connected = worker.online
        worker.online = False
        worker.stopping = True
        for queue in worker.queues:
            self.sim.broker.cancel(queue, worker)
        broker = self.sim.broker
        # On a polling transport Celery's synloop handed every received task to the pool,
        # and a warm shutdown runs them all (G17); elsewhere a task not started goes back.
        keep = RequestState.RESERVED if warm and broker.polling else None
        # Messages not started go back: channel close (amqp) or restore_at_shutdown.
        for request in list(worker.requests.values()):
            if request.state is not RequestState.ACTIVE and request.state is not keep:
                _drop(worker, request, "shutdown", restore_now=True)
        if keep is None:
            worker.reserved.clear()
        elif connected:
            # synloop's ``finally`` runs one more turn after the SIGTERM (loops.py).
            broker.last_drain(worker, worker.queues)
        if not warm:
            worker.terminating = True
            if isinstance(broker, PollingBroker):
                # synloop's ``finally`` turn sends the acks queued for it (Celery 5.5)
                # before the channel closes; here, before what is not acked goes back.
                broker.last_turn(worker)
            for slot in worker.slots:
                if slot.request is None:
                    continue
                request = slot.request
                if request.acks_late and request.acked:
                    continue  # acked acks_late tasks finish gracefully
                _cancel(
                    worker,
                    slot,
                    request,
                    emit_retry=not request.acks_late,
                    reason="shutdown",
                    restore_now=True,
                )
        self._finish_shutdown(worker)

    def _finish_shutdown(self, worker: Worker) -> None:
        broker = self.sim.broker
        if (
            any(slot.request is not None for slot in worker.slots)
            or worker.pool.lingering
            or any(r.state is RequestState.RESERVED for r in worker.reserved)
            or (broker.polling and broker.draining(worker))
        ):
            # Offline as soon as the last running task ends (the worker calls back).
            worker.on_idle = lambda: self._finish_shutdown(worker)
            return
        worker.on_idle = None
        if isinstance(broker, PollingBroker):
            broker.last_turn(worker)  # Consumer.shutdown sends what is still queued
        # What the last turn of a polling worker fetched and did not run (an ETA task)
        # goes back as its channel closes.
        for request in list(worker.requests.values()):
            if request.state is not RequestState.ACTIVE:
                _drop(worker, request, "shutdown", restore_now=True)
        if worker.alive:
            worker.alive = False
            self.sim.record("worker-offline", worker=worker.name, reason="shutdown")
            signals.worker_shutdown.send(sender=worker)

    # -- G10: revoke -------------------------------------------------------------------

    def terminate(self, worker: Worker, task_id: str, signal: Any = None) -> None:
        """``revoke(terminate=True)``: Celery's ``Request.terminate`` on ``worker``."""
        signum = platform_signals.signum(signal or "TERM")
        for request in worker.active():
            if request.id == task_id:
                worker.load_revoked()
                # Celery's code runs in this worker's parent: its writes are this worker's.
                self.sim.acting(worker)
                try:
                    request.celery.terminate(worker.pool, signal=signum)
                finally:
                    self.sim.acting(None)


def _go_offline(
    worker: Worker, reason: str, *, kill_children: bool, cancel_late: bool = False
) -> None:
    """Stop consuming; every unacked delivery of ``worker`` is void (G4, G7)."""
    broker = worker.broker
    worker.online = False
    for queue in worker.queues:
        broker.cancel(queue, worker)
    for slot in worker.slots:
        request = slot.request
        if request is None:
            continue
        if kill_children:
            slot.replace_child()
            # An orphaned delivery went back at the connection loss; it may be held
            # elsewhere now, so _give_back leaves it alone.
            _give_back(worker, request, reason, restore_now=False)
            _forget(worker, request)
        elif not request.acked and not request.orphaned:
            _give_back(worker, request, reason, restore_now=False)
            if cancel_late and request.acks_late:
                _cancel(worker, slot, request, emit_retry=True, reason=reason, restore_now=False)
    lingering = worker.pool.lingering
    for job in list(lingering):  # terminated by a cold shutdown, the limit not yet fired
        _give_back(worker, job.request, reason, restore_now=False)
        if kill_children:
            lingering.discard(job)
            _forget(worker, job.request)
    for request in list(worker.requests.values()):
        if request.state is not RequestState.ACTIVE:
            _drop(worker, request, reason, restore_now=False)
    worker.reserved = deque()
    worker.buckets.clear()
    worker._live_unacked = 0
    worker._held = 0


def _drop(worker: Worker, request: Request, reason: str, restore_now: bool) -> None:
    """Forget a delivered, not-started request; its message goes back to the broker."""
    if request.timer is not None:
        request.timer.cancel()
        request.timer = None
    _give_back(worker, request, reason, restore_now)
    _forget(worker, request)


def _give_back(worker: Worker, request: Request, reason: str, restore_now: bool) -> None:
    """Return an unacked delivery to the broker: now (requeue), or as its channel closes."""
    if not request.acked and not request.orphaned:
        request.orphaned = True
        if restore_now:
            worker.broker.restore(request.envelope, front=True, reason=reason)
        else:
            worker.broker.channel_closed(request.envelope, reason)


def _cancel(
    worker: Worker,
    slot: Slot,
    request: Request,
    *,
    emit_retry: bool,
    reason: str,
    restore_now: bool,
) -> None:
    """Celery's ``Request.cancel``: terminate the child; RETRY('cancelled by Celery')."""
    worker.note("cancelled", request, reason=reason)
    job = slot.job
    worker.sim.acting(worker)
    try:
        if _CANCEL_TAKES_EMIT_RETRY:
            request.celery.cancel(worker.pool, emit_retry=emit_retry)
        else:  # Celery 5.5: a cancel always stores RETRY('cancelled by Celery')
            request.celery.cancel(worker.pool)
    finally:
        worker.sim.acting(None)
    if slot.job is not None and slot.request is request:
        slot.replace_child()  # not yet accepted: nothing for Celery to terminate
    if job is not None and job in worker.pool.lingering:
        return  # its hard time limit fires before the pool sees the child gone
    _give_back(worker, request, reason, restore_now)
    _forget(worker, request)
    worker.maybe_idle()  # a warm shutdown waiting for this task may now end


def _forget(worker: Worker, request: Request) -> None:
    if request.state is not RequestState.DONE:
        request.state = RequestState.DONE
    worker.forget_attempt(request)
    if worker.requests.get(request.envelope) is request:
        del worker.requests[request.envelope]
