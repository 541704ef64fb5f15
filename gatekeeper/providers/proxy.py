"""HTTP proxies for upstream calls: which one (from the environment, pure) and a CONNECT tunnel.

``proxy_for`` follows curl's rules: ``https_proxy``/``HTTPS_PROXY`` for https targets,
``http_proxy``/``HTTP_PROXY`` for http targets, ``all_proxy``/``ALL_PROXY`` for both,
and ``no_proxy``/``NO_PROXY`` (comma-separated: ``*``, host names matching
themselves and their subdomains, a leading ``.`` allowed, IP addresses, CIDR
ranges, an optional ``:port``) to bypass. An https target goes through ``CONNECT``
(TLS end to end, the proxy sees only the host name); an http target is sent to the
proxy in absolute form. ``user:password@`` in the proxy URL becomes
``Proxy-Authorization: Basic``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gatekeeper.providers.transport import ConnectFailed, TooLarge


@dataclass(frozen=True, slots=True)
class ProxyURL:
    host: str
    port: int
    authorization: str = ""  # the Proxy-Authorization value, or empty

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _env(env: Mapping[str, str], name: str) -> str:
    return (env.get(name.lower()) or env.get(name.upper()) or "").strip()


def parse_proxy(value: str) -> ProxyURL | None:
    if not value:
        return None
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise ValueError(f"unsupported proxy URL scheme {parts.scheme!r} (http:// only)")
    auth = ""
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode("ascii")
    return ProxyURL(parts.hostname, parts.port or 80, auth)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY``'s value exempts ``host:port`` (pure)."""
    host = host.lower().strip("[]")
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, want_port = entry, None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            name, _, p = entry.rpartition(":")
            want_port = int(p) if p.isdigit() else None
        name = name.strip("[]")
        if want_port is not None and want_port != port:
            continue
        if addr is not None:
            try:
                if addr in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".").removeprefix("*.")
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int, env: Mapping[str, str]) -> ProxyURL | None:
    """The proxy to use for ``scheme://host:port`` under ``env``, or None (pure)."""
    if bypassed(host, port, _env(env, "no_proxy")):
        return None
    value = _env(env, f"{scheme}_proxy") or _env(env, "all_proxy")
    return parse_proxy(value)


class _TunnelReply(asyncio.Protocol):
    """Collects the proxy's reply to CONNECT (bounded), nothing more."""

    def __init__(self, limit: int) -> None:
        self.buf = b""
        self.limit = limit
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.done.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self.done.set_result(self.buf[: end + 4])
        elif len(self.buf) > self.limit:
            self.done.set_exception(TooLarge("the proxy's CONNECT reply is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectFailed("the proxy closed the CONNECT tunnel"))


async def open_tunnel(proxy: ProxyURL, host: str, port: int, *, limit: int) -> asyncio.Transport:
    """A TCP connection through ``proxy`` to ``host:port`` (``CONNECT``), not yet TLS."""
    loop = asyncio.get_running_loop()
    transport, reply = await loop.create_connection(
        lambda: _TunnelReply(limit), proxy.host, proxy.port
    )
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"host: {target}"]
    if proxy.authorization:
        lines.append(f"proxy-authorization: {proxy.authorization}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        head = await reply.done
    except BaseException:
        transport.abort()
        raise
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].startswith(b"2"):
        transport.abort()
        shown = status_line[1].decode("latin-1", "replace")[:3] if len(status_line) > 1 else "?"
        raise ConnectFailed(f"the proxy refused CONNECT to {target} ({shown})")
    return transport
