"""Privacy Pass wire formats for token type 0x0001 (RFC 9577, RFC 9578): pure, no crypto.

Sizes for VOPRF(P-384, SHA-384): an element is a SEC1 compressed point (``NE`` = 49
bytes), a scalar ``NS`` = 48 bytes, the hash ``NH`` = 48 bytes::

    TokenChallenge  token_type(2) issuer_name<1..2^16-1> redemption_context<0..32>
                    origin_info<0..2^16-1>                                  RFC 9577 §2.1.1
    TokenRequest    token_type(2) truncated_token_key_id(1) blinded_msg[49]  RFC 9578 §5.1
    TokenResponse   evaluate_msg[49] evaluate_proof[96]                     RFC 9578 §5.2
    Token           token_type(2) nonce[32] challenge_digest[32]
                    token_key_id[32] authenticator[48]        (146 bytes)    RFC 9577 §2.2
    BatchTokenRequest   token_type(2) truncated_token_key_id(1) blinded_elements<0..2^16-1>
    BatchTokenResponse  evaluated_elements<0..2^16-1> evaluated_proof[96]
                        (draft-ietf-privacypass-batched-tokens, type 0x0001)

``token_key_id`` is SHA-256 of the serialized issuer public key. Every parser checks
lengths exactly and raises ``WireError``; the callers map it to a 400 or a 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "BATCH_REQUEST_TYPE",
    "BATCH_RESPONSE_TYPE",
    "DIRECTORY_TYPE",
    "NE",
    "NH",
    "NS",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "TOKEN_LEN",
    "TOKEN_TYPE",
    "Token",
    "TokenRequest",
    "WireError",
    "b64url",
    "b64url_decode",
    "batch_request",
    "batch_response",
    "challenge_header",
    "parse_batch_request",
    "parse_batch_response",
    "parse_private_token",
    "parse_token",
    "parse_token_request",
    "token_challenge",
    "token_key_id",
    "token_request",
]

TOKEN_TYPE = 0x0001
NE, NS, NH, NK = 49, 48, 48, 32
TOKEN_LEN = 2 + 32 + 32 + NK + NH
REQUEST_TYPE = "application/private-token-request"
RESPONSE_TYPE = "application/private-token-response"
BATCH_REQUEST_TYPE = "application/private-token-batch-request"
BATCH_RESPONSE_TYPE = "application/private-token-batch-response"
DIRECTORY_TYPE = "application/private-token-issuer-directory"
MAX_BATCH = 100  # blinded elements in one batched request (its evaluation blocks the loop)
_B64_MAX = 4 * ((TOKEN_LEN + 2) // 3)  # longest base64 spelling of one token
_B64 = re.compile(r"[A-Za-z0-9_\-+/]+={0,2}")
_PARAM = re.compile(r'\s*([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^\s,"]*))\s*(?:,|$)')


class WireError(ValueError):
    """Bytes or header text that do not follow the Privacy Pass formats."""


def b64url(data: bytes) -> str:
    """base64url without padding (what RFC 9577 headers and the directory carry)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, limit: int) -> bytes:
    """Decode base64url or base64, padded or not (RFC 9577 §2.2 clients vary)."""
    if len(text) > limit or not _B64.fullmatch(text):
        raise WireError("not base64url")
    text = text.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise WireError("not base64url") from None


