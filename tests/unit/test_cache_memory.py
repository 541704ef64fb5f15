"""Answers kept in memory: served again only while the entry is still the key's latest,
unexpired, signed by the same keys and asked for by the same tenant; bounded in bytes.
A store published without a task tells the index and the memory only once acked."""

from __future__ import annotations

import asyncio

from nacl.signing import SigningKey

from gatekeeper.cache.entry import CachedAnswer
from gatekeeper.cache.index import KeyIndex
from gatekeeper.cache.memory import AnswerMemory
from gatekeeper.cache.store import CacheStore
from gatekeeper.providers.base import Usage

KEYS = {"n1": (b"k1",)}
NOW = 1_000.0


def keys_of(node: str) -> tuple[bytes, ...]:
    return KEYS.get(node, ())


def answer(body: bytes = b'{"ok": true}') -> CachedAnswer:
    return CachedAnswer("m", Usage(3, 2), body=body)


def kept(key: str = "acme.k", revision: int = 5, exp: float = NOW + 60) -> AnswerMemory:
    memory = AnswerMemory(1 << 20)
    memory.keep(key, "acme", answer(), revision, exp, "n1", keys_of("n1"), NOW)
    return memory


class TestAnswerMemory:
    def test_served_while_its_revision_is_the_keys_latest(self) -> None:
        memory = kept()
        got = memory.get("acme.k", "acme", 5, NOW, keys_of)
        assert got is not None and got.body == b'{"ok": true}'

    def test_a_newer_revision_or_none_sends_it_back_to_the_bucket(self) -> None:
        memory = kept()
        assert memory.get("acme.k", "acme", 6, NOW, keys_of) is None  # overwritten
        assert len(memory) == 0  # and forgotten
        memory = kept()
        assert memory.get("acme.k", "acme", 0, NOW, keys_of) is None  # deleted, or untrusted

    def test_expired_is_not_served(self) -> None:
        memory = kept(exp=NOW + 1)
        assert memory.get("acme.k", "acme", 5, NOW + 1, keys_of) is None

    def test_read_from_the_bucket_again_after_recheck_s(self) -> None:
        memory = kept()  # recheck_s 1.0 by default
        assert memory.get("acme.k", "acme", 5, NOW + 0.9, keys_of) is not None
        assert memory.get("acme.k", "acme", 5, NOW + 1.0, keys_of) is None  # a stalled watch
        assert len(memory) == 0  # the next hit reads, verifies and keeps it again

    def test_another_tenant_never_gets_it(self) -> None:
        memory = kept()
        assert memory.get("acme.k", "globex", 5, NOW, keys_of) is None

    def test_a_change_of_the_signers_keys_means_verifying_again(self) -> None:
        memory = kept()
        rotated = {"n1": (b"k1", b"k2")}
        assert memory.get("acme.k", "acme", 5, NOW, lambda n: rotated.get(n, ())) is None
        memory = kept()
        assert memory.get("acme.k", "acme", 5, NOW, lambda n: ()) is None  # deregistered

    def test_nothing_is_kept_without_a_revision(self) -> None:
        memory = AnswerMemory(1 << 20)
        memory.keep("acme.k", "acme", answer(), 0, NOW + 60, "n1", keys_of("n1"), NOW)
        assert len(memory) == 0

    def test_bounded_in_bytes_least_recently_used_out(self) -> None:
        body = b"x" * 400
        memory = AnswerMemory(1000)  # room for two (400 bytes of body + the key each)
        for i, key in enumerate(("a", "b")):
            memory.keep(key, "acme", answer(body), i + 1, NOW + 60, "n1", keys_of("n1"), NOW)
        assert memory.get("a", "acme", 1, NOW, keys_of) is not None  # "a" is now the newest
        memory.keep("c", "acme", answer(body), 3, NOW + 60, "n1", keys_of("n1"), NOW)
        assert memory.get("b", "acme", 2, NOW, keys_of) is None  # the least recently used
        assert memory.get("a", "acme", 1, NOW, keys_of) is not None
        assert memory.bytes <= 1000 and len(memory) == 2
        memory.keep("big", "acme", answer(b"y" * 2000), 4, NOW + 60, "n1", keys_of("n1"), NOW)
        assert memory.get("big", "acme", 4, NOW, keys_of) is None  # bigger than the whole
        assert len(memory) == 2


class FakeAcks:
    """The acked publisher's side of a store: each send's future is settled by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[int]]] = []

    def send(
        self, subject: str, data: bytes, msg_id: str | None, timeout_s: float
    ) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.sent.append((subject, fut))
        return fut


def publishing_store(acks: FakeAcks) -> tuple[CacheStore, KeyIndex, AnswerMemory]:
    key = SigningKey.generate()
    index, memory = KeyIndex(10), AnswerMemory(1 << 20)
    index.caught_up()
    store = CacheStore(
        None,  # type: ignore[arg-type]  # a store published through acks reads nothing here
        None,
        "n1",
        key,
        lambda node: (key.verify_key,),
        index=index,
        memory=memory,
        acks=acks,
        subject="$KV.BH_CACHE.",
    )
    return store, index, memory


class TestStoreWithoutATask:
    async def test_kept_and_indexed_when_the_ack_comes(self) -> None:
        acks = FakeAcks()
        store, index, memory = publishing_store(acks)
        assert store.put_soon("acme.k", "acme", answer(), 60) is not None
        ((subject, fut),) = acks.sent
        assert subject == "$KV.BH_CACHE.acme.k"
        assert len(memory) == 0 and not index.may_hold("acme.k")  # nothing before the ack
        fut.set_result(12)
        await asyncio.sleep(0)  # the done callback runs
        assert index.may_hold("acme.k") and len(memory) == 1

    async def test_a_refused_or_cancelled_store_leaves_nothing_behind(self) -> None:
        acks = FakeAcks()
        store, index, memory = publishing_store(acks)
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        store.put_soon("acme.a", "acme", answer(), 60)
        store.put_soon("acme.b", "acme", answer(), 60)
        acks.sent[0][1].set_exception(TimeoutError("JetStream did not acknowledge in time"))
        acks.sent[1][1].cancel()  # the publisher stopped
        await asyncio.sleep(0)
        assert not index.may_hold("acme.a") and not index.may_hold("acme.b")
        assert len(memory) == 0 and errors == []  # no error escapes the callback

    async def test_a_large_answer_is_left_to_put(self) -> None:
        acks = FakeAcks()
        store, _, _ = publishing_store(acks)
        store.inline_max = 10
        assert store.put_soon("acme.k", "acme", answer(), 60) is None and acks.sent == []
