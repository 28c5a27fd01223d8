"""The worker pool Celery's ``Request`` talks to: child slots as fibers. Internal.

Celery's ``Request.execute_using_pool`` calls ``pool.apply_async(trace, args,
accept_callback=, callback=, error_callback=, timeout_callback=, soft_timeout=,
timeout=)``. This pool answers the way billiard's prefork pool does:

* the child takes the job: ``accept_callback(pid, monotonic())`` (the early ack);
* the tracer returns: ``callback((failed, retval, runtime))``;
* the child dies (a kill, ``os._exit``): ``error_callback(ExceptionInfo(
  WorkerLostError("Worker exited prematurely: <status> Job: <n>.")))`` (billiard's
  ``mark_as_worker_lost``; ``n`` counts this worker's jobs from 0, as billiard's
  ``job_counter`` does per process), or ``Terminated`` when Celery terminated the job
  itself (revoke, cancel);
* ``SystemExit``/``KeyboardInterrupt`` escaping the tracer: billiard 4.3's child reports
  it as the job's result, ``error_callback(ExceptionInfo(exc))`` (Celery turns it into
  ``WorkerLostError("Worker exited prematurely: exitcode 3.")``), then exits; any other
  BaseException escaping the tracer is reported the same way and the child lives on;
* a soft limit: ``timeout_callback(True, soft)``, then SoftTimeLimitExceeded is raised
  inside the task where it stands;
* a hard limit: ``error_callback(ExceptionInfo(TimeLimitExceeded(hard)))``, then
  ``timeout_callback(False, hard)``, then the child is killed (billiard's
  ``TimeoutHandler.on_hard_timeout``).

Each callback runs the way billiard's ``safe_apply_callback`` does: an exception in it is
logged and the worker goes on. A BaseException that is not an Exception (a hook raising
SystemExit, KeyboardInterrupt or its own BaseException subclass in the worker's parent
process: ``on_failure`` at a hard time limit, ``on_retry`` when a lost task is retried)
propagates up Celery's worker instead: a real ``celery worker -P prefork`` then goes down
(a warm shutdown for SystemExit and KeyboardInterrupt, an exit with a traceback for any
other). The pool does the same to its simulated worker, and the run goes on.

A KeyboardInterrupt raised by a real SIGINT (Ctrl-C in the test process,
:mod:`simq.engine.interrupts`) is neither: it stops the run and reaches the user.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import greenlet
from billiard.common import human_status
from billiard.einfo import ExceptionInfo
from billiard.exceptions import (
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery import signals
from celery._state import _task_stack
from celery.worker import state as celery_state

from simq.engine.fibers import SUSPENDED, Exited
from simq.engine.interrupts import from_signal
from simq.world.request import RequestState

if TYPE_CHECKING:
    from simq.engine.loop import Timer

__all__ = ["Job", "Pool", "Slot", "forget_dead_children"]

logger = logging.getLogger("simq.pool")

#: Seconds after a cold shutdown until the pool notices a child it terminated: billiard's
#: ``ResultHandler.finish_at_shutdown`` polls 1 s on Celery's synchronous loop; on an
#: event loop ``_flush_outqueue`` waits 0.5 s (:meth:`Pool._limit_first`).
COLD_REAP_SYNC = 1.0
COLD_REAP_EVENT_LOOP = 0.5


def exception_info(exc: BaseException) -> ExceptionInfo:
    """billiard's ExceptionInfo for ``exc``, as the pool hands it to Celery."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


