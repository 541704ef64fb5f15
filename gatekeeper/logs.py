"""structlog setup: JSON lines in production, a readable console in development.

The request id is bound in a context variable by the HTTP boundary, so every log
line a request causes carries it. Secrets never reach a log: the redactor below
masks bearer tokens, PASERK keys and ``sk-``-style API keys wherever they appear.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_RE = re.compile(
    r"(v4\.public\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+)?"
    r"|k4\.(?:secret|local)\.[A-Za-z0-9_-]+"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(?:sk|gsk|sk-ant)-[A-Za-z0-9_-]{8,})"
)


def redact(text: str) -> str:
    return _SECRET_RE.sub("[REDACTED]", text)


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    fmt = (
        fmt
        or os.environ.get("GATEKEEPER_LOG_FORMAT")
        or ("console" if sys.stderr.isatty() else "json")
    )
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
