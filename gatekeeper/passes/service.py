"""Wiring: the key store, issuer and redeemer of one node, and their HTTP endpoints.

    POST /v1/gatekeeper/passes/token-request     Bearer API key; TokenRequest or
                                                 BatchTokenRequest (by Content-Type)
    GET  /.well-known/private-token-issuer-directory?tenant=T   (or the Bearer key's tenant)

The endpoints are thin: parsing and deciding live in ``wire``, ``issuer``, ``redeem``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gatekeeper.auth.verifier import TokenVerifier
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.config import PassesConfig
from gatekeeper.errors import (
    ConfigError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from gatekeeper.passes.issuer import Issuer, directory
from gatekeeper.passes.keys import EPOCH_SECONDS, KeyStore
from gatekeeper.passes.redeem import Redeemer
from gatekeeper.passes.spent import KvSpentStore
from gatekeeper.passes.wire import (
    BATCH_REQUEST_TYPE,
    BATCH_RESPONSE_TYPE,
    DIRECTORY_TYPE,
    MAX_BATCH,
    NE,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    b64url,
    token_challenge,
)

__all__ = ["ISSUE_PATH", "PassService", "build_passes", "load_secret"]

ISSUE_PATH = "/v1/gatekeeper/passes/token-request"
_MAX_REQUEST = 5 + MAX_BATCH * NE


def load_secret(path: str) -> bytes:
    """The operator's secret; ConfigError (naming the YAML key) if unreadable or short."""
    try:
        secret = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"passes.secret_file: cannot read {path} ({exc.strerror})") from None
    if len(secret) < 32:
        raise ConfigError("passes.secret_file: the secret must be at least 32 bytes")
    return secret


@dataclass(slots=True)
class PassService:
    keys: KeyStore
    issuer: Issuer
    redeemer: Redeemer
    verifier: TokenVerifier

    async def issue(self, request: Request, rid: str, started: float) -> Response:
        claims = self.verifier.verify_bearer(request.headers.get("authorization"))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (REQUEST_TYPE, BATCH_REQUEST_TYPE):
            raise UnsupportedMediaType(
                f"Send Content-Type {REQUEST_TYPE} or {BATCH_REQUEST_TYPE}", code="invalid_type"
            )
        body = await _read_capped(request, _MAX_REQUEST)
        batch = ctype == BATCH_REQUEST_TYPE
        out = self.issuer.issue(claims, body, batch=batch)
        media = BATCH_RESPONSE_TYPE if batch else RESPONSE_TYPE
        return Response(out, media_type=media, headers={"x-request-id": rid})

    async def directory(self, request: Request, rid: str, started: float) -> Response:
        tenant = request.query_params.get("tenant")
        if tenant is None:
            if request.headers.get("authorization") is None:
                raise InvalidRequest(
                    "Name the tenant (?tenant=…) or send its Bearer API key", param="tenant"
                )
            tenant = self.verifier.verify_bearer(request.headers.get("authorization")).tenant
        keys = self.keys.accepted(tenant)
        if not keys:
            raise NotFound("No Privacy Pass issuer for this tenant", code="passes_not_enabled")
        body: dict[str, Any] = directory(keys, ISSUE_PATH)
        body["gatekeeper-token-challenge"] = b64url(self.redeemer.challenge)
        max_age = max(
            1, keys[0].not_before + EPOCH_SECONDS[self.keys.period] - int(self.keys.clock())
        )
        headers = {"x-request-id": rid, "cache-control": f"max-age={max_age}"}
        return Response(orjson.dumps(body), media_type=DIRECTORY_TYPE, headers=headers)

    async def rotate_forever(self, every_s: float = 30.0) -> None:
        """Refresh the keys off the request path and drop spent buckets of old epochs."""
        while True:
            self.keys.refresh()
            await self.redeemer.housekeeping()
            for tenant, epoch, start in self.keys.upcoming():
                self.keys.prepare(tenant, epoch, start)
                await asyncio.sleep(0)  # one derivation at a time between requests
            await asyncio.sleep(every_s)


async def _read_capped(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"A token request is at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_passes(
    cfg: PassesConfig,
    js: Any,
    ledger: BudgetLedger,
    verifier: TokenVerifier,
    *,
    replicas: int = 1,
    on_change: Callable[[], None] = lambda: None,
) -> PassService | None:
    """The node's Privacy Pass service, or None when ``passes.enabled`` is false."""
    if not cfg.enabled:
        return None
    keys = KeyStore(
        load_secret(cfg.secret_file), dict(cfg.tenants), period=cfg.epoch, grace=cfg.grace_epochs
    )
    keys.refresh()
    ttl = EPOCH_SECONDS[cfg.epoch] * (cfg.grace_epochs + 1) + 60
    spent = KvSpentStore(js, ttl_s=ttl, replicas=replicas)
    challenge = token_challenge(cfg.issuer_name, cfg.origin)
    issuer = Issuer(keys, ledger, default_count=cfg.default_count, on_change=on_change)
    return PassService(keys, issuer, Redeemer(keys, spent, challenge), verifier)
