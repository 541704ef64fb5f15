"""Secrets never reach a client or a log: pattern masks plus the configuration's own values.

``redact`` masks what looks like a credential: each provider's key format, PASETO
tokens and PASERK secret keys, credential header values (``Authorization``,
``x-api-key``, …) in any ``name: value`` / ``name=value`` form, bearer/basic
credentials, URL ``user:password@`` and long hex keys. A ``Scrubber`` also masks
the exact secrets the configuration holds (``gatekeeper.config.config_secrets``), whatever their
format. Pure; the patterns are compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "[REDACTED]"
_SHORTEST = 6  # shorter configured "secrets" would mask ordinary words

# Each provider's real key format (and the gateway's own tokens), masked wherever seen,
# plus credential header values, bearer/basic credentials and URL passwords. Each
# pattern has literal triggers (lower case): it runs only on text that contains one,
# so an ordinary log line costs a few substring checks and the long-hex scan.
_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    (
        ("authorization", "api-key", "api_key", "apikey", "password", "token"),
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|x-goog-api-key|password|token)"
            r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;&}\\]+"
        ),
        r"\1\2[REDACTED]",
    ),
    (
        ("bearer", "basic"),
        re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
        r"\1 [REDACTED]",
    ),
    (("://",), re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@"), "[REDACTED]@"),  # user:password@
    (
        ("v4.", "k4."),
        re.compile(
            r"v4\.(?:public|local)\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+)?"  # PASETO tokens
            r"|k4\.(?:secret|local)\.[A-Za-z0-9_-]+"  # PASERK secret keys
        ),
        MASK,
    ),
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), MASK),  # OpenAI, Anthropic, DeepSeek
    (("gsk_",), re.compile(r"\bgsk_[A-Za-z0-9]{8,}"), MASK),  # Groq
    (("aiza",), re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), MASK),  # Google API keys
    (("akia", "asia"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS key ids
    (("xai-",), re.compile(r"\bxai-[A-Za-z0-9]{20,}"), MASK),  # xAI
    ((), re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])"), MASK),  # long hex keys
)


def redact(text: str) -> str:
    """``text`` with every recognisable secret replaced by ``[REDACTED]``."""
    lowered = text.lower()
    for triggers, pattern, replacement in _PATTERNS:
        if not triggers or any(t in lowered for t in triggers):
            text = pattern.sub(replacement, text)
    return text


class Scrubber:
    """Masks ``secrets`` (exact values) and everything ``redact`` recognises."""

    __slots__ = ("_exact",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= _SHORTEST}, key=len, reverse=True)
        self._exact = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        if self._exact is not None:
            text = self._exact.sub(MASK, text)
        return redact(text)


def url_secrets(url: str) -> list[str]:
    out: list[str] = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        for value in (parts.password, parts.username if parts.password is None else None):
            if value:
                out += [value, unquote(value)]
    return out
