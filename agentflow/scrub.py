"""Removing secrets from text that is about to leave the process (exception messages, logs, reports).

Providers sometimes echo what they were sent: a 401 that quotes the ``Authorization`` header, a proxy error
page that prints the request. :func:`scrub_secrets` is the one place that text is cleaned before it becomes an
exception message, and from there a log record, a dead letter, a Kafka header or an HTTP answer::

    scrub_secrets("Incorrect API key provided: sk-proj-abc123def456ghi789", secrets=[key])
    # 'Incorrect API key provided: ***'

It replaces every known secret value (the API keys read from the environment), and anything shaped like a
credential: ``Authorization: <scheme> <token>`` and ``Bearer <token>``, ``api-key: …`` / ``"api_key": "…"``
and similar ``name: value`` / ``name=value`` pairs of secret-sounding names, and the token formats of common
providers (``sk-…``, ``AIza…``, ``ghp_…``, ``xoxb-…``, ``hf_…``, ``AKIA…``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["scrub_secrets"]

#: What a secret is replaced with.
MASK = "***"
#: Known secret values shorter than this are not replaced as substrings: a short value ("EMPTY", a local
#: server's dummy key) would match ordinary words, and is not a credential worth hiding.
MIN_SECRET_CHARS = 8

_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|api[-_ ]?key|apikey|api[-_]?token|access[-_]?token|refresh[-_]?token"
    r"|auth[-_]?token|id[-_]?token|client[-_]?secret|secret[-_]?key|private[-_]?key|password|passwd|session[-_]?id"
)
_PATTERN = re.compile(
    # name: value / name=value / "name": "value", keeping the name and an auth scheme, masking the value
    rf"""(?P<name>\b(?:{_NAMES})\b["']?\s*[:=]\s*["']?(?:(?:bearer|basic|digest|token)\s+)?)(?P<value>[^\s"',;&]{{3,}})"""
    # a bearer token anywhere
    r"|(?P<scheme>\bbearer\s+)(?P<token>[A-Za-z0-9._~+/=\-]{8,})"
    # token formats of common providers (OpenAI/Anthropic, Google, GitHub, Slack, Hugging Face, AWS)
    r"|\b(?:sk|rk)-[A-Za-z0-9_\-]{16,}"
    r"|\bAIza[0-9A-Za-z_\-]{30,}"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,})"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|\bhf_[A-Za-z0-9]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    re.IGNORECASE,
)


def _replace(m: re.Match[str]) -> str:
    if m.group("name") is not None:
        return m.group("name") + MASK
    if m.group("scheme") is not None:
        return m.group("scheme") + MASK
    return MASK


def _variants(secrets: Iterable[str]) -> list[str]:
    """The secrets as they may appear in an echo: as sent, URL-encoded, JSON-escaped; longest first."""
    out: set[str] = set()
    for s in secrets:
        if s and len(s) >= MIN_SECRET_CHARS:
            out.update((s, quote(s, safe=""), s.replace("/", "\\/")))
    return sorted(out, key=len, reverse=True)


def scrub_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret and every credential-shaped substring replaced by ``***``.

    Scrub the whole text before cutting it short: a cut can leave the head of a secret that no longer matches.
    For text that was cut anyway, a trailing fragment of a known secret (8 characters or more) is removed too.
    """
    known = _variants(secrets)
    for s in known:
        if s in text:
            text = text.replace(s, MASK)
    text = _PATTERN.sub(_replace, text)
    for s in known:
        for n in range(min(len(s), len(text)) - 1, MIN_SECRET_CHARS - 1, -1):
            if text.endswith(s[:n]):
                return text[:-n] + MASK
    return text
