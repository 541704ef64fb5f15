"""Issuer key files, minting and ``gatekeeper keys init|mint|inspect`` run in-process."""

from __future__ import annotations

import argparse
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from gatekeeper.auth import paserk
from gatekeeper.auth.claims import ClaimsError
from gatekeeper.auth.cli import ISSUER_PUB_ENV, add_keys_parser
from gatekeeper.auth.keyfiles import (
    KeyFileError,
    init_keys,
    load_public_key,
    load_secret_key,
    mint,
    parse_ttl,
)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gatekeeper")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def mint_argv(keydir: Path, tenant: str, *extra: str) -> list[str]:
    return ["keys", "mint", "--issuer-key", str(keydir / "issuer.key"), "--tenant", tenant, *extra]


def tampered(token: str) -> str:
    """The token with one payload character changed to another valid one."""
    head, body, footer = token.rsplit(".", 2)
    body = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    return f"{head}.{body}.{footer}"


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    return tmp_path / "keys"


class TestKeyFiles:
    def test_init_writes_a_private_secret_and_a_public_key(self, tmp_path: Path) -> None:
        """init_keys writes issuer.key (0600, k4.secret) and issuer.pub (k4.public)."""
        kid, public_text = init_keys(tmp_path / "k")
        secret_path = tmp_path / "k" / "issuer.key"
        assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
        assert secret_path.read_text().startswith("k4.secret.")
        assert (tmp_path / "k" / "issuer.pub").read_text().strip() == public_text
        assert kid == paserk.pid(paserk.decode_public(public_text))
        assert paserk.public_key_of(load_secret_key(secret_path)) == load_public_key(
            tmp_path / "k" / "issuer.pub"
        )

    def test_init_never_overwrites(self, keydir: Path) -> None:
        """A second init in the same directory refuses rather than destroy the key."""
        with pytest.raises(KeyFileError, match="refusing to overwrite"):
            init_keys(keydir)

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
    def test_secret_key_with_group_or_other_bits_is_refused(self, keydir: Path, mode: int) -> None:
        """Any group/other permission on issuer.key is refused with a chmod hint."""
        path = keydir / "issuer.key"
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=r"group/other may access it.*chmod 600"):
            load_secret_key(path)

    def test_public_key_file_is_not_a_secret(self, keydir: Path) -> None:
        """issuer.key is refused where a public key is expected, and vice versa."""
        with pytest.raises(KeyFileError, match=r"expected a k4\.public key"):
            load_public_key(keydir / "issuer.key")
        os.chmod(keydir / "issuer.pub", 0o600)
        with pytest.raises(KeyFileError, match=r"expected a k4\.secret key"):
            load_secret_key(keydir / "issuer.pub")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing key file is a KeyFileError naming the path."""
        with pytest.raises(KeyFileError, match="cannot open key file"):
            load_secret_key(tmp_path / "nope.key")


class TestTtl:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30d", timedelta(days=30)),
            ("12h", timedelta(hours=12)),
            ("45m", timedelta(minutes=45)),
            ("3600s", timedelta(seconds=3600)),
        ],
    )
    def test_units(self, text: str, expected: timedelta) -> None:
        """d, h, m and s suffixes are understood."""
        assert parse_ttl(text) == expected

    @pytest.mark.parametrize("text", ["", "30", "0d", "-1h", "1w", "1.5h", "h"])
    def test_rejects_the_rest(self, text: str) -> None:
        """Anything but a positive integer with one unit is refused."""
        with pytest.raises(ValueError, match="bad TTL"):
            parse_ttl(text)


class TestMint:
    def test_invalid_limits_are_refused_before_signing(self, keydir: Path) -> None:
        """mint() will not sign claims that no gateway would accept."""
        secret = load_secret_key(keydir / "issuer.key")
        with pytest.raises(ClaimsError, match=r"routing\.mode"):
            mint(secret, "acme", routing_mode="fastest")
        with pytest.raises(ClaimsError, match="quality_threshold"):
            mint(secret, "acme", quality_threshold=1.5)
        with pytest.raises(ValueError, match="timezone-aware"):
            mint(secret, "acme", now=datetime(2025, 1, 1))

    def test_each_token_is_a_new_key(self, keydir: Path) -> None:
        """Two mints give different tokens (different sub and jti)."""
        secret = load_secret_key(keydir / "issuer.key")
        now = datetime(2025, 1, 1, tzinfo=UTC)
        assert mint(secret, "acme", now=now) != mint(secret, "acme", now=now)


class TestCli:
    def test_init_prints_kid_and_public_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """keys init reports the files written, the kid and the public key."""
        assert run(["keys", "init", "--dir", str(tmp_path / "k")]) == 0
        out = capsys.readouterr().out
        assert "kid: k4.pid." in out and "public key: k4.public." in out

    def test_mint_then_inspect_round_trip(
        self, keydir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A minted token (the only stdout) inspects to the claims it was minted with."""
        code = run(
            mint_argv(
                keydir,
                "acme",
                *("--budget-tokens", "1000", "--budget-usd", "2.5", "--budget-period", "day"),
                *("--rpm", "60", "--tpm", "9000", "--routing-mode", "cost"),
                *("--quality-threshold", "0.8", "--models", "gpt-4o, claude-*", "--ttl", "12h"),
            )
        )
        assert code == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and out.startswith("v4.public.")
        token = out.strip()

        pub = (keydir / "issuer.pub").read_text().strip()
        assert run(["keys", "inspect", token, "--public-key", pub]) == 0
        claims = orjson.loads(capsys.readouterr().out)
        assert claims["tenant"] == "acme"
        assert claims["budget"] == {"tokens": 1000, "usd": 2.5, "period": "day"}
        assert (claims["rpm"], claims["tpm"]) == (60, 9000)
        assert claims["routing"] == {"mode": "cost", "quality_threshold": 0.8}
        assert claims["models"] == ["gpt-4o", "claude-*"]
        exp = datetime.fromisoformat(claims["exp"]) - datetime.fromisoformat(claims["iat"])
        assert exp == timedelta(hours=12)

    def test_inspect_reads_key_file_from_flag_or_env(
        self, keydir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without --public-key, --issuer-pub or $GATEKEEPER_ISSUER_PUB names the key file."""
        run(mint_argv(keydir, "t"))
        token = capsys.readouterr().out.strip()
        assert run(["keys", "inspect", token, "--issuer-pub", str(keydir / "issuer.pub")]) == 0
        monkeypatch.setenv(ISSUER_PUB_ENV, str(keydir / "issuer.pub"))
        assert run(["keys", "inspect", token]) == 0
        monkeypatch.delenv(ISSUER_PUB_ENV)
        capsys.readouterr()
        assert run(["keys", "inspect", token]) == 2
        assert ISSUER_PUB_ENV in capsys.readouterr().err

    def test_inspect_gives_exact_reason(
        self, keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An invalid token exits 1 with the reason: wrong key, tampered, garbled."""
        run(mint_argv(keydir, "t"))
        token = capsys.readouterr().out.strip()
        _, other_pub = init_keys(tmp_path / "other")
        own_pub = (keydir / "issuer.pub").read_text().strip()
        cases = [
            (token, other_pub, "unknown or retired key"),
            (tampered(token), own_pub, "bad token signature"),
            ("not-a-token", own_pub, "wrong header"),
        ]
        for bad, pub, reason in cases:
            assert run(["keys", "inspect", bad, "--public-key", pub]) == 1
            captured = capsys.readouterr()
            assert captured.out == ""
            assert "invalid token: " in captured.err and reason in captured.err

    def test_mint_refuses_open_key_file(
        self, keydir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """mint exits 1 with the chmod hint when issuer.key is group-readable."""
        os.chmod(keydir / "issuer.key", 0o640)
        code = run(mint_argv(keydir, "t"))
        assert code == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "chmod 600" in captured.err

    def test_bad_ttl_is_a_usage_error(
        self, keydir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unparseable --ttl is rejected by argparse (exit 2) with the TTL hint."""
        with pytest.raises(SystemExit) as info:
            run(mint_argv(keydir, "t", "--ttl", "soon"))
        assert info.value.code == 2
        assert "bad TTL" in capsys.readouterr().err
