"""A cached answer as the bytes another node serves to a client: signed, bound, checked.

    value   = header JSON + b"\\n" + payload           (payload absent: in the Object Store)
    header  = {"v": 1, "key", "tenant", "model", "kind": "json" | "sse", "usage": [p, c],
               "exp": unix, "node", "size", "sha256": hex of payload, "sig"}
    sig     = Ed25519(b"gatekeeper.cache.v1\\n" + canonical header without "sig")

signed by the writing node's key. ``open_entry`` accepts an entry only if its header
parses, names the KV key and tenant it was read for, has not expired, is signed by a
registered node's key, and its payload hashes to the signed digest. Anything else is
``EntryRejected``, which the cache treats as a miss: a NATS writer without a node
key cannot plant an answer, and an entry cannot be moved to another key or tenant.
Pure: the caller supplies the keys and the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.providers.base import Usage

__all__ = ["ENTRY_DOMAIN", "CachedAnswer", "EntryRejected", "open_entry", "seal_entry"]

ENTRY_DOMAIN = b"gatekeeper.cache.v1\n"
MAX_HEADER = 4096
_HEADER_FIELDS = frozenset(
    {"v", "key", "tenant", "model", "kind", "usage", "exp", "node", "size", "sha256", "sig"}
)


class EntryRejected(Exception):
    """An entry that is not served; ``reason`` is short (metrics, logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One complete answer: a JSON body, or the SSE chunks of a stream (no ``[DONE]``)."""

    model: str
    usage: Usage | None
    body: bytes = b""  # kind json
    chunks: tuple[bytes, ...] = ()  # kind sse

    @property
    def kind(self) -> str:
        return "sse" if self.chunks else "json"

    def payload(self) -> bytes:
        if not self.chunks:
            return self.body
        return orjson.dumps([c.decode("utf-8") for c in self.chunks])


def _message(header: dict[str, Any]) -> bytes:
    return ENTRY_DOMAIN + orjson.dumps(header, option=orjson.OPT_SORT_KEYS)


def seal_entry(
    key: SigningKey, node: str, kv_key: str, tenant: str, answer: CachedAnswer, exp: float
) -> tuple[bytes, bytes]:
    """``(header line, payload)`` for ``kv_key``; raises ``UnicodeDecodeError`` for
    a stream whose chunks are not UTF-8 (not storable)."""
    payload = answer.payload()
    usage = [answer.usage.prompt_tokens, answer.usage.completion_tokens] if answer.usage else None
    header: dict[str, Any] = {
        "v": 1,
        "key": kv_key,
        "tenant": tenant,
        "model": answer.model,
        "kind": answer.kind,
        "usage": usage,
        "exp": float(exp),
        "node": node,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    header["sig"] = b64encode(key.sign(_message(header)).signature)
    return orjson.dumps(header), payload


def split_value(value: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the inline payload (``b""`` when it lives in the Object Store)."""
    line, _, payload = value.partition(b"\n")
    if len(line) > MAX_HEADER:
        raise EntryRejected("oversized_header")
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise EntryRejected("not_json") from None
    if not isinstance(header, dict) or set(header) != _HEADER_FIELDS or header["v"] != 1:
        raise EntryRejected("wrong_shape")
    return header, payload


def open_entry(
    header: dict[str, Any],
    payload: bytes,
    kv_key: str,
    tenant: str,
    now: float,
    keys_of: Callable[[str], Sequence[VerifyKey]],
) -> CachedAnswer:
    """The answer in a header + payload read for ``kv_key`` of ``tenant``, or
    ``EntryRejected``. ``keys_of(node)``: that node's registered public keys."""
    if header["key"] != kv_key or header["tenant"] != tenant:
        raise EntryRejected("key_mismatch")
    exp = header["exp"]
    if not isinstance(exp, int | float) or exp <= now:
        raise EntryRejected("expired")
    node, sig = header["node"], header["sig"]
    if not isinstance(node, str) or not isinstance(sig, str):
        raise EntryRejected("wrong_shape")
    try:
        signature = b64decode(sig)
    except MalformedToken:
        raise EntryRejected("bad_signature") from None
    message = _message({k: v for k, v in header.items() if k != "sig"})
    for verify_key in reversed(keys_of(node)):
        try:
            verify_key.verify(message, signature)
            break
        except (BadSignatureError, ValueError):
            continue
    else:
        raise EntryRejected("bad_signature")
    if len(payload) != header["size"] or hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise EntryRejected("digest_mismatch")
    return _answer(header, payload)


def _answer(header: dict[str, Any], payload: bytes) -> CachedAnswer:
    usage_raw, model, kind = header["usage"], header["model"], header["kind"]
    usage = None
    if isinstance(usage_raw, list) and len(usage_raw) == 2:
        usage = Usage(int(usage_raw[0]), int(usage_raw[1]))
    if not isinstance(model, str) or kind not in ("json", "sse"):
        raise EntryRejected("wrong_shape")
    if kind == "json":
        return CachedAnswer(model, usage, body=payload)
    try:
        chunks = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise EntryRejected("not_json") from None
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) for c in chunks):
        raise EntryRejected("wrong_shape")
    return CachedAnswer(model, usage, chunks=tuple(c.encode("utf-8") for c in chunks))
