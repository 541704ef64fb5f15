"""A node's Ed25519 key file: one PASERK ``k4.secret.…`` line, mode 0600, created on
first use; the public half is shared as ``k4.public.…`` text."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from gatekeeper.auth.paserk import KeyFormatError, decode_secret, encode_public, encode_secret
from gatekeeper.files import fsync_dir

__all__ = ["NodeKeyError", "load_or_create_node_key", "node_public_key_text"]


class NodeKeyError(ValueError):
    """A node key file is too open or is not a ``k4.secret`` PASERK."""


def node_public_key_text(key: SigningKey) -> str:
    """The node's public key as ``k4.public.…``: what auditors are given."""
    return encode_public(bytes(key.verify_key))


def load_or_create_node_key(path: str | os.PathLike[str]) -> SigningKey:
    """The node key at ``path``; created (mode 0600, never overwritten) if absent.

    Refuses a file that group or others may read or write. Two processes racing to
    create the same path end up with the same key: the file appears atomically.
    """
    target = Path(path)
    if not target.exists():
        _create_key_file(target)
    mode = target.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeKeyError(f"{target} is accessible by group or others; chmod 600 it")
    try:
        secret = decode_secret(target.read_text(encoding="ascii"))
    except (KeyFormatError, UnicodeDecodeError) as exc:
        raise NodeKeyError(f"{target}: {exc}") from None
    return SigningKey(secret[:32])


def _create_key_file(target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = SigningKey.generate()
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(encode_secret(bytes(key)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(temp, target)  # atomic, and never replaces an existing key
        fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)