def token_key_id(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()


def _vec(data: bytes, size: int) -> bytes:
    if len(data) >= 1 << (8 * size):
        raise WireError("field too long")
    return len(data).to_bytes(size, "big") + data


def token_challenge(issuer_name: str, origin_info: str = "", context: bytes = b"") -> bytes:
    """A TokenChallenge for type 0x0001 (empty ``context``: one challenge for everyone)."""
    if not issuer_name or len(context) not in (0, 32):
        raise WireError("issuer name must be set and redemption context 0 or 32 bytes")
    return (
        TOKEN_TYPE.to_bytes(2, "big")
        + _vec(issuer_name.encode(), 2)
        + _vec(context, 1)
        + _vec(origin_info.encode(), 2)
    )


def challenge_header(challenge: bytes, public_key: bytes | None) -> str:
    """``WWW-Authenticate`` value; without ``token-key`` when the tenant is unknown."""
    value = f'PrivateToken challenge="{b64url(challenge)}"'
    if public_key is not None:
        value += f', token-key="{b64url(public_key)}"'
    return value


@dataclass(frozen=True, slots=True)
class TokenRequest:
    truncated_key_id: int
    blinded: tuple[bytes, ...]  # one element, or a batch


def token_request(key_id: bytes, blinded: bytes) -> bytes:
    return TOKEN_TYPE.to_bytes(2, "big") + key_id[-1:] + blinded


def parse_token_request(data: bytes) -> TokenRequest:
    if len(data) != 3 + NE:
        raise WireError(f"a TokenRequest is {3 + NE} bytes, got {len(data)}")
    if int.from_bytes(data[:2], "big") != TOKEN_TYPE:
        raise WireError("unsupported token type (this issuer serves 0x0001)")
    return TokenRequest(data[2], (data[3:],))


def batch_request(key_id: bytes, blinded: list[bytes]) -> bytes:
    return TOKEN_TYPE.to_bytes(2, "big") + key_id[-1:] + _vec(b"".join(blinded), 2)


def parse_batch_request(data: bytes) -> TokenRequest:
    if len(data) < 5 or int.from_bytes(data[:2], "big") != TOKEN_TYPE:
        raise WireError("not a BatchTokenRequest of token type 0x0001")
    size = int.from_bytes(data[3:5], "big")
    body = data[5:]
    if size != len(body) or size == 0 or size % NE or size // NE > MAX_BATCH:
        raise WireError(f"blinded_elements must be 1..{MAX_BATCH} elements of {NE} bytes")
    return TokenRequest(data[2], tuple(body[i : i + NE] for i in range(0, size, NE)))


def batch_response(evaluated: list[bytes], proof: bytes) -> bytes:
    return _vec(b"".join(evaluated), 2) + proof


def parse_batch_response(data: bytes, count: int) -> tuple[list[bytes], bytes]:
    if len(data) != 2 + count * NE + 2 * NS or int.from_bytes(data[:2], "big") != count * NE:
        raise WireError("BatchTokenResponse has the wrong length")
    body = data[2 : 2 + count * NE]
    return [body[i : i + NE] for i in range(0, len(body), NE)], data[2 + count * NE :]


@dataclass(frozen=True, slots=True)
class Token:
    nonce: bytes
    challenge_digest: bytes
    key_id: bytes
    authenticator: bytes

    @property
    def token_input(self) -> bytes:
        """What the authenticator is the VOPRF output of (RFC 9578 §5.3)."""
        return TOKEN_TYPE.to_bytes(2, "big") + self.nonce + self.challenge_digest + self.key_id

    def to_bytes(self) -> bytes:
        return self.token_input + self.authenticator


def parse_token(data: bytes) -> Token:
    if len(data) != TOKEN_LEN:
        raise WireError(f"a token of type 0x0001 is {TOKEN_LEN} bytes, got {len(data)}")
    if int.from_bytes(data[:2], "big") != TOKEN_TYPE:
        raise WireError("unsupported token type (this gateway redeems 0x0001)")
    return Token(data[2:34], data[34:66], data[66:98], data[98:])


def parse_private_token(authorization: str) -> Token:
    """The token in ``Authorization: PrivateToken token="…"`` (RFC 9577 §2.2)."""
    scheme, _, params = authorization.strip().partition(" ")
    if scheme.lower() != "privatetoken":
        raise WireError("not a PrivateToken authorization")
    found: dict[str, str] = {}
    rest = params.strip()
    while rest:
        match = _PARAM.match(rest)
        if match is None:
            raise WireError("malformed PrivateToken parameters")
        name = match.group(1).lower()
        if name in found:
            raise WireError(f"parameter {name!r} given twice")
        found[name] = match.group(2) if match.group(2) is not None else match.group(3)
        rest = rest[match.end() :].strip()
    if "token" not in found:
        raise WireError('PrivateToken authorization has no token="…" parameter')
    return parse_token(b64url_decode(found["token"], limit=_B64_MAX))
