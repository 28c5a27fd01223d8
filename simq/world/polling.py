"""kombu's polling transports: each worker fetches its own messages. Internal.

kombu's virtual transports that have no event loop (``filesystem://``, ``sqla+...://``:
``Transport.implements.asynchronous`` is False) make Celery's worker run ``synloop``
(celery/worker/loops.py). Each turn of that loop updates the prefetch count if it
changed and calls ``connection.drain_events(timeout=2.0)``. kombu's virtual
``Transport.drain_events`` (kombu/transport/virtual/base.py) gets one message per call;
after an empty poll it sleeps ``polling_interval`` (the transport option, 1.0 s by
default, capped at the drain's timeout) and polls again. A channel polls its queues
only while ``QoS.can_consume()``: fewer unacked messages than the prefetch count.

What this module models, and where kombu or Celery does it:

* Nothing is pushed: a consumer takes one message per poll, at once again after a
  message, else at the next tick of its own poll grid (``polling_interval`` apart).
  A consumer with nothing to fetch schedules nothing: it wakes at its next tick after a
  publish, an ack or a restore, so an idle simulation ends.
* Unacked messages live in the consuming process (``QoS._delivered``). A channel that
  closes (shutdown, lost connection) restores them with ``Channel._restore``, which puts
  them again (``_put``): at the back of the queue, and the ``redelivered`` key it sets
  in the stored payload never reaches ``delivery_info``, so they are not flagged. A
  killed process closes nothing: its unacked messages are lost.
* A changed prefetch count reaches the channel only as a turn begins (``synloop``:
  ``if qos.prev != qos.value: qos.update()``, then the drain). A message with an ETA
  header widens the window as it is received, and that ends the turn at once; its timer
  narrows it again (``apply_eta_task``: ``decrement_eventually``) in the middle of a
  turn, so until the turn ends, at its first empty poll 2 s after it began, the channel
  still takes one message more than the window (G5, :meth:`Poller.poll`).
* The consumer hands each task to the pool as it receives it, and the pool takes one
  job per child (billiard's ``putlocks``, on whenever there is no event loop): with
  every child busy the consumer waits with that task in hand and polls nothing until a
  child is free (:meth:`Worker.blocked`). The worker's timer waits the same way to hand
  over an ETA task whose time came, so its hold on the window ends when it starts.
* Broadcast commands (``revoke``) come through the same drain, on the worker's control
  channel: a worker reads one at its next poll, a turn late.
* A warm shutdown drains once more: the signal is noticed between turns, and
  ``synloop`` calls ``state.maybe_shutdown()`` in a ``try`` whose ``finally`` runs one
  more turn. The turn in flight and that one may each fetch a message (two at most,
  within two drain timeouts; recorded on SQLAlchemy); the prefork pool was handed every
  received task and runs them all before the worker ends.
* The broker keeps its queued messages across a restart (files or rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from simq.checkers.base import SYNLOOP_DRAIN
from simq.exceptions import InvalidArgument
from simq.validate import is_real
from simq.world.broker import Broker, Envelope, MessageState

if TYPE_CHECKING:
    from simq.world.worker import Worker

__all__ = [
    "DEFAULT_POLLING_INTERVAL",
    "LAST_TURNS",
    "Poller",
    "PollingBroker",
    "interval",
]

#: kombu's ``virtual.Transport.polling_interval``: seconds slept after an empty poll.
DEFAULT_POLLING_INTERVAL = 1.0
#: Turns after a warm shutdown's signal: the one in flight and the ``finally`` one.
LAST_TURNS = 2


def interval(options: dict[str, Any]) -> float:
    """``broker_transport_options["polling_interval"]``, checked; kombu's default if unset."""
    value = options.get("polling_interval")
    if value is None:
        # kombu keeps its default when the option is None (virtual Transport.__init__).
        return DEFAULT_POLLING_INTERVAL
    if not is_real(value) or not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            "Simulation(): app.conf.broker_transport_options['polling_interval'] must be a "
            f"number of seconds >= 0 on the polling transport, got {value!r}: kombu sleeps "
            "that long after an empty poll; pass how long a worker waits before polling "
            f"its queues again (kombu's default: {DEFAULT_POLLING_INTERVAL:g}, 0 to poll "
            "without pause)"
        )
    return float(value)


