"""Request-shape caps in validation, config of the edge, the routing-override claim,
and the dev token in JSON-log mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.config import Config, parse_config
from gatekeeper.edgeconfig import EdgeLimits
from gatekeeper.errors import ConfigError, InvalidRequest, PermissionDenied
from gatekeeper.routing.router import parse_mode
from gatekeeper.server import banner, hide_token
from gatekeeper.validate import check_depth, validate_chat, validate_embeddings

LIMITS = EdgeLimits(max_messages=3, max_content_parts=4, max_json_depth=8)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def rejected(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        validate_chat(body, LIMITS)
    assert err.value.status == 400
    return err.value


class TestShapeCaps:
    def test_too_many_messages(self) -> None:
        err = rejected({"model": "m", "messages": [user("x")] * 4})
        assert err.code == "too_many_messages" and err.param == "messages"

    def test_content_parts_are_counted_over_all_messages(self) -> None:
        part = {"type": "text", "text": "x"}
        validate_chat({"model": "m", "messages": [user([part] * 2), user([part] * 2)]}, LIMITS)
        err = rejected({"model": "m", "messages": [user([part] * 3), user([part] * 2)]})
        assert err.code == "too_many_content_parts"

    def test_the_count_cap_comes_before_any_part_is_read(self) -> None:
        """Parts that are not even objects are never looked at past the cap."""
        err = rejected({"model": "m", "messages": [user([None] * 1000)]})
        assert err.code == "too_many_content_parts"

    def test_nesting_deeper_than_the_limit_names_the_field(self) -> None:
        """The body object is level 1: 7 more levels fit a limit of 8, 8 do not."""
        validate_chat({"model": "m", "messages": [user("x")], "metadata": nested(7)}, LIMITS)
        err = rejected({"model": "m", "messages": [user("x")], "metadata": nested(8)})
        assert err.code == "nesting_too_deep" and err.param == "metadata"

    def test_deep_nesting_inside_messages_is_caught_too(self) -> None:
        deep = {"role": "user", "content": "x", "extra": nested(10)}
        assert rejected({"model": "m", "messages": [deep]}).param == "messages"

    def test_embeddings_input_is_not_walked_but_the_rest_is(self) -> None:
        validate_embeddings({"model": "e", "input": [[1, 2, 3]] * 100}, LIMITS)
        with pytest.raises(InvalidRequest):
            validate_embeddings({"model": "e", "input": "x", "user": nested(9)}, LIMITS)

    def test_wide_flat_bodies_pass(self) -> None:
        check_depth({"a": list(range(10_000)), "b": {str(i): i for i in range(1000)}}, 3)


class TestEdgeConfig:
    def test_defaults(self) -> None:
        cfg = parse_config({})
        assert cfg.server.limits == EdgeLimits()
        assert cfg.auth.max_token_lifetime == 400 * 86_400
        assert not cfg.server.tls.enabled and cfg.server.loopback

    @pytest.mark.parametrize(
        ("raw", "path"),
        [
            ({"server": {"limits": {"max_json_depth": 500}}}, "server.limits.max_json_depth"),
            ({"server": {"limits": {"bogus": 1}}}, "server.limits.bogus"),
            ({"server": {"tls": {"cert_file": "c.pem"}}}, "server.tls"),
            ({"auth": {"leeway_s": 3600}}, "auth.leeway_s"),
            ({"auth": {"leeway_s": -1}}, "auth.leeway_s"),
            ({"auth": {"max_token_lifetime": "forever"}}, "auth.max_token_lifetime"),
            ({"limits": {"concurrency": {"key_requests": 0}}}, "limits.concurrency.key_requests"),
            ({"shield": {"requests_per_s": -1}}, "shield.requests_per_s"),
        ],
    )
    def test_bad_values_name_their_yaml_path(self, raw: dict[str, Any], path: str) -> None:
        with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
            parse_config(raw)

    @pytest.mark.parametrize(
        ("text", "seconds"), [("90d", 90 * 86_400), ("12h", 43_200), (600, 600)]
    )
    def test_token_lifetime_units(self, text: object, seconds: int) -> None:
        assert parse_config({"auth": {"max_token_lifetime": text}}).auth.max_token_lifetime == (
            seconds
        )

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [
            ("127.0.0.1", True),
            ("::1", True),
            ("localhost", True),
            ("0.0.0.0", False),
            ("10.1.2.3", False),
        ],
    )
    def test_which_listeners_are_loopback(self, host: str, loopback: bool) -> None:
        assert parse_config({"server": {"host": host}}).server.loopback is loopback


class TestRoutingOverride:
    def test_a_key_that_forbids_overrides_refuses_another_mode(self) -> None:
        with pytest.raises(PermissionDenied) as err:
            parse_mode("latency", "cost", "cost", allow_header=False)
        assert err.value.code == "routing_override_forbidden"

    def test_asking_for_the_keys_own_mode_is_fine(self) -> None:
        assert parse_mode("cost", None, "cost", allow_header=False) == "cost"
        assert parse_mode(None, "capability", "cost", allow_header=False) == "capability"

    def test_keys_that_allow_overrides_behave_as_before(self) -> None:
        assert parse_mode("latency", "cost", "cost") == "latency"

    def test_the_claim_round_trips_through_mint(self) -> None:
        from gatekeeper.auth import paserk
        from gatekeeper.auth.keyfiles import mint
        from gatekeeper.auth.verifier import Keyring, TokenVerifier

        secret = paserk.generate_secret_key()
        token = mint(secret, "acme", allow_routing_override=False)
        claims = TokenVerifier(Keyring([paserk.public_key_of(secret)])).verify_token(token)
        assert claims.routing is not None and claims.routing.allow_override is False


class TestDevToken:
    def test_json_log_mode_writes_the_token_to_a_private_file(self, tmp_path: Path) -> None:
        """The banner never carries the token when logs are collected (JSON mode)."""
        from dataclasses import replace

        cfg = parse_config({"auth": {"dev_issuer_dir": str(tmp_path)}})
        path = hide_token(cfg, "v4.public.secret-token")
        assert path is not None and Path(path).read_text().strip() == "v4.public.secret-token"
        assert os.stat(path).st_mode & 0o077 == 0
        text = banner(cfg, "v4.public.secret-token", "nats://x", False, path)
        assert "secret-token" not in text and path in text
        assert f"$(cat {path})" in text and f"open({path!r})" in text  # the examples read it
        shown = banner(replace(cfg), "v4.public.secret-token", "nats://x", False)
        assert "secret-token" in shown

    def test_https_in_the_banner_when_tls_is_on(self) -> None:
        cfg = parse_config({"server": {"tls": {"cert_file": "c", "key_file": "k"}}})
        assert "https://" in banner(cfg, None, "nats://x", False)
        assert isinstance(cfg, Config)


class TestNestingPrecheck:
    """``read_json`` walks a body for its depth only when its brackets could exceed it."""

    @staticmethod
    def nested(levels: int) -> bytes:
        import orjson

        value: Any = 1
        for i in range(levels - 1):
            value = [value] if i % 2 else {"k": value}
        return orjson.dumps({"v": value})

    def test_a_body_with_no_more_brackets_than_the_limit_is_not_walked(self) -> None:
        from gatekeeper.http.inbound import may_nest_deeper

        assert not may_nest_deeper(b'{"model":"m","messages":[{"role":"user"}]}', 64)
        assert not may_nest_deeper(self.nested(64), 64)

    def test_a_body_that_could_be_deeper_is_walked_and_refused_when_it_is(self) -> None:
        import orjson

        from gatekeeper.http.inbound import may_nest_deeper

        deep = self.nested(65)
        assert may_nest_deeper(deep, 64)
        with pytest.raises(InvalidRequest) as info:
            check_depth(orjson.loads(deep), 64)
        assert info.value.code == "nesting_too_deep"

    def test_brackets_inside_strings_only_make_it_walk(self) -> None:
        from gatekeeper.http.inbound import may_nest_deeper

        body = b'{"messages":[{"content":"' + b"[" * 100 + b'"}]}'
        assert may_nest_deeper(body, 64)  # a walk, which then finds depth 3: accepted


def test_inbound_headers_keep_the_first_of_a_repeated_name() -> None:
    """Two Authorization headers: the first is the one the pipeline sees (as before)."""
    from gatekeeper.http.inbound import Inbound

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "headers": [(b"authorization", b"Bearer first"), (b"x-a", b"1"),
                    (b"authorization", b"Bearer second")],
    }  # fmt: skip
    assert Inbound(scope, receive).headers == {"authorization": "Bearer first", "x-a": "1"}
