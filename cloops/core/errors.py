"""Errors raised by cloops.

Layer: **core**.

Hierarchy::

    CloopsError                     a user-facing error: printed as ``ERROR: ...``, no traceback
    ├── InputError                  bad backlog, config, template, prompt or hand-edited file
    └── ServiceError                a call to an LLM / image / voice service failed
        ├── TransientServiceError   worth retrying (429, 5xx, connection error, timeout)
        └── PermanentServiceError   retrying cannot help (400, 401, 403, 422, refusal, ...)
            ├── AuthError           missing or rejected key
            ├── RefusalError        the model refused
            ├── IncompleteError     the response stopped early (``status == "incomplete"``)
            └── OutputInvalidError  the output does not match the schema

Every message says what failed, the offending value, the file or field, and the fix.
Set ``CLOOPS_DEBUG=1`` to get tracebacks for user errors too.
"""

from __future__ import annotations


class CloopsError(Exception):
    """Base of every error cloops raises on purpose; its message is meant for the user."""


def user_message(message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None) -> str:
    """The one shape of a user-facing error: ``<file>, field '<field>': <message> Fix: <fix>``
    (each part only when given)."""
    parts = [str(file)] if file else []
    if field:
        parts.append(f"field '{field}'")
    where = ", ".join(parts)
    text = f"{where}: {message}" if where else message
    return f"{text} Fix: {fix}" if fix else text


class InputError(CloopsError):
    """Bad input: names the file, the field and the fix."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None):
        super().__init__(user_message(message, file=file, field=field, fix=fix))
        self.file = file
        self.field = field
        self.fix = fix


class ServiceError(CloopsError):
    """A service call failed.

    Attributes:
        service: ``"llm"``, ``"image"`` or ``"voice"``.
        backend: backend name (``"openai"``, ``"replicate"``, ...).
        status_code: HTTP status when there was one.
        retry_after_s: the server's ``Retry-After`` in seconds, when given.
    """

    transient = False

    def __init__(self, message: str, *, service: str = "", backend: str = "",
                 status_code: int | None = None, retry_after_s: float | None = None,
                 raw_output: str | None = None, usage: object | None = None,
                 attempts: int = 1):
        super().__init__(message)
        self.service = service
        self.backend = backend
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.raw_output = raw_output
        self.usage = usage
        self.attempts = attempts


class TransientServiceError(ServiceError):
    """Worth retrying: throttled (429), server error (5xx), dropped connection or timeout."""

    transient = True


class PermanentServiceError(ServiceError):
    """Retrying the same request cannot succeed."""


class AuthError(PermanentServiceError):
    """The key is missing or was rejected (401/403)."""


class RefusalError(PermanentServiceError):
    """The model refused to answer (a ``refusal`` content item)."""


class IncompleteError(PermanentServiceError):
    """The response ended early (``status == "incomplete"``, e.g. ``max_output_tokens``)."""


class OutputInvalidError(PermanentServiceError):
    """The structured output is not valid JSON or violates the step's schema."""
