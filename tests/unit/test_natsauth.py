"""NATS credentials and TLS settings: parsed, kept out of printed URLs, turned into options."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from nats.aio.client import Client

from gatekeeper.bus import natsauth
from gatekeeper.bus.natsauth import redact_url, split_userinfo, with_credentials
from gatekeeper.config import NatsConfig, NatsTlsConfig, parse_config
from gatekeeper.errors import ConfigError
from gatekeeper.server import banner, credentials_env, nats_line


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://alice:s3cret@127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("tls://tok3n@nats.example:4443", "tls://nats.example:4443"),
            ("nats://a:b@h1:1, nats://a:b@h2:2", "nats://h1:1,nats://h2:2"),
            ("nats://a:p%40ss@h:1/", "nats://h:1/"),
            ("embedded", "embedded"),
        ],
    )
    def test_no_userinfo_survives(self, url: str, shown: str) -> None:
        """Every URL the gateway prints passes through here: user, password and token go."""
        assert redact_url(url) == shown

    def test_a_password_with_an_at_sign_is_still_removed(self) -> None:
        assert "pw" not in redact_url("nats://u:pw@x@host:4222")


class TestUserinfo:
    def test_split_takes_the_credentials_out_of_the_url(self) -> None:
        assert split_userinfo("nats://u:p@h:1,nats://u:p@h:2") == (
            "nats://h:1,nats://h:2",
            "u",
            "p",
        )

    def test_different_credentials_per_url_are_an_error(self) -> None:
        with pytest.raises(natsauth.NatsAuthError, match="different credentials"):
            split_userinfo("nats://u:p@h:1,nats://v:q@h:2")

    def test_url_userinfo_wins_then_the_environment_then_the_config(self) -> None:
        cfg = NatsConfig(user="from-config", password="c")
        env = {natsauth.USER_ENV: "from-env", natsauth.PASSWORD_ENV: "e"}
        got, url = with_credentials(cfg, "nats://u:p@h:1", env)
        assert (got.user, got.password, url) == ("u", "p", "nats://h:1")
        got, _ = with_credentials(cfg, "nats://h:1", env)
        assert (got.user, got.password) == ("from-env", "e")
        got, _ = with_credentials(cfg, "nats://h:1", {})
        assert (got.user, got.password) == ("from-config", "c")

    def test_worker_environment_carries_user_and_password(self) -> None:
        """Workers get credentials by environment, never on argv."""
        assert credentials_env(NatsConfig(user="u", password="p")) == {
            natsauth.USER_ENV: "u",
            natsauth.PASSWORD_ENV: "p",
        }
        assert credentials_env(NatsConfig()) == {}


class TestConfig:
    def parse(self, nats: dict[str, Any], env: dict[str, str] | None = None) -> NatsConfig:
        return parse_config({"nats": nats}, env=env or {}).nats

    def test_password_from_the_environment(self) -> None:
        cfg = self.parse(
            {"url": "tls://n:4222", "user": "gw1", "password": "${NATS_PW}"}, {"NATS_PW": "x"}
        )
        assert (cfg.user, cfg.password) == ("gw1", "x")
        assert "x" not in repr(cfg)  # never in a logged config

    def test_one_way_to_authenticate(self) -> None:
        with pytest.raises(ConfigError, match="nats: give one of"):
            self.parse({"creds_file": "a.creds", "nkey_seed_file": "b.nk"})

    def test_a_password_needs_a_user(self) -> None:
        with pytest.raises(ConfigError, match=r"nats\.password"):
            self.parse({"password": "x"})

    def test_tls_section(self) -> None:
        cfg = self.parse({"tls": {"ca_file": "ca.pem", "handshake_first": True}})
        assert cfg.tls == NatsTlsConfig(ca_file="ca.pem", handshake_first=True)
        with pytest.raises(ConfigError, match=r"nats\.tls: cert_file and key_file"):
            self.parse({"tls": {"cert_file": "c.pem"}})
        with pytest.raises(ConfigError, match=r"nats\.tls\.bogus"):
            self.parse({"tls": {"bogus": 1}})

    def test_mixing_tls_and_plaintext_urls_is_refused(self) -> None:
        """A plaintext URL in a tls:// list would be a silent downgrade."""
        with pytest.raises(ConfigError, match="mixes tls"):
            self.parse({"url": "tls://a:1,nats://b:2"})

    def test_provision_defaults_on(self) -> None:
        assert self.parse({}).provision is True
        assert self.parse({"provision": False}).provision is False

    def test_a_bad_url_error_does_not_echo_the_url(self) -> None:
        with pytest.raises(ConfigError) as caught:
            self.parse({"url": "http://u:hunter2@h:1"})
        assert "hunter2" not in str(caught.value)


