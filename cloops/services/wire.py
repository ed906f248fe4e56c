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


def answer_fields(exc: BaseException) -> list[str] | None:
    """The fields a pydantic ``ValidationError`` (v1, as the replicate SDK raises it, or v2)
    names, each as ``"'etag' (field required)"``, at most five; None when ``exc`` is not one.

    An SDK raises such an error when a provider's answer lacks a field its model requires or
    holds a value of another type: the answer, not the request, is at fault.
    """
    errors = getattr(exc, "errors", None)
    if not isinstance(exc, ValueError) or not callable(errors):
        return None
    try:
        items = list(errors())
    except Exception:  # noqa: BLE001 - not a pydantic error after all
        return None
    out = []
    for item in items[:5]:
        if not isinstance(item, dict):
            continue
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "__root__")
        out.append(f"'{loc or '(the whole body)'}' ({item.get('msg', 'invalid')})")
    return out or None


def answer_problem(exc: BaseException, content_type: str | None = None) -> str:
    """What is wrong with an answer an SDK could not read, as a phrase for a message: the
    fields of a pydantic error (:func:`answer_fields`), a body that is not JSON (naming its
    content type when it is not ``application/json``), or the exception's own words."""
    fields = answer_fields(exc)
    if fields:
        return "the field " + "; the field ".join(fields)
    kind = (content_type or "").split(";")[0].strip().lower()
    if isinstance(exc, ValueError) and kind and not kind.endswith("json"):
        return f"its body is {kind}, not JSON"
    if type(exc).__name__ == "JSONDecodeError":
        return f"its body is not valid JSON ({exc})"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def not_as_documented_fix(api: str, *, base_url: str | None, source: str,
                          official_hosts: tuple[str, ...], package: str) -> str:
    """The fix of a message about an answer that is not what ``api`` documents (no "Fix:").

    When ``base_url`` points elsewhere than ``official_hosts``: the server at ``source`` (the
    variable or config key the base URL came from, e.g. ``REPLICATE_BASE_URL``) does not speak
    ``api``; otherwise the installed SDK ``package`` and the provider disagree. Either way a
    retry cannot help.
    """
    import urllib.parse

    host = (urllib.parse.urlsplit(base_url).hostname or "").lower() if base_url else ""
    if base_url and host not in official_hosts:
        return (f"the server at {source} ({base_url}) does not speak {api}: point {source} at "
                f"a server that does, or unset it. Retrying cannot help.")
    return (f"the provider's answer and the installed {package} SDK disagree: upgrade it "
            f"(pip install -U {package}) or report the answer to the provider. Retrying "
            "cannot help.")
