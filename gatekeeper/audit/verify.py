"""Check exported audit records: content hashes, signatures, and each node's chain.

Records of many nodes interleave freely in ``BH_AUDIT``; only each node's own
order matters. Every record is checked on its own (``bad_hash``,
``bad_signature``), then against what came before it from the same node
(``duplicate``, ``out_of_order``); links and gaps are checked once all records
are in, so a swap of two records is reported once, as ``out_of_order``.

Issue kinds:

* ``malformed``        not JSON, not an object, or chain fields missing/mistyped
* ``bad_hash``         the content does not match the stored ``hash`` (altered)
* ``bad_signature``    ``sig`` is not the node key's signature of ``hash``
* ``unknown_node_key`` no public key was given for a node (signatures unchecked)
* ``broken_link``      ``prev`` is not the ``hash`` of the node's previous seq
* ``gap``              seqs missing between a node's first and last seq
* ``duplicate``        a seq seen twice for one node (request ids come from clients
                       and may repeat; two records of one id are two requests)
* ``out_of_order``     a seq lower than one already seen from the same node

With ``require_genesis=True`` (what ``gatekeeper audit verify`` does) and the nodes'
signed checkpoints (``gatekeeper.audit.checkpoint``), the ends are evidence too —
see ``gatekeeper.audit.trail``: ``cut_head``, ``cut_tail``, ``missing_node``,
``checkpoint_mismatch``, ``bad_checkpoint``, ``shrunk_stream``, ``stream_config``.
Without them a chain's beginning and end prove nothing: records cut off the very
end of a node's chain leave no trace until that node's next record.

Keys: a mapping node -> 32-byte public key, or a key history (``key_at(node, t)``,
e.g. ``gatekeeper.control.registry.NodeKeyRegistry``): each record is checked
with the key the node had at the record's ``ts``, so a legitimate key change
keeps the genuine trail valid and a key registered later cannot vouch for older
records. A record whose hash or signature fails is reported and does not take the
place of a genuine record of the same seq (a forged record injected on the bus).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gatekeeper.audit.chain import GENESIS, record_hash
from gatekeeper.audit.checkpoint import Checkpoint, checkpoint_problem
from gatekeeper.audit.keys import (
    KeyHistory,
    StaticKeys,
    node_key,
    record_epoch,
    signature_problem,
)
from gatekeeper.audit.trail import (
    Finding,
    NodeChain,
    StreamFacts,
    missing_nodes,
    node_trail_issues,
    stream_issues,
)

__all__ = [
    "Issue",
    "IssueKind",
    "KeyHistory",
    "NodeSummary",
    "UnreadableLine",
    "VerifyReport",
    "read_jsonl",
    "verify_records",
]

IssueKind = Literal[
    "malformed",
    "bad_hash",
    "bad_signature",
    "unknown_node_key",
    "broken_link",
    "gap",
    "duplicate",
    "out_of_order",
    "cut_head",
    "cut_tail",
    "missing_node",
    "checkpoint_mismatch",
    "bad_checkpoint",
    "shrunk_stream",
    "stream_config",
]


@dataclass(frozen=True, slots=True)
class UnreadableLine:
    """A line of an export that is not JSON; ``verify_records`` reports it."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding. ``position`` is the record's 1-based place in the input."""

    kind: IssueKind
    detail: str
    node_id: str | None = None
    seq: int | None = None
    request_id: str | None = None
    position: int | None = None

    def render(self) -> str:
        where = [f"node {self.node_id}"] if self.node_id is not None else []
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.request_id is not None:
            where.append(f"request {self.request_id}")
        if self.position is not None:
            where.append(f"record #{self.position}")
        return f"{self.kind:<16} {', '.join(where) or '-'}: {self.detail}"


@dataclass(frozen=True, slots=True)
class NodeSummary:
    node_id: str
    count: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    nodes: tuple[NodeSummary, ...]
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def kinds(self) -> frozenset[IssueKind]:
        return frozenset(issue.kind for issue in self.issues)

    def render(self) -> str:
        """A human-readable summary: verdict, one line per node, one per issue."""
        verdict = "OK" if self.ok else f"FAILED, {len(self.issues)} issue(s)"
        counts = f"{_plural(self.records, 'record')}, {_plural(len(self.nodes), 'node')}"
        lines = [f"audit verification: {verdict} — {counts}"]
        for node in self.nodes:
            span = f"seq {node.first_seq}..{node.last_seq}"
            lines.append(f"  node {node.node_id}: {_plural(node.count, 'record')}, {span}")
        lines.extend(f"  {issue.render()}" for issue in self.issues)
        return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Mapping[str, Any] | UnreadableLine]:
    """The records of an export, one JSON object per line; blank lines are skipped.

    A line that is not JSON comes out as an ``UnreadableLine`` for ``verify_records``
    to report, so ``verify_records(read_jsonl(path), keys)`` never crashes on input.
    """
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield UnreadableLine(number, f"line {number} is not JSON: {exc}")


