"""Per-tenant, per-epoch issuer keys, derived from one operator-held secret.

Who holds what (docs/privacy.md has the full table):

- the operator writes ``passes.secret_file`` (32+ random bytes) on every gateway node;
- a node derives, for tenant ``t`` and epoch ``e`` (a UTC window id such as
  ``h2026120121``), ``seed = HMAC-SHA256(secret, "gatekeeper/privacypass/v1" 0 t 0 e)``
  and the VOPRF key pair ``DeriveKeyPair(seed, info="gatekeeper/privacypass/v1/t/e")``
  (RFC 9497 §3.2.1) — the same on every node, so any node can issue and any can redeem;
- nothing secret is ever published: the bus carries only spent-nonce markers, and
  the issuer directory only public keys.

An epoch's key is accepted while the epoch is current and for ``grace`` epochs
after it; it is used for issuing only while current. Keys are derived when an
epoch starts (``KeyStore.refresh``) — or earlier, one tenant at a time, by ``prepare`` —
so redemption does a dict lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import cast

from voprf import p384

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.windows import Period, window_id
from gatekeeper.passes.wire import token_key_id

__all__ = ["EPOCH_SECONDS", "IssuerKey", "KeyStore", "derive_seed", "epochs_accepted"]

EPOCH_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_LABEL = b"gatekeeper/privacypass/v1"
_RETIRED_KEEP = 4096  # retired key ids remembered (for a helpful challenge), all tenants


def derive_seed(secret: bytes, tenant: str, epoch: str) -> bytes:
    """The 32-byte DeriveKeyPair seed of ``tenant``'s key in ``epoch`` (pure)."""
    message = _LABEL + b"\x00" + tenant.encode() + b"\x00" + epoch.encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def key_info(tenant: str, epoch: str) -> bytes:
    return _LABEL + b"/" + tenant.encode() + b"/" + epoch.encode()


