"""What every HTTP backend needs at its boundary: the server's Retry-After, error text with no
secret in it, and one TLS context for the whole process.

Layer: **services**.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from typing import Any

# Key shapes the providers use (OpenAI sk-/sess-/rk-, ElevenLabs sk_, Replicate r8_): an API
# may echo a key, masked or not, in an error body.
KEYLIKE = re.compile(r"\b(?:(?:sk|sess|rk)-[A-Za-z0-9_*\-.]{3,}|sk_[A-Za-z0-9]{6,}|r8_[A-Za-z0-9]{6,})")


def scrub(text: str, *keys: str | None) -> str:
    """``text`` with the given keys and anything key-shaped replaced by ``<redacted>``."""
    for key in keys:
        if key and len(key) >= 4:
            text = text.replace(key, "<redacted>")
    return KEYLIKE.sub("<redacted key>", text)


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` value (delta-seconds or HTTP-date) in seconds, or None (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
    except (TypeError, ValueError, OverflowError):
        pass
    return None


def retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI's) or ``retry-after``; None when absent.

    ``headers`` is any mapping with ``.items()`` (names matched case-insensitively).
    """
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(lower.get("retry-after"))


_TLS: list = []
_TLS_LOCK = threading.Lock()


def tls_context() -> Any:
    """The process's one ``ssl.SSLContext``, as httpx makes it by default (certifi CA bundle,
    honouring ``SSL_CERT_FILE``/``SSL_CERT_DIR``), for every HTTP client of every backend.

    Loading the CA bundle costs ~40 ms of CPU (measured on the 2-core CI machine); an httpx
    client given ``verify=tls_context()`` skips it. Thread-safe: the first caller builds it,
    the others wait for it.
    """
    with _TLS_LOCK:
        if not _TLS:
            import httpx
            _TLS.append(httpx.create_ssl_context())
        return _TLS[0]
