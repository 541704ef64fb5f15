"""The abuse shield: client addresses, trusted proxies, per-IP buckets, burst alerts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gatekeeper.auth.shield import Shield, TrustedProxies, burst_alert
from gatekeeper.edgeconfig import parse_shield
from gatekeeper.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(peer: str, path: str = "/v1/chat/completions", **headers: str) -> dict[str, Any]:
    return {
        "client": (peer, 5555),
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def shield(clock: Clock | None = None, known: set[str] | None = None, **cfg: Any) -> Shield:
    config = parse_shield({"exempt": [], **cfg})
    return Shield(config, knows=lambda h: h in (known or set()), clock=clock or Clock())


class TestTrustedProxies:
    proxies = TrustedProxies(parse_shield({"trusted_proxies": ["10.0.0.0/8"]}).networks)

    def test_an_untrusted_peer_is_the_client_whatever_it_forwards(self) -> None:
        assert self.proxies.client_ip("203.0.113.9", "1.2.3.4") == "203.0.113.9"

    def test_a_trusted_peer_names_the_rightmost_untrusted_hop(self) -> None:
        """Hops left of the first untrusted one are the client's to forge."""
        assert self.proxies.client_ip("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7") == "1.2.3.4"

    def test_all_hops_trusted_gives_the_leftmost(self) -> None:
        assert self.proxies.client_ip("10.0.0.1", "10.1.1.1, 10.0.0.7") == "10.1.1.1"

    def test_garbage_in_the_header_falls_back_to_the_peer(self) -> None:
        assert self.proxies.client_ip("10.0.0.1", "not-an-ip") == "10.0.0.1"
        assert self.proxies.client_ip("10.0.0.1", None) == "10.0.0.1"

    def test_a_bad_cidr_names_its_yaml_path(self) -> None:
        with pytest.raises(ConfigError, match=r"shield.trusted_proxies\[1\]"):
            parse_shield({"trusted_proxies": ["10.0.0.0/8", "nope"]})


class TestFailedAuthentications:
    def test_an_address_is_held_after_its_burst_and_refills(self) -> None:
        clock = Clock()
        s = shield(clock, auth_failures_burst=3, auth_failures_per_min=60)
        for _ in range(3):
            assert s.check(scope("1.1.1.1")) == ("1.1.1.1", None)
            s.failed("1.1.1.1")
        _, refusal = s.check(scope("1.1.1.1"))
        assert refusal is not None and refusal.status == 429
        assert refusal.code == "auth_failures_exceeded"
        assert s.check(scope("2.2.2.2"))[1] is None  # others are not held
        clock.now += 1.0  # one failure's worth refilled (60 per minute)
        assert s.check(scope("1.1.1.1"))[1] is None

    def test_a_held_address_still_passes_tokens_already_accepted(self) -> None:
        """One bad client behind a NAT does not lock out the good ones."""
        s = shield(known={"Bearer good"}, auth_failures_burst=1)
        s.failed("1.1.1.1")
        assert s.check(scope("1.1.1.1", authorization="Bearer new"))[1] is not None
        assert s.check(scope("1.1.1.1", authorization="Bearer good"))[1] is None

    def test_health_paths_and_exempt_addresses_are_never_limited(self) -> None:
        s = shield(auth_failures_burst=1, exempt=["127.0.0.0/8"])
        s.failed("9.9.9.9")
        assert s.check(scope("9.9.9.9", path="/healthz")) == (None, None)
        s.failed("127.0.0.1")
        assert s.check(scope("127.0.0.1")) == (None, None)

    def test_the_tables_are_bounded(self) -> None:
        s = shield(tracked_ips=16)
        for i in range(100):
            s.failed(f"10.0.0.{i}")
        assert len(s._failures) <= 16


class TestRequestRate:
    def test_a_token_bucket_per_address(self) -> None:
        clock = Clock()
        s = shield(clock, requests_per_s=2, requests_burst=2)
        assert [s.check(scope("1.1.1.1"))[1] is None for _ in range(3)] == [True, True, False]
        assert s.check(scope("1.1.1.2"))[1] is None
        clock.now += 0.5
        assert s.check(scope("1.1.1.1"))[1] is None

    def test_forwarded_addresses_count_only_behind_a_trusted_proxy(self) -> None:
        s = shield(requests_per_s=1, requests_burst=1, trusted_proxies=["10.0.0.1"])
        assert s.check(scope("10.0.0.1", x_forwarded_for="1.1.1.1"))[1] is None
        assert s.check(scope("10.0.0.1", x_forwarded_for="1.1.1.2"))[1] is None
        assert s.check(scope("10.0.0.9", x_forwarded_for="1.1.1.3"))[1] is None
        assert s.check(scope("10.0.0.9", x_forwarded_for="1.1.1.4"))[1] is not None


class TestBurstAlert:
    def test_below_the_threshold_no_alert(self) -> None:
        assert burst_alert(Counter({"1.1.1.1": 4}), 5, 60) is None

    def test_a_burst_names_the_worst_addresses(self) -> None:
        alert = burst_alert(Counter({"1.1.1.1": 9, "2.2.2.2": 1}), 5, 60)
        assert alert == {
            "failures": 10,
            "interval_s": 60,
            "ips": 2,
            "top": [{"ip": "1.1.1.1", "failures": 9}, {"ip": "2.2.2.2", "failures": 1}],
        }

    def test_each_interval_is_counted_once(self) -> None:
        s = shield()
        s.failed("1.1.1.1")
        assert sum(s.take_window().values()) == 1
        assert sum(s.take_window().values()) == 0