@dataclass(frozen=True, slots=True)
class _Link:
    seq: int
    prev: str
    hash: str
    sig: str
    sig_kid: str
    request_id: str | None


def _link_of(item: Mapping[str, Any]) -> _Link | str:
    """The chain fields of a record, or why they are unusable."""
    for name in ("prev", "hash", "sig", "sig_kid"):
        if not isinstance(item.get(name), str):
            return f"{name!r} is missing or not a string"
    seq = item.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return "'seq' is missing or not a positive integer"
    if len(item["hash"]) != 64 or len(item["prev"]) != 64:
        return "'hash' and 'prev' must be 64 hex digits"
    request_id = item.get("request_id")
    return _Link(
        seq,
        item["prev"],
        item["hash"],
        item["sig"],
        item["sig_kid"],
        request_id if isinstance(request_id, str) else None,
    )


def _missing(first: int, last: int) -> str:
    return f"missing seq {first}" if first == last else f"missing seq {first}..{last}"


class _NodeLedger:
    """What one node's records said, in arrival order (first genuine copy of each seq)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.links: dict[int, tuple[_Link, int]] = {}
        self.forged: set[int] = set()  # seqs held only by records that failed their check
        self.highest = 0
        self.unsigned = 0

    def issue(self, kind: IssueKind, detail: str, link: _Link, position: int) -> Issue:
        return Issue(kind, detail, self.node_id, link.seq, link.request_id, position)

    def chain_issues(self) -> Iterator[Issue]:
        """Broken links and gaps, in seq order."""
        seqs = sorted(self.links)
        for before, seq in itertools.pairwise(seqs):
            if seq > before + 1:
                yield Issue("gap", _missing(before + 1, seq - 1), self.node_id, before + 1)
        for seq in seqs:
            link, position = self.links[seq]
            expected = GENESIS if seq == 1 else self._hash_of(seq - 1)
            if expected is not None and link.prev != expected:
                detail = f"prev {link.prev[:12]}… is not the hash of seq {seq - 1}"
                yield self.issue("broken_link", detail, link, position)

    def _hash_of(self, seq: int) -> str | None:
        found = self.links.get(seq)
        return found[0].hash if found else None

    def chain(self) -> NodeChain:
        return NodeChain(
            self.node_id, {seq: (link.hash, link.prev) for seq, (link, _) in self.links.items()}
        )

    def summary(self) -> NodeSummary:
        seqs = self.links.keys()
        return NodeSummary(self.node_id, len(seqs), min(seqs), max(seqs))


class _Verifier:
    def __init__(self, keys: Mapping[str, bytes] | KeyHistory, check_order: bool) -> None:
        self.keys: KeyHistory = StaticKeys(keys) if isinstance(keys, Mapping) else keys
        self.check_order = check_order
        self.ledgers: dict[str, _NodeLedger] = {}
        self.issues: list[Issue] = []
        self.count = 0

    def feed(self, position: int, item: Mapping[str, Any] | UnreadableLine) -> None:
        self.count += 1
        if isinstance(item, UnreadableLine):
            self.issues.append(Issue("malformed", item.reason, position=position))
            return
        node_id = item.get("node_id") if isinstance(item, Mapping) else None
        if not isinstance(node_id, str):
            detail = "not an object with a string 'node_id'"
            self.issues.append(Issue("malformed", detail, position=position))
            return
        link = _link_of(item)
        if isinstance(link, str):
            self.issues.append(Issue("malformed", link, node_id=node_id, position=position))
            return
        ledger = self.ledgers.setdefault(node_id, _NodeLedger(node_id))
        genuine = self._check_content(ledger, item, link, position)
        self._check_order(ledger, link, position, genuine)

    def _check_content(
        self, ledger: _NodeLedger, item: Mapping[str, Any], link: _Link, position: int
    ) -> bool:
        try:
            actual = record_hash(item)
        except (TypeError, ValueError) as exc:  # not JSON-encodable, lone surrogates, NaN
            self.issues.append(
                ledger.issue("malformed", f"cannot be encoded: {exc}", link, position)
            )
            return False
        if actual != link.hash:
            detail = "content does not match its hash (record altered)"
            self.issues.append(ledger.issue("bad_hash", detail, link, position))
            return False
        when = record_epoch(item.get("ts"))
        verify_key = self.keys.key_at(ledger.node_id, when) if when is not None else None
        if verify_key is None:
            ledger.unsigned += 1
            return True
        problem = signature_problem(link.hash, link.sig, link.sig_kid, node_key(bytes(verify_key)))
        if problem is not None:
            self.issues.append(ledger.issue("bad_signature", problem, link, position))
            return False
        return True

    def _check_order(self, ledger: _NodeLedger, link: _Link, position: int, genuine: bool) -> None:
        seen = ledger.links.get(link.seq)
        if seen is not None and link.seq in ledger.forged and genuine:
            ledger.forged.discard(link.seq)  # the genuine record takes the forged one's place
        elif seen is not None:
            if genuine:
                same = (
                    "an identical copy" if seen[0].hash == link.hash else "different content (fork)"
                )
                detail = f"seq already seen at record #{seen[1]}, {same}"
                self.issues.append(ledger.issue("duplicate", detail, link, position))
            return
        elif not genuine:
            ledger.forged.add(link.seq)
        if link.seq < ledger.highest and self.check_order:
            detail = f"arrived after seq {ledger.highest}"
            self.issues.append(ledger.issue("out_of_order", detail, link, position))
        ledger.highest = max(ledger.highest, link.seq)
        ledger.links[link.seq] = (link, position)

    def _checkpoints(
        self, checkpoints: Iterable[Checkpoint | str]
    ) -> tuple[dict[str, list[Checkpoint]], list[Issue]]:
        """The checkpoints whose signature verifies, by node; the others as issues."""
        good: dict[str, list[Checkpoint]] = {}
        bad: list[Issue] = []
        for cp in checkpoints:
            if isinstance(cp, str):
                bad.append(Issue("bad_checkpoint", cp))
                continue
            problem = checkpoint_problem(cp, self.keys.key_at(cp.node, cp.ts))
            if problem is not None:
                bad.append(Issue("bad_checkpoint", f"seq {cp.seq}: {problem}", cp.node))
            else:
                good.setdefault(cp.node, []).append(cp)
        return good, bad

    def finish(self, options: _Options) -> VerifyReport:
        issues = list(self.issues)
        checkpoints, bad = self._checkpoints(options.checkpoints)
        issues.extend(bad)
        for facts in options.streams:
            issues.extend(_from(f) for f in stream_issues(facts))
        for node_id in sorted(self.ledgers):
            ledger = self.ledgers[node_id]
            if ledger.unsigned:
                detail = f"no public key given; {ledger.unsigned} signature(s) not checked"
                issues.append(Issue("unknown_node_key", detail, node_id))
            issues.extend(ledger.chain_issues())
            found = node_trail_issues(
                ledger.chain(),
                checkpoints.get(node_id, []),
                require_genesis=options.require_genesis,
                from_checkpoint=options.from_checkpoint,
            )
            issues.extend(_from(f) for f in found)
        issues.extend(_from(f) for f in missing_nodes(self.ledgers, checkpoints))
        nodes = tuple(self.ledgers[node_id].summary() for node_id in sorted(self.ledgers))
        return VerifyReport(self.count, nodes, tuple(issues))


def _from(finding: Finding) -> Issue:
    return Issue(finding.kind, finding.detail, finding.node_id, finding.seq)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _Options:
    require_genesis: bool
    from_checkpoint: bool
    checkpoints: Iterable[Checkpoint | str]
    streams: Iterable[StreamFacts]


def verify_records(
    records: Iterable[Mapping[str, Any] | UnreadableLine],
    public_keys: Mapping[str, bytes] | KeyHistory,
    *,
    require_genesis: bool = False,
    check_order: bool = True,
    checkpoints: Iterable[Checkpoint | str] = (),
    from_checkpoint: bool = False,
    streams: Iterable[StreamFacts] = (),
) -> VerifyReport:
    """Verify records in stream order against each node's Ed25519 public key(s).

    ``public_keys``: node -> 32-byte key, or a ``KeyHistory`` (the key at each record's
    ``ts``). A mapped key that is not 32 bytes raises ``ValueError``; nothing in
    ``records`` does. ``check_order=False`` skips ``out_of_order``: seq and prev
    already prove each node's order, so a stream allowed to reorder can be verified.
    ``require_genesis`` insists on each node's seq 1 (``cut_head``), unless
    ``from_checkpoint`` and a checkpoint anchors the first record present.
    ``checkpoints`` (parsed ones, or reasons a line was not one) are checked against
    each node's chain; ``streams`` are the live streams' state and config problems.
    """
    verifier = _Verifier(public_keys, check_order)
    for position, item in enumerate(records, start=1):
        verifier.feed(position, item)
    return verifier.finish(
        _Options(require_genesis, from_checkpoint, tuple(checkpoints), tuple(streams))
    )
