"""Signed control values: what ``seal`` writes, and every way ``open_envelope`` refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import b64decode, b64encode
from gatekeeper.control.envelope import (
    DOMAIN,
    MAX_VALUE_BYTES,
    ControlValueRejected,
    open_envelope,
    seal,
    signed_message,
)

OPERATOR = SigningKey(b"\x01" * 32)
ATTACKER = SigningKey(b"\x02" * 32)
OP_KID = pid(bytes(OPERATOR.verify_key))
TRUSTED = {OP_KID: OPERATOR.verify_key}
KEY = "revoked.key_1"


def _reason(data: bytes, key: str = KEY, trusted: Any = TRUSTED) -> str:
    with pytest.raises(ControlValueRejected) as info:
        open_envelope(data, key, trusted)
    return info.value.reason


def _resign(doc: dict[str, Any], key: SigningKey = OPERATOR) -> bytes:
    """Re-sign a hand-edited envelope properly (to isolate the shape checks)."""
    message = signed_message(doc["key"], doc["iat"], doc["body"], doc["kid"])
    doc["sig"] = b64encode(key.sign(message).signature)
    return orjson.dumps(doc)


class TestGoodValues:
    def test_round_trip(self) -> None:
        """A sealed value opens under its key with the operator key trusted."""
        data = seal(OPERATOR, KEY, {"sub": "key_1", "reason": "leaked"}, 1700000000.5)
        env = open_envelope(data, KEY, TRUSTED)
        assert env.key == KEY
        assert env.iat == 1700000000.5
        assert env.body == {"sub": "key_1", "reason": "leaked"}
        assert env.kid == OP_KID

    def test_wire_shape_is_the_contract(self) -> None:
        """The value is a JSON object with exactly v, key, iat, body, kid, sig."""
        doc = orjson.loads(seal(OPERATOR, KEY, [1, 2], 5.0))
        assert set(doc) == {"v", "key", "iat", "body", "kid", "sig"}
        assert doc["v"] == 1 and "=" not in doc["sig"]
        message = DOMAIN + orjson.dumps(
            {k: doc[k] for k in ("v", "key", "iat", "body", "kid")},
            option=orjson.OPT_SORT_KEYS,
        )
        OPERATOR.verify_key.verify(message, b64decode(doc["sig"]))

    def test_one_of_several_trusted_keys(self) -> None:
        """Any key in ``trusted`` may sign (operator key rotation keeps the old one a while)."""
        other = SigningKey.generate()
        trusted = {**TRUSTED, pid(bytes(other.verify_key)): other.verify_key}
        assert open_envelope(seal(other, KEY, None, 1.0), KEY, trusted).body is None

    def test_integer_iat_written_by_another_tool(self) -> None:
        """An iat written as an integer verifies as written and reads as a float."""
        doc = orjson.loads(seal(OPERATOR, KEY, {}, 1.0))
        doc["iat"] = 7
        env = open_envelope(_resign(doc), KEY, TRUSTED)
        assert env.iat == 7.0 and isinstance(env.iat, float)

    @given(
        body=st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        iat=st.floats(0, 4e9),
    )
    def test_any_json_body_round_trips(self, body: Any, iat: float) -> None:
        """Whatever JSON the body holds, the verifier rebuilds the signed bytes exactly."""
        env = open_envelope(seal(OPERATOR, KEY, body, iat), KEY, TRUSTED)
        assert env.body == body
        assert env.iat == iat


class TestRejections:
    def test_oversized(self) -> None:
        """More than 64 KiB is refused before it is parsed."""
        assert _reason(b" " * (MAX_VALUE_BYTES + 1)) == "oversized"

    def test_seal_refuses_oversized(self) -> None:
        with pytest.raises(ValueError):
            seal(OPERATOR, KEY, "x" * MAX_VALUE_BYTES, 1.0)

    @pytest.mark.parametrize("data", [b"", b"{", b"k4.public.AAAA", b"\xff\xfe", b"NaN"])
    def test_not_json(self, data: bytes) -> None:
        """Garbage and the old unsigned plain-text values are not JSON envelopes."""
        assert _reason(data) == "not_json"

    @pytest.mark.parametrize(
        "data",
        [
            b"[]",
            b'"text"',
            b'{"sub": "key_1", "reason": "old unsigned revocation"}',
            b'{"models": []}',
        ],
    )
    def test_unsigned_json_is_wrong_shape(self, data: bytes) -> None:
        """An unsigned value (what an attacker or an old CLI writes) is refused."""
        assert _reason(data) == "wrong_shape"

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("v", 2),
            ("v", True),
            ("v", "1"),
            ("key", 5),
            ("kid", None),
            ("sig", 1),
            ("iat", "now"),
            ("iat", True),
            ("iat", None),
        ],
    )
    def test_bad_field_types(self, field: str, value: Any) -> None:
        doc = orjson.loads(seal(OPERATOR, KEY, {}, 1.0))
        doc[field] = value
        assert _reason(orjson.dumps(doc)) == "wrong_shape"

    def test_extra_or_missing_field(self) -> None:
        doc = orjson.loads(seal(OPERATOR, KEY, {}, 1.0))
        assert _reason(orjson.dumps({**doc, "extra": 1})) == "wrong_shape"
        del doc["body"]
        assert _reason(orjson.dumps(doc)) == "wrong_shape"

    def test_replayed_under_another_key(self) -> None:
        """A genuine revocation copied to ``issuers.x`` (or any other key) is refused."""
        data = seal(OPERATOR, KEY, {"sub": "key_1"}, 1.0)
        assert _reason(data, key="revoked.key_2") == "key_mismatch"
        assert _reason(data, key="issuers.k4.pid.x") == "key_mismatch"

    def test_key_rewritten_inside_the_value(self) -> None:
        """Editing ``key`` inside the value to match breaks the signature."""
        doc = orjson.loads(seal(OPERATOR, KEY, {"sub": "key_1"}, 1.0))
        doc["key"] = "revoked.key_2"
        assert _reason(orjson.dumps(doc), key="revoked.key_2") == "bad_signature"

    def test_unknown_kid(self) -> None:
        """A value signed by the attacker's own key names a kid nobody trusts."""
        assert _reason(seal(ATTACKER, KEY, {}, 1.0)) == "unknown_kid"

    def test_forged_kid(self) -> None:
        """Signed by the attacker but claiming the operator's kid: bad signature."""
        doc = orjson.loads(seal(ATTACKER, KEY, {}, 1.0))
        doc["kid"] = OP_KID
        assert _reason(_resign(doc, ATTACKER)) == "bad_signature"

    @pytest.mark.parametrize("field", ["body", "iat"])
    def test_tampered_content(self, field: str) -> None:
        doc = orjson.loads(seal(OPERATOR, KEY, {"sub": "key_1"}, 1.0))
        doc[field] = {"sub": "key_2"} if field == "body" else 2.0
        assert _reason(orjson.dumps(doc)) == "bad_signature"

    @pytest.mark.parametrize("sig", ["", "AAAA", "not base64!", "A" * 86 + "=="])
    def test_malformed_signature(self, sig: str) -> None:
        doc = orjson.loads(seal(OPERATOR, KEY, {}, 1.0))
        doc["sig"] = sig
        assert _reason(orjson.dumps(doc)) == "bad_signature"

    def test_empty_trust(self) -> None:
        assert _reason(seal(OPERATOR, KEY, {}, 1.0), trusted={}) == "unknown_kid"

    def test_reason_never_echoes_the_value(self) -> None:
        secret = "do-not-echo-this"
        doc = orjson.loads(seal(OPERATOR, KEY, {"s": secret}, 1.0))
        doc["body"] = {"s": secret + "!"}
        with pytest.raises(ControlValueRejected) as info:
            open_envelope(orjson.dumps(doc), KEY, TRUSTED)
        assert secret not in str(info.value)

    @given(st.binary(max_size=300))
    def test_random_bytes_never_crash(self, data: bytes) -> None:
        """Any bytes are either a valid envelope or refused with a reason; nothing else."""
        with pytest.raises(ControlValueRejected):
            open_envelope(data, KEY, TRUSTED)

    @given(st.integers(0, 400), st.integers(0, 255))
    def test_any_single_byte_change_is_refused(self, index: int, byte: int) -> None:
        data = bytearray(seal(OPERATOR, KEY, {"sub": "key_1", "n": 3}, 12.5))
        index %= len(data)
        if data[index] == byte:
            return
        data[index] = byte
        try:
            env = open_envelope(bytes(data), KEY, TRUSTED)
        except ControlValueRejected:
            return
        # JSON allows a few semantically neutral edits (e.g. whitespace for whitespace);
        # whatever opens must mean exactly the original.
        assert (env.key, env.iat, env.body) == (KEY, 12.5, {"sub": "key_1", "n": 3})
