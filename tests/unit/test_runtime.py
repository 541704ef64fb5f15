"""A worker's process tuning: the collector, once the node has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gatekeeper.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_what_start_up_built_and_raises_the_thresholds(restored_gc: None) -> None:
    built_at_start = [object() for _ in range(10)], {"config": [1, 2, 3]}
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert not any(o is built_at_start for o in gc.get_objects())  # out of the collector's sight


def test_cyclic_garbage_is_still_collected_after_tuning(restored_gc: None) -> None:
    tune_gc()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_the_tuning_can_be_turned_off_in_the_config() -> None:
    from gatekeeper.config import parse_config

    assert parse_config({"server": {}}).server.gc_tuning is True
    assert parse_config({"server": {"gc_tuning": False}}).server.gc_tuning is False
