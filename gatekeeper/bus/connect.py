"""Connect to NATS and check the server can do what the gateway needs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError

# JetStream KV watch with headers-only/ordered consumers, per-stream duplicate
# windows, deny_delete/deny_purge and direct get are all there from 2.10.0.
MIN_NATS_VERSION = (2, 10, 0)


class NatsUnavailable(RuntimeError):
    """NATS cannot be used: unreachable, too old, or without JetStream."""


def version_ok(version: tuple[int, int, int]) -> bool:
    return version >= MIN_NATS_VERSION


async def connect(
    url: str,
    *,
    name: str,
    connect_timeout_s: float = 5.0,
    on_state: Callable[[str], Awaitable[None]] | None = None,
) -> Client:
    """Connect (reconnecting forever afterwards) and verify version and JetStream."""

    async def disconnected() -> None:
        if on_state:
            await on_state("disconnected")

    async def reconnected() -> None:
        if on_state:
            await on_state("reconnected")

    async def error(exc: Exception) -> None:
        return None

    servers = [u.strip() for u in url.split(",")]
    try:
        # nats-py keeps retrying the *first* connection forever when reconnects are
        # unlimited; bound it so an unreachable NATS is a clear error, not a hang.
        async with asyncio.timeout(connect_timeout_s * 2 + 1):
            nc = await nats.connect(
                servers=servers,
                name=name,
                connect_timeout=connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                ping_interval=5,
                max_outstanding_pings=3,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
    except TimeoutError:
        raise NatsUnavailable(
            f"cannot connect to NATS at {url}: no answer within {connect_timeout_s * 2 + 1:g}s"
        ) from None
    except (NatsError, OSError) as exc:
        raise NatsUnavailable(
            f"cannot connect to NATS at {url}: {exc or type(exc).__name__}"
        ) from None
    sv = nc.connected_server_version
    found = (sv.major, sv.minor, sv.patch)
    if not version_ok(found):
        await nc.close()
        need = ".".join(map(str, MIN_NATS_VERSION))
        raise NatsUnavailable(f"nats-server {sv} at {url} is too old: Gatekeeper needs >= {need}")
    problem = await _jetstream_problem(nc, wait_s=connect_timeout_s * 2)
    if problem is not None:
        await nc.close()
        raise NatsUnavailable(f"JetStream is not usable at {url}: {problem}")
    return nc


async def _jetstream_problem(nc: Client, wait_s: float) -> str | None:
    """None once JetStream answers; retried for ``wait_s`` (a cluster may be electing)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            await nc.jetstream().account_info()
            return None
        except ServiceUnavailableError:
            return "JetStream is not enabled (start nats-server with -js)"
        except NatsError as exc:
            if asyncio.get_running_loop().time() >= deadline:
                return f"no JetStream answer within {wait_s:g}s ({exc or type(exc).__name__})"
            await asyncio.sleep(0.5)
