"""What a kombu transport can do, read from kombu itself (internal).

The Celery adapter certifies any kombu transport by URL. What the suite may ask of it
(revoke broadcasts, connection cuts, redelivery after a worker dies) and how the
checkers must read its histories (the transport *model*) follow from the transport
class kombu picks for the URL, not from a hand-written table:

* **fanout**: ``Transport.implements.exchange_type`` includes ``fanout``. Celery's
  broadcast commands (``revoke``, remote control) go through a fanout exchange;
  without one they never reach the workers.
* **restores**: how a delivered but unacked message comes back. AMQP brokers return it
  when the channel closes, also when the process dies. kombu's Redis and SQS transports
  keep it in the broker and restore it after the *visibility timeout*. Every other
  virtual transport (``filesystem://``, ``sqla+...``, ...) keeps it only in the
  consuming process (kombu's virtual ``QoS``) and puts it back when the channel closes:
  a worker killed with SIGKILL never closes it, so its unacked messages are lost.
* **delayed delivery**: where a countdown waits. Celery holds it in the worker, unless
  RabbitMQ quorum queues give it native delayed delivery (Celery >= 5.5).
* **connection**: a TCP port the adapter can cut (``ss -K``), or none (files, SQLite).

:func:`prepare` also makes a URL usable by worker processes: relative paths become
absolute (workers run in the run's directory), and ``filesystem://`` gets temporary
folders for the options it needs and was not given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Prepared", "TransportTraits", "inspect_transport", "prepare"]

#: kombu driver types the checkers have a model of; every other one is read as below.
_MODELS = {"amqp": "amqp", "redis": "redis", "sqs": "sqs", "memory": "memory"}
#: Drivers whose broker restores an unacked message after a visibility timeout.
_VISIBILITY = frozenset({"redis", "sqs"})

#: ``filesystem://`` options naming folders, and the temporary folder each gets.
_FILESYSTEM_FOLDERS = {
    "data_folder_in": "data",
    "data_folder_out": "data",
    "control_folder": "control",
    "processed_folder": "processed",
}


@attrs.frozen
class TransportTraits:
    """What the adapter knows of a kombu transport.

    Attributes:
        scheme: The URL's scheme as given (``"filesystem"``, ``"sqla+sqlite"``).
        driver: kombu's ``Transport.driver_type`` (``"amqp"``, ``"redis"``,
            ``"filesystem"``, ``"sql"``, ``"memory"``, ...).
        driver_name: kombu's ``Transport.driver_name`` (``"py-amqp"``, ``"sqlalchemy"``).
        model: The transport model the checkers read histories with: ``"amqp"``,
            ``"redis"``, ``"sqs"`` or ``"memory"`` (unacked messages come back when the
            channel closes, not flagged redelivered: kombu's virtual transports).
        exchange_types: ``Transport.implements.exchange_type``.
        virtual: A kombu virtual transport (its QoS lives in the consuming process).
        visibility_timeout: Unacked messages are restored by the broker after a
            visibility timeout (Redis, SQS).
        asynchronous: ``Transport.implements.asynchronous``: Celery's worker runs its
            event loop on it; on a transport without, its synchronous consumer loop.
        port: The broker's TCP port, if it has one (the adapter cuts connections to it).
        location: Where the broker is, for messages.
    """

    scheme: str
    driver: str
    driver_name: str
    model: str
    exchange_types: frozenset[str]
    virtual: bool
    visibility_timeout: bool
    port: int | None
    location: str
    asynchronous: bool = True

    @property
    def fanout(self) -> bool:
        return "fanout" in self.exchange_types

    @property
    def loses_unacked_on_kill(self) -> bool:
        """A killed worker's unacked messages are gone (kept only in its memory)."""
        return self.virtual and not self.visibility_timeout and self.driver != "memory"

    @property
    def network(self) -> bool:
        return self.port is not None


def _connection(url: str, transport_options: Mapping[str, Any] | None = None) -> Any:
    from kombu import Connection

    return Connection(url, transport_options=dict(transport_options or {}))


def inspect_transport(
    url: str, transport_options: Mapping[str, Any] | None = None
) -> TransportTraits:
    """The traits of the kombu transport ``url`` names (nothing is connected).

    Raises:
        ValueError: kombu knows no transport for the URL, or its client library is
            missing (the message names what to install).
    """
    from kombu.transport import virtual

    scheme = url.partition("://")[0]
    try:
        conn = _connection(url, transport_options)
        transport = conn.transport
    except ImportError as exc:
        raise ValueError(
            f"kombu's transport for {url!r} needs a library that is not installed "
            f"({exc}); install the transport's extra, e.g. pip install 'kombu[{scheme}]'"
            + (" or pip install sqlalchemy" if scheme.startswith("sqla") else "")
        ) from exc
    except (KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"kombu has no transport for the URL {url!r}: {exc}") from exc
    cls = type(transport)
    driver = str(getattr(transport, "driver_type", "") or scheme)
    is_virtual = isinstance(transport, virtual.Transport)
    qos = getattr(getattr(cls, "Channel", None), "QoS", None)
    overrides_restore = qos is not None and (
        getattr(qos, "restore_visible", None) is not virtual.QoS.restore_visible
    )
    visibility = driver in _VISIBILITY or (is_virtual and overrides_restore)
    port: int | None = conn.port or getattr(transport, "default_port", None) or None
    host = conn.hostname
    if not port or not host or driver == "memory":
        port = None
    location = f"{host}:{port}" if port is not None else (host or f"{scheme}://")
    conn.release()
    return TransportTraits(
        scheme=scheme,
        driver=driver,
        driver_name=str(getattr(transport, "driver_name", driver)),
        model=_MODELS.get(driver, "memory" if is_virtual and not visibility else "amqp"),
        exchange_types=frozenset(transport.implements.exchange_type or ()),
        virtual=is_virtual,
        visibility_timeout=visibility,
        port=port,
        location=location,
        asynchronous=bool(transport.implements.asynchronous),
    )


@attrs.frozen
class Prepared:
    """A URL and transport options worker processes can use, and what was created."""

    url: str
    transport_options: dict[str, Any]
    created: tuple[Path, ...] = ()


def prepare(url: str, transport_options: Mapping[str, Any] | None, scratch: Path) -> Prepared:
    """Make ``url`` and ``transport_options`` usable from every process of a run.

    ``filesystem://`` gets the folders it needs under ``scratch`` unless given (one
    folder for ``data_folder_in`` and ``data_folder_out``, so that what one process
    writes another reads); given folders and SQLite paths become absolute; an SQLite
    URL without a path (an in-memory database, which processes cannot share) gets a
    database file under ``scratch``.
    """
    options = dict(transport_options or {})
    created: list[Path] = []
    scheme, _, rest = url.partition("://")
    if scheme == "filesystem":
        for key, folder in _FILESYSTEM_FOLDERS.items():
            if key in options:
                path = Path(os.path.abspath(str(options[key])))
            else:
                if key == "processed_folder" and not options.get("store_processed"):
                    continue
                path = scratch / folder
                created.append(path)
            path.mkdir(parents=True, exist_ok=True)
            options[key] = str(path)
    elif scheme.endswith("sqlite"):
        # sqlite:///relative.db, sqlite:////absolute.db, sqlite:// (in memory)
        db_path = rest[1:] if rest.startswith("/") else rest
        if not db_path or db_path == ":memory:":
            db = scratch / "broker.sqlite"
            created.append(db)
            url = f"{scheme}:///{db}"
        elif not os.path.isabs(db_path):
            url = f"{scheme}:///{os.path.abspath(db_path)}"
    return Prepared(url, options, tuple(created))


def scratch_dir(name: str) -> Path:
    """A fresh temporary folder for an adapter's files."""
    return Path(tempfile.mkdtemp(prefix=f"simq-{name}-"))
