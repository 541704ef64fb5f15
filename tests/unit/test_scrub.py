"""Secrets never reach a client or a log: the redactor's patterns, one per real format,
and the scrubber that also masks the configuration's own secret values."""

from __future__ import annotations

import pytest

from gatekeeper.config import config_secrets, parse_config
from gatekeeper.logs import _redact_processor, set_secrets
from gatekeeper.scrub import Scrubber, redact

# Shapes of each provider's real keys (random characters, same alphabet and length).
FORMATS = {
    "openai legacy": "sk-" + "A1b2C3d4E5f6G7h8I9j0" * 2 + "KlMnOpQrSt",
    "openai project": "sk-proj-" + "Ab1_Cd2-Ef3" * 14,
    "openai service account": "sk-svcacct-" + "Zy9Xw8Vu7" * 10,
    "anthropic": "sk-ant-api03-" + "Q1w2E3r4T5y6" * 8 + "-AbCdEfAA",
    "groq": "gsk_" + "aB3dE6gH9jK2mN5pQ8sT1vW4" * 2,
    "deepseek": "sk-" + "0123456789abcdef" * 2,
    "google": "AIza" + "SyD-1a2B3c4D5e6F7g8H9i0JkLmNoPq",
    "aws access key id": "AKIA" + "IOSFODNN7EXAMPLE",
    "xai": "xai-" + "Kq8Zt3Vw9Lm2Np5Rs7Tu1Xy4" * 3,
    "long hex key": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "paseto token": "v4.public.eyJzdWIiOiJhY21lIiwiZXhwIjoiMjAyNyJ9"
    + "a" * 86
    + ".eyJraWQiOiJrZXlfMSJ9",
    "paserk secret key": "k4.secret.AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH",
}


class TestRedact:
    @pytest.mark.parametrize("name", sorted(FORMATS))
    def test_each_key_format_is_masked_in_running_text(self, name: str) -> None:
        key = FORMATS[name]
        out = redact(f"upstream said: invalid key {key}, try again")
        assert key not in out and "[REDACTED]" in out
        assert out.startswith("upstream said: invalid key ") and out.endswith(", try again")

    @pytest.mark.parametrize(
        "text",
        [
            "authorization=Bearer opaque-token-value",
            "Authorization: Basic dXNlcjpwYXNz",
            '{"x-api-key": "opaque-custom-key"}',
            "headers {'authorization': 'Token opaque-token-value'}",
            "api_key=opaque-custom-key&model=x",
            "Proxy-Authorization: Basic dXNlcjpwYXNz",
        ],
    )
    def test_credential_header_values_are_masked_whatever_their_format(self, text: str) -> None:
        out = redact(text)
        assert "opaque" not in out and "dXNlcjpwYXNz" not in out

    def test_bearer_tokens(self) -> None:
        assert redact("sent Bearer abc.def-ghi_jkl") == "sent Bearer [REDACTED]"

    def test_url_userinfo(self) -> None:
        out = redact("connect nats://gk:s3cr3t-pass@nats.internal:4222 failed")
        assert out == "connect nats://[REDACTED]@nats.internal:4222 failed"

    def test_ordinary_text_is_left_alone(self) -> None:
        """Token counts, request ids, model names and short hex stay readable."""
        text = (
            "req_0a1b2c3d4e5f60718293a4b5 max_tokens: 5 prompt_tokens=3 model gpt-4o-mini "
            "sha deadbeef status 429 https://api.openai.com/v1"
        )
        assert redact(text) == text


class TestScrubber:
    def test_masks_exact_configured_values_of_any_shape(self) -> None:
        scrub = Scrubber(["my-admin-token-42", "hunter2hunter2"])
        assert scrub("echo: my-admin-token-42 / hunter2hunter2") == "echo: [REDACTED] / [REDACTED]"

    def test_ignores_empty_and_tiny_values(self) -> None:
        assert Scrubber(["", "ab"])("ab cd") == "ab cd"

    def test_config_secrets_collects_every_configured_secret(self) -> None:
        config = parse_config(
            {
                "server": {"admin_token": "adm-0123456789"},
                "nats": {"url": "nats://gk:natspass99@nats.internal:4222"},
                "providers": [
                    {
                        "name": "custom",
                        "kind": "openai",
                        "base_url": "https://proxy.internal/v1",
                        "api_key": "opaque-provider-key",
                        "headers": {"x-custom-token": "header-secret-77", "x-team": "blue"},
                    }
                ],
            },
            env={},
        )
        secrets = set(config_secrets(config))
        assert {
            "adm-0123456789",
            "natspass99",
            "opaque-provider-key",
            "header-secret-77",
        } <= secrets
        assert "blue" not in secrets


class TestLogProcessor:
    def test_log_lines_mask_patterns_and_configured_secrets(self) -> None:
        set_secrets(["opaque-provider-key"])
        try:
            event = {"event": "provider.error", "body": "key=opaque-provider-key gsk_" + "a" * 40}
            out = _redact_processor(None, "warning", event)
            assert "opaque-provider-key" not in out["body"] and "gsk_" not in out["body"]
        finally:
            set_secrets([])
