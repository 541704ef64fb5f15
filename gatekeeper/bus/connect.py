"""Connect to NATS and check the server can do what the gateway needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError

from gatekeeper.bus import natsauth
from gatekeeper.config import NatsConfig

log = structlog.get_logger("gatekeeper.nats")

# JetStream KV watch with headers-only/ordered consumers, per-stream duplicate
# windows, deny_delete/deny_purge and direct get are all there from 2.10.0.
MIN_NATS_VERSION = (2, 10, 0)


class NatsUnavailable(RuntimeError):
    """NATS cannot be used: unreachable, too old, or without JetStream."""


def version_ok(version: tuple[int, int, int]) -> bool:
    return version >= MIN_NATS_VERSION


class ErrorWatch:
    """nats-py's ``error_cb``: logs and counts permission violations the server reports,
    and ends a first connect at once when the server refuses the credentials."""

    def __init__(self, on_denied: Callable[[], object] = lambda: None) -> None:
        self.permission_denied = 0
        self.on_denied = on_denied  # e.g. a metric's inc
        self.refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if "permissions violation" in text.lower():
            self.permission_denied += 1
            self.on_denied()
            log.warning("nats.permission_denied", detail=text.removeprefix("nats: "))
        elif isinstance(exc, AuthorizationError | natsauth.NatsAuthError) or (
            "authorization violation" in text.lower()
        ):
            if not self.refused.done():
                self.refused.set_result(text)
            log.warning("nats.auth_refused", detail=text)


async def connect(
    url: str,
    *,
    name: str,
    connect_timeout_s: float = 5.0,
    on_state: Callable[[str], Awaitable[None]] | None = None,
    auth: NatsConfig | None = None,
    watch: ErrorWatch | None = None,
) -> Client:
    """Connect (reconnecting forever afterwards) and verify version and JetStream.

    ``auth`` gives the credentials and TLS settings (``nats.*`` of the config);
    error messages name the URL without credentials.
    """
    cfg, url = natsauth.with_credentials(auth or NatsConfig(), url, {})
    secure = natsauth.tls_expected(cfg, url)
    nc = Client()

    async def disconnected() -> None:
        if on_state:
            await on_state("disconnected")

    async def reconnected() -> None:
        if secure and not natsauth.link_encrypted(nc):
            log.error("nats.tls_downgrade", url=url)
            await nc.close()
            return
        if on_state:
            await on_state("reconnected")

    try:
        kwargs = natsauth.connect_kwargs(cfg, url, lambda: nc)
    except (OSError, ssl.SSLError) as exc:
        raise NatsUnavailable(f"cannot read the NATS TLS files: {exc.strerror or exc}") from None
    watch = watch or ErrorWatch()
    kwargs.update(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        connect_timeout=connect_timeout_s,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        ping_interval=5,
        max_outstanding_pings=3,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=watch.on_error,
    )
    await _first_connect(nc, url, kwargs, watch, connect_timeout_s * 2 + 1)
    if secure and not natsauth.link_encrypted(nc):
        await nc.close()
        raise NatsUnavailable(f"NATS at {url} did not start TLS although TLS is required")
    if not natsauth.server_requires_auth(nc):
        log.warning(
            "nats.insecure",
            url=url,
            detail="this NATS accepts anonymous clients: anyone who reaches it can "
            "write BH_CONFIG and the budgets (see docs/security.md)",
        )
    await _check_server(nc, url, connect_timeout_s)
    return nc


async def _first_connect(
    nc: Client, url: str, kwargs: dict[str, Any], watch: ErrorWatch, limit_s: float
) -> None:
    """nats-py retries the *first* connection forever when reconnects are unlimited;
    bound it, and stop at once when the server refuses the credentials."""
    attempt: asyncio.Future[Any] = asyncio.ensure_future(nc.connect(**kwargs))
    waiting: set[asyncio.Future[Any]] = {attempt, watch.refused}
    done, _ = await asyncio.wait(waiting, timeout=limit_s, return_when="FIRST_COMPLETED")
    if attempt in done:
        try:
            attempt.result()
        except (NatsError, OSError) as exc:
            raise NatsUnavailable(
                f"cannot connect to NATS at {url}: {exc or type(exc).__name__}"
            ) from None
        return
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError, NatsError, OSError):
        await attempt
    with contextlib.suppress(NatsError, OSError):
        await nc.close()
    if watch.refused.done():
        raise NatsUnavailable(
            f"NATS at {url} refused the credentials ({watch.refused.result()}): "
            "check nats.creds_file / nkey_seed_file / user"
        )
    raise NatsUnavailable(f"cannot connect to NATS at {url}: no answer within {limit_s:g}s")


async def _check_server(nc: Client, url: str, connect_timeout_s: float) -> None:
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


def probe_anonymous(url: str, timeout_s: float = 2.0) -> bool | None:
    """True if the first reachable server's INFO says it needs no authentication.

    Reads only the INFO line (plain TCP, no credentials sent); None when no
    server answers or the link starts with TLS (``handshake_first``).
    """
    for part in url.split(","):
        parts = urlsplit(part.strip())
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            continue
        try:
            with socket.create_connection((parts.hostname, parts.port or 4222), timeout_s) as s:
                s.settimeout(timeout_s)
                line = s.makefile("rb").readline(65536)
        except OSError:
            continue
        if not line.startswith(b"INFO "):
            return None
        try:
            info = json.loads(line[5:])
        except ValueError:
            return None
        return not info.get("auth_required", False)
    return None
