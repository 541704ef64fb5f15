"""bench/peers.py: peer gateway configs, environments and install detection (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import peers

UPSTREAM = "http://127.0.0.1:9001"


def fake_litellm(root: Path, version: str = "1.106.2", stamped: bool = True) -> None:
    venv = root / "litellm-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "litellm").write_text("#!/bin/sh\n")
    meta = venv / "lib" / "python3.11" / "site-packages" / f"litellm-{version}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: litellm\nVersion: {version}\n")
    if stamped:
        (venv / f".installed-{version}").touch()


def fake_portkey(root: Path, version: str = "1.15.2") -> None:
    pkg = root / "portkey" / "node_modules" / "@portkey-ai" / "gateway"
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text(
        json.dumps({"name": "@portkey-ai/gateway", "version": version})
    )
    (root / "portkey" / f".installed-{version}").touch()


class TestLiteLLMConfig:
    def test_one_model_passed_through_to_the_upstream(self) -> None:
        config = yaml.safe_load(peers.litellm_config(UPSTREAM + "/"))
        assert config["model_list"] == [
            {
                "model_name": "gpt-4o-mini",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_base": "http://127.0.0.1:9001/v1",
                    "api_key": peers.UPSTREAM_KEY,
                },
            }
        ]
        assert config["general_settings"] == {"master_key": peers.LITELLM_MASTER_KEY}
        settings = config["litellm_settings"]
        assert settings["callbacks"] == settings["success_callback"] == []
        assert settings["failure_callback"] == []

    @pytest.mark.parametrize("url", ["http://10.0.0.1:9001", "http://localhost:9001"])
    def test_refuses_anything_but_loopback(self, url: str) -> None:
        with pytest.raises(ValueError, match=r"only target 127\.0\.0\.1"):
            peers.litellm_config(url)
        with pytest.raises(ValueError, match=r"only target 127\.0\.0\.1"):
            peers.portkey_headers(url)


class TestEnvironment:
    def test_litellm_never_fetches_remote_files(self) -> None:
        env = peers.peer_env(peers.LITELLM_ENV, base={"PATH": "/bin"})
        assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
        assert env["PATH"] == "/bin"

    def test_proxies_and_databases_of_the_caller_are_dropped(self) -> None:
        base = {
            "HTTPS_PROXY": "http://proxy:3128",
            "DATABASE_URL": "postgres://x",
            "REDIS_CONNECTION_STRING": "redis://x",
            "HOME": "/root",
        }
        assert peers.peer_env(peers.PORTKEY_ENV, base=base) == {
            "HOME": "/root",
            **peers.PORTKEY_ENV,
        }

    def test_portkey_routes_by_headers_to_a_trusted_loopback_host(self) -> None:
        assert peers.portkey_headers(UPSTREAM) == {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": "http://127.0.0.1:9001/v1",
        }
        assert peers.PORTKEY_ENV["TRUSTED_CUSTOM_HOSTS"] == "127.0.0.1"


class TestInstallDetection:
    def test_nothing_installed(self, tmp_path: Path) -> None:
        assert peers.litellm_version(tmp_path) is None
        assert peers.portkey_version(tmp_path) is None
        assert peers.available(UPSTREAM, tmp_path, (1, 2), peers_dir=tmp_path) == []

    def test_an_unfinished_litellm_install_does_not_count(self, tmp_path: Path) -> None:
        fake_litellm(tmp_path, stamped=False)
        assert peers.litellm_version(tmp_path) is None

    def test_both_installed(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(peers.shutil, "which", lambda name: f"/usr/bin/{name}")
        monkeypatch.setattr(peers, "node_version", lambda: "v20.0.0")
        fake_litellm(tmp_path)
        fake_portkey(tmp_path)
        work = tmp_path / "work"
        work.mkdir()
        lite, portkey = peers.available(UPSTREAM, work, (4001, 4002), peers_dir=tmp_path)

        assert lite.name == "LiteLLM proxy 1.106.2"
        assert lite.url == "http://127.0.0.1:4001"
        assert lite.token == peers.LITELLM_MASTER_KEY
        assert lite.headers == {}
        assert lite.argv[1:] == [
            "--config",
            str(work / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            "4001",
            "--num_workers",
            "1",
        ]
        assert (work / "litellm.yaml").read_text() == peers.litellm_config(UPSTREAM)

        assert portkey.name == "Portkey gateway 1.15.2"
        assert portkey.version == "@portkey-ai/gateway 1.15.2 (@hono/node-server ?) on node v20.0.0"
        assert portkey.argv[0] == "node"
        assert portkey.argv[2:] == ["--port=4002", "--headless"]
        assert peers.request_headers(portkey) == {
            "content-type": "application/json",
            "authorization": f"Bearer {peers.UPSTREAM_KEY}",
            **peers.portkey_headers(UPSTREAM),
        }

    def test_portkey_needs_node(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(peers.shutil, "which", lambda name: None)
        fake_portkey(tmp_path)
        assert peers.portkey_version(tmp_path) is None