def safe_apply(fn: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> None:
    """Call a Celery callback the way billiard does: log an error, never raise it."""
    if fn is None:
        return
    try:
        fn(*args, **kwargs)
    except Exception:
        logger.exception("pool callback %r raised", fn)


def forget_dead_children(app: Any) -> None:
    """Drop what Celery's greenlet-local stacks still hold for children that are gone.

    Celery keys ``task.request_stack`` and the current-task stack by greenlet
    (``celery.utils.threads`` uses greenlet's ``getcurrent`` when greenlet is installed).
    A child killed mid-task never pops them: a dead greenlet can never be current again,
    so its entries are dropped here, with the request they hold.
    """
    stacks = [_task_stack, *(task.request_stack for task in app.tasks.values())]
    for stack in stacks:
        storage = getattr(getattr(stack, "_local", None), "__storage__", None)
        if not storage:
            continue
        for key in [k for k in list(storage) if isinstance(k, greenlet.greenlet) and k.dead]:
            storage.pop(key, None)


class Job:
    """One ``apply_async`` call: the callbacks Celery gave and the job's fate."""

    __slots__ = (
        "__weakref__",
        "accept_callback",
        "args",
        "callback",
        "due",
        "error_callback",
        "number",
        "ready",
        "request",
        "soft_timeout",
        "target",
        "terminated",
        "timeout",
        "timeout_callback",
    )

    def __init__(self, number: int, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.number = number
        self.target = target
        self.args = args
        self.accept_callback: Callable[..., Any] | None = None
        self.callback: Callable[..., Any] | None = None
        self.error_callback: Callable[..., Any] | None = None
        self.timeout_callback: Callable[..., Any] | None = None
        self.soft_timeout: float | None = None
        self.timeout: float | None = None
        self.terminated: int | None = None
        self.due: float | None = None  # when its hard time limit falls due, once started
        self.ready = False
        self.request: Any = None  # the worker's record of the delivery

    def terminate(self, signum: int | None = None) -> None:
        """Celery's ``ApplyResult.terminate``: the job ends as Terminated."""
        self.terminated = signum or 15

    def __repr__(self) -> str:
        return f"<Job {self.number} ready={self.ready}>"


class Slot:
    """A child process slot: a fiber, the job it runs and that job's timers."""

    __slots__ = (
        "fiber",
        "index",
        "initialized",
        "job",
        "pid",
        "pool",
        "timers",
        "token",
        "tracers",
    )

    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.fiber = pool.sim.fibers.new(f"{pool.worker.name}/child-{index + 1}", owner=self)
        self.job: Job | None = None
        self.timers: list[Timer] = []
        self.token = 0  # bumped when the child is replaced: stale timers do nothing
        self.pid = pool.new_pid()
        self.initialized = False
        # Each child process builds its own tracers (they capture its pid and hostname).
        self.tracers: dict[str, Any] = {}

    @property
    def worker(self) -> Any:
        return self.pool.worker

    @property
    def request(self) -> Any:
        """The worker's record of the delivery this child runs, or None."""
        job = self.job
        return job.request if job is not None else None

    def sleep(self, seconds: float) -> None:
        """Called inside the fiber: suspend the task for ``seconds`` of virtual time."""
        timer = self.pool.loop.call_later(seconds, self.wake, self.token)
        self.timers.append(timer)
        try:
            self.fiber.suspend()
        finally:
            # An interrupted sleep (soft time limit) must not wake the task's next one.
            timer.cancel()
            if timer in self.timers:
                self.timers.remove(timer)

    def wake(self, token: int) -> None:
        """Resume the task suspended in this slot (end of a virtual sleep)."""
        if token == self.token and self.job is not None:
            self.pool.switched(self, self.fiber.resume())

    def replace_child(self) -> None:
        """The child died: its code stops where it is; a fresh child takes the slot."""
        self.token += 1
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.fiber.busy:
            self.fiber.abandon()
        forget_dead_children(self.pool.app)
        self.job = None
        self.pid = self.pool.new_pid()
        self.initialized = False
        self.tracers = {}

    def __repr__(self) -> str:
        return f"<Slot {self.fiber.name} pid={self.pid} job={self.job!r}>"


class Pool:
    """The pool of one simulated worker: ``concurrency`` child slots."""

    def __init__(self, worker: Any, concurrency: int) -> None:
        self.worker = worker
        self.sim = worker.sim
        self.loop = worker.loop
        self.app = worker.app
        self.limit = concurrency
        # The pool-wide limits the worker gives billiard's Pool (WorkController.time_limit
        # and soft_time_limit: the task_time_limit and task_soft_time_limit settings).
        # billiard applies them to a job sent without its own (``timeout or self.timeout``);
        # Celery 5.5 relies on that, as its tasks do not read these settings themselves.
        self.timeout: float | None = self.app.conf.task_time_limit
        self.soft_timeout: float | None = self.app.conf.task_soft_time_limit
        self._jobs = itertools.count()  # billiard's job_counter: from 0, per process
        # Jobs whose child a cold shutdown terminated and whose hard time limit falls due
        # before the pool notices the dead child (:meth:`terminate_job`).
        self.lingering: set[Job] = set()
        self.slots = [Slot(self, i) for i in range(concurrency)]
        self.next_slot: Slot | None = None  # the slot the worker chose for the next job

    def new_pid(self) -> int:
        return int(self.sim.new_pid())

    def call(self, fn: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> None:
        """Run a Celery callback in this worker's parent process (billiard's way), as one
        turn of its loop."""
        self.worker.one_turn(partial(self._callback, fn, args, kwargs))

    def _callback(self, fn: Callable[..., Any] | None, args: Any, kwargs: Any) -> None:
        sim = self.sim
        # Restored, not cleared: callbacks nest (an ack sent at once may hand this worker
        # its next message, whose handling calls back into the pool), and an inner one
        # must not end the attribution of the writes the outer one makes after it.
        worker = self.worker
        acting, sim.acting_worker = sim.acting_worker, worker.name
        # A cold shutdown sets Celery's process-wide flag, which Request.on_failure and
        # on_timeout read; this worker's callbacks see it, no other's.
        terminating = worker.terminating
        if terminating:
            was, celery_state.should_terminate = celery_state.should_terminate, True
        try:
            safe_apply(fn, *args, **kwargs)
        except BaseException as exc:
            if from_signal(exc):
                raise
            self._parent_died(fn, exc)
        finally:
            sim.acting_worker = acting
            if terminating:
                celery_state.should_terminate = was

    def _parent_died(self, fn: Any, exc: BaseException) -> None:
        """A BaseException escaped callback ``fn``: the worker process goes down."""
        worker = self.worker
        if not worker.alive:
            return
        # Celery's WorkController.start: SystemExit and KeyboardInterrupt stop the worker
        # warm; anything else ends the process.
        warm = isinstance(exc, SystemExit | KeyboardInterrupt)
        if warm:
            # Stopping joins the pool, which sends the acks queued on the event loop first
            # (celery/concurrency/prefork.py, _run_ready_callbacks).
            worker.send_acks(close=False)
        else:
            worker.drop_acks()
        logger.critical(
            "worker %s: %r escaped pool callback %r in the parent process; the worker %s",
            worker.name,
            exc,
            fn,
            "shuts down" if warm else "exits",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        # A finished job that Celery had not acked yet (the hook raised first): its
        # message goes back as the worker's channel closes.
        running = {id(slot.request) for slot in self.slots}
        for delivery in list(worker.requests.values()):
            if (
                delivery.state is RequestState.ACTIVE
                and id(delivery) not in running
                and not (delivery.acked or delivery.orphaned)
            ):
                delivery.orphaned = True
                worker.broker.channel_closed(
                    delivery.envelope, "shutdown" if warm else "worker-crashed"
                )
        if warm:
            self.sim.faults.shutdown_worker(worker.name, warm=True)
        else:
            self.sim.faults.crash_worker(worker.name)

    def free_slot(self) -> Slot | None:
        for slot in self.slots:
            if slot.job is None:
                return slot
        return None

    # -- what Celery's Request calls ---------------------------------------------------

    def apply_async(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Any = None,
        callback: Callable[..., Any] | None = None,
        error_callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        timeout_callback: Callable[..., Any] | None = None,
        soft_timeout: float | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Job:
        slot = self.next_slot
        if slot is None or slot.job is not None:
            raise RuntimeError("simq pool: apply_async without a free child slot chosen")
        self.next_slot = None
        job = Job(next(self._jobs), target, tuple(args))
        job.callback, job.error_callback = callback, error_callback
        job.accept_callback, job.timeout_callback = accept_callback, timeout_callback
        # billiard's Pool.apply_async: the job's limits, else the pool's.
        job.soft_timeout = soft_timeout or self.soft_timeout
        job.timeout = timeout or self.timeout
        job.request = self.worker.starting
        slot.job = job
        self._start(slot, job)
        return job

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Kill the child ``pid``; its job ends as Terminated (or lost) a moment later.

        In a cold shutdown the job's hard time limit may come first (:meth:`_limit_first`).
        """
        for slot in self.slots:
            if slot.pid == pid and slot.job is not None:
                job = slot.job
                slot.replace_child()
                fires = self._limit_first(job)
                if fires is None:
                    self.loop.call_soon(self._reap, job, -(signal or 15))
                else:
                    self.lingering.add(job)
                    self.loop.call_at(fires, self._limit_after_death, job)
                return

    def _limit_first(self, job: Job) -> float | None:
        """When the hard limit of ``job``, terminated by a cold shutdown, fires first.

        A cold shutdown stops the pool (``on_cold_shutdown``: ``pool.stop()``), and the
        pool notices the child it terminated only while it shuts down: billiard's
        ``ResultHandler.finish_at_shutdown`` after a ``poll(1.0)`` on the synchronous
        loop; on an event loop ``_flush_outqueue`` after 0.5 s, while the shutdown's
        timer thread fires due time limits every 0.5 s. A hard limit due before then
        fires first, and Celery's ``Request.on_failure`` and ``on_timeout`` run with
        ``state.should_terminate`` set: no FAILURE stored, but an acks_late message is
        acked (``acks_on_timeout``), so it never runs again. Recorded with Celery 5.7.0
        (a 0.5 s limit, the shutdown 0.11 to 0.25 s after the start): the limit fired on
        20 of 20 runs on ``filesystem://`` and ``sqla+sqlite``, 0.69 to 0.80 s after the
        shutdown, and on 8 of 9 on Redis, 0.50 s after it; a 5 s limit never did (23
        runs). Returns None when the pool notices the death first: Terminated, as after
        any terminate. Here the limit fires at its due time on the synchronous loop (a
        real TimeoutHandler wakes once a second) and at the timer thread's tick on an
        event loop.
        """
        if not self.worker.terminating or job.due is None:
            return None
        now: float = self.loop.now
        notices = now + (COLD_REAP_SYNC if self.worker.broker.polling else COLD_REAP_EVENT_LOOP)
        if job.due > notices:
            return None
        return max(job.due, now) if self.worker.broker.polling else notices

    def _limit_after_death(self, job: Job) -> None:
        if job not in self.lingering:
            return  # the worker crashed or lost it meanwhile
        self.lingering.discard(job)
        if not job.ready:
            self._time_out(job)

    # -- running a job -----------------------------------------------------------------

    def _start(self, slot: Slot, job: Job) -> None:
        delivery = job.request
        self.worker.note(
            "started",
            delivery,
            task=delivery.task_name,
            retries=(delivery.message.headers or {}).get("retries", 0),
        )
        self.call(job.accept_callback, slot.pid, time.monotonic())
        if slot.job is not job:
            return  # terminated on accept (a revoke that arrived before the start)
        if job.soft_timeout:
            slot.timers.append(self.loop.call_later(job.soft_timeout, self._soft_limit, slot, job))
        if job.timeout:
            job.due = self.loop.now + job.timeout
            slot.timers.append(self.loop.call_later(job.timeout, self._hard_limit, slot, job))
        self.switched(slot, slot.fiber.run(lambda: self._child(slot, job)))

    def _child(self, slot: Slot, job: Job) -> Any:
        """What runs in the child process: init once, the task's duration, the tracer."""
        try:
            if not slot.initialized:
                slot.initialized = True
                signals.worker_process_init.send(sender=None)
            name = job.request.task_name
            duration = self.sim.duration_for(name)
            if duration:
                slot.sleep(duration)
            # Celery caches one tracer per task (task.__trace__); a prefork child has its
            # own, built in that child. Swap this child's in for the call.
            task = self.app.tasks[name]
            task.__trace__ = slot.tracers.get(name)
            try:
                return ("ok", job.target(*job.args, app=self.app))
            finally:
                slot.tracers[name] = task.__trace__
        except SystemExit as exc:
            # billiard 4.3 workloop: the job's own SystemExit is its result; then the
            # child exits with the SystemExit's status.
            code = exc.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            return ("exit-raised", ExceptionInfo(), status)
        except KeyboardInterrupt as exc:
            if from_signal(exc):
                raise  # Ctrl-C in the test process: not the task's, stop the run
            return ("exit-raised", ExceptionInfo(), 1)
        except BaseException:  # billiard reports it as the job's failure; the child lives on
            return ("raised", ExceptionInfo())

    def switched(self, slot: Slot, result: Any) -> None:
        """The engine regained control from ``slot``'s fiber; finish the job if it ended."""
        self.sim.vtime.ensure()
        if result is SUSPENDED:
            return
        job = slot.job
        if job is None:
            return
        if isinstance(result, Exited):
            self._lost(slot, job, result.code)
        elif result[0] == "exit-raised":
            # The result arrives first (Request.on_failure), then the child is gone.
            _, einfo, code = result
            slot.replace_child()
            self.worker.note("child-lost", job.request, exitcode=code)
            job.ready = True
            self.call(job.error_callback, einfo)
            self.worker.finished(job.request)
        else:
            for timer in slot.timers:
                timer.cancel()
            slot.timers.clear()
            slot.job = None
            job.ready = True
            if result[0] == "raised":
                einfo = result[1]
                exc = getattr(einfo.exception, "exc", einfo.exception)  # ExceptionWithTraceback
                self.worker.note("failed", job.request, exception=self.worker.encode_exception(exc))
                self.call(job.error_callback, einfo)
            else:
                self.worker.outcome(job.request, result[1])
                self.call(job.callback, result[1])
            self.worker.finished(job.request)

    def _lost(self, slot: Slot, job: Job, code: int) -> None:
        if slot.job is job:
            slot.replace_child()
        self.worker.note("child-lost", job.request, exitcode=code)
        self._reap(job, code)

    def _reap(self, job: Job, code: int) -> None:
        """billiard's result handler sees a dead child that held ``job``."""
        if job.ready:
            return
        job.ready = True
        if job.terminated is not None:
            # billiard: job._set_terminated(exitcode), Terminated(-exitcode), the signal.
            einfo = exception_info(Terminated(-(code or 0)))
        else:
            einfo = exception_info(
                WorkerLostError(
                    f"Worker exited prematurely: {human_status(code)} Job: {job.number}."
                )
            )
        self.call(job.error_callback, einfo)
        self.worker.finished(job.request)

    def kill(self, slot: Slot, exitcode: int) -> None:
        """A fault: the child in ``slot`` dies with ``exitcode``."""
        job = slot.job
        if job is None:
            return
        slot.replace_child()
        self._lost(slot, job, exitcode)

    # -- time limits (billiard's TimeoutHandler) ---------------------------------------

    def _soft_limit(self, slot: Slot, job: Job) -> None:
        if slot.job is not job:
            return
        self.worker.note("time-limit", job.request, which="soft", limit=job.soft_timeout)
        self.call(job.timeout_callback, soft=True, timeout=job.soft_timeout)
        self.switched(slot, slot.fiber.throw(SoftTimeLimitExceeded()))

    def _hard_limit(self, slot: Slot, job: Job) -> None:
        if slot.job is not job or job.ready:
            return
        slot.replace_child()
        self._time_out(job)

    def _time_out(self, job: Job) -> None:
        """billiard's ``on_hard_timeout`` for ``job``, whose child is gone."""
        request = job.request
        self.worker.note("time-limit", request, which="hard", limit=job.timeout)
        exc = TimeLimitExceeded(job.timeout)
        self.worker.note("failed", request, exception=self.worker.encode_exception(exc))
        job.ready = True
        timeout = job.timeout

        def on_hard_timeout() -> None:  # billiard calls both in one turn
            self.call(job.error_callback, exception_info(exc))
            self.call(job.timeout_callback, soft=False, timeout=timeout)

        self.worker.one_turn(on_hard_timeout)
        self.worker.finished(request)
