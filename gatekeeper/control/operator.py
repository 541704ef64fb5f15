"""The operator root key: which public keys the cluster trusts, and the local secret.

``control.operator_keys`` lists the trusted ``k4.public`` keys; ``control.operator_key_file``
names the operator's ``k4.secret`` file (present on operator machines and in dev).
In dev mode (embedded NATS) with no operator key configured, a dev key pair is
created once at ``<state_dir>/keys/operator.key`` (mode 0600) and trusted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.keyfiles import load_secret_key
from gatekeeper.auth.node_key import load_or_create_node_key
from gatekeeper.auth.paserk import decode_public, encode_public, pid
from gatekeeper.config import Config

__all__ = [
    "DEV_OPERATOR_ENV",
    "DEV_OPERATOR_FILE",
    "ensure_dev_operator",
    "load_operator_key",
    "operator_public_text",
    "trusted_operators",
]

DEV_OPERATOR_FILE = Path("keys") / "operator.key"
DEV_OPERATOR_ENV = "GATEKEEPER_DEV_OPERATOR"  # set for the workers of a dev (embedded) gateway


def trusted_operators(texts: Iterable[str]) -> dict[str, VerifyKey]:
    """``k4.pid`` → key for every configured operator public key."""
    keys = (decode_public(text) for text in texts)
    return {pid(raw): VerifyKey(raw) for raw in keys}


def load_operator_key(path: str | Path) -> SigningKey:
    """The operator secret key in a ``k4.secret`` file only its owner can read."""
    return SigningKey(load_secret_key(path)[:32])


def operator_public_text(key: SigningKey) -> str:
    return encode_public(bytes(key.verify_key))


def ensure_dev_operator(config: Config) -> Config:
    """Dev mode: with no operator key configured, create (once) and trust a dev one."""
    if config.control.operator_keys:
        return config
    path = Path(config.state_dir) / DEV_OPERATOR_FILE
    key = load_or_create_node_key(path)  # same file format: one k4.secret line, 0600
    control = dataclasses.replace(
        config.control,
        operator_keys=(operator_public_text(key),),
        operator_key_file=config.control.operator_key_file or str(path),
    )
    return dataclasses.replace(config, control=control)
