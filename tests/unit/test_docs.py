"""The docs stay true to the code: config keys, links, size, examples.

Pure file reading, no server: fast enough for every run.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from gatekeeper.config import Config, parse_config
from gatekeeper.routing.matrix import load_matrix
from gatekeeper.routing.router import Requirements, choose, required_quality
from gatekeeper.routing.scorer import score

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
ROUTING_DOC = ROOT / "docs" / "routing.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 15 * 1024

# Fields of the typed config that are not YAML keys.
NOT_YAML = {"source"}  # Config.source: the file the config was read from

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_HEADING = re.compile(r"^#{2,6} (.+?)\s*$", re.M)
_SECTION = re.compile(r"^## `([a-z_]+)(?:\[\])?`\s*$")
_ROW_KEY = re.compile(r"^\| `([a-z_][a-z0-9_.]*)` \|")


# ------------------------------------------------------------------ helpers


def _yaml_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key path of a config dataclass: nested records by dots, lists of records by
    their element's fields (``providers.timeouts.connect_s``)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_") or (not prefix and f.name in NOT_YAML):
            continue
        path = f"{prefix}{f.name}"
        keys.add(path)
        inner = _record(hints[f.name])
        if inner is not None:
            keys |= _yaml_keys(inner, f"{path}.")
    return keys


def _documented() -> dict[str, str]:
    """Key path → the Default cell, from the tables of docs/configuration.md."""
    rows: dict[str, str] = {}
    section: str | None = None
    for line in _FENCE.sub("", CONFIG_DOC.read_text(encoding="utf-8")).splitlines():
        if line.startswith("## "):
            m = _SECTION.match(line)
            section = m.group(1) if m else ("" if line == "## Top level" else None)
            if section:
                rows[section] = ""  # the section's heading documents its key
            continue
        m = _ROW_KEY.match(line)
        if section is None or m is None:
            continue
        key = f"{section}.{m.group(1)}" if section else m.group(1)
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows[key] = cells[2] if len(cells) > 2 else ""
    return rows


def _record(hint: object) -> type | None:
    """The dataclass a field holds, itself or as the element of a tuple."""
    args = typing.get_args(hint)
    inner = args[0] if typing.get_origin(hint) is tuple and args else hint
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _default(path: str) -> object:
    """The dataclass default of a key path; ``dataclasses.MISSING`` for a required one."""
    cls: type = Config
    value: object = dataclasses.MISSING
    for part in path.split("."):
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = dataclasses.MISSING
        inner = _record(typing.get_type_hints(cls)[part])
        if inner is not None:
            cls = inner
    return value


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_anchor(h) for h in _HEADING.findall(text)} | {
        _anchor(h) for h in re.findall(r"^# (.+?)\s*$", text, re.M)
    }


def _links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))


def _yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


# ------------------------------------------------------------------ tests


class TestConfigurationReference:
    def test_every_typed_config_key_is_documented(self) -> None:
        """A key added to gatekeeper/config.py needs a row in docs/configuration.md."""
        missing = _yaml_keys(Config) - set(_documented())
        assert not missing, f"undocumented config keys: {sorted(missing)}"

    def test_every_documented_key_exists(self) -> None:
        """A row in docs/configuration.md names a key the typed config really has."""
        extra = set(_documented()) - _yaml_keys(Config)
        assert not extra, f"documented keys that do not exist: {sorted(extra)}"

    def test_documented_scalar_defaults_match_the_dataclasses(self) -> None:
        """A Default cell holding one literal (`8080`, `cost`, `[]`) equals the code's."""
        checked = 0
        for key, cell in _documented().items():
            m = re.fullmatch(r"`([^`]*)`", cell)
            if m is None:
                continue  # "—", "= name", "position + 1": not a literal
            want = yaml.safe_load(m.group(1)) if m.group(1) else ""
            have = _default(key)
            if have is dataclasses.MISSING:
                continue  # required in the dataclass; its YAML default lives in the parser
            if isinstance(want, list):
                assert sorted(want) == sorted(have), key  # type: ignore[call-overload]
            elif isinstance(want, dict):
                assert dict(have) == want, key  # type: ignore[call-overload]
            elif isinstance(want, bool | str):
                assert have == want, key
            else:
                assert float(have) == float(want), key  # type: ignore[arg-type]
            checked += 1
        assert checked > 30


class TestLinks:
    @pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
    def test_relative_links_resolve(self, doc: Path) -> None:
        """Every relative link (and its #anchor) in README.md and docs/*.md exists."""
        broken = []
        for link in _links(doc):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):
                continue  # https:, mailto:
            target, _, anchor = link.partition("#")
            file = (doc.parent / target).resolve() if target else doc
            if not file.exists():
                broken.append(link)
                continue
            if anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(link)
        assert not broken, f"{doc.name}: broken links {broken}"


class TestReadme:
    def test_readme_is_short(self) -> None:
        """The README is a few screens; reference material lives in docs/."""
        size = len(README.read_bytes())
        assert size <= README_MAX_BYTES, f"README.md is {size} bytes"

    def test_readme_names_the_commands(self) -> None:
        text = README.read_text(encoding="utf-8")
        for command in ("make run", "make test", "make check"):
            assert command in text


class TestYamlExamples:
    @pytest.mark.parametrize("doc", [README, CONFIG_DOC], ids=lambda p: p.name)
    def test_yaml_blocks_are_valid_configs(self, doc: Path) -> None:
        """Every ```yaml block is a complete config that the gateway accepts."""
        env = {"GATEKEEPER_ADMIN_TOKEN": "t", "OPENAI_API_KEY": "sk-test"}
        for block in _yaml_blocks(doc):
            parse_config(yaml.safe_load(block), env=env)

    def test_configuration_reference_has_an_example(self) -> None:
        assert _yaml_blocks(CONFIG_DOC)


class TestRoutingExamples:
    def test_the_product_examples_route_as_documented(self) -> None:
        """docs/routing.md's example table: task, score, bar and model, with the shipped
        matrix, threshold 0.6 and cost mode."""
        matrix = load_matrix(ROOT / "config" / "gatekeeper.yaml")
        row = re.compile(r'^\| "([^"]+)" \| (\w+), ([0-9.]+)[^|]*\| ([0-9.]+) \| `([^`]+)`', re.M)
        rows = row.findall(ROUTING_DOC.read_text(encoding="utf-8"))
        assert len(rows) == 3
        for prompt, task, value, bar, model in rows:
            messages = [{"role": "user", "content": prompt}]
            complexity = score(messages)
            assert (complexity.task, f"{complexity.score:.2f}") == (task, value), prompt
            assert f"{required_quality(0.6, complexity):.2f}" == bar, prompt
            chosen = choose(
                matrix,
                requested_model="auto",
                mode="cost",
                complexity=complexity,
                quality_threshold=0.6,
                needs=Requirements.of_chat(messages),
                health={},
                open_breakers=frozenset(),
            )
            assert chosen.model.name == model, prompt
