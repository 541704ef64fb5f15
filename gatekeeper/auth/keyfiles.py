"""The issuer's side: key files on disk and minting API tokens.

``init_keys(DIR)`` writes two text files, each one PASERK line:

* ``DIR/issuer.key`` — ``k4.secret.…``, created with mode 0600 (never overwritten);
* ``DIR/issuer.pub`` — ``k4.public.…``, safe to copy to every gateway node.

``load_secret_key`` refuses a key file that group or others could read or write.

A minted token's ``sub`` is a fresh API key id ``key_`` + 16 lowercase hex digits
(64 random bits) — the name revocation uses; its ``jti`` is 32 hex digits
(128 random bits), unique per token.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gatekeeper.auth import paseto
from gatekeeper.auth.claims import (
    IMPLICIT_ASSERTION,
    Budget,
    CacheClaim,
    Claims,
    Concurrency,
    Passes,
    Period,
    Routing,
    encode_footer,
    parse_claims,
)
from gatekeeper.auth.paserk import (
    decode_public,
    decode_secret,
    encode_public,
    encode_secret,
    generate_secret_key,
    pid,
    public_key_of,
)

__all__ = [
    "PUBLIC_KEY_FILE",
    "SECRET_KEY_FILE",
    "KeyFileError",
    "init_keys",
    "load_public_key",
    "load_secret_key",
    "mint",
    "new_key_id",
    "parse_ttl",
]

SECRET_KEY_FILE = "issuer.key"
PUBLIC_KEY_FILE = "issuer.pub"
DEFAULT_ISSUER = "gatekeeper"
_TTL = re.compile(r"([1-9][0-9]*)([dhms])")
_TTL_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class KeyFileError(ValueError):
    """A key file is missing, unreadable, too open, or not the PASERK it should be."""


def init_keys(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Create a new issuer key pair in ``directory``; returns ``(kid, k4.public text)``."""
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_key = generate_secret_key()
    public_text = encode_public(public_key_of(secret_key))
    secret_path = root / SECRET_KEY_FILE
    try:
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{secret_path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(encode_secret(secret_key) + "\n")
    (root / PUBLIC_KEY_FILE).write_text(public_text + "\n", encoding="ascii")
    return pid(public_key_of(secret_key)), public_text


def _read_text(path: Path, *, private: bool) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="strict") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if private and mode & 0o077:
            raise KeyFileError(
                f"issuer key file {path} has mode {mode:04o}: group/other may access it; "
                f"run 'chmod 600 {path}'"
            )
        try:
            return handle.read(4096)
        except UnicodeDecodeError:
            raise KeyFileError(f"key file {path} is not ASCII text") from None


def load_secret_key(path: str | os.PathLike[str]) -> bytes:
    """The 64-byte secret key in a ``k4.secret`` file that only its owner can access."""
    text = _read_text(Path(path), private=True)
    try:
        return decode_secret(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte public key in a ``k4.public`` file."""
    text = _read_text(Path(path), private=False)
    try:
        return decode_public(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def parse_ttl(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"45m"`` or ``"3600s"`` as a positive timedelta."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad TTL {text!r}: use a positive number and d, h, m or s, e.g. 30d")
    return timedelta(**{_TTL_UNITS[match.group(2)]: int(match.group(1))})


def new_key_id() -> str:
    """A fresh API key id: ``key_`` + 16 lowercase hex digits."""
    return "key_" + secrets.token_hex(8)


def mint(
    secret_key: bytes,
    tenant: str,
    budget_tokens: int | None = None,
    budget_usd: float | None = None,
    budget_period: Period = "month",
    rpm: int | None = None,
    tpm: int | None = None,
    routing_mode: str | None = None,
    quality_threshold: float | None = None,
    models: Sequence[str] | None = None,
    ttl: timedelta = timedelta(days=30),
    budget_mode: str | None = None,
    now: datetime | None = None,
    *,
    issuer: str = DEFAULT_ISSUER,
    allow_routing_override: bool = True,
    concurrency: Concurrency | None = None,
    passes: Passes | None = None,
    stream_continuation: bool | None = None,
    cache: CacheClaim | None = None,
    priority: str | None = None,
) -> str:
    """Mint an API token for ``tenant``; raises ClaimsError for an invalid limit."""
    if now is not None and now.tzinfo is None:
        raise ValueError("mint: 'now' must be timezone-aware")
    if ttl <= timedelta(0):
        raise ValueError("mint: 'ttl' must be positive")
    issued = (now if now is not None else datetime.now(UTC)).replace(microsecond=0)
    has_budget = budget_tokens is not None or budget_usd is not None
    has_routing = (
        routing_mode is not None or quality_threshold is not None or not allow_routing_override
    )
    claims = Claims(
        iss=issuer,
        sub=new_key_id(),
        jti=secrets.token_hex(16),
        iat=issued,
        nbf=issued,
        exp=issued + ttl,
        tenant=tenant,
        budget=Budget(budget_tokens, budget_usd, budget_period, budget_mode)
        if has_budget
        else None,
        rpm=rpm,
        tpm=tpm,
        routing=Routing(routing_mode, quality_threshold, allow_routing_override)
        if has_routing
        else None,
        models=tuple(models) if models is not None else None,
        concurrency=concurrency if concurrency and concurrency.to_dict() else None,
        passes=passes,
        stream_continuation=stream_continuation,
        cache=cache,
        priority=priority,
    )
    payload = claims.to_json()
    parse_claims(payload)  # one validation path: refuse to sign what no gateway accepts
    footer = encode_footer(pid(public_key_of(secret_key)))
    return paseto.sign(secret_key, payload, footer, IMPLICIT_ASSERTION)
