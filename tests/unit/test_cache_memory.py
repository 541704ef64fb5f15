"""Answers kept in memory: served again only while the entry is still the key's latest,
unexpired, signed by the same keys and asked for by the same tenant; bounded in bytes."""

from __future__ import annotations

from gatekeeper.cache.entry import CachedAnswer
from gatekeeper.cache.memory import AnswerMemory
from gatekeeper.providers.base import Usage

KEYS = {"n1": (b"k1",)}
NOW = 1_000.0


def keys_of(node: str) -> tuple[bytes, ...]:
    return KEYS.get(node, ())


def answer(body: bytes = b'{"ok": true}') -> CachedAnswer:
    return CachedAnswer("m", Usage(3, 2), body=body)


def kept(key: str = "acme.k", revision: int = 5, exp: float = NOW + 60) -> AnswerMemory:
    memory = AnswerMemory(1 << 20)
    memory.keep(key, "acme", answer(), revision, exp, "n1", keys_of("n1"))
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
        memory.keep("acme.k", "acme", answer(), 0, NOW + 60, "n1", keys_of("n1"))
        assert len(memory) == 0

    def test_bounded_in_bytes_least_recently_used_out(self) -> None:
        body = b"x" * 400
        memory = AnswerMemory(1000)  # room for two (400 bytes of body + the key each)
        for i, key in enumerate(("a", "b")):
            memory.keep(key, "acme", answer(body), i + 1, NOW + 60, "n1", keys_of("n1"))
        assert memory.get("a", "acme", 1, NOW, keys_of) is not None  # "a" is now the newest
        memory.keep("c", "acme", answer(body), 3, NOW + 60, "n1", keys_of("n1"))
        assert memory.get("b", "acme", 2, NOW, keys_of) is None  # the least recently used
        assert memory.get("a", "acme", 1, NOW, keys_of) is not None
        assert memory.bytes <= 1000 and len(memory) == 2
        memory.keep("big", "acme", answer(b"y" * 2000), 4, NOW + 60, "n1", keys_of("n1"))
        assert memory.get("big", "acme", 4, NOW, keys_of) is None  # bigger than the whole
        assert len(memory) == 2
