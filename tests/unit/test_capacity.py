"""Priority lanes: lane choice, admit/queue/shed, reserved shares, who goes next (pure)."""

from __future__ import annotations

import random

import pytest

from gatekeeper.capacity.lanes import lane_of
from gatekeeper.capacity.scheduler import Scheduler, Waiter
from gatekeeper.capacityconfig import CapacityConfig, LaneConfig, parse_capacity
from gatekeeper.routing.matrix import ConfigError

CRIT, STD, BATCH = 0, 1, 2


def sched(limit: int = 1, reserved: dict[str, int] | None = None, **kw: object) -> Scheduler:
    lanes = kw.pop("lanes", None) or {n: LaneConfig() for n in ("critical", "standard", "batch")}
    return Scheduler(
        CapacityConfig(max_in_flight=limit, reserved=reserved or {}, lanes=lanes, **kw)  # type: ignore[arg-type]
    )


def queue(s: Scheduler, tenant: str, lane: int, now: float = 0.0) -> Waiter:
    d = s.offer(tenant, lane, now, 60.0)
    assert d.kind == "queue", d
    assert d.waiter is not None
    return d.waiter


def test_lane_of_claim_default_and_header_ceiling() -> None:
    assert lane_of(None, "standard", None) == STD
    assert lane_of("critical", "standard", None) == CRIT
    assert lane_of(None, "batch", None) == BATCH
    assert lane_of("critical", "standard", "batch") == BATCH  # may lower itself
    assert lane_of("standard", "standard", "critical") == STD  # never raise itself
    assert lane_of("batch", "standard", "standard") == BATCH
    assert lane_of("critical", "standard", "bogus") == CRIT


def test_admit_until_full_then_queue_in_priority_order() -> None:
    s = sched(limit=2)
    assert s.offer("a", BATCH, 0, 60).kind == "admit"
    assert s.offer("a", BATCH, 0, 60).kind == "admit"
    b = queue(s, "a", BATCH, 1)
    st = queue(s, "a", STD, 2)
    c = queue(s, "a", CRIT, 3)
    assert s.release("a", 1.0) == [c]
    assert s.release("a", 1.0) == [st]
    assert s.release("a", 1.0) == [b]
    assert s.release("a", 1.0) == []
    assert s.in_flight == 1 and s.queued == 0


def test_fair_round_robin_across_tenants_inside_a_lane() -> None:
    s = sched(limit=1)
    s.offer("x", STD, 0, 60)
    xs = [queue(s, "x", STD, i) for i in range(3)]
    y = queue(s, "y", STD, 9)
    order = [s.release("t", 1.0)[0].tenant for _ in range(4)]
    assert order == ["x", "y", "x", "x"]
    assert xs[0].granted and y.granted


def test_anti_starvation_batch_gets_one_in_max_skips_plus_one() -> None:
    s = sched(limit=1, max_skips=3)
    s.offer("a", STD, 0, 60)
    batch = [queue(s, "a", BATCH, 0) for _ in range(2)]
    for i in range(20):
        queue(s, "a", STD, i)
    lanes = [s.release("a", 1.0)[0].lane for _ in range(8)]
    assert lanes == [STD, STD, STD, BATCH, STD, STD, STD, BATCH]
    assert all(w.granted for w in batch)


def test_critical_is_never_delayed_by_anti_starvation() -> None:
    s = sched(limit=1, max_skips=1)
    s.offer("a", STD, 0, 60)
    queue(s, "a", BATCH, 0)
    for _ in range(5):
        queue(s, "a", CRIT, 1)
    assert [s.release("a", 1.0)[0].lane for _ in range(6)] == [CRIT] * 5 + [BATCH]


def test_reserved_share_is_kept_for_its_tenant_and_exceeded_when_idle() -> None:
    s = sched(limit=4, reserved={"gold": 2})
    # another tenant floods: it gets the 2 shared slots only
    assert [s.offer("other", STD, 0, 60).kind for _ in range(3)][:2] == ["admit", "admit"]
    assert s.queued == 1
    assert s.offer("gold", BATCH, 0, 60).kind == "admit"
    assert s.offer("gold", BATCH, 0, 60).kind == "admit"
    g = queue(s, "gold", CRIT, 1)  # its share is used, the shared pool too
    s.release("gold", 1.0)  # a reserved slot back: only gold may take it
    assert g.granted and s.queued == 1
    # gold beyond its share when the shared pool is idle
    t = sched(limit=4, reserved={"gold": 2})
    assert [t.offer("gold", STD, 0, 60).kind for _ in range(4)] == ["admit"] * 4
    assert t.offer("other", CRIT, 0, 60).kind == "queue"
    granted = t.release("gold", 1.0)  # a borrowed slot back: shared again
    assert [w.tenant for w in granted] == ["other"]


