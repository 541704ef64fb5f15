"""structlog setup: JSON lines in production, a readable console in development.

The request id is bound in a context variable by the HTTP boundary, so every log
line a request causes carries it. Secrets never reach a log: the redactor below
masks bearer tokens, PASETO/PASERK keys, each provider's key format, credential
header values, URL ``user:password@`` and long hex keys wherever they appear, plus
every secret the configuration holds (``set_secrets``, see ``gatekeeper.scrub``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from gatekeeper.scrub import Scrubber, redact

__all__ = ["configure_logging", "log_format", "redact", "set_secrets"]

_REDACTOR = Scrubber()  # structlog's processors are process-wide; so is what they mask


def set_secrets(secrets: Iterable[str]) -> None:
    """Mask these exact values (the configuration's secrets) in every log line from now on."""
    global _REDACTOR
    _REDACTOR = Scrubber(secrets)


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _REDACTOR(value)
    return event


def log_format(fmt: str | None = None) -> str:
    """``console`` or ``json``: the argument, ``GATEKEEPER_LOG_FORMAT``, else by tty."""
    return (
        fmt
        or os.environ.get("GATEKEEPER_LOG_FORMAT")
        or ("console" if sys.stderr.isatty() else "json")
    )


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    fmt = log_format(fmt)
    lvl = getattr(
        logging, (level or os.environ.get("GATEKEEPER_LOG_LEVEL", "info")).upper(), logging.INFO
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
