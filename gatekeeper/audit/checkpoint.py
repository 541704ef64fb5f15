"""Signed checkpoints of a node's chain: what a bus writer cannot make disappear.

A checkpoint says "at ``ts`` node ``node``'s chain ended at ``seq`` with ``hash``,
holding ``count`` records" (``count`` equals ``seq``: a chain starts at seq 1). The
node signs it with its audit key and writes it to a local append-only file and to
the ``BH_CHECKPOINTS`` stream; operators ship it further (docs/audit.md). Given the
checkpoints, ``verify_records`` tells a cut tail or a missing node from an intact
trail, which the hash chain alone cannot.

Wire form, one JSON object (one line in the local file)::

    {"v":1,"node":…,"seq":…,"hash":…,"count":…,"ts":<unix float>,"kid":<k4.pid>,"sig":…}

``sig`` is Ed25519 (base64url, unpadded) over
``b"gatekeeper.audit.checkpoint.v1\\n" + orjson.dumps(<every field but sig>, sorted keys)``.
Pure functions; no I/O except ``read_checkpoints`` (a file).
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode

__all__ = [
    "Checkpoint",
    "checkpoint_problem",
    "parse_checkpoint",
    "read_checkpoints",
    "sign_checkpoint",
]

DOMAIN = b"gatekeeper.audit.checkpoint.v1\n"
_FIELDS = frozenset({"v", "node", "seq", "hash", "count", "ts", "kid", "sig"})
MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Checkpoint:
    node: str
    seq: int
    hash: str
    count: int
    ts: float
    kid: str
    sig: str

    def body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "node": self.node,
            "seq": self.seq,
            "hash": self.hash,
            "count": self.count,
            "ts": self.ts,
            "kid": self.kid,
        }

    def signed_bytes(self) -> bytes:
        return DOMAIN + orjson.dumps(self.body(), option=orjson.OPT_SORT_KEYS)

    def to_bytes(self) -> bytes:
        return orjson.dumps({**self.body(), "sig": self.sig}, option=orjson.OPT_SORT_KEYS)


def sign_checkpoint(key: SigningKey, node: str, seq: int, digest: str, ts: float) -> Checkpoint:
    """The node's signed checkpoint of its chain at ``(seq, digest)``."""
    unsigned = Checkpoint(node, seq, digest, seq, ts, pid(bytes(key.verify_key)), "")
    sig = b64encode(key.sign(unsigned.signed_bytes()).signature)
    return Checkpoint(node, seq, digest, seq, ts, unsigned.kid, sig)


def parse_checkpoint(data: bytes | Mapping[str, Any]) -> Checkpoint:
    """A checkpoint's fields, shape-checked (``checkpoint_problem`` checks the signature)."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise ValueError("checkpoint is larger than 4 KiB")
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("checkpoint is not JSON") from None
    if not isinstance(data, Mapping) or set(data) != _FIELDS or data.get("v") != 1:
        raise ValueError("checkpoint does not have the v1 fields")
    for name, kind in (("node", str), ("hash", str), ("kid", str), ("sig", str)):
        if not isinstance(data[name], kind):
            raise ValueError(f"checkpoint field {name!r} is not a string")
    for name in ("seq", "count"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"checkpoint field {name!r} is not a count")
    ts = data["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ValueError("checkpoint field 'ts' is not a number")
    if len(data["hash"]) != 64:
        raise ValueError("checkpoint hash is not 64 hex digits")
    return Checkpoint(
        data["node"], data["seq"], data["hash"], data["count"], float(ts), data["kid"], data["sig"]
    )


def checkpoint_problem(cp: Checkpoint, key: VerifyKey | None) -> str | None:
    """Why ``cp`` is not the genuine checkpoint of its node (``key``: its key at ``cp.ts``)."""
    if key is None:
        return "no key is registered for the node at the checkpoint's time"
    if cp.kid != pid(bytes(key)):
        return f"signed with key {cp.kid}, but the node's key then was {pid(bytes(key))}"
    if cp.count != cp.seq:
        return f"count {cp.count} is not seq {cp.seq}"
    try:
        key.verify(cp.signed_bytes(), b64decode(cp.sig))
    except (BadSignatureError, MalformedToken, ValueError, binascii.Error):
        return "signature does not verify with the node's key"
    return None


def read_checkpoints(path: str | os.PathLike[str]) -> Iterator[Checkpoint | str]:
    """The checkpoints in a JSONL file; a line that is not one comes out as a reason."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_checkpoint(line.strip())
            except ValueError as exc:
                yield f"{os.fspath(path)} line {number}: {exc}"