def epochs_accepted(period: str, grace: int, now: float) -> list[tuple[str, int]]:
    """``(epoch id, start)`` of the current epoch first, then ``grace`` older ones (pure)."""
    length = EPOCH_SECONDS[period]
    start = int(now // length) * length
    out = []
    for back in range(grace + 1):
        t = start - back * length
        out.append((window_id(cast(Period, period), datetime.fromtimestamp(t, UTC)), t))
    return out


@dataclass(frozen=True, slots=True)
class IssuerKey:
    tenant: str
    epoch: str
    not_before: int  # the epoch's start, POSIX seconds
    evaluator: p384.Evaluator
    public_key: bytes  # SEC1 compressed, 49 bytes
    key_id: bytes  # SHA-256(public_key): the token_key_id
    claims: Claims  # what a request redeemed with a pass of this key is charged as


def tenant_claims(policy: Claims, key_id: bytes, start: int, end: int) -> Claims:
    """The tenant-level claims for passes of one key: the tenant's policy, no key id.

    ``sub`` is ``tenant=<name>`` (every pass of the tenant shares its counters);
    ``pass_key`` is the token key id, which the audit record names instead of a key.
    """
    return replace(
        policy,
        jti=f"pp:{key_id.hex()[:16]}",
        iat=datetime.fromtimestamp(start, UTC),
        nbf=datetime.fromtimestamp(start, UTC),
        exp=datetime.fromtimestamp(end, UTC),
        pass_key=key_id.hex(),
    )


class KeyStore:
    """The issuer keys this node accepts now, by token key id; refreshed per epoch.

    ``policies`` maps each tenant that may use passes to its tenant-level claims
    (see ``gatekeeper.config.PassesConfig``). ``clock`` gives POSIX seconds.
    """

    def __init__(
        self,
        secret: bytes,
        policies: Mapping[str, Claims],
        *,
        period: str = "hour",
        grace: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the Privacy Pass secret must be at least 32 bytes")
        self._secret = secret
        self.policies = dict(policies)
        self.period, self.grace, self.clock = period, grace, clock
        self._by_id: dict[bytes, IssuerKey] = {}
        self._current: dict[str, IssuerKey] = {}
        self._retired: dict[bytes, str] = {}  # key id -> tenant, for the 401 challenge
        self._next_roll = 0.0
        self._prepared: dict[tuple[str, str], IssuerKey] = {}  # next epoch's, derived early
        self.dropped: list[str] = []  # epochs no longer accepted since the last refresh

    def refresh(self) -> None:
        """Derive the keys of the accepted epochs if an epoch boundary passed."""
        now = self.clock()
        if now < self._next_roll:
            return
        accepted = epochs_accepted(self.period, self.grace, now)
        length = EPOCH_SECONDS[self.period]
        by_id: dict[bytes, IssuerKey] = {}
        current: dict[str, IssuerKey] = {}
        known = {(k.tenant, k.epoch): k for k in self._by_id.values()} | self._prepared
        self._prepared = {}
        for tenant, policy in self.policies.items():
            for i, (epoch, start) in enumerate(accepted):
                key = known.get((tenant, epoch)) or self._derive(tenant, epoch, start, policy)
                by_id[key.key_id] = key
                if i == 0:
                    current[tenant] = key
        live_epochs = {epoch for epoch, _ in accepted}
        for old in self._by_id.values():
            if old.key_id not in by_id:
                self._retired[old.key_id] = old.tenant
        while len(self._retired) > _RETIRED_KEEP:
            self._retired.pop(next(iter(self._retired)))
        self.dropped = sorted({k.epoch for k in self._by_id.values()} - live_epochs)
        self._by_id, self._current = by_id, current
        self._next_roll = accepted[0][1] + length

    def upcoming(self) -> list[tuple[str, str, int]]:
        """``(tenant, epoch, start)`` of next-epoch keys not derived yet (see ``prepare``)."""
        length = EPOCH_SECONDS[self.period]
        (epoch, start), *_ = epochs_accepted(self.period, 0, self.clock() + length)
        return [(t, epoch, start) for t in self.policies if (t, epoch) not in self._prepared]

    def prepare(self, tenant: str, epoch: str, start: int) -> None:
        """Derive a next-epoch key now, so the epoch's first request does not wait for it."""
        key = self._derive(tenant, epoch, start, self.policies[tenant])
        self._prepared[(tenant, epoch)] = key

    def _derive(self, tenant: str, epoch: str, start: int, policy: Claims) -> IssuerKey:
        evaluator = p384.Evaluator.from_seed(
            derive_seed(self._secret, tenant, epoch), key_info(tenant, epoch)
        )
        public = evaluator.public_key.serialize()
        kid = token_key_id(public)
        end = start + EPOCH_SECONDS[self.period] * (self.grace + 1)
        claims = tenant_claims(policy, kid, start, end)
        return IssuerKey(tenant, epoch, start, evaluator, public, kid, claims)

    def current(self, tenant: str) -> IssuerKey | None:
        """The key ``tenant`` is issued passes under now; None if passes are off for it."""
        self.refresh()
        return self._current.get(tenant)

    def accepted(self, tenant: str) -> list[IssuerKey]:
        """Every key of ``tenant`` that redemption accepts now, newest first."""
        self.refresh()
        return sorted(
            (k for k in self._by_id.values() if k.tenant == tenant), key=lambda k: -k.not_before
        )

    def accepted_all(self) -> list[IssuerKey]:
        """Every accepted key, all tenants."""
        self.refresh()
        return list(self._by_id.values())

    def lookup(self, key_id: bytes) -> IssuerKey | None:
        self.refresh()
        return self._by_id.get(key_id)

    def tenant_of_retired(self, key_id: bytes) -> str | None:
        """The tenant of a key this node accepted before (for the challenge's token-key)."""
        return self._retired.get(key_id)
