"""Which proxy an upstream call uses: curl's environment rules, as a pure function."""

from __future__ import annotations

import pytest

from gatekeeper.config import parse_config
from gatekeeper.errors import ConfigError
from gatekeeper.providers.limits import UpstreamLimits
from gatekeeper.providers.proxy import ProxyURL, bypassed, parse_proxy, proxy_for


class TestProxyFor:
    def test_scheme_specific_variables(self) -> None:
        env = {"HTTPS_PROXY": "http://p1:3128", "http_proxy": "p2:8080"}
        assert proxy_for("https", "api.openai.com", 443, env) == ProxyURL("p1", 3128)
        assert proxy_for("http", "vllm.local", 80, env) == ProxyURL("p2", 8080)

    def test_lower_case_wins_and_all_proxy_is_the_fallback(self) -> None:
        env = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2", "ALL_PROXY": "a:3"}
        assert proxy_for("https", "x", 443, env) == ProxyURL("low", 1)
        assert proxy_for("http", "x", 80, env) == ProxyURL("a", 3)

    def test_no_variables_means_direct(self) -> None:
        assert proxy_for("https", "api.openai.com", 443, {}) is None

    def test_credentials_become_basic_proxy_authorization(self) -> None:
        p = parse_proxy("http://alice:s%40cret@proxy:3128")
        assert p is not None and p.authorization == "Basic YWxpY2U6c0BjcmV0"  # alice:s@cret

    def test_only_http_proxies(self) -> None:
        with pytest.raises(ValueError, match="http:// only"):
            parse_proxy("socks5://proxy:1080")


class TestNoProxy:
    @pytest.mark.parametrize(
        ("host", "port", "no_proxy", "expected"),
        [
            ("api.openai.com", 443, "*", True),
            ("api.openai.com", 443, "openai.com", True),
            ("api.openai.com", 443, ".openai.com", True),
            ("notopenai.com", 443, "openai.com", False),
            ("10.1.2.3", 80, "10.0.0.0/8", True),
            ("10.1.2.3", 80, "192.168.0.0/16, 10.1.2.4", False),
            ("127.0.0.1", 8000, "127.0.0.1:8000", True),
            ("127.0.0.1", 8001, "127.0.0.1:8000", False),
            ("::1", 80, "::1", True),
            ("vllm", 80, "", False),
        ],
    )
    def test_entries(self, host: str, port: int, no_proxy: str, expected: bool) -> None:
        assert bypassed(host, port, no_proxy) is expected

    def test_no_proxy_beats_the_proxy_variables(self) -> None:
        env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "internal"}
        assert proxy_for("https", "llm.internal", 443, env) is None


class TestUpstreamConfig:
    def test_defaults(self) -> None:
        assert parse_config({}, env={}).upstream == UpstreamLimits()

    def test_values_and_errors_name_the_path(self) -> None:
        cfg = parse_config({"upstream": {"transport": "aiohttp", "max_body_bytes": 2048}}, env={})
        assert cfg.upstream.transport == "aiohttp" and cfg.upstream.max_body_bytes == 2048
        with pytest.raises(ConfigError, match=r"upstream\.max_header_bytes"):
            parse_config({"upstream": {"max_header_bytes": 10}}, env={})
        with pytest.raises(ConfigError, match=r"upstream\.transport"):
            parse_config({"upstream": {"transport": "curl"}}, env={})
        with pytest.raises(ConfigError, match=r"upstream\.pool_wait_s"):
            parse_config({"upstream": {"pool_wait_s": 0}}, env={})
        with pytest.raises(ConfigError, match=r"upstream\.surprise"):
            parse_config({"upstream": {"surprise": 1}}, env={})
