"""Issuance: an API key's ``TokenRequest`` in, a ``TokenResponse`` out, within its allowance.

The allowance is the ``passes`` claim (``{per, count}``), else ``rpm`` × the minutes
in one epoch, else ``passes.default_count``. It is counted per key and window on the
CRDT counter ``pass.<key>.<window>`` in the same ``BudgetLedger`` as the budgets,
so a key cannot fetch more than its allowance from N nodes beyond the gossip bound
of docs/budget.md. A refused request costs nothing; the passes are counted once the
request parsed (before the evaluation, which cannot fail on parsed elements).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from voprf import p384

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.admission import counter_key
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.budget.windows import Period, counter_id, window_id
from gatekeeper.errors import InvalidRequest, PermissionDenied
from gatekeeper.passes.keys import EPOCH_SECONDS, IssuerKey, KeyStore
from gatekeeper.passes.wire import (
    NE,
    NS,
    TOKEN_TYPE,
    TokenRequest,
    WireError,
    b64url,
    batch_response,
    parse_batch_request,
    parse_token_request,
)

__all__ = ["Issuer", "allowance", "directory"]


def allowance(claims: Claims, epoch: str, default_count: int) -> tuple[str, int]:
    """``(window period, passes per window)`` for a key (pure)."""
    if claims.passes is not None:
        return claims.passes.per, claims.passes.count
    if claims.rpm is not None:
        return epoch, claims.rpm * EPOCH_SECONDS[epoch] // 60
    return epoch, default_count


def directory(keys: list[IssuerKey], request_uri: str) -> dict[str, Any]:
    """The issuer directory (RFC 9578 §4) of one tenant: its accepted keys, newest first."""
    return {
        "issuer-request-uri": request_uri,
        "token-keys": [
            {
                "token-type": TOKEN_TYPE,
                "token-key": b64url(k.public_key),
                "not-before": k.not_before,
            }
            for k in keys
        ],
    }


class Issuer:
    def __init__(
        self,
        keys: KeyStore,
        ledger: BudgetLedger,
        *,
        default_count: int,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keys = keys
        self.ledger = ledger
        self.default_count = default_count
        self.on_change = on_change
        self.clock = clock

    def key_for(self, claims: Claims) -> IssuerKey:
        key = self.keys.current(claims.tenant)
        if key is None:
            raise PermissionDenied(
                f"Privacy Passes are not enabled for tenant '{claims.tenant[:64]}'",
                code="passes_not_enabled",
            )
        return key

    def issue(self, claims: Claims, body: bytes, *, batch: bool) -> bytes:
        """Evaluate the blinded elements of ``body`` for ``claims``' tenant; raises
        InvalidRequest (bad request), PermissionDenied, or RateLimited (allowance)."""
        key = self.key_for(claims)
        request = _parse(body, batch)
        if request.truncated_key_id != key.key_id[-1]:
            raise InvalidRequest(
                "The TokenRequest names another issuer key; fetch the issuer directory again",
                code="token_key_mismatch",
            )
        try:
            blinded = [p384.BlindedInput.deserialize(b) for b in request.blinded]
        except ValueError:
            raise InvalidRequest(
                "A blinded element is not a valid P-384 point", code="invalid_token_request"
            ) from None
        self._count(claims, len(blinded))
        if not batch:
            out = key.evaluator.evaluate(blinded[0]).serialize()  # proof || element
            return out[2 * NS :] + out[: 2 * NS]
        raw = key.evaluator.evaluate_batch(blinded).serialize()  # proof || elements
        elements = raw[2 * NS :]
        return batch_response(
            [elements[i : i + NE] for i in range(0, len(elements), NE)], raw[: 2 * NS]
        )

    def _count(self, claims: Claims, n: int) -> None:
        per, count = allowance(claims, self.keys.period, self.default_count)
        now = self.clock()
        cid = counter_id("pass", counter_key(claims.sub), window_id(cast(Period, per), now))
        reservation = self.ledger.reserve({cid: n}, {cid: count}, now)  # RateLimited if over
        self.ledger.settle(reservation, {cid: n})
        self.on_change()


def _parse(body: bytes, batch: bool) -> TokenRequest:
    try:
        return parse_batch_request(body) if batch else parse_token_request(body)
    except WireError as exc:
        raise InvalidRequest(f"invalid TokenRequest: {exc}", code="invalid_token_request") from None
