"""Structured output: read JSON out of what a model said, word a re-ask, and remember which
``response_format`` each Chat Completions server accepts.

Layer: **services**.

- :func:`extract_json` parses a model's answer as JSON, looking past what models put around
  it: a leading ``<think>...</think>`` block, a Markdown code fence, prose before or after the
  object. Raises :class:`JSONNotFound` (a ``ValueError``) with the parse error otherwise.
- :func:`parse_problem` / :func:`reask_feedback`: the sentences a re-ask sends back — the
  validation errors, or for text that is not JSON the parse error and how the text began.
- :class:`FormatMemory`: per server (base URL), the structured-output format it accepted, in a
  small JSON file under ``build/.cloops/`` (:data:`MEMORY_FILE`), so that one story's
  discovery is not paid again by every other story and every later run.

Chat Completions servers differ in what they accept (llama.cpp's ``llama-server``, vLLM, Ollama
and LM Studio take ``response_format: {"type": "json_schema", ...}``; the ``llama-cpp-python``
server rejects it with HTTP 500 "Input should be 'text' or 'json_object'" and takes
``{"type": "json_object", "schema": ...}``): :data:`CHAT_FORMATS` is the order tried.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from ..core.fileio import atomic_write_text

# The ways of asking a Chat Completions server for JSON, most constrained first:
# json_schema: response_format {"type": "json_schema", "json_schema": {name, schema, strict}}
# json_object: response_format {"type": "json_object", "schema": schema} (llama-cpp-python's
#              server turns the schema into a grammar) and the schema in the instructions
# instructions: no response_format; the schema in the instructions, the answer parsed and
#              re-asked when it is not valid
CHAT_FORMATS = ("json_schema", "json_object", "instructions")
MEMORY_FILE = "chat-formats.json"
RAW_START_CHARS = 300  # how much of an unparseable answer a re-ask quotes back

# What a server says when it does not take a response_format type (llama-cpp-python's pydantic
# message, and the words such errors name); matched in the error body of a 400/422/500.
_FORMAT_REJECTED = re.compile(
    r"Input should be 'text' or 'json_object'|response_format|json_schema", re.I)


class JSONNotFound(ValueError):
    """The answer holds no parseable JSON value; the message is the parse error."""


_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Return the JSON value in a model's answer.

    Tried in order: the whole text; the text without a leading ``<think>...</think>`` block;
    each fenced code block (```json ... ```); the first ``{`` or ``[`` from which a whole JSON
    value decodes (prose before it and anything after it are ignored).

    Raises:
        JSONNotFound: none of them parses; the message is the whole text's own parse error
            (``Expecting ',' delimiter: line 3 column 5 (char 41)``).
    """
    try:
        return json.loads(text)
    except ValueError as exc:
        first_error = exc
    body = _THINK.sub("", text, count=1).strip()
    candidates = [body] + [m.group(1).strip() for m in _FENCE.finditer(body)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", body):
        try:
            value, _end = decoder.raw_decode(body, match.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)) and value:
            return value
    raise JSONNotFound(str(first_error)) from None


def parse_problem(parse_error: str) -> str:
    """The validation error of an answer that is not JSON, as a sentence for the model."""
    return f"the answer is not valid JSON ({parse_error})"


def reask_feedback(errors: list[str], raw: str | None, *, not_json: bool) -> str:
    """The text appended to the user message of a re-ask.

    ``errors``: the validation errors (sentences); ``raw``: the previous answer, quoted up to
    :data:`RAW_START_CHARS` characters when ``not_json`` (so the model sees what it sent).
    """
    text = ("\n\nYour previous answer was invalid. Validation errors found:\n- "
            + "\n- ".join(errors))
    if not_json and raw is not None:
        start = raw[:RAW_START_CHARS] + ("..." if len(raw) > RAW_START_CHARS else "")
        text += (f"\nYour previous answer began:\n{start}\nAnswer with the JSON value alone: "
                 "no prose before or after it, no code fence, nothing cut short.")
    return text + "\nFix the errors and answer again in full."


def schema_instructions(schema: dict) -> str:
    """What a system prompt says when the server cannot be given the schema as a format."""
    return ("\n\nAnswer with a single JSON object that conforms to this JSON schema, and with "
            "nothing else (no prose, no code fence):\n"
            + json.dumps(schema, ensure_ascii=False, separators=(",", ":")))


def format_rejected(status: int | None, body_text: str) -> bool:
    """Whether an error answer means "this server does not take that response_format": HTTP
    400, 422 or 500 whose body names the format (llama-cpp-python answers 500 with
    "Input should be 'text' or 'json_object'")."""
    return status in (400, 422, 500) and bool(_FORMAT_REJECTED.search(body_text or ""))


class FormatMemory:
    """Which of :data:`CHAT_FORMATS` each server accepted, persisted in ``path`` as
    ``{"<base url>": "<format>"}`` (thread-safe; ``path`` None keeps it in memory only).

    A format is remembered once a call made with it was answered; a server found to reject
    one is asked with the next at once on later calls (and in later runs).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._known: dict[str, str] | None = None

    def __getstate__(self) -> dict:  # picklable (doit's process mode): no lock, re-read
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @staticmethod
    def _key(base_url: str) -> str:
        return base_url.rstrip("/")

    def _load(self) -> dict[str, str]:
        if self._known is None:
            self._known = {}
            if self.path is not None:
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    if isinstance(data, dict):
                        self._known = {str(k): str(v) for k, v in data.items()
                                       if v in CHAT_FORMATS}
                except (OSError, ValueError):
                    pass  # none yet, or unreadable: discover again
        return self._known

    def get(self, base_url: str) -> str | None:
        """The format the server at ``base_url`` accepted last, or None (not known yet)."""
        with self._lock:
            return self._load().get(self._key(base_url))

    def set(self, base_url: str, fmt: str) -> None:
        """Remember that the server at ``base_url`` accepts ``fmt``."""
        with self._lock:
            known = self._load()
            if known.get(self._key(base_url)) == fmt:
                return
            known[self._key(base_url)] = fmt
            if self.path is not None:
                try:
                    atomic_write_text(self.path, json.dumps(known, indent=2, sort_keys=True))
                except OSError:
                    pass  # an optimisation: the next run discovers it again
