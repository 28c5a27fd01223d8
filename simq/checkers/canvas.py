"""Canvas guarantees: chains, groups, chords and errbacks (C1 to C4).

Each checker reads the canvas details that ``published`` events record for messages
that are part of a canvas (``group``, ``group_index``, ``chord``, ``chain``, ``link``,
``link_error``; see :func:`simq.message.canvas_details`), so it judges a simulated run
and a run recorded on a real broker the same way. The rules follow Celery 5.7:

* ``celery/app/trace.py`` ``_dispatch_callbacks_and_chain``: when a task's function
  returns, its link callbacks and the next chain step are sent, *then* its SUCCESS is
  stored (``mark_as_done``): the dispatch is not atomic with the store.
* ``celery/backends/base.py`` ``_call_task_errbacks``: ``mark_as_failure`` calls the
  errbacks once per failure it handles; one-argument errbacks are sent as a group with
  ``parent_id`` the failed task's id, the others run inline (and leave no message).
* ``celery/backends/redis.py`` ``on_chord_part_return`` (and ``base.py``'s
  ``fallback_chord_unlock`` polling for the others): each header task that ends counts
  one part; the body is sent when the count reaches the header's size. A header task
  that runs twice counts twice, so the body may be sent twice: the documented
  duplicate of at-least-once delivery.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from celery import states

from simq.checkers.base import CheckConfig, Violation, when
from simq.checkers.index import Delivery, Index, Ref, index_of
from simq.history import Event, History

__all__ = ["check_c1", "check_c2", "check_c3", "check_c4"]

_READY = frozenset(states.READY_STATES)
#: Outcomes after which the attempt that sent a step cannot have stored SUCCESS.
_BAD_ENDS = frozenset({"failed", "retried", "declined", "ignored"})
#: ``mark_as_done`` itself failing after the dispatch (trace.py: EncodeError,
#: OperationalError): the step is out, the parent ends failed.
_STORE_ERRORS = frozenset({"EncodeError", "OperationalError"})


def _in_order(*events: Event) -> tuple[Event, ...]:
    """``events`` without repeats, in time order (stable for events of one instant)."""
    unique = list({id(e): e for e in events}.values())
    return tuple(sorted(unique, key=lambda e: e.time))


def _successes(idx: Index) -> dict[str, list[Ref]]:
    """Per task id, its SUCCESS writes and ``succeeded`` events, in history order."""
    out: dict[str, list[Ref]] = defaultdict(list)
    for i, e in enumerate(idx.events):
        if e.kind == "succeeded" or (e.kind == "state" and e.details.get("state") == "SUCCESS"):
            out[e.task_id or ""].append((i, e))
    return out


def _deliveries_of(idx: Index, task_id: str) -> list[Delivery]:
    out: list[Delivery] = []
    for _, pub in idx.published.get(task_id, ()):
        out += idx.by_message.get(pub.message_id or f"task:{task_id}", ())
    return sorted(set(out), key=lambda d: d.at)


def _exception(e: Event) -> str:
    exc = e.details.get("exception")
    if isinstance(exc, dict):
        exc = exc.get("exc_type")
    return str(exc or "")


def _sender_may_succeed(idx: Index, parent: str, i: int) -> bool:
    """Whether an attempt of ``parent`` running at index ``i`` may still store SUCCESS
    (or died before it could: trace.py sends the step before ``mark_as_done``)."""
    for d in _deliveries_of(idx, parent):
        if d.start_at is None or d.start_at > i or (d.outcome_at is not None and d.outcome_at < i):
            continue
        o = d.outcome
        if o is None or o.kind not in _BAD_ENDS or _exception(o) in _STORE_ERRORS:
            return True
    return False


def _steps(idx: Index) -> list[tuple[Ref, Ref]]:
    """(parent publication, step publication) pairs: the next chain step and link
    callbacks each message declares, matched to the messages sent for them."""
    by_group: dict[str, list[Ref]] = defaultdict(list)
    by_parent: dict[str, list[Ref]] = defaultdict(list)
    for refs in idx.published.values():
        for r in refs:
            group = r[1].details.get("group")
            if group is not None:
                by_group[str(group)].append(r)
            parent_id = r[1].details.get("parent_id")
            if parent_id is not None:
                by_parent[str(parent_id)].append(r)
    out: list[tuple[Ref, Ref]] = []
    seen: set[tuple[str, str | None]] = set()
    for refs in idx.published.values():
        for pref in refs:
            pub = pref[1]
            parent = pub.task_id or ""
            chain = pub.details.get("chain") or []
            links = set(pub.details.get("link") or ())
            kids: list[Ref] = []
            if chain and chain[0] is not None:
                nxt = str(chain[0])
                kids += idx.published.get(nxt, [])
                kids += by_group.get(nxt, [])  # a group as the next step (group.freeze)
            if links:
                kids += [r for r in by_parent.get(parent, ()) if r[1].details.get("task") in links]
            for kid in kids:
                key = (parent, kid[1].message_id)
                if key in seen or kid[1].details.get("retries") or kid[0] < pref[0]:
                    # The step's own retries are its business; a message of the step's id
                    # sent before the parent's is not from it (Task.replace gives the
                    # replaced task's id to the replacement's last step, app/task.py).
                    continue
                seen.add(key)
                out.append((pref, kid))
    return out


def check_c1(history: History | Index, config: CheckConfig) -> list[Violation]:
    """C1: a chain step (or link callback) starts only after its parent succeeded.

    The parent's message names its next step (``chain``) and callbacks (``link``). A
    step is sent by the parent's attempt after its function returned and before that
    attempt stores SUCCESS (trace.py ``_dispatch_callbacks_and_chain``, then
    ``mark_as_done``), so when the step starts, either SUCCESS of the parent is already
    in the history, or the attempt of the parent that sent it was running then and did
    not end failed, retried, rejected or ignored (it succeeded, is still running, or
    died: the crash is the history's explanation).
    """
    idx = index_of(history)
    successes = _successes(idx)
    out: list[Violation] = []
    for (_, parent_pub), (k, step_pub) in _steps(idx):
        parent = parent_pub.task_id or ""
        for d in idx.by_message.get(step_pub.message_id or f"task:{step_pub.task_id}", ()):
            if d.start is None or d.start_at is None:
                continue
            done = [r for r in successes.get(parent, ()) if r[0] < d.start_at]
            if done or _sender_may_succeed(idx, parent, k):
                continue
            mine = _deliveries_of(idx, parent)
            attempts = [
                x.start for x in mine if x.start is not None and (x.start_at or 0) < d.start_at
            ]
            ends = [
                x.outcome
                for x in mine
                if x.outcome is not None and (x.outcome_at or 0) < d.start_at
            ]
            out.append(
                Violation(
                    "C1",
                    (
                        f"{d.label}, a step after {parent_pub.details.get('task')}[{parent}], "
                        f"was sent at {when(step_pub)} and started at {when(d.start)}, but "
                        "no attempt of its parent had succeeded or was about to "
                        f"({len(attempts)} started before it, ends: "
                        f"{', '.join(e.kind for e in ends) or 'none'}); a step is sent only "
                        "after its parent returned"
                    ),
                    _in_order(parent_pub, step_pub, *attempts, *ends, d.start),
                )
            )
            break
    return out


def _explained(idx: Index, config: CheckConfig, task_id: str) -> bool:
    """Whether the history shows why ``task_id`` has no ready state: a loss, a revoke, a
    crash, a cancel (cold shutdown), an unknown or undecodable task, a rejection (or
    ``Reject``, ``Ignore``), a forget, an ignored result, or a message left in a queue
    no worker consumes."""
    if idx.forgotten.get(task_id):
        return True
    if any(e.task_id == task_id for _, e in idx.revokes):
        return True
    for _, pub in idx.published.get(task_id, ()):
        key = pub.message_id or f"task:{task_id}"
        if idx.lost.get(key):
            return True
        ignore = pub.details.get("ignore_result")
        if ignore is None:
            ignore = config.setting("ignore_result", pub.details.get("task"))
        if ignore:
            return True
        ds = idx.by_message.get(key, [])
        if not any(d.start is not None for d in ds) and not idx.consumed_at_end(
            pub.details.get("queue")
        ):
            return True
        for d in ds:
            if (
                d.died_at is not None
                or d.lost is not None
                or d.revoked is not None
                or d.unregistered is not None
                or (
                    d.outcome is not None
                    and d.outcome.kind in ("child-lost", "declined", "ignored")
                )
                or (d.settle is not None and d.settle.kind == "rejected")
                or d.marks_of("cancelled")  # a cold shutdown's RETRY, never run again
            ):
                return True
    return False


def check_c2(history: History | Index, config: CheckConfig) -> list[Violation]:
    """C2: a group's results are complete.

    Every member of a group (a message whose ``group`` header names it, set by
    ``group.freeze``; ``GroupResult.join`` waits for each) reaches a ready state
    (SUCCESS, FAILURE or REVOKED stored) by the end of a complete run, unless the
    history shows why not. Checked only when ``config.complete``.
    """
    idx = index_of(history)
    out: list[Violation] = []
    if not config.complete:
        return out
    members: dict[str, dict[str, Ref]] = defaultdict(dict)
    for refs in idx.published.values():
        for r in refs:
            group = r[1].details.get("group")
            if group is not None:
                members[str(group)].setdefault(r[1].task_id or "", r)
    for group, tasks in members.items():
        for task_id, (_, pub) in tasks.items():
            writes = idx.states.get(task_id, []) + idx.discarded.get(task_id, [])
            if any(e.details.get("state") in _READY for _, e in writes):
                continue
            if _explained(idx, config, task_id):
                continue
            seen = [e for _, e in writes]
            out.append(
                Violation(
                    "C2",
                    (
                        f"group {group}: member {pub.details.get('task')}[{task_id}] "
                        f"(index {pub.details.get('group_index')}), sent at {when(pub)}, "
                        "never reached a ready state (SUCCESS, FAILURE, REVOKED) and the "
                        "history shows no loss, revoke or crash that explains it"
                    ),
                    (pub, *seen),
                )
            )
    return out


def _ran_twice(idx: Index, task_ids: Iterable[str]) -> list[Event]:
    """Evidence that a header (or chord_unlock) task counted twice: two starts of one
    try (same ``retries``: a redelivery or a copy), or two ready-state writes."""
    for task_id in task_ids:
        starts: dict[int, list[Event]] = defaultdict(list)
        for d in _deliveries_of(idx, task_id):
            if d.start is not None:
                starts[d.retries].append(d.start)
        for twice in starts.values():
            if len(twice) > 1:
                return twice
        writes = idx.states.get(task_id, []) + idx.discarded.get(task_id, [])
        ready = [
            e for _, e in sorted(writes, key=lambda r: r[0]) if e.details.get("state") in _READY
        ]
        if len(ready) > 1:
            return ready
    return []


def check_c3(history: History | Index, config: CheckConfig) -> list[Violation]:
    """C3: a chord body is sent once per completed join.

    Header tasks carry the body's task id (their embed's ``chord``); the body is sent by
    the part that completes the count (``on_chord_part_return``) or by ``chord_unlock``.
    A second first-try publication of the body is a violation unless the history shows
    the duplicate that caused it: a header or chord_unlock task that ran twice (a
    redelivery after a crash, a visibility-timeout copy) or stored its result twice.
    """
    idx = index_of(history)
    out: list[Violation] = []
    parts: dict[str, set[str]] = defaultdict(set)
    for refs in idx.published.values():
        for _, e in refs:
            body = e.details.get("chord")
            if body is not None:
                parts[str(body)].add(e.task_id or "")
    for body, tasks in parts.items():
        sent = [r for r in idx.published.get(body, []) if not r[1].details.get("retries")]
        if not sent:
            sent = _group_body_sent_twice(idx, tasks)
        if len(sent) < 2 or _ran_twice(idx, sorted(tasks)):
            continue
        first, second = sent[0][1], sent[1][1]
        what = f"chord body {first.details.get('task')}[{body}] was sent {len(sent)} times"
        if first.task_id != body:
            what = (
                f"chord body group {body}: its member {first.details.get('task')}"
                f"[{first.task_id}] was sent twice"
            )
        out.append(
            Violation(
                "C3",
                (
                    f"{what} (at {when(first)} and {when(second)}), but none of its "
                    f"{len(tasks)} header tasks ran twice or stored its result twice"
                ),
                (first, second),
            )
        )
    return out


def _group_body_sent_twice(idx: Index, header: set[str]) -> list[tuple[int, Event]]:
    """The first two first-try sends of one member of a chord's group body, if twice.

    A group body has no message of its own: its id is the chord's result (a
    GroupResult). Celery sends its members with the header's ``group`` id and no
    ``chord``, which tells them apart from the header tasks (each carries ``chord``).
    """
    groups = {
        e.details.get("group")
        for task_id in header
        for _, e in idx.published.get(task_id, [])
        if e.details.get("group") is not None
    }
    if not groups:
        return []
    members: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for refs in idx.published.values():
        for ref in refs:
            e = ref[1]
            d = e.details
            if d.get("group") in groups and d.get("chord") is None and not d.get("retries"):
                members[e.task_id or ""].append(ref)
    twice = [sorted(refs, key=lambda r: r[0])[:2] for refs in members.values() if len(refs) > 1]
    return min(twice, key=lambda refs: refs[0][0]) if twice else []


def check_c4(history: History | Index, config: CheckConfig) -> list[Violation]:
    """C4: an errback runs once per failure.

    A message's ``link_error`` names its errbacks. Each failure of the task
    (``mark_as_failure``: a FAILURE stored, or discarded after SUCCESS, or a failed or
    lost-child outcome when failures are not stored) sends each one-argument errback
    once, with ``parent_id`` the failed task's id. More first-try publications of an
    errback than failures of its task is a violation. (Errbacks that take the request
    run inline and leave no message to count.)
    """
    idx = index_of(history)
    out: list[Violation] = []
    errbacks: dict[str, set[str]] = defaultdict(set)
    for refs in idx.published.values():
        for _, e in refs:
            for name in e.details.get("link_error") or ():
                errbacks[e.task_id or ""].add(str(name))
    if not errbacks:
        return out
    sent: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for refs in idx.published.values():
        for _, e in refs:
            parent = e.details.get("parent_id")
            if parent in errbacks and not e.details.get("retries"):
                sent[(parent, str(e.details.get("task")))].append(e)
    for task_id, names in errbacks.items():
        writes = idx.states.get(task_id, []) + idx.discarded.get(task_id, [])
        stored = [e for _, e in writes if e.details.get("state") == states.FAILURE]
        ended = [
            d.outcome
            for d in _deliveries_of(idx, task_id)
            if d.outcome is not None and d.outcome.kind in ("failed", "child-lost")
        ]
        failures = max(len(stored), len(ended))
        for name in sorted(names):
            runs = sent.get((task_id, name), [])
            if len(runs) <= failures:
                continue
            out.append(
                Violation(
                    "C4",
                    (
                        f"errback {name} of task [{task_id}] was sent {len(runs)} times "
                        f"(first at {when(runs[0])}) for {failures} failure(s) of the task"
                    ),
                    _in_order(*stored, *ended, *runs),
                )
            )
    return out
