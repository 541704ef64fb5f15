"""Gatekeeper's one error tree, mapped to OpenAI's wire format in one place.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── MalformedJSON             400
    │   ├── PayloadTooLarge           413
    │   ├── UnsupportedMediaType      415
    │   ├── MethodNotAllowed          405
    │   ├── Conflict                  409 (a batch that can no longer be cancelled)
    │   └── NotFound                  404
    │       └── ModelNotFound         404 model_not_found
    ├── AuthError                     401 invalid_api_key
    ├── PermissionDenied              403 model_not_allowed / permission_denied
    ├── RateLimited                   429 rate_limit_exceeded   (Retry-After)
    ├── BudgetExceeded                429 insufficient_quota    (Retry-After)
    ├── ProviderError                 502 upstream_error
    │   ├── ProviderTimeout           504 upstream_timeout
    │   ├── ProviderUnavailable       503 upstream_unavailable
    │   │   └── UpstreamBusy          503 upstream_busy (no free connection: not its fault)
    │   ├── ProviderRejected          4xx the upstream's own client error, passed on
    │   ├── UpstreamTooLarge          502 upstream_response_too_large (a cap was hit)
    │   └── StreamInterrupted         502 upstream_stream_interrupted
    └── ServiceUnavailable            503 (the gateway itself: still starting)

    ConfigError (a ValueError)        configuration refused before serving (never on the wire)

Failover is ``except ProviderError``; ``ProviderError.blames_provider`` says whether
the failure counts against the provider's health and breaker (``UpstreamBusy`` does
not). The request path never catches ``Exception`` except at the single outermost
boundary (``gatekeeper.http.boundary``), which turns an unexpected bug into a 500
carrying the request id.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class MalformedJSON(InvalidRequest):
    default_code = "invalid_json"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    default_code = "unsupported_media_type"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class NotFound(InvalidRequest):
    status = 404
    default_code = "not_found"


class Conflict(InvalidRequest):
    status = 409
    default_code = "conflict"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class _TooMany(GatewayError):
    status = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        merged = dict(headers or {})
        merged["retry-after"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, param=param, code=code, headers=merged)
        self.retry_after = retry_after


class RateLimited(_TooMany):
    type = "requests"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(_TooMany):
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class ProviderError(GatewayError):
    """An upstream failed. ``provider`` names it; the message never carries its key."""

    status = 502
    type = "api_error"
    default_code = "upstream_error"
    blames_provider: ClassVar[bool] = True  # counts against health and the breaker

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.retryable = retryable


class ProviderTimeout(ProviderError):
    status = 504
    default_code = "upstream_timeout"


class ProviderUnavailable(ProviderError):
    status = 503
    default_code = "upstream_unavailable"


class UpstreamBusy(ProviderUnavailable):
    """No connection slot to the upstream came free in time: this gateway is busy.

    Failover tries the next provider; the provider's health and breaker are left alone.
    """

    default_code = "upstream_busy"
    blames_provider = False


class UpstreamTooLarge(ProviderError):
    """The upstream exceeded a cap (response head, body, decoded body, one SSE event)."""

    default_code = "upstream_response_too_large"


class ProviderRejected(ProviderError):
    """The upstream refused the request itself (its 400/404/422): the client's fault.

    Not retryable on another provider; the upstream status and message are passed on.
    """

    type = "invalid_request_error"
    default_code = "upstream_rejected"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int = 400,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            upstream_status=upstream_status,
            retryable=False,
            param=param,
            code=code,
        )

    @property
    def status(self) -> int:  # type: ignore[override]
        return self.upstream_status or 400


class StreamInterrupted(ProviderError):
    default_code = "upstream_stream_interrupted"


class ClientDisconnected(GatewayError):
    """The client went away before its answer (recorded as 499; nobody reads the reply)."""

    status = 499
    type = "invalid_request_error"
    default_code = "client_disconnected"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


def error_json(err: GatewayError) -> bytes:
    """The OpenAI error body for ``err`` as bytes."""
    return orjson.dumps(err.body())


def internal_error(request_id: str) -> GatewayError:
    """The error a client sees for an unexpected bug: no detail, just the request id."""
    return GatewayError(
        f"The gateway hit an unexpected error. Quote request id {request_id} when reporting it."
    )


class ConfigError(ValueError):
    """Configuration that cannot be used; the message starts with the YAML path."""
