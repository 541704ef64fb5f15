"""``control:`` configuration, node ids, and the dev operator key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.config import NODE_ID, parse_config
from gatekeeper.control.operator import (
    DEV_OPERATOR_FILE,
    ensure_dev_operator,
    load_operator_key,
    trusted_operators,
)
from gatekeeper.errors import ConfigError
from gatekeeper.server import node_id_for

PUB = encode_public(bytes(SigningKey(b"\x05" * 32).verify_key))


class TestControlSection:
    def test_defaults(self) -> None:
        control = parse_config({}).control
        assert control.operator_keys == () and control.operator_key_file == ""
        assert control.slot_limit_factor == 4.0

    def test_keys_and_file(self) -> None:
        control = parse_config(
            {"control": {"operator_keys": [PUB], "operator_key_file": "/k", "slot_limit_factor": 2}}
        ).control
        assert control.operator_keys == (PUB,) and control.slot_limit_factor == 2.0
        assert list(trusted_operators(control.operator_keys)) == [
            pid(bytes(SigningKey(b"\x05" * 32).verify_key))
        ]

    @pytest.mark.parametrize(
        ("control", "path"),
        [
            ({"operator_keys": ["k4.secret.xx"]}, "control.operator_keys[0]"),
            ({"operator_keys": [PUB, "nope"]}, "control.operator_keys[1]"),
            ({"operator_keys": [5]}, "control.operator_keys[0]"),
            ({"slot_limit_factor": 0.5}, "control.slot_limit_factor"),
            ({"unknown": 1}, "control"),
        ],
    )
    def test_errors_name_the_path(self, control: object, path: str) -> None:
        with pytest.raises(ConfigError, match=path.replace("[", r"\[").replace("]", r"\]")):
            parse_config({"control": control})


class TestNodeIds:
    @pytest.mark.parametrize("node_id", ["a.b", "x" * 65, "sp ace", "ü"])
    def test_bad_node_id(self, node_id: str) -> None:
        with pytest.raises(ConfigError, match="node_id"):
            parse_config({"node_id": node_id})

    def test_derived_ids_fit_the_contract(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GATEKEEPER_NODE_ID", "host.example.com/" + "y" * 100)
        node = node_id_for(parse_config({}), 12)
        assert NODE_ID.fullmatch(node) and node.endswith("-w12")


class TestDevOperator:
    def test_created_once_private_and_trusted(self, tmp_path: Path) -> None:
        config = parse_config({"state_dir": str(tmp_path)})
        first = ensure_dev_operator(config)
        path = tmp_path / DEV_OPERATOR_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert first.control.operator_key_file == str(path)
        key = load_operator_key(path)
        assert first.control.operator_keys == (encode_public(bytes(key.verify_key)),)
        assert ensure_dev_operator(config).control.operator_keys == first.control.operator_keys

    def test_configured_keys_win(self, tmp_path: Path) -> None:
        config = parse_config({"state_dir": str(tmp_path), "control": {"operator_keys": [PUB]}})
        assert ensure_dev_operator(config) is config
        assert not (tmp_path / DEV_OPERATOR_FILE).exists()