def test_shed_lane_full_and_lowest_lane_evicted_first() -> None:
    lanes = {n: LaneConfig(queue=2) for n in ("critical", "standard", "batch")}
    s = sched(limit=1, lanes=lanes, max_queued=3)
    s.offer("a", STD, 0, 60)
    queue(s, "a", STD, 1)
    queue(s, "a", STD, 2)
    assert s.offer("a", STD, 3, 60).reason == "lane_queue_full"
    old_b = queue(s, "a", BATCH, 4)  # total 3 = max_queued
    assert s.offer("a", BATCH, 5, 60).reason == "queue_full"  # nothing lower to evict
    d = s.offer("a", CRIT, 6, 60)
    assert d.kind == "queue" and d.evicted is old_b
    assert s.depth == [1, 2, 0] and s.queued == 3
    d = s.offer("a", CRIT, 7, 60)  # then the standard lane's newest
    assert d.evicted is not None and d.evicted.lane == STD and d.evicted.since == 2
    assert s.offer("a", CRIT, 8, 60).reason == "lane_queue_full"


def test_shed_when_the_wait_estimate_exceeds_the_budget() -> None:
    s = sched(limit=1)
    s.offer("a", STD, 0, 60)
    s.release("a", 4.0)  # a slot is held about 4 s
    s.offer("a", STD, 0, 60)
    assert s.offer("a", STD, 0, 3.0).reason == "queue_wait_exceeded"
    assert s.offer("a", STD, 0, 5.0).kind == "queue"
    assert s.offer("a", CRIT, 0, 9.0).kind == "queue"  # 1 ahead in critical + standard: 8 s
    assert s.offer("a", STD, 0, 9.0).reason == "queue_wait_exceeded"  # 2 ahead: 12 s


def test_cancel_gives_the_place_back() -> None:
    s = sched(limit=1)
    s.offer("a", STD, 0, 60)
    w = queue(s, "a", STD)
    assert s.cancel(w) and not s.cancel(w)
    assert s.queued == 0 and s.release("a", 1.0) == []


def test_property_random_workload_keeps_the_invariants() -> None:
    rng = random.Random(19)
    res = {"gold": 2, "silver": 1}
    s = sched(limit=5, reserved=res)
    running: list[str] = []
    waiting: list[Waiter] = []
    for step in range(3000):
        op = rng.random()
        if op < 0.5:
            tenant = rng.choice(["gold", "silver", "x", "y"])
            d = s.offer(tenant, rng.randrange(3), step, 1e9)
            if d.kind == "admit":
                running.append(tenant)
            elif d.waiter is not None:
                waiting.append(d.waiter)
        elif op < 0.9 and running:
            done = running.pop(rng.randrange(len(running)))
            for w in s.release(done, 1.0):
                waiting.remove(w)
                running.append(w.tenant)
        elif waiting:
            w = waiting.pop(rng.randrange(len(waiting)))
            assert s.cancel(w)
        assert s.in_flight == len(running) <= 5
        others = sum(1 for t in running if t not in res)
        assert others <= 5 - sum(res.values())  # reservations never taken by others
        assert s.queued == len(waiting) == sum(s.depth)
        assert not any(s.fits(w.tenant) for w in waiting)  # nobody waits who could run


def test_parse_capacity() -> None:
    cfg = parse_capacity(
        {"max_in_flight": 8, "reserved": {"gold": 3}, "lanes": {"batch": {"queue": 4}}}
    )
    assert cfg.enabled and cfg.reserved == {"gold": 3} and cfg.lanes["batch"].queue == 4
    assert not parse_capacity(None).enabled
    with pytest.raises(ConfigError, match="more than"):
        parse_capacity({"max_in_flight": 2, "reserved": {"a": 3}})
    with pytest.raises(ConfigError, match="lanes"):
        parse_capacity({"max_in_flight": 2, "lanes": {"urgent": {}}})
    with pytest.raises(ConfigError):
        parse_capacity({"max_in_flight": 2, "reserved": {"a": 0}})
