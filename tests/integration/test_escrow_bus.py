"""Escrow transfers on a real nats-server: shares move on demand; forged ones do not count.

Two ``EscrowBus`` instances (nodes ``a`` and ``b``) in this process, each with its own
Ed25519 node key in the node key registry as a gateway's is; a third party on the bus
tries to hand ``b`` rights it does not have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client

from gatekeeper.budget.escrow_bus import EscrowBus, NodeKeys, sign, xfer_subject
from gatekeeper.budget.strict import StrictBook
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import ESCROW_BUCKET, ensure_streams

CID = "tok.key_esc.total"


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    await ensure_streams(client.jetstream())
    yield client
    await client.close()


REGISTRY: dict[str, VerifyKey] = {}  # the node key registry, as the test's cluster has it


async def make_bus(nc: Client, node: str, key: SigningKey) -> EscrowBus:
    REGISTRY[node] = key.verify_key
    bus = EscrowBus(
        nc,
        await nc.jetstream().key_value(ESCROW_BUCKET),
        NodeKeys(REGISTRY.get, node, key.verify_key),
        StrictBook(node),
        key,
        default_mode="strict",
        wait_s=1.0,
        interval_s=0.05,
    )
    await bus.start()
    return bus


class TestEscrowBus:
    async def test_shares_move_on_demand_and_forgeries_are_ignored(self, nc: Client) -> None:
        """``b`` asks, ``a`` (the owner) gives; a forged, a misaddressed and a replayed
        transfer change nothing."""
        key_a, key_b = SigningKey.generate(), SigningKey.generate()
        a, b = await make_bus(nc, "a", key_a), await make_bus(nc, "b", key_b)
        try:
            assert await a.acquire(CID, 100, 10)  # a is first: it owns all 100
            assert a.room(CID) == 100
            assert await b.acquire(CID, 100, 30)
            got = b.room(CID)
            assert got is not None and got >= 30
            assert (a.room(CID) or 0) + got == 100

            async def publish_and_settle(data: bytes) -> None:
                await nc.publish(xfer_subject("b"), data)
                await nc.flush()
                await asyncio.sleep(0.2)  # b's subscription has handled it by now

            forged = {
                "t": "xfer",
                "cid": CID,
                "total": 100,
                "owner": "a",
                "src": "a",
                "dst": "b",
                "sent": 10_000,
            }
            await publish_and_settle(sign(SigningKey.generate(), forged))  # not a's key
            await publish_and_settle(sign(key_a, {**forged, "dst": "c"}))  # not for b
            await publish_and_settle(sign(key_a, {**forged, "sent": got}))  # a replay
            assert b.room(CID) == got
            assert (a.room(CID) or 0) + (b.room(CID) or 0) == 100
        finally:
            await a.stop()
            await b.stop()

    async def test_a_node_with_no_share_and_no_donor_waits_then_gives_up(self, nc: Client) -> None:
        """Nobody can give: ``acquire`` returns False after ``wait_s``; nothing was created."""
        a = await make_bus(nc, "a", SigningKey.generate())
        b = await make_bus(nc, "b", SigningKey.generate())
        try:
            assert await a.acquire(CID, 40, 40)
            assert a.hold(CID, 40, 40)  # a needs all it has
            b.wait_s = 0.2
            assert not await b.acquire(CID, 40, 1)
            assert b.room(CID) == 0
        finally:
            await a.stop()
            await b.stop()

    async def test_a_restarted_node_keeps_what_it_gave_away(self, nc: Client) -> None:
        """The donor persisted its replica before sending: after a restart it still
        knows it gave 50 of its 100 away."""
        key_a = SigningKey.generate()
        a, b = await make_bus(nc, "a", key_a), await make_bus(nc, "b", SigningKey.generate())
        assert await a.acquire(CID, 100, 1)
        assert await b.acquire(CID, 100, 10)
        left = a.room(CID)
        await a.stop()
        again = await make_bus(nc, "a", key_a)
        try:
            assert again.room(CID) == left
        finally:
            await again.stop()
            await b.stop()
