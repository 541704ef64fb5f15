"""The client side: fetch Privacy Passes with an API key, spend them as ``httpx.Auth``.

::

    wallet = Wallet.fetch("http://127.0.0.1:8080", api_key, count=100)
    client = OpenAI(base_url=".../v1", api_key="unused", http_client=httpx.Client(auth=wallet))

Fetching uses the API key (the gateway counts the passes against it); spending does
not: each request carries one unused pass instead of the key, and the gateway cannot
tell which key fetched it (docs/privacy.md says what it can still tell). The wallet
checks every issuer proof against the key in the directory before keeping a pass.

A pass refused as spent, expired or invalid (401 with a PrivateToken challenge) is
dropped and the request retried once with the next pass. Thread-safe.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from voprf import p384

from gatekeeper.passes.wire import (
    BATCH_REQUEST_TYPE,
    MAX_BATCH,
    NE,
    NS,
    REQUEST_TYPE,
    TOKEN_TYPE,
    WireError,
    b64url,
    b64url_decode,
    batch_request,
    parse_batch_response,
    token_key_id,
    token_request,
)

__all__ = [
    "DIRECTORY_PATH",
    "NoPassesLeft",
    "Pending",
    "Wallet",
    "begin",
    "complete",
    "fetch_passes",
]

DIRECTORY_PATH = "/.well-known/private-token-issuer-directory"


class NoPassesLeft(RuntimeError):
    """The wallet is empty: fetch more passes with the API key."""


def _directory(client: httpx.Client, api_key: str) -> tuple[bytes, str, bytes]:
    resp = client.get(DIRECTORY_PATH, headers={"authorization": f"Bearer {api_key}"})
    resp.raise_for_status()
    try:
        data = resp.json()
        key = b64url_decode(data["token-keys"][0]["token-key"], limit=100)
        challenge = b64url_decode(data["gatekeeper-token-challenge"], limit=4096)
        return key, str(data["issuer-request-uri"]), challenge
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise WireError(f"not a Gatekeeper issuer directory ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class Pending:
    """One issuance round trip in flight: what the client keeps until the response."""

    inputs: list[bytes]  # token_input of each pass
    clients: list[p384.Client]  # each one's blind
    public_key: bytes
    batch: bool


def begin(public: bytes, challenge: bytes, n: int, *, batch: bool) -> tuple[Pending, bytes]:
    """Blind ``n`` fresh token inputs; returns the state and the request body (pure I/O-free)."""
    kid, digest = token_key_id(public), hashlib.sha256(challenge).digest()
    inputs = [
        TOKEN_TYPE.to_bytes(2, "big") + secrets.token_bytes(32) + digest + kid for _ in range(n)
    ]
    blinded = [p384.Client.blind(x) for x in inputs]
    elements = [b.serialize() for _, b in blinded]
    body = batch_request(kid, elements) if batch else token_request(kid, elements[0])
    return Pending(inputs, [c for c, _ in blinded], public, batch), body


def complete(pending: Pending, response: bytes) -> list[str]:
    """Check the issuer's proof and unblind: the passes, base64url. ValueError if the
    response is malformed or its proof does not verify under the directory's key."""
    pk = p384.PublicKey.deserialize(pending.public_key)
    if pending.batch:
        elements, proof = parse_batch_response(response, len(pending.inputs))
        output = p384.VerifiableBatchOutput.deserialize(proof + b"".join(elements))
        macs = p384.Client.finalize_batch(pending.clients, output, pk)
    else:
        if len(response) != NE + 2 * NS:
            raise WireError("TokenResponse has the wrong length")
        single = p384.VerifiableOutput.deserialize(response[NE:] + response[:NE])
        macs = [pending.clients[0].finalize(single, pk)]
    return [b64url(x + mac) for x, mac in zip(pending.inputs, macs, strict=True)]


def fetch_passes(
    client: httpx.Client, api_key: str, count: int, *, batch: bool = True
) -> list[str]:
    """``count`` passes (base64url tokens) from the gateway ``client`` points at."""
    public, uri, challenge = _directory(client, api_key)
    out: list[str] = []
    while len(out) < count:
        n = min(count - len(out), MAX_BATCH if batch else 1)
        pending, body = begin(public, challenge, n, batch=batch)
        ctype = BATCH_REQUEST_TYPE if batch else REQUEST_TYPE
        out.extend(complete(pending, _post(client, uri, api_key, body, ctype)))
    return out


def _post(client: httpx.Client, uri: str, api_key: str, body: bytes, ctype: str) -> bytes:
    resp = client.post(
        uri, content=body, headers={"authorization": f"Bearer {api_key}", "content-type": ctype}
    )
    resp.raise_for_status()
    return resp.content


class Wallet(httpx.Auth):
    """Unused passes; each request through an httpx client with ``auth=wallet`` spends one."""

    def __init__(self, passes: Iterable[str] = ()) -> None:
        self._passes: deque[str] = deque(passes)
        self._lock = threading.Lock()

    @classmethod
    def fetch(
        cls, base_url: str, api_key: str, count: int, *, batch: bool = True, timeout: float = 30.0
    ) -> Wallet:
        with httpx.Client(base_url=base_url, timeout=timeout) as client:
            return cls(fetch_passes(client, api_key, count, batch=batch))

    @classmethod
    def load(cls, path: str | Path) -> Wallet:
        data = orjson.loads(Path(path).read_bytes())
        return cls(data.get("passes", []))

    def save(self, path: str | Path) -> None:
        """Write the unused passes (owner-only: a pass is a bearer credential until spent)."""
        with self._lock:
            data = orjson.dumps({"passes": list(self._passes)})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def add(self, passes: Iterable[str]) -> None:
        with self._lock:
            self._passes.extend(passes)

    def __len__(self) -> int:
        return len(self._passes)

    def unused(self) -> list[str]:
        """A copy of the unused passes, oldest first."""
        with self._lock:
            return list(self._passes)

    def take(self) -> str:
        with self._lock:
            if not self._passes:
                raise NoPassesLeft("no Privacy Passes left: fetch more with the API key")
            return self._passes.popleft()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["authorization"] = f'PrivateToken token="{self.take()}"'
        response = yield request
        refused = response.headers.get("www-authenticate", "").lower().startswith("privatetoken")
        if response.status_code == 401 and refused and len(self):
            request.headers["authorization"] = f'PrivateToken token="{self.take()}"'
            yield request
