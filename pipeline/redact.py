"""Keeping secrets out of logs, results and config copies.

A camera or MES URL may carry credentials (``rtsp://user:pa/ss@host/...``) or a token in its
query (``?token=...``). Every URL that is printed, written next to results or used as a frame's
name passes through :func:`redact_url` (or :func:`without_credentials`) first.
"""
from __future__ import annotations

import re

# Query parameters whose values are secrets (matched anywhere in the name, any case; "sess" takes
# sessionid, JSESSIONID, sessid alike).
SECRET_PARAMS = re.compile(r"token|key|secret|pass|pwd|auth|sig|cred|sess|cookie", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)")


def _split(url: str) -> tuple[str, str, str, str] | None:
    """(scheme://, userinfo or '', rest up to the query, query with its '?' or '') of a URL; None
    for a string that is not one."""
    m = _SCHEME.match(url)
    if not m:
        return None
    rest = url[m.end():]
    query_at = rest.find("?")
    body, query = (rest, "") if query_at < 0 else (rest[:query_at], rest[query_at:])
    # The userinfo ends at the last '@' before the query: a password may hold '/', '@' or ':'.
    at = body.rfind("@")
    return m.group(1), body[:at] if at >= 0 else "", body[at + 1:] if at >= 0 else body, query


def without_credentials(url: str) -> str:
    """``rtsp://user:secret@host/path`` -> ``rtsp://host/path`` (any scheme, any case); the query,
    with its secret values replaced, is kept."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, _, body, query = parts
    return scheme + body + _redact_query(query)


def redact_url(url: str) -> str:
    """``https://user:pw@mes/api?token=abc&line=3`` -> ``https://***@mes/api?token=***&line=3``:
    where a secret was, it says so."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, body, query = parts
    return scheme + ("***@" if userinfo else "") + body + _redact_query(query)


def _redact_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for pair in query[1:].split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(f"{name}=***" if eq and SECRET_PARAMS.search(name) else pair)
    return "?" + "&".join(pairs)


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (for exception messages that quote one)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)
