"""The offline LLM backend: returns the draft the template built from the story input.

Layer: **services**.

No network, no key, no cost. Each LLM step of a template supplies a ``draft(inputs, ctx)``
function that builds a schema-valid output from the story input (clearly marked as a draft);
this backend hands it back as if a model had answered, so the whole graph can be built,
inspected and hand-edited offline. Drafts are rebuilt for real once a key is set (the backend
is part of every step's dependency).
"""

from __future__ import annotations

import json

from ..core.errors import PermanentServiceError
from .base import LLMRequest, LLMResult
from .registry import BackendSpec, register


class DraftLLM:
    """Offline :class:`~cloops.services.base.LLMBackend`: echoes ``request.draft``."""

    name = "draft"
    offline = True

    def complete(self, request: LLMRequest) -> LLMResult:
        """Return ``request.draft`` as the answer (JSON text when the request has a schema).

        Raises:
            PermanentServiceError: the step supplied no draft.
        """
        if request.draft is None:
            raise PermanentServiceError(
                "this step has no offline draft; set OPENAI_API_KEY to build it with a model.",
                service="llm", backend=self.name)
        if request.schema is not None:
            return LLMResult(text=json.dumps(request.draft, ensure_ascii=False),
                             data=request.draft, model="draft", draft=True)
        return LLMResult(text=str(request.draft), model="draft", draft=True)


SPEC = register(BackendSpec(name="draft", service="llm", offline=True,
                            factory=lambda section, env: DraftLLM(),
                            describe="offline drafts built from the story input"))
