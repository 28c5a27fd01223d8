"""Adapters by name: built-ins, ``simq_conformance.adapters`` entry points, ``module:object``.

``pytest --conformance=NAME`` resolves ``NAME`` here, in this order:

1. a built-in: ``simq`` (the simulator, the reference, amqp transport), ``simq-redis``
   and ``simq-polling`` (the simulator with the redis or the polling transport, for the
   differential check),
   ``celery-redis``, ``celery-rabbitmq``, ``celery-memory`` (real Celery workers) and
   ``celery`` (real Celery workers on any kombu transport: ``--conformance-url=URL``);
2. an entry point of the group ``simq_conformance.adapters`` in an installed package::

       [project.entry-points."simq_conformance.adapters"]
       my-broker = "my_package.conformance:MyAdapter"

3. ``module:object``, e.g. ``my_package.conformance:MyAdapter``.

The object may be an adapter instance, an adapter class or a zero-argument factory.
A class or factory with a ``url`` parameter receives ``--conformance-url``, and one with
a ``transport_options`` parameter ``--conformance-transport-options``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from simq.exceptions import SimqError
from simq_conformance.adapter import Adapter

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "UnknownAdapter", "available", "resolve"]

#: The entry-point group third-party packages register their adapters under.
ENTRY_POINT_GROUP = "simq_conformance.adapters"


Options = Mapping[str, Any]


def _simq(url: str | None = None, transport_options: Options | None = None) -> Adapter:
    from simq_conformance.adapters.simq_adapter import SimqAdapter

    return SimqAdapter(transport="amqp")


def _simq_redis(url: str | None = None, transport_options: Options | None = None) -> Adapter:
    from simq_conformance.adapters.simq_adapter import SimqAdapter

    return SimqAdapter(transport="redis")


def _simq_polling(url: str | None = None, transport_options: Options | None = None) -> Adapter:
    from simq_conformance.adapters.simq_adapter import SimqAdapter

    return SimqAdapter(transport="polling")


def _celery(factory: str) -> Callable[[str | None, Options | None], Adapter]:
    def make(url: str | None = None, transport_options: Options | None = None) -> Adapter:
        module = importlib.import_module("simq_conformance.adapters.celery_adapter")
        kwargs: dict[str, Any] = {"url": url}
        if transport_options:
            kwargs["transport_options"] = transport_options
        return getattr(module, factory)(**kwargs)  # type: ignore[no-any-return]

    make.__name__ = factory
    return make


#: Built-in adapters: name -> factory taking ``--conformance-url`` and
#: ``--conformance-transport-options`` (or None).
BUILTINS: dict[str, Callable[[str | None, Options | None], Adapter]] = {
    "simq": _simq,
    "simq-redis": _simq_redis,
    "simq-polling": _simq_polling,
    "celery-redis": _celery("celery_redis"),
    "celery-rabbitmq": _celery("celery_rabbitmq"),
    "celery-memory": _celery("celery_memory"),
    "celery": _celery("celery_by_url"),
}


class UnknownAdapter(SimqError, LookupError):
    """No adapter goes by the name given to ``--conformance``."""


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """The names ``--conformance`` accepts: built-ins, then installed entry points."""
    return [*BUILTINS, *sorted(n for n in _entry_points() if n not in BUILTINS)]


def resolve(name: str, url: str | None = None, transport_options: Options | None = None) -> Adapter:
    """The adapter called ``name`` (built-in, entry point or ``module:object``).

    ``url`` (``--conformance-url``) is passed to factories that take a ``url`` argument,
    ``transport_options`` (``--conformance-transport-options``) to those that take a
    ``transport_options`` argument.

    Raises:
        UnknownAdapter: ``name`` is none of those; the message lists the names available
            and the closest match.
    """
    name = name.strip()
    if name in BUILTINS:
        return BUILTINS[name](url, transport_options)
    found = _entry_points()
    if name in found:
        return _instantiate(found[name].load(), name, url, transport_options)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownAdapter(
                f"conformance adapter {name!r}: cannot import module {module_name!r} ({exc}); "
                "check the module is importable (installed or on sys.path)"
            ) from exc
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise UnknownAdapter(
                    f"conformance adapter {name!r}: module {module_name!r} has no attribute "
                    f"{attr!r}; name an adapter instance, class or zero-argument factory"
                ) from None
        return _instantiate(obj, name, url, transport_options)
    names = available()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownAdapter(
        f"unknown conformance adapter {name!r}; {hint}available: {', '.join(names)} "
        "(or module:object for your own)"
    )


def _instantiate(
    obj: Any, name: str, url: str | None, transport_options: Options | None = None
) -> Adapter:
    """An adapter from an instance, a class or a zero-argument factory."""
    if isinstance(obj, type) or (not isinstance(obj, Adapter) and callable(obj)):
        kwargs: dict[str, Any] = {}
        if url is not None and _takes(obj, "url"):
            kwargs["url"] = url
        if transport_options and _takes(obj, "transport_options"):
            kwargs["transport_options"] = transport_options
        obj = obj(**kwargs)
    if not isinstance(obj, Adapter):
        raise UnknownAdapter(
            f"conformance adapter {name!r} is {obj!r}, not an adapter: it needs a "
            "`capabilities` attribute and a `run(workload)` method (see "
            "simq_conformance.Adapter)"
        )
    return obj


def _takes(obj: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
