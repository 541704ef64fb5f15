"""The cache's key index: a key it does not hold is a miss without a read, only once trusted."""

from __future__ import annotations

from gatekeeper.cache.index import KeyIndex


def caught_up(*keys: str, max_keys: int = 10) -> KeyIndex:
    index = KeyIndex(max_keys)
    for key in keys:
        index.stored(key)
    index.caught_up()
    return index


class TestKeyIndex:
    def test_untrusted_until_the_watch_has_caught_up(self) -> None:
        index = KeyIndex(10)
        index.stored("a")
        assert index.may_hold("b")  # still loading: every lookup reads the bucket
        index.caught_up()
        assert index.may_hold("a") and not index.may_hold("b")

    def test_stored_and_gone_keys(self) -> None:
        index = caught_up("a")
        index.stored("b")
        assert index.may_hold("b")
        index.gone("a")  # deleted, purged, or found missing when read
        assert not index.may_hold("a")
        index.gone("never-there")  # harmless

    def test_a_restart_forgets_and_distrusts(self) -> None:
        index = caught_up("a")
        index.restart()
        assert len(index) == 0 and index.may_hold("anything") and index.restarts == 1
        index.caught_up()
        assert not index.may_hold("a")

    def test_past_max_keys_every_lookup_reads(self) -> None:
        index = caught_up("a", "b", max_keys=2)
        assert index.ready
        index.stored("c")  # one too many to know
        assert not index.ready and index.may_hold("c") and index.may_hold("z")
        index.stored("a")  # one it has: no change
        index.caught_up()  # still full: stays untrusted
        assert not index.ready

    def test_loading_past_max_keys_never_becomes_trusted(self) -> None:
        index = KeyIndex(1)
        index.stored("a")
        index.stored("b")
        index.caught_up()
        assert not index.ready and index.may_hold("b")


class TestRevisions:
    def test_the_watch_sets_the_revision_and_an_own_put_never_lowers_it(self) -> None:
        index = caught_up()
        index.stored("a")  # this node's put, not yet seen on the watch
        assert index.may_hold("a") and index.revision("a") == 0
        index.stored("a", 7)  # the watch delivers it
        index.stored("a")  # a late own put of the same key
        assert index.revision("a") == 7
        index.stored("a", 9)  # overwritten (by anyone)
        assert index.revision("a") == 9

    def test_no_revision_while_untrusted_or_gone(self) -> None:
        index = KeyIndex(10)
        index.stored("a", 3)
        assert index.revision("a") == 0  # still loading
        index.caught_up()
        assert index.revision("a") == 3
        index.gone("a")
        index.stored("a")  # an own put acknowledged after the delete was seen
        assert index.revision("a") == 0
        index.restart()
        assert index.revision("a") == 0