class TestConnectOptions:
    def test_user_password_over_plaintext(self) -> None:
        kw = natsauth.connect_kwargs(NatsConfig(user="u", password="p"), "nats://h:1", Client)
        assert kw == {"user": "u", "password": "p"}

    def test_tls_url_always_carries_an_ssl_context_and_guards_the_password(self) -> None:
        """tls:// means TLS even if the server does not ask for it; the password is only
        handed to an encrypted link."""
        nc = Client()
        kw = natsauth.connect_kwargs(NatsConfig(user="u", password="p"), "tls://h:1", lambda: nc)
        assert isinstance(kw["tls"], ssl.SSLContext)
        assert kw["tls_handshake_first"] is False
        with pytest.raises(natsauth.NatsAuthError, match="not encrypted"):
            kw["password"]()  # no transport at all: certainly not encrypted

    def test_nkey_and_creds_files_go_to_nats_py(self) -> None:
        assert natsauth.connect_kwargs(NatsConfig(nkey_seed_file="s.nk"), "nats://h:1", Client) == {
            "nkeys_seed": "s.nk"
        }
        kw = natsauth.connect_kwargs(NatsConfig(creds_file="u.creds"), "nats://h:1", Client)
        assert kw == {"user_credentials": "u.creds"}

    def test_nats_py_internals_used_for_the_tls_check_exist(self) -> None:
        """link_encrypted reads Client._transport._io_writer, server_requires_auth reads
        Client._server_info: fail here, loudly, if a nats-py upgrade moves them."""
        from nats.aio.transport import TcpTransport

        nc = Client()
        assert hasattr(nc, "_transport") and hasattr(nc, "_server_info")
        assert "_io_writer" in TcpTransport().__dict__
        assert natsauth.link_encrypted(nc) is False
        assert natsauth.server_requires_auth(nc) is False


class TestBanner:
    def test_banner_names_the_url_without_credentials_and_warns_when_open(self) -> None:
        from gatekeeper.config import Config

        cfg = Config(nats=NatsConfig(user="gw1", password="hunter2"))
        text = banner(cfg, None, "nats://gw1:hunter2@h:4222", demo=False, anonymous_ok=True)
        assert "hunter2" not in text
        assert "nats://h:4222 (user gw1, no TLS)" in text
        assert "WARNING: this NATS accepts anonymous clients" in text
        assert not any("WARNING" in line for line in nats_line(cfg.nats, "tls://h:1", False))


class TestLogRedactor:
    def test_url_userinfo_never_reaches_a_log_line(self) -> None:
        """Defence in depth behind redact_url: the log redactor masks it, too."""
        from gatekeeper.logs import redact

        assert "hunter2" not in redact("connect nats://gw1:hunter2@nats1:4222 failed")
        assert redact("at nats://nats1:4222") == "at nats://nats1:4222"


class TestNkeyFiles:
    def test_a_new_user_nkey_is_private_and_never_overwritten(self, tmp_path: Any) -> None:
        """`gatekeeper nats nkey`: the seed file is 0600, the public key a user key (U…)."""
        import nkeys

        from gatekeeper.nats_cli import create_user_nkey, public_nkey

        path = tmp_path / "gw1.nk"
        public = create_user_nkey(path)
        assert public.startswith("U") and len(public) == 56
        assert path.stat().st_mode & 0o777 == 0o600
        seed = path.read_bytes()
        assert seed.startswith(b"SU") and public_nkey(seed) == public
        kp = nkeys.from_seed(bytearray(seed.strip()))
        assert kp.verify(b"nonce", kp.sign(b"nonce"))
        with pytest.raises(FileExistsError):
            create_user_nkey(path)
        assert path.read_bytes() == seed
