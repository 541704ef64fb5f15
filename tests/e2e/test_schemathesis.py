"""Schemathesis against ``GET /openapi.json``: the gateway keeps the contract it publishes.

For every operation in the document, schemathesis generates schema-valid requests
(positive mode) and schema-breaking ones (negative mode) and sends them with a valid
bearer token to a real gateway in front of a fake OpenAI upstream. Each response must
not be a 5xx and must conform to the document: a documented status code, a
documented content type, and a body matching the response schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.test_fuzz import running_gateway
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer

#: Per operation and mode (7 operations, 2 modes); raise it for a longer hunt.
EXAMPLES = int(os.environ.get("GATEKEEPER_SCHEMATHESIS_EXAMPLES", "30"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "GET /v1/gatekeeper/usage",
    "GET /healthz",
    "GET /readyz",
]

SERVED_MODELS = {"/v1/chat/completions": "gpt-4o-mini", "/v1/embeddings": "text-embedding-3-small"}
NO_INPUT = {"GET /healthz", "GET /readyz"}  # nothing to break: no negative cases exist
CASES = [
    (label, mode)
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (mode is GenerationMode.NEGATIVE and label in NO_INPUT)
]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[tuple[GatewayProcess, FakeOpenAI]]:
    with running_gateway(tmp_path_factory.mktemp("schemathesis"), issuer) as pair:
        yield pair


@pytest.fixture(scope="module")
def schema(served: tuple[GatewayProcess, FakeOpenAI]) -> Any:
    return schemathesis.openapi.from_url(f"{served[0].url}/openapi.json")


def test_openapi_document_is_served_without_auth(
    served: tuple[GatewayProcess, FakeOpenAI],
) -> None:
    """``GET /openapi.json`` needs no token and lists every public path."""
    r = httpx.get(f"{served[0].url}/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops} == set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_gateway_conforms_to_its_openapi_document(
    schema: Any,
    served: tuple[GatewayProcess, FakeOpenAI],
    issuer: Issuer,
    label: str,
    mode: GenerationMode,
) -> None:
    """Generated requests never get a 5xx, and every response matches the document."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    base_url = served[0].url

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), served_model=st.booleans())
    def run(case: Any, served_model: bool) -> None:
        if served_model and path in SERVED_MODELS and isinstance(case.body, dict):
            case.body["model"] = SERVED_MODELS[path]  # reach the upstream, not only a 404
        case.call_and_validate(base_url=base_url, headers=auth, checks=CHECKS, timeout=10)

    run()
    assert served[0].proc is not None and served[0].proc.poll() is None
