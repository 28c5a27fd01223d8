"""Parsing rate-limit strings the way Celery does (``celery.utils.time.rate``)."""

from __future__ import annotations

__all__ = ["parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: str | float | int | None, *, owner: str = "rate_limit") -> float:
    """Tokens per second for ``value``: ``"10/s"``, ``"100/m"``, ``"5/h"``, ``"10"`` or 10.

    ``None``, ``""`` and ``0`` mean no limit (0.0). A malformed string is a ValueError that
    names the owner and the accepted forms.
    """
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {value!r} is not a rate; use a number or 'N/s', 'N/m', 'N/h'")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        number, _, unit = value.partition("/")
        try:
            count = float(number)
        except ValueError:
            raise ValueError(
                f"{owner}: cannot parse rate {value!r}; use a number or 'N/s', 'N/m', 'N/h'"
            ) from None
        key = unit or "s"
        if key not in _UNITS:
            raise ValueError(f"{owner}: unknown time unit in rate {value!r}; use 's', 'm' or 'h'")
        rate = count / _UNITS[key]
    else:
        raise ValueError(f"{owner}: {value!r} is not a rate; use a number or 'N/s', 'N/m', 'N/h'")
    if rate < 0:
        raise ValueError(f"{owner}: rate {value!r} is negative")
    return rate
