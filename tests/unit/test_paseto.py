"""PASETO v4.public and PASERK k4: the official vectors, then the ways a token can lie."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.auth import paserk, paseto
from gatekeeper.auth.paseto import BadSignature, MalformedToken, TokenError

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "paseto-v4.json").read_text()
)["tests"]
SIGN_VECTORS = [v for v in VECTORS if v["name"].startswith("4-S-")]
FAIL_VECTORS = [v for v in VECTORS if v["name"].startswith("4-F-")]

SECRET = bytes.fromhex(SIGN_VECTORS[0]["secret-key"])
PUBLIC = bytes.fromhex(SIGN_VECTORS[0]["public-key"])
OTHER_SECRET = paserk.generate_secret_key()


def _flip_char(text: str, index: int) -> str:
    """Change one base64url character to another valid one."""
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


class TestOfficialVectors:
    def test_vector_file_has_every_case(self) -> None:
        """The copied vector file holds all three 4-S and all five 4-F cases."""
        assert [v["name"] for v in SIGN_VECTORS] == ["4-S-1", "4-S-2", "4-S-3"]
        assert len(FAIL_VECTORS) == 5

    @pytest.mark.parametrize("vector", SIGN_VECTORS, ids=lambda v: v["name"])
    def test_sign_reproduces_token_exactly(self, vector: dict[str, Any]) -> None:
        """Signing the vector's payload, footer and implicit assertion gives its token."""
        token = paseto.sign(
            bytes.fromhex(vector["secret-key"]),
            vector["payload"].encode(),
            vector["footer"].encode(),
            vector["implicit-assertion"].encode(),
        )
        assert token == vector["token"]

    @pytest.mark.parametrize("vector", SIGN_VECTORS, ids=lambda v: v["name"])
    def test_seed_signs_the_same_as_full_secret_key(self, vector: dict[str, Any]) -> None:
        """A 32-byte seed and the 64-byte secret key are the same Ed25519 key."""
        token = paseto.sign(
            bytes.fromhex(vector["secret-key-seed"]),
            vector["payload"].encode(),
            vector["footer"].encode(),
            vector["implicit-assertion"].encode(),
        )
        assert token == vector["token"]

    @pytest.mark.parametrize("vector", SIGN_VECTORS, ids=lambda v: v["name"])
    def test_verify_recovers_payload_and_footer(self, vector: dict[str, Any]) -> None:
        """The vector token verifies and yields exactly its payload and footer."""
        verified = paseto.verify(
            vector["token"],
            bytes.fromhex(vector["public-key"]),
            vector["implicit-assertion"].encode(),
        )
        assert verified.payload == vector["payload"].encode()
        assert verified.footer == vector["footer"].encode()

    @pytest.mark.parametrize("vector", FAIL_VECTORS, ids=lambda v: v["name"])
    def test_failure_vectors_are_rejected(self, vector: dict[str, Any]) -> None:
        """Every 4-F token is refused by the public verifier."""
        key = bytes.fromhex(vector.get("public-key") or vector["key"])
        with pytest.raises(TokenError):
            paseto.verify(vector["token"], key, vector["implicit-assertion"].encode())

    def test_local_tokens_fail_on_header(self) -> None:
        """v4.local and v3.local tokens are refused for their header, before any crypto."""
        for vector in FAIL_VECTORS:
            if not vector["token"].startswith("v4.public."):
                with pytest.raises(MalformedToken, match="wrong header"):
                    paseto.verify(vector["token"], PUBLIC)


class TestPae:
    def test_spec_examples(self) -> None:
        """PAE matches the examples in the PASETO specification."""
        assert paseto.pae() == b"\x00" * 8
        assert paseto.pae(b"") == b"\x01" + b"\x00" * 7 + b"\x00" * 8
        assert paseto.pae(b"test") == b"\x01" + b"\x00" * 7 + b"\x04" + b"\x00" * 7 + b"test"


