"""The gateway's own API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

A static description of what this gateway accepts and answers (see docs/api.md),
not of every field OpenAI defines: bodies allow unknown fields, which
pass through to OpenAI-compatible upstreams unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

_ERROR_STATUSES = {
    "400": "Invalid request: bad JSON, a missing or wrongly typed field, a bad header.",
    "401": "Missing, malformed, expired or revoked API token (`invalid_api_key`).",
    "403": "The API key may not use this model (`model_not_allowed`).",
    "404": "Unknown path or model.",
    "405": "Method not allowed on this path (with an `allow` header).",
    "413": "Request body over `server.max_body_bytes`.",
    "415": "Content-Type is not application/json.",
    "429": "Rate limit or budget exhausted (with `retry-after`).",
    "500": "A gateway bug; the message quotes the request id.",
    "502": "Every upstream attempt failed.",
    "503": "No upstream available, or the gateway is still starting.",
    "504": "Every upstream attempt timed out.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"$ref": f"#/components/responses/Error{s}"} for s in statuses}


_REQUEST_ID = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "description": "Echoed when it matches [A-Za-z0-9._:-]{1,128}; otherwise replaced.",
    "schema": {"type": "string"},
}

_ROUTING_MODE = {
    "name": "X-Routing-Mode",
    "in": "header",
    "required": False,
    "description": "Overrides the key's routing mode; an unknown value is a 400.",
    "schema": {"type": "string", "enum": ["cost", "latency", "capability"]},
}

_PARTS = {"type": "array", "items": {"type": "object"}}
_MESSAGE_FIELDS: dict[str, Any] = {
    "name": {"type": "string"},
    "tool_calls": {"type": "array", "items": {"type": "object"}},
    "tool_call_id": {"type": "string"},
}
_MESSAGE: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "description": "Instructions and user turns need content.",
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user"]},
                "content": {"oneOf": [{"type": "string"}, _PARTS]},
                **_MESSAGE_FIELDS,
            },
            "additionalProperties": True,
        },
        {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "enum": ["assistant", "tool", "function"]},
                "content": {"oneOf": [{"type": "string"}, _PARTS, {"type": "null"}]},
                **_MESSAGE_FIELDS,
            },
            "additionalProperties": True,
        },
    ]
}

_CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "description": "A model name from the matrix, or `auto`.",
        },
        "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "description": "Only allowed with `stream: true`.",
            "properties": {"include_usage": {"type": "boolean"}},
            "additionalProperties": True,
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "temperature": {"type": ["number", "null"]},
        "top_p": {"type": ["number", "null"]},
        "n": {"type": ["integer", "null"]},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
        "tools": {"type": ["array", "null"], "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"},
        "user": {"type": "string"},
    },
    "dependentSchemas": {
        "stream_options": {"required": ["stream"], "properties": {"stream": {"const": True}}}
    },
    "additionalProperties": True,
}

_EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            {"type": "string", "minLength": 1},
                            {"type": "integer"},
                            {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                        ]
                    },
                },
            ]
        },
        "encoding_format": {"type": "string"},
        "dimensions": {"type": "integer"},
        "user": {"type": "string"},
    },
    "additionalProperties": True,
}

_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}

_MODEL: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
    "additionalProperties": True,
}

_COUNTER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "used": {"type": "number"},
        "in_flight": {"type": "number"},
        "limit": {"type": ["number", "null"]},
    },
    "additionalProperties": True,
}

_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One event: `data:` is a chunk's JSON, an error object, or `[DONE]`.",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}

_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Gatekeeper",
        "version": "0.1.0",
        "description": "OpenAI-compatible AI gateway. Every /v1 path needs a bearer token.",
    },
    "paths": {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "security": _SECURED,
                "parameters": [_REQUEST_ID, _ROUTING_MODE],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "A chat completion, or an SSE stream if `stream: true`.",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": _SSE_EVENT},
                        },
                    },
                    **_errors(*_ERROR_STATUSES),
                },
            }
        },
        "/v1/embeddings": {
            "post": {
                "operationId": "createEmbedding",
                "security": _SECURED,
                "parameters": [_REQUEST_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("EmbeddingsRequest")}},
                },
                "responses": {
                    "200": _json({"type": "object"}, "Embeddings in OpenAI's list format."),
                    **_errors(*_ERROR_STATUSES),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "security": _SECURED,
                "parameters": [_REQUEST_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["object", "data"],
                            "properties": {
                                "object": {"const": "list"},
                                "data": {"type": "array", "items": _ref("Model")},
                            },
                        },
                        "The models this node serves now.",
                    ),
                    **_errors("401", "405", "500", "503"),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "security": _SECURED,
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json(_ref("Model"), "One model."),
                    **_errors("401", "404", "405", "500", "503"),
                },
            }
        },
        "/v1/gatekeeper/usage": {
            "get": {
                "operationId": "getUsage",
                "security": _SECURED,
                "parameters": [_REQUEST_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["key_id", "tenant", "node_id", "counters"],
                            "properties": {
                                "key_id": {"type": "string"},
                                "tenant": {"type": "string"},
                                "node_id": {"type": "string"},
                                "counters": {
                                    "type": "object",
                                    "additionalProperties": _COUNTER,
                                },
                            },
                        },
                        "The calling key's counters as this node sees them.",
                    ),
                    **_errors("401", "405", "500", "503"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "The process serves HTTP.",
                    ),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json(_ref("Readiness"), "NATS connected and a provider enabled."),
                    "503": _json(_ref("Readiness"), "Not ready."),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "PASETO v4.public",
            }
        },
        "schemas": {
            "ChatMessage": _MESSAGE,
            "ChatCompletionRequest": _CHAT_REQUEST,
            "EmbeddingsRequest": _EMBEDDINGS_REQUEST,
            "Error": _ERROR,
            "Model": _MODEL,
            "Readiness": {
                "type": "object",
                "required": ["ready"],
                "properties": {"ready": {"type": "boolean"}},
                "additionalProperties": True,
            },
        },
        "responses": {
            f"Error{status}": _json(_ref("Error"), text) for status, text in _ERROR_STATUSES.items()
        },
    },
    "security": _SECURED,
}

OPENAPI_JSON: bytes = orjson.dumps(OPENAPI)
