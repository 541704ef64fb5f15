"""Operator-signed BH_CONFIG values for tests that write the bucket directly."""

from __future__ import annotations

import time
from typing import Any

from nacl.signing import SigningKey

from gatekeeper.control.envelope import seal
from gatekeeper.control.operator import load_operator_key
from tests.harness.gateway import Issuer


def operator(issuer: Issuer) -> SigningKey:
    return load_operator_key(issuer.operator_key)


def signed(issuer: Issuer, key: str, body: Any, iat: float | None = None) -> bytes:
    """``body`` sealed for ``key`` by the test cluster's operator key."""
    return seal(operator(issuer), key, body, time.time() if iat is None else iat)