class TestBase64:
    def test_round_trip_without_padding(self) -> None:
        """Encoding never pads and decoding gives the bytes back."""
        for n in range(10):
            data = bytes(range(n))
            assert "=" not in paseto.b64encode(data)
            assert paseto.b64decode(paseto.b64encode(data)) == data

    @pytest.mark.parametrize("text", ["AA==", "AAA=", "A", "AB+/", "AB CD", "AB\nC", "AB.C"])
    def test_rejects_padding_and_foreign_characters(self, text: str) -> None:
        """Padding, standard-alphabet characters, whitespace and impossible lengths fail."""
        with pytest.raises(MalformedToken, match="bad base64"):
            paseto.b64decode(text)

    def test_rejects_non_canonical_trailing_bits(self) -> None:
        """'AB' and 'AA' both decode leniently to one byte; only the canonical one is valid."""
        assert paseto.b64decode("AA") == b"\x00"
        with pytest.raises(MalformedToken, match="bad base64"):
            paseto.b64decode("AB")


class TestRoundTrip:
    @given(st.binary(max_size=300), st.binary(max_size=100), st.binary(max_size=100))
    def test_sign_then_verify(self, payload: bytes, footer: bytes, implicit: bytes) -> None:
        """Whatever is signed verifies to exactly the same payload and footer."""
        token = paseto.sign(SECRET, payload, footer, implicit)
        verified = paseto.verify(token, PUBLIC, implicit)
        assert (verified.payload, verified.footer) == (payload, footer)
        assert paseto.peek_footer(token) == footer

    def test_empty_footer_means_no_footer_segment(self) -> None:
        """An empty footer is written as no segment, and a trailing dot is refused."""
        token = paseto.sign(SECRET, b"{}")
        assert token.count(".") == 2
        with pytest.raises(MalformedToken, match="empty footer segment"):
            paseto.verify(token + ".", PUBLIC)


class TestTampering:
    def setup_method(self) -> None:
        self.token = paseto.sign(SECRET, b'{"sub":"key_1"}', b'{"kid":"k"}', b"ctx")
        self.body = self.token.split(".")[2]

    def test_tampered_payload(self) -> None:
        """Changing a payload byte breaks the signature."""
        token = self.token.replace(self.body, _flip_char(self.body, 3))
        with pytest.raises(BadSignature):
            paseto.verify(token, PUBLIC, b"ctx")

    def test_tampered_signature(self) -> None:
        """Changing a signature byte breaks the signature."""
        token = self.token.replace(self.body, _flip_char(self.body, len(self.body) - 10))
        with pytest.raises(BadSignature):
            paseto.verify(token, PUBLIC, b"ctx")

    def test_tampered_footer(self) -> None:
        """The footer is signed too: a swapped footer fails."""
        head = self.token.rsplit(".", 1)[0]
        token = head + "." + paseto.b64encode(b'{"kid":"x"}')
        with pytest.raises(BadSignature):
            paseto.verify(token, PUBLIC, b"ctx")

    def test_removed_footer(self) -> None:
        """Dropping the footer segment fails."""
        with pytest.raises(BadSignature):
            paseto.verify(self.token.rsplit(".", 1)[0], PUBLIC, b"ctx")

    def test_wrong_implicit_assertion(self) -> None:
        """A token bound to one context does not verify in another."""
        with pytest.raises(BadSignature):
            paseto.verify(self.token, PUBLIC, b"other-system")

    def test_untrusted_key(self) -> None:
        """A token signed by a different key fails under the trusted one."""
        token = paseto.sign(OTHER_SECRET, b"{}", b"", b"ctx")
        with pytest.raises(BadSignature):
            paseto.verify(token, PUBLIC, b"ctx")

    def test_truncated(self) -> None:
        """A body shorter than a signature is refused; a cut signature fails to verify."""
        with pytest.raises(MalformedToken, match="truncated token"):
            paseto.verify("v4.public." + paseto.b64encode(b"x" * 63), PUBLIC)
        with pytest.raises(TokenError):
            paseto.verify(self.token[:-20], PUBLIC, b"ctx")

    def test_padded_base64(self) -> None:
        """A correctly signed token spelled with '=' padding is refused."""
        token = paseto.sign(SECRET, b"{} ")  # 67-byte body: standard base64 ends '=='
        paseto.verify(token, PUBLIC)
        with pytest.raises(MalformedToken, match="bad base64"):
            paseto.verify(token + "==", PUBLIC)

    def test_oversized(self) -> None:
        """Tokens over MAX_TOKEN_LEN are refused before decoding."""
        token = paseto.sign(SECRET, b"x" * paseto.MAX_TOKEN_LEN)
        with pytest.raises(MalformedToken, match="token too long"):
            paseto.verify(token, PUBLIC)
        with pytest.raises(MalformedToken, match="token too long"):
            paseto.peek_footer(token)

    def test_non_ascii(self) -> None:
        """A token with any non-ASCII character is refused."""
        with pytest.raises(MalformedToken, match="not ASCII"):
            paseto.verify(self.token + "é", PUBLIC, b"ctx")

    def test_too_many_segments(self) -> None:
        """Only header, body and one optional footer are allowed."""
        with pytest.raises(MalformedToken, match="too many segments"):
            paseto.verify(self.token + ".AA", PUBLIC, b"ctx")


