"""Mutation testing of the conformance suite: planted bugs it must catch.

Each :class:`Mutant` is a bug a broker, a transport or a worker could really have
(a killed worker's unacked messages lost, an ETA ignored, a revoke ignored...), planted
by patching the deployment under test. ``pytest --conformance=ADAPTER
--conformance-mutant=NAME`` certifies the deployment with the bug in it: a suite that
passes it has a blind spot. ``nox -s mutants`` runs every mutant on the simulator and on
real Redis and writes the kill matrix (``python -m simq_conformance.mutants``)::

    from simq_conformance.mutants import planted

    with planted("eta-ignored", "simq"):
        ...  # simq's simulator, and Celery's code in this process, carry the bug

Where the bug is in Celery's own code, the same patches plant it in the simulator's
process and in real worker processes (the Celery adapter passes the mutant's name to its
workers, which plant it as they boot, before the pool forks).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

from simq_conformance.mutants._patch import Patch, applied
from simq_conformance.mutants._patch import apply as _apply
from simq_conformance.mutants.corpus import CORPUS, Mutant

__all__ = ["MUTANTS", "Mutant", "Patch", "UnknownMutant", "get", "plant", "planted"]

#: The corpus by name.
MUTANTS: dict[str, Mutant] = {m.name: m for m in CORPUS}


class UnknownMutant(LookupError):
    """No mutant has that name, or it cannot be planted in that deployment."""


def get(name: str, where: str | None = None) -> Mutant:
    """The mutant called ``name``; with ``where``, one that can be planted there.

    Raises:
        UnknownMutant: no such mutant (with the closest name), or it has no patches for
            ``where`` (a broker bug in a broker simq cannot patch).
    """
    mutant = MUTANTS.get(name)
    if mutant is None:
        close = difflib.get_close_matches(name, MUTANTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        raise UnknownMutant(f"unknown mutant {name!r}{hint} Mutants: {', '.join(MUTANTS)}")
    if where is not None and not mutant.plantable(where):
        able = [m.name for m in CORPUS if m.plantable(where)]
        raise UnknownMutant(
            f"mutant {name!r} ({mutant.layer}: {mutant.title}) cannot be planted in "
            f"{where!r}: it has patches for "
            f"{', '.join(['simq'] * bool(mutant.simq) + sorted(mutant.transports)) or 'none'}"
            f". Mutants for {where!r}: {', '.join(able)}"
        )
    return mutant


@contextmanager
def planted(name: str, where: str) -> Iterator[Mutant]:
    """Plant mutant ``name`` in this process for the ``with`` block (``where``:
    ``"simq"``, or the kombu driver of a worker running here)."""
    mutant = get(name, where)
    with applied(mutant.patches(where)):
        yield mutant


def plant(name: str, where: str) -> Mutant:
    """Plant mutant ``name`` in this process for good: a real worker process plants it
    as it boots, and it ends with the process."""
    mutant = get(name, where)
    _apply(mutant.patches(where))
    return mutant
