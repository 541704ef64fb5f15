"""UTC budget windows and the counter ids built from them.

A window is part of each counter's identity, so a new minute, day or month is
simply a new counter that starts at zero; nothing is ever reset in place.

Window ids (UTC)::

    minute  min202611221405   rolls at the next minute
    hour    h2026112214       rolls at the next hour
    day     d20261122         rolls at 00:00 UTC
    month   m202611           rolls at 00:00 UTC on the 1st
    total   total             never rolls

Counter ids are ``{kind}.{key_id}.{window_id}``, e.g. ``tok.key_7Hq2.d20261122``:

    kind    tok (tokens) | usd (micro-USD) | req (requests) | tpm (tokens per minute)
            | pass (Privacy Passes issued)
    key_id  the API key's id: [A-Za-z0-9_=-]{1,128}
    window  as above

Every part uses only ``[A-Za-z0-9_=-]`` and the separator is ``.``, so a counter
id is valid NATS subject/KV key material as is, and ``{counter_id}.{node_id}``
names one node's slot (``tok.*.d20261122.>`` style wildcards then select by
kind or window).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

Period = Literal["minute", "hour", "day", "month", "total"]
Kind = Literal["tok", "usd", "req", "tpm", "pass"]

PERIODS: tuple[Period, ...] = get_args(Period)
KINDS: tuple[Kind, ...] = get_args(Kind)
RATE_KINDS: frozenset[str] = frozenset({"req", "tpm", "pass"})
"""Kinds that are rate limits (RateLimited); the others are budgets (BudgetExceeded)."""

_TOKEN = re.compile(r"[A-Za-z0-9_=-]{1,128}")
_WINDOW = re.compile(r"min(\d{12})|h(\d{10})|d(\d{8})|m(\d{6})|total")


@dataclass(frozen=True, slots=True)
class CounterKey:
    """A parsed counter id."""

    kind: Kind
    key_id: str
    window_id: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.key_id}.{self.window_id}"


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("budget windows need a timezone-aware datetime")
    return now.astimezone(UTC)


def window_id(period: Period, now: datetime) -> str:
    """The id of the ``period`` window containing ``now`` (UTC)."""
    t = _utc(now)
    if period == "minute":
        return f"min{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}"
    if period == "hour":
        return f"h{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}"
    if period == "day":
        return f"d{t.year:04d}{t.month:02d}{t.day:02d}"
    if period == "month":
        return f"m{t.year:04d}{t.month:02d}"
    if period == "total":
        return "total"
    raise ValueError(f"unknown budget period {period!r}")


def _next_month(year: int, month: int) -> datetime:
    if month == 12:
        return datetime(year + 1, 1, 1, tzinfo=UTC)
    return datetime(year, month + 1, 1, tzinfo=UTC)


def window_reset(period: Period, now: datetime) -> datetime | None:
    """When the ``period`` window containing ``now`` rolls over; None for ``total``."""
    t = _utc(now)
    if period == "minute":
        return t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if period == "hour":
        return t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if period == "day":
        return datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
    if period == "month":
        return _next_month(t.year, t.month)
    if period == "total":
        return None
    raise ValueError(f"unknown budget period {period!r}")


def seconds_to_reset(period: Period, now: datetime) -> float | None:
    """Seconds from ``now`` until the window rolls; None for ``total``."""
    reset = window_reset(period, now)
    return None if reset is None else (reset - _utc(now)).total_seconds()


def window_end(window: str) -> datetime | None:
    """When the window named by ``window`` ends (parsed from the id); None for ``total``."""
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise ValueError(f"not a budget window id: {window!r}")
    minute, hour, day, month = match.groups()
    if minute is not None:
        start = datetime.strptime(minute, "%Y%m%d%H%M").replace(tzinfo=UTC)
        return start + timedelta(minutes=1)
    if hour is not None:
        return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=UTC) + timedelta(hours=1)
    if day is not None:
        return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1)
    if month is not None:
        return _next_month(int(month[:4]), int(month[4:]))
    return None


def counter_id(kind: Kind, key_id: str, window: str) -> str:
    """Build ``{kind}.{key_id}.{window}``; ValueError if a part is not key-safe."""
    if kind not in KINDS:
        raise ValueError(f"unknown counter kind {kind!r}")
    if _TOKEN.fullmatch(key_id) is None:
        raise ValueError(f"key id must match [A-Za-z0-9_=-]{{1,128}}, got {key_id!r}")
    if _WINDOW.fullmatch(window) is None:
        raise ValueError(f"not a budget window id: {window!r}")
    return f"{kind}.{key_id}.{window}"


def parse_counter_id(cid: str) -> CounterKey:
    """Split a counter id back into its parts; ValueError if malformed."""
    parts = cid.split(".")
    if len(parts) != 3:
        raise ValueError(f"counter id must be kind.key_id.window, got {cid!r}")
    kind, key_id, window = parts
    if kind not in KINDS:
        raise ValueError(f"unknown counter kind {kind!r} in {cid!r}")
    counter_id(kind, key_id, window)
    return CounterKey(kind, key_id, window)


def is_node_id(node_id: str) -> bool:
    """True if ``node_id`` is safe as KV key material (same alphabet as key ids)."""
    return _TOKEN.fullmatch(node_id) is not None
