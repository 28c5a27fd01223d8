"""Serializing arguments and results the way Celery's json serializer does.

Arguments are encoded when a message is published, so an unserializable argument fails
at the call, as in production, and a tuple arrives as a list. Results and exceptions are
stored in their encoded form and decoded when read, as a key-value backend does.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import json
import uuid
from typing import Any

from simq.exceptions import DecodeError, EncodeError

__all__ = [
    "SERIALIZERS",
    "decode_exception",
    "dumps",
    "encode_exception",
    "loads",
    "roundtrip",
]

SERIALIZERS = ("json",)


def _default(obj: Any) -> Any:
    # kombu's JSON encoder: datetimes as ISO strings, UUIDs and Decimals as strings.
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID | decimal.Decimal):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any, serializer: str = "json") -> str:
    """Encode ``obj`` with ``serializer``; raise EncodeError naming the offending type."""
    if serializer != "json":
        raise EncodeError(
            f"serializer {serializer!r} is not supported by simq; use one of {SERIALIZERS}"
        )
    try:
        return _encoder.encode(obj)
    except (TypeError, ValueError) as exc:
        raise EncodeError(str(exc)) from exc


def loads(data: str, serializer: str = "json") -> Any:
    """Decode ``data`` produced by :func:`dumps`."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def roundtrip(obj: Any, serializer: str = "json") -> Any:
    """What ``obj`` looks like after a trip through the serializer (a tuple becomes a list)."""
    return loads(dumps(obj, serializer), serializer)


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Celery's json form of an exception: type, module and message arguments."""
    args: Any
    try:
        args = roundtrip(list(exc.args))
    except EncodeError:
        # Celery's ensure_serializable: only the arguments that cannot be encoded
        # become their repr (Retry('cancelled by Celery') keeps its None arguments).
        args = []
        for arg in exc.args:
            try:
                args.append(roundtrip(arg))
            except EncodeError:
                args.append(repr(arg))
    cls = type(exc)
    return {"exc_type": cls.__qualname__, "exc_module": cls.__module__, "exc_message": args}


def decode_exception(data: Any) -> BaseException:
    """Rebuild an exception from :func:`encode_exception`'s form."""
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, dict) or "exc_type" not in data:
        return Exception(data)
    module_name, name = data.get("exc_module", "builtins"), data["exc_type"]
    args = data.get("exc_message") or []
    try:
        cls: Any = importlib.import_module(module_name)
        for part in name.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(name)
        exc: BaseException = cls(*args)
        return exc
    except Exception:
        # Celery likewise falls back to a plain exception carrying the original name.
        fallback = type(name, (Exception,), {"__module__": module_name})
        rebuilt: BaseException = fallback(*args)
        return rebuilt
