"""Switches parts of a gateway off for ``python -m bench.ablate`` (a benchmark only).

``bench.ablate`` puts this directory on ``PYTHONPATH`` of the one gateway it ablates
and names the parts in ``GATEKEEPER_BENCH_OFF`` (comma-separated); every other Python
process ignores it. It patches the tree's own modules (an editable install puts them
on the path before this file runs), so it works on a baseline checkout as well, as
long as the patched names exist there. Nothing in ``gatekeeper`` knows about it.
"""

from __future__ import annotations

import os


def _slot_signing() -> None:
    """Issue 12: budget slots published without an Ed25519 signature (same size)."""
    from gatekeeper.auth.paseto import b64encode
    from gatekeeper.budget import gossip

    fake = b64encode(bytes(64)).encode()

    def unsigned(key: object, slots: list[tuple[str, object]]) -> list[bytes]:
        return [b"%s %s" % (slot.to_bytes(), fake) for _, slot in slots]  # type: ignore[attr-defined]

    if hasattr(gossip, "sign_slots"):
        gossip.sign_slots = unsigned  # type: ignore[attr-defined]
    else:  # builds that signed each slot alone
        gossip.sign_slot = lambda key, kv_key, slot: unsigned(key, [(kv_key, slot)])[0]  # type: ignore[attr-defined]


def _gossip() -> None:
    """The budget's fast flush: own slots reach NATS only through the periodic put."""
    from gatekeeper.budget.gossip import Gossip

    Gossip.changed = lambda self: None  # type: ignore[method-assign]


def _checkpoints() -> None:
    """Issue 13: no periodic audit checkpoints."""
    from gatekeeper.audit.checkpointer import Checkpointer

    async def run(self: object) -> None:
        return None

    Checkpointer.run = run  # type: ignore[method-assign]


def _audit() -> None:
    """A stream's audit record (``_Auditor.commit``) not written: exists in old builds too."""
    from gatekeeper import node

    async def commit(self: object, ex: object) -> None:
        return None

    node._Auditor.commit = commit  # type: ignore[attr-defined]


def _edge() -> None:
    """Issue 15: uvicorn's plain httptools protocol instead of the bounded edge."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gatekeeper.http.edge import GatewayHttpProtocol

    GatewayHttpProtocol.bounded = classmethod(lambda cls, limits: HttpToolsProtocol)  # type: ignore[method-assign,assignment]


def _shield() -> None:
    """Issue 15: no per-IP abuse shield before auth."""
    from gatekeeper.auth.shield import Shield

    Shield.check = lambda self, scope: (None, None)  # type: ignore[method-assign]


def _fair_share() -> None:
    """Issue 15: no per-key and per-tenant concurrency slots (a slot that holds nothing)."""
    from gatekeeper.budget.concurrency import ConcurrencyLimiter, Slot

    def acquire(self: ConcurrencyLimiter, claims: object, stream: bool) -> Slot:
        slot = Slot(self, "", "", stream)
        slot._limiter = None
        return slot

    ConcurrencyLimiter.acquire = acquire  # type: ignore[method-assign,assignment]


def _stitch() -> None:
    """Issue 20: no mid-stream failover wrapper (as ``x-gatekeeper-continuation: off``)."""
    from gatekeeper.continuation import stitch

    stitch.allowed = lambda headers, claims: False  # type: ignore[attr-defined]


def _usage_check() -> None:
    """Issue 14: the upstream's usage believed without the character check."""
    from gatekeeper.budget import charge

    charge.believable = lambda reported, chars_bound, chars, text_bound=None: True  # type: ignore[attr-defined]


PARTS = {
    "slot-signing": _slot_signing,
    "gossip": _gossip,
    "checkpoints": _checkpoints,
    "audit": _audit,
    "edge": _edge,
    "shield": _shield,
    "fair-share": _fair_share,
    "stitch": _stitch,
    "usage-check": _usage_check,
}

for _name in filter(None, os.environ.get("GATEKEEPER_BENCH_OFF", "").split(",")):
    PARTS[_name.strip()]()
