"""What the Celery adapter does to the machine's real brokers (internal).

Isolation (a Redis database and a RabbitMQ virtual host per pytest-xdist worker, a queue
per run), reachability checks, cutting one worker's broker connections, and cleaning up
after a run. Redis at 127.0.0.1:6379 and RabbitMQ at 127.0.0.1:5672 (guest/guest) are
shared with every other test running on the machine, so nothing here restarts,
flushes or reconfigures them globally.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from typing import Any

__all__ = [
    "AMQP_URL",
    "REDIS_URL",
    "BrokerUnreachable",
    "amqp_check",
    "amqp_delete_queue",
    "amqp_ensure_vhost",
    "amqp_queue_depth",
    "file_backend_purge",
    "isolation_id",
    "kombu_check",
    "kombu_purge",
    "port_of",
    "redis_check",
    "redis_cut",
    "redis_db",
    "redis_purge",
    "tcp_cut",
]

REDIS_URL = "redis://127.0.0.1:6379"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"


class BrokerUnreachable(ConnectionError):
    """The broker a Celery adapter needs does not answer."""


def isolation_id() -> str:
    """This test process's share of the machine: the xdist worker id, or ``main``."""
    return os.environ.get("PYTEST_XDIST_WORKER") or "main"


def redis_db() -> int:
    """The Redis database of this test process: ``gw0`` -> 1, ``gw1`` -> 2, ... (0 unused)."""
    found = re.fullmatch(r"gw(\d+)", isolation_id())
    # 16 databases by default: 1..15 for test processes, wrapping past gw14.
    return 1 + int(found.group(1)) % 15 if found else 1


# -- Redis -------------------------------------------------------------------------------


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def redis_check(url: str) -> None:
    """Raise BrokerUnreachable unless the Redis at ``url`` answers PING."""
    try:
        client = _redis(url)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        raise BrokerUnreachable(f"Redis at {url} is unreachable: {exc}") from exc


def redis_cut(url: str, client_name: str) -> int:
    """Kill every Redis connection named ``client_name``; return how many."""
    client = _redis(url)
    try:
        killed = 0
        for info in client.client_list():
            if info.get("name") == client_name:
                client.client_kill_filter(_id=info["id"])
                killed += 1
        return killed
    finally:
        client.close()


def redis_purge(url: str, run_id: str, queue: str, task_ids: list[str]) -> None:
    """Remove what a run left in its Redis database: every key naming the run (its
    queue, its unacked index), its results, its entries in the shared unacked hash."""
    client = _redis(url)
    try:
        keys = list(client.scan_iter(match=f"*{run_id}*", count=500))
        keys += [f"celery-task-meta-{tid}" for tid in task_ids]
        if keys:
            client.delete(*keys)
        # By default kombu keeps unacked messages of every queue in one hash.
        for tag, raw in client.hgetall("unacked").items():
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == queue:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


# -- RabbitMQ ----------------------------------------------------------------------------


def _rabbitmqctl(*args: str, timeout: float = 30.0) -> str:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise RuntimeError("rabbitmqctl is not on PATH")
    done = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {args[0]} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def _amqp_connect(url: str) -> Any:
    from kombu import Connection

    conn = Connection(url, connect_timeout=2)
    conn.ensure_connection(max_retries=1)
    return conn


def amqp_check(url: str) -> None:
    """Raise BrokerUnreachable unless RabbitMQ at ``url`` accepts a connection."""
    try:
        _amqp_connect(url).release()
    except Exception as exc:
        raise BrokerUnreachable(f"RabbitMQ at {url} is unreachable: {exc!r}") from exc


def amqp_ensure_vhost(url: str, vhost: str, user: str = "guest") -> None:
    """Create ``vhost`` (with full permissions for ``user``) unless it already works."""
    try:
        _amqp_connect(f"{url}/{vhost}").release()
        return
    except Exception:
        pass
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    amqp_check(f"{url}/{vhost}")


def port_of(url: str) -> int:
    """The TCP port of a broker URL (kombu's default for its transport if none)."""
    from kombu import Connection
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(url)
    if parts.port:
        return int(parts.port)
    conn = Connection(url)
    try:
        return int(conn.transport.default_port)
    finally:
        conn.release()


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def tcp_cut(pid: int, port: int) -> int:
    """Destroy (``ss -K``) process ``pid``'s established TCP connections to ``port``.

    Both ends see the connection die, as with a network failure; returns how many.
    """
    inodes = _socket_inodes(pid)
    local_ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    local_ports.append(int(local.rsplit(":", 1)[1], 16))
    if not local_ports:
        return 0
    exe = shutil.which("ss")
    if exe is None:
        raise RuntimeError("ss (iproute2) is not on PATH; it is needed to cut connections")
    sources = " or ".join(f"sport = :{p}" for p in local_ports)
    done = subprocess.run(
        [exe, "-K", "-t", "-n", f"dport = :{port} and ( {sources} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ss -K failed ({done.returncode}): {done.stderr.strip()}")
    return len(local_ports)


def amqp_queue_depth(url: str, queue: str) -> int:
    """How many ready messages ``queue`` holds (a passive declare)."""
    conn = _amqp_connect(url)
    try:
        _, count, _ = conn.default_channel.queue_declare(queue, passive=True)
        return int(count)
    finally:
        conn.release()


def amqp_delete_queue(url: str, queue: str) -> None:
    """Delete the run's queue (and with it any message left in it)."""
    conn = _amqp_connect(url)
    try:
        conn.default_channel.queue_delete(queue)
    finally:
        conn.release()


# -- any kombu transport ---------------------------------------------------------------


def kombu_check(url: str, transport_options: dict[str, Any] | None = None) -> None:
    """Raise BrokerUnreachable unless kombu opens a channel on ``url``."""
    from kombu import Connection

    try:
        conn = Connection(url, transport_options=dict(transport_options or {}), connect_timeout=5)
        try:
            conn.ensure_connection(max_retries=1)
            # Declaring a queue makes the transport create what it keeps (SQLAlchemy's
            # tables) now, before several workers race to.
            channel = conn.default_channel
            channel.queue_declare(queue="simq.setup-check", auto_delete=True)
            channel.queue_delete("simq.setup-check")
        finally:
            conn.release()
    except Exception as exc:
        raise BrokerUnreachable(f"the broker at {url} is unreachable: {exc!r}") from exc


def kombu_declare(url: str, transport_options: dict[str, Any] | None, queue: str) -> None:
    """Declare the run's queue through kombu before any worker starts.

    Workers that start together each declare it; kombu's SQLAlchemy transport inserts
    the queue's row without checking again, so two at once can fail one of them
    (``UNIQUE constraint failed: kombu_queue.name``, seen in CI on sqla+sqlite).
    """
    from kombu import Connection, Exchange, Queue

    conn = Connection(url, transport_options=dict(transport_options or {}), connect_timeout=5)
    try:
        Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel).declare()
    finally:
        conn.release()


def kombu_purge(url: str, transport_options: dict[str, Any] | None, queue: str) -> None:
    """Delete the run's queue (and what is left in it) through kombu."""
    from kombu import Connection

    conn = Connection(url, transport_options=dict(transport_options or {}), connect_timeout=5)
    try:
        channel = conn.default_channel
        channel.queue_purge(queue)
        channel.queue_delete(queue)
    finally:
        conn.release()


def file_backend_purge(url: str, task_ids: list[str]) -> None:
    """Remove the run's results from a ``file://`` result backend."""
    folder = url.removeprefix("file://")
    for task_id in task_ids:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, f"celery-task-meta-{task_id}"))
