"""The ends of each node's chain, and the stream itself, against signed checkpoints.

A hash chain proves what lies between its first and last record, not that those
are the first and last the node wrote. These pure checks close that gap:

* ``cut_head``            a node's records do not start at seq 1 (its genesis), and no
                          checkpoint anchors where they do start (``from_checkpoint``)
* ``cut_tail``            a node's newest checkpoint names a seq past its last record
* ``missing_node``        a node has checkpoints but no records at all
* ``checkpoint_mismatch`` a checkpoint's hash is not the hash of that seq's record
* ``bad_checkpoint``      a checkpoint that is malformed or not signed by its node's key
* ``shrunk_stream``       the stream lost messages: ``first_seq`` above 1, or deleted
                          messages inside (a lowered ``max_msgs``/``max_bytes``/``max_age``)
* ``stream_config``       the live stream keeps less than Gatekeeper provisioned
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from gatekeeper.audit.checkpoint import Checkpoint
from gatekeeper.audit.record import rfc3339_ms

__all__ = [
    "Finding",
    "NodeChain",
    "StreamFacts",
    "missing_nodes",
    "node_trail_issues",
    "stream_issues",
]


class Finding(NamedTuple):
    """One problem found here; ``verify_records`` reports it as an ``Issue``."""

    kind: str
    detail: str
    node_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What ``stream_info`` said about a stream (state and config problems)."""

    name: str
    first_seq: int
    last_seq: int
    messages: int
    config_problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeChain:
    """The records of one node that made it into its chain: seq -> (hash, prev)."""

    node_id: str
    links: Mapping[int, tuple[str, str]]


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _anchored(chain: NodeChain, first: int, checkpoints: Iterable[Checkpoint]) -> bool:
    """True if a checkpoint vouches for where the records start (``--from-checkpoint``)."""
    prev_of_first = chain.links[first][1]
    for cp in checkpoints:
        if cp.seq == first - 1 and cp.hash == prev_of_first:
            return True
        if cp.seq == first and cp.hash == chain.links[first][0]:
            return True
    return False


def node_trail_issues(
    chain: NodeChain,
    checkpoints: list[Checkpoint],
    *,
    require_genesis: bool,
    from_checkpoint: bool,
) -> Iterator[Finding]:
    """Head, tail and checkpoint agreement of one node's chain (``checkpoints``: verified)."""
    node, links = chain.node_id, chain.links
    first, last = min(links), max(links)
    if (
        require_genesis
        and first > 1
        and not (from_checkpoint and _anchored(chain, first, checkpoints))
    ):
        how = (
            "no checkpoint anchors the first record present"
            if from_checkpoint
            else "the genesis record is missing (or pass --from-checkpoint)"
        )
        yield Finding("cut_head", f"missing {_span(1, first - 1)}: {how}", node, 1)
    for cp in checkpoints:
        found = links.get(cp.seq)
        if found is not None and found[0] != cp.hash:
            detail = (
                f"checkpoint of {rfc3339_ms(cp.ts)} names hash {cp.hash[:12]}…, "
                f"the record has {found[0][:12]}…"
            )
            yield Finding("checkpoint_mismatch", detail, node, cp.seq)
    newest = max(checkpoints, key=lambda cp: cp.seq, default=None)
    if newest is not None and newest.seq > last:
        detail = (
            f"the checkpoint of {rfc3339_ms(newest.ts)} says the chain reached seq "
            f"{newest.seq}; the records end at seq {last}: {_span(last + 1, newest.seq)} missing"
        )
        yield Finding("cut_tail", detail, node, last + 1)


def missing_nodes(
    present: Iterable[str], checkpoints: Mapping[str, list[Checkpoint]]
) -> Iterator[Finding]:
    """Nodes that signed checkpoints of a non-empty chain but have no record here."""
    have = set(present)
    for node in sorted(set(checkpoints) - have):
        newest = max(checkpoints[node], key=lambda cp: cp.seq, default=None)
        if newest is not None and newest.seq > 0:
            detail = (
                f"no record at all, but its checkpoint of {rfc3339_ms(newest.ts)} "
                f"says it wrote {newest.count}"
            )
            yield Finding("missing_node", detail, node)


def stream_issues(facts: StreamFacts) -> Iterator[Finding]:
    """A stream that lost messages or keeps fewer than provisioned."""
    if facts.first_seq > 1 and (facts.messages or facts.last_seq):
        detail = (
            f"{facts.name} first_seq is {facts.first_seq}: stream messages "
            f"1..{facts.first_seq - 1} are gone (retention lowered, or purged)"
        )
        yield Finding("shrunk_stream", detail)
    inside = facts.last_seq - facts.first_seq + 1 - facts.messages if facts.messages else 0
    if inside > 0:
        yield Finding("shrunk_stream", f"{facts.name}: {inside} message(s) deleted inside")
    for problem in facts.config_problems:
        yield Finding("stream_config", f"{facts.name} {problem} (as provisioned)")