class TestPaserk:
    """Official PASERK vectors (paseto-standard/test-vectors, PASERK/k4.*.json)."""

    KEY = bytes.fromhex("707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f")

    @pytest.mark.parametrize(
        ("key_hex", "expected"),
        [
            ("00" * 32, "k4.pid.S_XQmeEwHbbvRmiyfXfHYpLGjXGzjTRSDoT1YtTakWFE"),
            (
                "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f",
                "k4.pid.9ShR3xc8-qVJ_di0tc9nx0IDIqbatdeM2mqLFBJsKRHs",
            ),
            (
                "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e90",
                "k4.pid.-nyvbaTz8U6TQz7OZWW-iB3va31iAxIpUgzUcVQVmW9A",
            ),
        ],
    )
    def test_pid_vectors(self, key_hex: str, expected: str) -> None:
        """k4.pid is BLAKE2b-264 over 'k4.pid.' and the k4.public PASERK."""
        assert paserk.pid(bytes.fromhex(key_hex)) == expected

    def test_public_vector(self) -> None:
        """k4.public encodes the raw 32-byte key and decodes back."""
        text = "k4.public.cHFyc3R1dnd4eXp7fH1-f4CBgoOEhYaHiImKi4yNjo8"
        assert paserk.encode_public(self.KEY) == text
        assert paserk.decode_public(text) == self.KEY

    def test_secret_vector(self) -> None:
        """k4.secret holds seed || public key; a seed alone serialises the same."""
        text = (
            "k4.secret.cHFyc3R1dnd4eXp7fH1-f4CBgoOEhYaHiImKi4yNjo8"
            "c5WpIyC_5kWKhS8VEYSZ05dYfuTF-ZdQFV4D9vLTcNQ"
        )
        assert paserk.encode_secret(self.KEY) == text
        assert paserk.decode_secret(text)[:32] == self.KEY

    def test_rejects_short_key_and_wrong_type(self) -> None:
        """Short keys, a secret given as public, and mismatched halves all fail."""
        with pytest.raises(paserk.KeyFormatError):
            paserk.pid(self.KEY[:31])
        with pytest.raises(paserk.KeyFormatError, match=r"expected a k4\.public"):
            paserk.decode_public(paserk.encode_secret(self.KEY))
        bad = paserk.generate_secret_key()[:32] + self.KEY
        with pytest.raises(paserk.KeyFormatError, match="does not match"):
            paserk.decode_secret("k4.secret." + paseto.b64encode(bad))
