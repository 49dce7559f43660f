"""Credentials in URLs: what may be shown or stored of a source URL (the real one is used only to fetch)."""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "REDACTED"
# Query (or fragment) parameter names that carry secrets: token, access_token, api_key, key, sig,
# X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, password, secret, client_secret, auth...
_SECRET_NAME = re.compile(r"token|key|sig|password|passwd|pwd|secret|credential|auth|session", re.IGNORECASE)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# When a URL does not even parse: userinfo, and every parameter value.
_FALLBACK_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")
_FALLBACK_VALUE = re.compile(r"(?<=[?&#;])([^=&#;]*)=[^&#;]*")


def _redact_parameters(text: str) -> str:
    """'a=1&token=x' → 'a=1&token=REDACTED'; the other parameters keep their exact spelling."""
    pairs = []
    for pair in text.split("&"):
        name, equals, _ = pair.partition("=")
        if equals and _SECRET_NAME.search(urllib.parse.unquote_plus(name)):
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """The URL with its userinfo (`user:pass@`) and secret-looking parameter values replaced by REDACTED.

    Anything that is not a `scheme://` URL (a local path, 'sklearn:digits') comes back unchanged.
    """
    if not _URL.match(url):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        return urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path, _redact_parameters(parts.query), _redact_parameters(parts.fragment))
        )
    except ValueError:  # e.g. an unclosed '[' in the host: redact by pattern, every parameter value
        return _FALLBACK_VALUE.sub(rf"\1={REDACTED}", _FALLBACK_USERINFO.sub(f"{REDACTED}@", url))


def _secrets(url: str) -> list[str]:
    """The secret pieces of a URL (userinfo, secret parameter values), as spelled and unquoted."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found = [parts.netloc.rpartition("@")[0], parts.password or ""] if "@" in parts.netloc else []
    for text in (parts.query, parts.fragment):
        for pair in text.split("&"):
            name, equals, value = pair.partition("=")
            if equals and value and _SECRET_NAME.search(urllib.parse.unquote_plus(name)):
                found.append(value)
    # Short values ('1', 'ab') would blank out unrelated words; a secret is rarely that short.
    return [s for secret in found for s in {secret, urllib.parse.unquote_plus(secret)} if len(s) >= 4]


def redact_text(text: str, url: str) -> str:
    """A message about `url` (an exception's text, say) with the URL's secrets replaced by REDACTED."""
    text = text.replace(url, redact_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
