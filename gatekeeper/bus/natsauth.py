"""How a client authenticates to NATS and encrypts the link: pure decisions, no I/O but files.

One ``NatsConfig`` (config.py: ``nats.creds_file`` | ``nats.nkey_seed_file`` |
``nats.user``/``nats.password``, and ``nats.tls``) becomes the keyword arguments
of ``nats.connect``. Credentials never go into a URL that is printed, logged, put
on a worker's argv or into an error message: every URL the gateway shows passes
through ``redact_url``.

TLS never silently downgrades: when any URL is ``tls://``/``wss://`` or
``nats.tls`` is set, the client always carries an SSL context, a password is
handed over only once the link is encrypted (``guarded_password``), and
``check_link`` refuses a connection that ended up in plaintext.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.errors import Error as NatsError

from gatekeeper.config import NatsConfig

USER_ENV, PASSWORD_ENV = "GATEKEEPER_NATS_USER", "GATEKEEPER_NATS_PASSWORD"
TLS_SCHEMES = ("tls", "wss")


class NatsAuthError(NatsError):
    """The link or the credentials do not meet what the configuration requires.

    A nats-py error, so a refused (re)connect attempt is one failed attempt to nats-py."""


def _split(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


def redact_url(url: str) -> str:
    """``url`` (one or a comma list) without any ``user:password@`` / ``token@`` part."""
    out = []
    for part in _split(url) or [url]:
        if "@" not in part:
            out.append(part)
            continue
        try:
            parts = urlsplit(part)
        except ValueError:
            out.append(part.rsplit("@", 1)[-1])
            continue
        host = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def split_userinfo(url: str) -> tuple[str, str, str]:
    """``(url without userinfo, user, password)``; every URL in a list must agree."""
    found: set[tuple[str, str]] = set()
    for part in _split(url):
        try:
            parts = urlsplit(part)
        except ValueError:
            continue
        if parts.username is not None:
            found.add((parts.username, parts.password or ""))
    if len(found) > 1:
        raise NatsAuthError("nats.url: the URLs carry different credentials")
    user, password = found.pop() if found else ("", "")
    return redact_url(url), user, password


def with_credentials(
    cfg: NatsConfig, url: str, environ: Mapping[str, str] = os.environ
) -> tuple[NatsConfig, str]:
    """Credentials from the URL's userinfo, else ``$GATEKEEPER_NATS_USER``/``_PASSWORD``,
    else the config; returns the config to connect with and the URL without them."""
    plain, user, password = split_userinfo(url)
    if not user and environ.get(USER_ENV):
        user, password = environ[USER_ENV], environ.get(PASSWORD_ENV, "")
    if user:
        cfg = dataclasses.replace(cfg, user=user, password=password)
    return cfg, plain


def tls_expected(cfg: NatsConfig, url: str) -> bool:
    schemes = {urlsplit(u).scheme for u in _split(url)}
    return bool(schemes & set(TLS_SCHEMES)) or cfg.tls.enabled


def auth_kind(cfg: NatsConfig) -> str:
    """``creds`` | ``nkey`` | ``user`` | ``none``: what this client presents."""
    if cfg.creds_file:
        return "creds"
    if cfg.nkey_seed_file:
        return "nkey"
    if cfg.user:
        return "user"
    return "none"


def ssl_context(cfg: NatsConfig) -> ssl.SSLContext:
    tls = cfg.tls
    ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    return ctx


def link_encrypted(nc: Any) -> bool:
    """True when the client's current connection runs over TLS (nats-py internals:
    ``_transport._io_writer``; tests/unit/test_natsauth.py guards them)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is None:
        return False
    return writer.get_extra_info("ssl_object") is not None


def server_requires_auth(nc: Any) -> bool:
    """What the server announced in its INFO (nats-py internals: ``_server_info``)."""
    info = getattr(nc, "_server_info", None) or {}
    return bool(info.get("auth_required"))


def guarded_password(password: str, nc_ref: Callable[[], Any]) -> Callable[[], str]:
    """A password callback that refuses to hand the password over a plaintext link."""

    def give() -> str:
        if not link_encrypted(nc_ref()):
            raise NatsAuthError("NATS link is not encrypted although TLS is required")
        return password

    return give


def connect_kwargs(cfg: NatsConfig, url: str, nc_ref: Callable[[], Any]) -> dict[str, Any]:
    """The authentication and TLS keyword arguments of ``nats.connect`` (reads files)."""
    kwargs: dict[str, Any] = {}
    secure = tls_expected(cfg, url)
    if secure:
        kwargs["tls"] = ssl_context(cfg)
        kwargs["tls_handshake_first"] = cfg.tls.handshake_first
    kind = auth_kind(cfg)
    if kind == "creds":
        kwargs["user_credentials"] = cfg.creds_file
    elif kind == "nkey":
        kwargs["nkeys_seed"] = cfg.nkey_seed_file
    elif kind == "user":
        kwargs["user"] = cfg.user
        kwargs["password"] = guarded_password(cfg.password, nc_ref) if secure else cfg.password
    return kwargs


def check_files(cfg: NatsConfig) -> None:
    """Fail early (naming the YAML path, never the content) on unreadable key files."""
    for path, value in (
        ("nats.creds_file", cfg.creds_file),
        ("nats.nkey_seed_file", cfg.nkey_seed_file),
        ("nats.tls.ca_file", cfg.tls.ca_file),
        ("nats.tls.cert_file", cfg.tls.cert_file),
        ("nats.tls.key_file", cfg.tls.key_file),
    ):
        if value and not os.access(value, os.R_OK):
            raise NatsAuthError(f"{path}: cannot read {value}")
