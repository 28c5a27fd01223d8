"""Planting a mutant: replacing attributes of classes and modules, and putting them back.

A :class:`Patch` names its owner by import path (``"celery.worker.request:Request"``),
so a corpus can describe patches of modules that are never imported in a process that
does not plant them (kombu's Redis transport in a simulator run).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

__all__ = ["Patch", "applied", "apply"]

#: Marks an attribute the owner did not define itself before the patch (a class
#: inheriting it): restoring deletes the patch instead of setting a value back.
_INHERITED = object()


@attrs.frozen
class Patch:
    """Replace ``owner.attr`` with ``make(original)``.

    Attributes:
        owner: ``"package.module"`` or ``"package.module:Class"``.
        attr: The attribute replaced.
        make: Builds the replacement from the original value (as looked up on the owner,
            inherited values included; for a property, the property object).
    """

    owner: str
    attr: str
    make: Callable[[Any], Any] = attrs.field(eq=False, repr=False)

    def resolve(self) -> Any:
        """The owner object (imports its module)."""
        module_name, _, qualname = self.owner.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, qualname.split(".")):
            obj = getattr(obj, part)
        return obj


def _original(owner: Any, attr: str) -> tuple[Any, Any]:
    """``(value to build from, value to restore)`` of ``owner.attr``."""
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if attr in vars(klass):
                value = vars(klass)[attr]
                return value, value if klass is owner else _INHERITED
        raise AttributeError(f"{owner.__qualname__} has no attribute {attr!r} to patch")
    return getattr(owner, attr), getattr(owner, attr)


def apply(patches: Iterable[Patch]) -> Callable[[], None]:
    """Apply ``patches`` in order; return the function that undoes them (in reverse)."""
    undo: list[tuple[Any, str, Any]] = []
    try:
        for patch in patches:
            owner = patch.resolve()
            value, restore = _original(owner, patch.attr)
            setattr(owner, patch.attr, patch.make(value))
            undo.append((owner, patch.attr, restore))
    except BaseException:
        _undo(undo)
        raise
    return lambda: _undo(undo)


def _undo(undo: list[tuple[Any, str, Any]]) -> None:
    while undo:
        owner, attr, value = undo.pop()
        if value is _INHERITED:
            delattr(owner, attr)
        else:
            setattr(owner, attr, value)


@contextmanager
def applied(patches: Iterable[Patch]) -> Iterator[None]:
    """The patches, applied for the ``with`` block."""
    undo = apply(patches)
    try:
        yield
    finally:
        undo()