class Poller:
    """One worker's consuming loop on a polling transport (``synloop`` + kombu's drain)."""

    def __init__(self, broker: PollingBroker, consumer: Worker) -> None:
        self.broker = broker
        self.consumer = consumer
        self.queues: list[str] = []
        self.last: float | None = None  # when it last polled (its grid's phase)
        self.timer: Any = None  # its next poll, if one is scheduled
        self.rr = 0  # kombu's FairCycle: the queue the next get tries first
        self.until: float | None = None  # the last turns after a warm shutdown end here
        self.fetches = 0  # messages those turns may still fetch
        self.commands: list[Callable[[], None]] = []  # broadcasts read at the next poll
        self.turn: float | None = None  # when synloop's current turn began (qos.update)
        self.narrowed: list[float] = []  # ETA holds that ended during this turn: when
        self.pending: list[Callable[[], None]] = []  # acks for the next turn (Celery 5.5)

    @property
    def running(self) -> bool:
        return bool(self.queues)

    @property
    def draining(self) -> bool:
        """Whether this is the one more turn after a warm shutdown."""
        return self.until is not None

    def wake(self, soon: bool = False) -> None:
        """Poll at the next tick of this consumer's grid (now, with ``soon``)."""
        if self.timer is not None or not self.running:
            return
        loop = self.broker.loop
        at = loop.now if soon else self._next_tick()
        if self.until is not None:
            at = min(at, self.until)  # the drain's last get comes as it times out
        self.timer = loop.call_at(at, self.poll)

    def begin_turn_now(self) -> None:
        """The consumer thread is back in ``synloop``: a turn begins and polls at once."""
        self._begin_turn(self.broker.loop.now)
        self._poll_now()

    def _poll_now(self) -> None:
        """The next turn polls at once, even if a later tick was scheduled meanwhile."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.wake(soon=True)

    def flush(self) -> None:
        """Run the acks queued for the next turn now (the loop's last turn)."""
        pending = self.pending
        while pending:
            pending.pop()()

    def _next_tick(self) -> float:
        now: float = self.broker.loop.now
        step = self.broker.interval
        if self.last is None or step == 0:
            return now  # polling without pause: a busy loop finds a message as it lands
        # The first tick strictly after the last poll that is not in the past.
        ticks = max(1, math.ceil((now - self.last) / step - 1e-9))
        return float(self.last + ticks * step)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Commands not read yet stay: a worker that reconnects reads them at its first poll.
        self.queues = []
        self.last = None
        self.turn = None
        self.narrowed = []
        if self.until is not None:
            self.until = None
            # A shutdown waiting for the last drain may now end.
            self.broker.loop.call_soon(self.consumer.maybe_idle)

    def narrow(self) -> None:
        """An ETA-held message left the hold: the count drops, on the channel next turn."""
        if self.turn is not None:
            self.narrowed.append(self.broker.loop.now)

    def _begin_turn(self, at: float) -> None:
        """``synloop`` begins a turn at ``at``: the channel gets the current count, then
        the acks queued for it go out, newest first (Celery 5.5)."""
        self.turn = at
        self.narrowed = [t for t in self.narrowed if t > at]
        self.flush()

    def at_next_turn(self, op: Callable[[], None]) -> None:
        """Run ``op`` as the next turn begins; make sure a poll comes at that time."""
        self.pending.append(op)
        self._expect_turn()

    def _expect_turn(self) -> None:
        if not self.pending or self.timer is not None or not self.running:
            return
        loop = self.broker.loop
        if self.turn is None:
            self.timer = loop.call_at(loop.now, self.poll)
        else:
            # The turn in flight ends at its first empty poll a drain after it began.
            ends = self.turn + self.broker.turn_length
            self.timer = loop.call_at(max(ends, loop.now), self.poll)

    def _turn_over(self, now: float) -> bool:
        """Whether the turn in flight timed out (an empty poll ``SYNLOOP_DRAIN`` after it
        began); one that timed out earlier, while nothing polled, is replaced here."""
        if self.turn is None:
            self._begin_turn(now)
            return False
        length = self.broker.turn_length
        turns = math.floor((now - self.turn) / length + 1e-9)
        if turns >= 1:
            began = self.turn + turns * length
            if began < now - 1e-9:
                self._begin_turn(began)
                return False
            return True
        return False

    def _room(self) -> bool:
        worker = self.consumer
        if self.until is None:
            # The channel's count as the turn began: holds that ended since still count.
            return worker.capacity() + len(self.narrowed) > 0 and not worker.blocked()
        # The last turn runs after the worker stopped consuming (``online`` is False).
        if worker.blocked():
            return False
        return worker.window == 0 or worker.window - worker.unacked() > 0

    def poll(self) -> None:
        """One ``drain_events`` get: at most one message, then the commands read."""
        self.timer = None
        now = self.broker.loop.now
        self.last = now
        if self.until is not None and now > self.until:
            self._end_drain()
            return
        over = self._turn_over(now)
        got = self._room() and self._get()
        if got:
            self.turn = None  # drain_events returns with a message: a new turn next
        elif over:
            # The empty poll ends the turn; the next one begins at once and polls again.
            self._begin_turn(now)
            got = self._room() and self._get()
            if got:
                self.turn = None
        commands, self.commands = self.commands, []
        for command in commands:
            command()
        if not self.running:
            return  # a command or the delivery stopped this consumer
        if self.until is not None:
            self.fetches -= int(got)
            if got and self.fetches > 0:
                self._poll_now()  # the next turn starts at once
            elif got or self._next_tick() > self.until:
                self._end_drain()
            else:
                self.wake()
            return
        if got:
            self._poll_now()  # synloop's next turn starts at once
        elif self.commands:
            self.wake()
        self._expect_turn()

    def _get(self) -> bool:
        broker = self.broker
        queues = self.queues
        n = len(queues)
        for i in range(n):
            name = queues[(self.rr + i) % n]
            q = broker.queues.get(name)
            envelope = q.pop() if q is not None else None
            if envelope is None:
                continue
            self.rr = (self.rr + i + 1) % n
            broker.deliver(envelope, self.consumer, name)
            return True
        return False

    def _end_drain(self) -> None:
        self.until = None
        self.flush()  # the last turn runs the queued acks first
        self.stop()
        self.consumer.maybe_idle()


class PollingBroker(Broker):
    """A broker for kombu's polling transports: consumers fetch, nothing is pushed.

    ``interval`` is ``polling_interval`` (:func:`interval`); kombu caps it at the
    drain's 2-second timeout.
    """

    polling = True

    def __init__(
        self,
        record: Callable[..., None],
        loop: Any,
        *,
        interval: float = DEFAULT_POLLING_INTERVAL,
        max_priority: int | None = None,
    ) -> None:
        super().__init__(record, loop, transport="polling", max_priority=max_priority)
        # Transport.drain_events: ``if polling_interval > timeout: polling_interval = timeout``.
        self.interval = min(interval, SYNLOOP_DRAIN)
        # A turn that fetches nothing ends at its first empty poll SYNLOOP_DRAIN after it
        # began: on the poll grid, a whole number of intervals.
        step = self.interval
        self.turn_length = math.ceil(SYNLOOP_DRAIN / step - 1e-9) * step if step else SYNLOOP_DRAIN
        self.pollers: dict[Any, Poller] = {}  # by consumer (a restarted worker is new)

    def poller(self, consumer: Any) -> Poller:
        poller = self.pollers.get(consumer)
        if poller is None:
            poller = self.pollers[consumer] = Poller(self, consumer)
        return poller

    # -- consuming ---------------------------------------------------------------------

    def consume(self, queue: str, consumer: Any) -> None:
        q = self.queue(queue)
        if consumer not in q.consumers:
            q.consumers.append(consumer)
        poller = self.poller(consumer)
        if queue not in poller.queues:
            poller.queues.append(queue)
        poller.wake(soon=True)  # a consumer that starts (or reconnects) polls at once

    def cancel(self, queue: str, consumer: Any) -> None:
        super().cancel(queue, consumer)
        poller = self.pollers.get(consumer)
        if poller is not None and queue in poller.queues:
            poller.queues.remove(queue)
            if not poller.queues:
                poller.stop()

    def dispatch(self, *queues: str) -> None:
        """Nothing is pushed: consumers of ``queues`` poll again at their next tick."""
        names = set(queues) | set(self._pending)
        self._pending.clear()
        for poller in self.pollers.values():
            if not names or any(q in names for q in poller.queues):
                poller.wake()

    def last_drain(self, consumer: Any, queues: list[str]) -> None:
        """After a warm shutdown: the turn in flight and one more, on ``queues``."""
        poller = self.poller(consumer)
        poller.queues = list(queues)
        poller.until = self.loop.now + LAST_TURNS * SYNLOOP_DRAIN
        poller.fetches = LAST_TURNS
        poller.wake()

    def narrowed(self, consumer: Any) -> None:
        """An ETA-held message of ``consumer`` left the hold (:meth:`Poller.narrow`)."""
        poller = self.pollers.get(consumer)
        if poller is not None:
            poller.narrow()

    def unblocked(self, consumer: Any) -> None:
        """``consumer`` handed its task to the pool: the consumer thread returns to
        ``synloop``, whose next turn begins now (the queued acks go out) and polls at once.

        An ack the child asks for as it takes the task (early ack) comes after, and on
        Celery 5.5 waits for the turn after that.
        """
        poller = self.pollers.get(consumer)
        if poller is not None and poller.running:
            poller.begin_turn_now()

    def at_next_turn(self, consumer: Any, op: Callable[[], None]) -> None:
        """An ack or reject of ``consumer`` waits for its loop's next turn (Celery 5.5)."""
        self.poller(consumer).at_next_turn(op)

    def last_turn(self, consumer: Any) -> None:
        """The acks ``consumer`` queued go out now: synloop's ``finally`` turn after a
        cold shutdown's signal, or ``Consumer.shutdown`` as the worker stops (Celery 5.5
        ``perform_pending_operations``)."""
        poller = self.pollers.get(consumer)
        if poller is not None:
            poller.flush()

    def draining(self, consumer: Any) -> bool:
        poller = self.pollers.get(consumer)
        return poller is not None and poller.draining

    def read_command(self, consumer: Any, command: Callable[[], None]) -> None:
        """A broadcast reaches ``consumer``: it runs ``command`` at its next poll."""
        poller = self.poller(consumer)
        poller.commands.append(command)
        poller.wake()

    # -- dispositions ------------------------------------------------------------------

    def restore(
        self,
        envelope: Envelope,
        *,
        front: bool = True,
        record: bool = True,
        reason: str = "restored",
    ) -> None:
        """Put an unacked message back: at the back of its queue, not flagged redelivered.

        kombu's ``Channel._restore`` puts the message again (``_put``: a new file, a new
        row), so it queues behind every waiting one; the ``redelivered`` key it sets in
        the stored payload is not ``delivery_info``, where Celery reads the flag.
        """
        message = self._take_back(envelope, record, reason)
        self.queue(message.queue).push(envelope)
        self.dispatch(message.queue)

    def channel_closed(self, envelope: Envelope, reason: str) -> None:
        """A closing channel restores its unacked messages; a killed worker's are lost."""
        if envelope.state is not MessageState.UNACKED:
            return
        if reason == "worker-crashed":
            # Unacked messages exist only in the consumer's QoS (_delivered): SIGKILL ends
            # the process before restore_unacked_once can put them back.
            self.lose(envelope, "worker-crashed")
        else:
            self.restore(envelope, reason=reason)
