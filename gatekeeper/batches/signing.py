"""Signed batch state: every value one node writes and another acts on.

The same envelope as ``control.envelope`` (``{"v", "key", "iat", "body", "kid",
"sig"}`` over ``control.envelope.signed_message``), without its 64 KiB cap: a line's
result may be larger. The signer must be a registered node key
(``control.registry``); ``key`` binds the value to its KV key or job subject, so a
value copied elsewhere is refused.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.control.envelope import signed_message

MAX_SIGNED_BYTES = 1024 * 1024


class KeyOwners(Protocol):
    def owner_of(self, kid: str) -> tuple[str, VerifyKey] | None: ...


def seal_value(key: SigningKey, name: str, body: Any, now: float | None = None) -> bytes:
    iat = float(time.time() if now is None else now)
    kid = pid(bytes(key.verify_key))
    signature = key.sign(signed_message(name, iat, body, kid)).signature
    doc = {"v": 1, "key": name, "iat": iat, "body": body, "kid": kid, "sig": b64encode(signature)}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def open_value(data: bytes, name: str, owners: KeyOwners) -> Any | None:
    """The body of a value signed for ``name`` by a registered node key, else None."""
    if len(data) > MAX_SIGNED_BYTES:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("key") != name:
        return None
    kid, sig, iat = doc.get("kid"), doc.get("sig"), doc.get("iat")
    if not isinstance(kid, str) or not isinstance(sig, str):
        return None
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
        return None
    owner = owners.owner_of(kid)
    if owner is None:
        return None
    try:
        owner[1].verify(signed_message(name, iat, doc.get("body"), kid), b64decode(sig))
    except (BadSignatureError, MalformedToken, ValueError):
        return None
    return doc.get("body")
