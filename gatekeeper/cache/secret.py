"""The cluster's cache secret: the HMAC key of every ``BH_CACHE`` key (docs/security.md).

Every node of a cluster reads the same file (``cache.key_secret_file``: 32+ random
bytes, mode 0600). The embedded dev setup creates one once in the state dir. The
secret is never logged and never leaves the process; a new secret makes every
existing entry miss (they expire by TTL or go by eviction).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from gatekeeper.errors import ConfigError
from gatekeeper.files import fsync_dir

__all__ = ["DEV_CACHE_SECRET_FILE", "create_cache_secret", "load_cache_secret"]

DEV_CACHE_SECRET_FILE = "keys/cache.secret"  # under the state dir (embedded dev setup)
MIN_BYTES = 32


def load_cache_secret(path: str) -> bytes:
    """The secret at ``path``; ConfigError naming ``cache.key_secret_file`` otherwise."""
    where = "cache.key_secret_file"
    if not path:
        raise ConfigError(f"{where}: required when cache.enabled (unless NATS is embedded)")
    target = Path(path)
    try:
        mode = target.stat().st_mode
        secret = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{where}: {path} is accessible by group or others; chmod 600 it")
    if len(secret) < MIN_BYTES:
        raise ConfigError(f"{where}: the secret must be at least {MIN_BYTES} bytes")
    return secret


def create_cache_secret(path: str | os.PathLike[str]) -> Path:
    """Create a 32-byte secret at ``path`` unless one is there (atomic: racing workers agree)."""
    target = Path(path)
    if target.exists():
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(MIN_BYTES))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(temp, target)  # never replaces an existing secret
        fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)
    return target
