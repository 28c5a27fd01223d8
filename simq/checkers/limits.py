"""Time limits: G11 (soft) and G12 (hard) of CELERY_SEMANTICS.md §3.2."""

from __future__ import annotations

from celery import states

from simq.checkers.base import CheckConfig, Violation, exc_type, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, index_of
from simq.checkers.outcome import _landed, _settle_text, _settled, _stored
from simq.history import Event, History

__all__ = ["check_g11", "check_g12"]


def _limit_fired(d: Delivery, j: int, e: Event, g: str, slack: float) -> list[Violation]:
    if d.start is None or d.start_at is None or j < d.start_at:
        return [
            Violation(
                g,
                f"{d.label}: a time limit fired at {when(e)} before it started",
                evidence(d.event, e),
            )
        ]
    limit = e.details.get("limit")
    ran = e.time - d.start.time
    if limit is not None and ran < float(limit) - slack:
        return [
            Violation(
                g,
                (
                    f"{d.label}: the {e.details.get('which')} time limit ({limit} s) fired at "
                    f"{when(e)}, only {ran:g} s after it started"
                ),
                evidence(d.start, e),
            )
        ]
    return []


def _overran(idx: Index, d: Delivery, which: str, config: CheckConfig) -> list[Violation]:
    # The message's own limit first (apply_async(time_limit=), its ``timelimit`` header),
    # then the task's: Celery's Request passes ``time_limit or task.time_limit``.
    limit = d.time_limit(which) or config.setting(
        "soft_time_limit" if which == "soft" else "time_limit", d.task
    )
    if limit is None or d.start is None or d.marks_of("time-limit", which=which):
        return []
    end = idx.attempt_end(d)
    if end - d.start.time <= float(limit) + config.slack:
        return []
    g = "G11" if which == "soft" else "G12"
    return [
        Violation(
            g,
            (
                f"{d.label} ran from {when(d.start)} for {end - d.start.time:g} s, past its "
                f"{which} time limit of {limit} s, and the limit never fired"
            ),
            evidence(d.start, d.outcome),
        )
    ]


def check_g11(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G11: the soft time limit (§3.2 G11).

    "SoftTimeLimitExceeded is raised inside the task": caught, the task may still
    succeed; uncaught, FAILURE(SoftTimeLimitExceeded) is stored. The limit fires no
    sooner than ``limit`` after the start and only in a running attempt; a failure with
    SoftTimeLimitExceeded follows a soft limit; with ``config.soft_time_limit`` an attempt
    never runs past it (plus ``slack``) without the limit firing.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        for j, e in d.marks_of("time-limit", which="soft"):
            out += _limit_fired(d, j, e, "G11", config.slack)
        o = d.outcome
        if (
            o is not None
            and o.kind == "failed"
            and d.outcome_at is not None
            and exc_type(o.details.get("exception")) == "SoftTimeLimitExceeded"
        ):
            if not d.marks_of("time-limit", which="soft"):
                out.append(
                    Violation(
                        "G11",
                        (
                            f"{d.label} failed with SoftTimeLimitExceeded at {when(o)} but no soft "
                            "time limit fired"
                        ),
                        evidence(d.start, o),
                    )
                )
            if config.stores_errors(d.task, d.ignore_result) and not _stored(
                d.states + d.discarded, states.FAILURE, "SoftTimeLimitExceeded"
            ):
                out.append(
                    Violation(
                        "G11",
                        (
                            f"{d.label} failed with SoftTimeLimitExceeded at {when(o)} without "
                            "storing FAILURE(SoftTimeLimitExceeded)"
                        ),
                        evidence(d.start, o),
                    )
                )
        out += _overran(idx, d, "soft", config)
    return out


def check_g12(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G12: the hard time limit (§3.2 G12).

    "The worker processing the task will be killed and replaced with a new one"; the
    parent stores FAILURE(TimeLimitExceeded). acks_late with acks_on_timeout acks;
    acks_late without it stores FAILURE, rejects with requeue and runs the task again;
    early ack was acked at start. The limit fires no sooner than ``limit`` after the
    start, the attempt then ends as failed (never succeeded), and with
    ``config.time_limit`` an attempt never runs past it (plus ``slack``) unchecked.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        out += _overran(idx, d, "hard", config)
        hard = d.marks_of("time-limit", which="hard")
        if hard:
            out += _hard_limit(idx, d, *hard[0], config)
    return out


def _in_cold_shutdown(idx: Index, d: Delivery, j: int) -> bool:
    """A cold shutdown of ``d``'s worker began before its hard limit fired at ``j``.

    Celery's ``Request.on_timeout`` then stores nothing: "a special case where the task
    timeout handling is done during the cold shutdown process" (``if not
    state.should_terminate``, celery/worker/request.py). Recorded on sqla+sqlite: an
    early-ack task cancelled (RETRY) by a cold shutdown at +1.15 s, its 0.5 s hard limit
    reported at +1.96 s, no FAILURE.
    """
    cold = False
    for k, e in idx.faults_of(d.worker):
        if k >= j:
            break
        if e.kind == "shutdown" and e.details.get("warm") is False:
            cold = True
        elif e.kind == "worker-online":  # a fresh worker process of the same name
            cold = False
    return cold


def _hard_limit(idx: Index, d: Delivery, j: int, e: Event, config: CheckConfig) -> list[Violation]:
    out = _limit_fired(d, j, e, "G12", config.slack)

    def bad(text: str, *proof: Event | None) -> None:
        out.append(
            Violation(
                "G12",
                f"{d.label}: the hard time limit fired at {when(e)}; " + text,
                evidence(d.start, e, *proof),
            )
        )

    o = d.outcome
    if o is not None and (d.outcome_at or 0) > j and o.kind != "failed":
        bad(f"the child is killed, yet the attempt ended with {o.kind} at {when(o)}", o)
    if (
        config.stores_errors(d.task, d.ignore_result)
        and not _stored(d.states_after(j), states.FAILURE, "TimeLimitExceeded")
        and not _in_cold_shutdown(idx, d, j)
    ):
        bad("FAILURE(TimeLimitExceeded) is stored, and it was not")
    if not config.late(d.task):
        return out
    aot = bool(config.setting("acks_on_timeout", d.task))
    if aot and not _settled(d, "acked"):
        bad(
            f"with acks_late and acks_on_timeout the message is acked, but it was "
            f"{_settle_text(d)}",
            d.settle,
        )
    elif not aot:
        if not _settled(d, "rejected", requeue=True):
            bad(
                f"with acks_late and acks_on_timeout=False the message is rejected with "
                f"requeue, but it was {_settle_text(d)}",
                d.settle,
            )
        elif _landed(d) and config.complete and not idx.came_back(d.message_id, j):
            bad("the requeued message never ran again although the run drained")
    return out
