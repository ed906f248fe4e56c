"""The ``llm`` step kind: one structured (or text) answer of the LLM service per task.

Layer: **graph**. The call goes through :class:`cloops.graph.steps.Services` (the run layer's
hub); offline, the draft backend answers with the step's ``draft``.

The answer is validated — JSON found in it (:mod:`cloops.services.structured`), the strict
JSON schema, then the step's own ``validate`` — and an invalid one is asked again with the
errors (``llm.schemaRetries`` times; the validate → re-ask loop of *instructor*); an invalid
answer is never cached.

**The schema sent says every constraint a schema can say.** A step's ``shape`` derives the
schema sent from its schema file, its inputs and the config (:func:`constrain`: the page
count as ``minItems``/``maxItems``, the cast's ids as an ``enum``), so a server that decodes
under a grammar (llama.cpp, vLLM, Ollama) or OpenAI's strict mode cannot produce what the
validation then rejects; ``validate`` keeps what a schema cannot say. The derived schema is
what is sent, validated against and part of the request's digest (the response cache's key).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from ...core.errors import InputError, OutputInvalidError
from ...core.fileio import sha256_json
from ...data import prompts as prompt_vars
from ...data.schemas import check_schema, strict_schema_problems
from ...services.base import LLMRequest
from ...services.structured import parse_problem, reask_feedback
from ..steps import DepContext, Fn, Step, StepContext, StepRun, short_value, step_kind


@step_kind("llm")
@dataclass(frozen=True)
class LLMStep(Step):
    """A call to the LLM service.

    Attributes:
        system_prompt: file under ``system-prompts/``.
        user: ``user(inputs, ctx) -> str``, the user message.
        schema: file under ``schemas/`` for a strict structured output, or None for text.
        knowledge: files appended to the system prompt inside ``<knowledge>`` tags.
        draft: ``draft(inputs, ctx) -> output`` for the offline backend: must be schema-valid.
        validate: ``validate(data, inputs, ctx) -> list[str]`` extra checks beyond the schema
            (e.g. page count within config); errors are sent back to the model to fix.
        shape: ``shape(schema, inputs, ctx) -> schema``, a module-level function: the schema
            sent, derived from a copy of the parsed schema file (it may change it in place and
            return it) and what the task knows — config bounds as ``minItems``/``maxItems``/
            ``minimum``/``maximum``, ids as an ``enum`` (:func:`constrain`). The result must
            still be a strict schema (every property required, ``additionalProperties: false``,
            no ``allOf``/``not``/``if``). Config values it reads belong in ``uses`` (or the
            prompt), as for ``validate``; an input may be None (a revision's digest is
            computed without the revisable inputs).
        write: ``write(data, inputs, ctx) -> str | bytes | dict`` what the target holds; default:
            the text, or the JSON data pretty-printed.
        settings: key under ``llm.steps`` for model/reasoning/verbosity overrides (default: name).
        previous: the step revises its own current target instead of starting again: it
            sees it (parsed JSON, or text) as ``inputs["previous"]`` (None otherwise) and its
            ``write`` merges. ``True``: always (the cast: additions, never a full
            re-extraction). A tuple of input names: only when nothing but those inputs changed
            since cloops last wrote the target (the page plan: a cast member added, so only the
            panels' cast lists are revised; a new narrative is planned afresh). A hand edit of
            the target is revised too, so it is kept. When the target already holds what these
            same inputs made (a run killed before doit saved its state), no call is made.
    """

    service = "llm"

    system_prompt: str = ""
    user: Fn | None = None
    schema: str | None = None
    knowledge: tuple[str, ...] = ()
    draft: Fn | None = None
    validate: Callable[[Any, dict, StepContext], list[str]] | None = None
    write: Callable[[Any, dict, StepContext], Any] | None = None
    settings: str | None = None
    previous: bool | tuple[str, ...] = False
    shape: Callable[[dict, dict, StepContext], dict] | None = None

    # ------------------------------------------------------------ graph

    def template_files(self, tpl) -> list[str]:
        files = [f"system-prompts/{self.system_prompt}"]
        files += [f"knowledge/{k}" for k in self.knowledge]
        if self.schema:
            files.append(f"schemas/{self.schema}")
        return files

    def prompt_variables(self, tpl) -> list[str]:
        return prompt_vars.variables(tpl.text(f"system-prompts/{self.system_prompt}"))

    def llm_settings(self, tpl) -> dict[str, Any]:
        """Model, reasoning effort and verbosity (``llm.steps.<settings or name>`` over ``llm``)."""
        return tpl.llm_settings(self.settings or self.name)

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        return {f"llm {k}": short_value(v) for k, v in self.llm_settings(deps.template).items()}

    def system_text(self, tpl) -> str:
        """The rendered system prompt with the knowledge files appended (cached per template).

        Raises:
            InputError: unknown prompt variable (names the prompt file and the variable).
        """
        key = ("llm system", self.name)
        if key not in tpl.memo:
            text = tpl.render(f"system-prompts/{self.system_prompt}")
            for k in self.knowledge:
                text += f"\n\n<knowledge>\n{tpl.text('knowledge/' + k).strip()}\n</knowledge>\n"
            tpl.memo[key] = text
        return tpl.memo[key]

    def schema_of(self, tpl) -> dict | None:
        """The step's JSON schema file, parsed afresh on every call (the caller may change
        it), or None for a text answer."""
        return json.loads(tpl.text(f"schemas/{self.schema}")) if self.schema else None

    def schema_sent(self, tpl, inputs: dict, ctx: StepContext) -> dict | None:
        """The schema sent for one task: the file's, through ``shape`` when the step has one.

        Raises:
            InputError: ``shape`` failed or made a schema that is not strict (names the
                workflow file, the function and the first problem).
        """
        schema = self.schema_of(tpl)
        if schema is None or self.shape is None:
            return schema
        fn = getattr(self.shape, "__name__", repr(self.shape))
        wf = str(tpl.dir / "workflow.py")
        try:
            shaped = self.shape(schema, inputs, ctx)  # a fresh parse: shape may change it
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"step {self.name!r}: shape={fn} failed on schemas/{self.schema}: "
                             f"{type(exc).__name__}: {exc}.", file=wf,
                             fix="make the function name paths the schema has "
                                 "(cloops.steps.constrain) and cope with None inputs.") from None
        problems = _shape_problems(shaped, (tpl.name, self.name))
        if problems:
            raise InputError(f"step {self.name!r}: shape={fn} made a schema that is not a strict "
                             f"structured-output schema: {problems[0]}.", file=wf,
                             fix="return the schema with every property required, "
                                 "'additionalProperties': false on every object and no "
                                 "allOf/not/if.")
        return shaped

    def check(self, tpl) -> None:
        wf = str(tpl.dir / "workflow.py")
        if self.user is None:
            raise InputError(f"LLM step {self.name!r} has no user message function.", file=wf,
                             fix="pass user=<function(inputs, ctx) -> str>.")
        self.system_text(tpl)  # renders: an unknown variable fails here, at load
        schema = self.schema_of(tpl)
        if schema is not None:
            rel = f"schemas/{self.schema}"
            check_schema(tpl, rel, schema)
            problems = strict_schema_problems(schema)
            if problems:
                raise InputError(f"is not a strict structured-output schema: {problems[0]}.",
                                 file=tpl.shown(rel),
                                 fix="list every property in 'required' and set "
                                     "'additionalProperties': false on every object.")

    # ------------------------------------------------------------ run

    def execute(self, job: StepRun) -> None:
        source = None
        if self.previous:
            source, revise = self.revision(job)
            if revise is _UP_TO_DATE:
                return
            job.inputs["previous"] = revise
        data, made_by, offline = self.answer(job)
        out = self.write(data, job.inputs, job.ctx) if self.write else data
        job.write(job.rel, out, made_by=made_by, offline=offline, source=source)

    def revision(self, job: StepRun) -> tuple[str, Any]:
        """``(source, previous)`` of a step with ``previous``: the digests of what the target is
        made from (``"<all but the revisable inputs>:<all>"``, the target itself left out) and
        what the step revises — the current target, None (start afresh) or
        :data:`_UP_TO_DATE` (the file holds what these very inputs made: no call)."""
        keep = () if self.previous is True else tuple(self.previous)
        saved = {k: job.inputs.get(k) for k in keep}
        job.inputs["previous"] = None
        fresh = self.request(job)
        full = sha256_json(fresh.cache_key())[:16]
        job.inputs.update({k: None for k in keep})
        base = sha256_json(self.request(job).cache_key())[:16]
        job.inputs.update(saved)
        source = f"{base}:{full}"
        current = self.read_previous(job)
        made = job.made_from(job.rel)
        if current is not None and made is not None and made == (source, False):
            return source, _UP_TO_DATE
        if current is not None and made is None and self.made_by(job, fresh, current):
            # what these inputs' answer made, written before a kill recorded where it came from
            backend = job.services.backend("llm")
            job.write(job.rel, current, made_by=f"{backend.name} {fresh.model}",
                      offline=backend.offline, source=source)
            return source, _UP_TO_DATE
        if self.previous is True:
            return source, current
        if current is not None and made is not None and made[0].split(":")[0] == base:
            return source, current  # only the revisable inputs changed (or a hand edit)
        return source, None

    def made_by(self, job: StepRun, request: LLMRequest, current: Any) -> bool:
        """True when ``current`` (the target's content) is what the cached answer to
        ``request`` — the step asked afresh, without its previous output — makes."""
        answer = job.services.cached(request)
        if answer is None:
            return False
        data = answer.data if self.schema else answer.text
        if data is None:
            return False
        out = self.write(data, {**job.inputs, "previous": None}, job.ctx) if self.write else data
        return out == current or (isinstance(out, str) and out.rstrip("\n") == str(current)
                                   .rstrip("\n"))

    def request(self, job: StepRun) -> LLMRequest:
        """The step's request for the task's inputs (re-asks add the errors to its user text)."""
        tpl, llm_cfg = job.template, job.template.config.engine.llm
        settings = self.llm_settings(tpl)
        user, draft, images = self.prepare(job)
        return LLMRequest(system=self.system_text(tpl), user=user,
                          model=settings["model"], reasoning=settings["reasoning"],
                          verbosity=settings["verbosity"],
                          schema=self.schema_sent(tpl, job.inputs, job.ctx),
                          schema_name=(self.schema or self.name).removesuffix(".json"),
                          timeout_s=llm_cfg.timeout_s, draft=draft, images=images)

    def read_previous(self, job: StepRun) -> Any:
        """The step's current target: parsed JSON (``.json``) or text; None when it does not
        exist or is not valid JSON (a broken hand edit is then kept in history when the new
        answer replaces it)."""
        path = job.story_dir / job.rel
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not job.rel.endswith(".json"):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None

    def prepare(self, job: StepRun) -> tuple[str, Any, tuple[tuple[str, bytes], ...]]:
        """The user message, the offline draft (only offline backends use it) and the images
        (``(mime type, bytes)``) of one task's request. Kinds built on this one (a judge
        showing the page image) add to it."""
        inputs, ctx = job.inputs, job.ctx
        return self.user(inputs, ctx), (self.draft(inputs, ctx) if self.draft else None), ()

    def answer(self, job: StepRun) -> tuple[Any, str, bool]:
        """Call the LLM, validate, re-ask with the errors when invalid.

        Returns ``(output, made_by, offline)``: the parsed data (schema) or the text.

        Raises:
            OutputInvalidError: still invalid after ``1 + llm.schemaRetries`` attempts; carries
                the attempts, the last raw output and the summed usage.
            ServiceError: the call failed.
        """
        tpl, inputs, ctx = job.template, job.inputs, job.ctx
        backend = job.services.backend("llm")
        llm_cfg = tpl.config.engine.llm
        tries = 1 + (0 if backend.offline else llm_cfg.schema_retries)
        feedback = ""
        last = first = None
        usage_total = [0, 0, 0]
        errors: list[str] = []

        judged: list = [None, None]  # the last result and its problems: the hub asks first

        def problems(result) -> list[str]:  # text with no JSON in it is re-asked like a violation
            if judged[0] is result:
                return judged[1]
            if schema is not None and result.parse_error is not None:
                found = [parse_problem(result.parse_error)]
            else:
                found = validate_output(schema, result.data if schema else result.text, self,
                                        inputs, ctx)
            judged[:] = [result, found]
            return found

        def valid(result) -> bool:  # an invalid answer is never cached: it is asked again
            return not problems(result)

        base = self.request(job)  # the draft: cheap; only offline backends use it
        schema = base.schema  # as sent: validated against what the model was told
        for _attempt in range(1, tries + 1):
            req = dataclasses.replace(base, user=base.user + feedback) if feedback else base
            first = first or req
            last = job.services.complete(req, accept=valid)
            u = last.usage
            usage_total = [usage_total[0] + u.input_tokens, usage_total[1] + u.output_tokens,
                           usage_total[2] + u.reasoning_tokens]
            errors = problems(last)
            if not errors:
                if req is not first:
                    job.services.remember(first, last)
                return (last.data if schema else last.text), f"{backend.name} {req.model}", \
                    backend.offline
            feedback = reask_feedback(errors, last.text, not_json=last.parse_error is not None)
        raise OutputInvalidError(
            f"the {backend.name} output for step '{self.name}' is still invalid after {tries} "
            f"attempt(s): {'; '.join(errors)}. Last raw output: {(last.text or '')[:300]!r}. "
            f"Usage: {usage_total[0]} input / {usage_total[1]} output tokens.",
            service="llm", backend=backend.name, raw_output=last.text if last else None,
            usage=usage_total, attempts=tries)


_UP_TO_DATE = object()  # LLMStep.revision: the target is what these inputs made
_VALIDATORS: dict[str, Any] = {}
_META_CHECKED: set[tuple[str, str]] = set()  # (template, step) whose shaped schema was checked
_MAX_VALIDATORS = 256  # shaped schemas differ per story (ids): keep a bounded number compiled


def _shape_problems(schema: Any, step: tuple[str, str]) -> list[str]:
    """The problems of a schema a ``shape`` made: not a dict, not strict
    (:func:`cloops.data.schemas.strict_schema_problems`, every time: ~0.05 ms), or not valid
    JSON Schema (the meta-schema check, ~15 ms: the first time per ``(template, step)``; the
    values :func:`constrain` sets are checked as it sets them)."""
    if not isinstance(schema, dict):
        return [f"it returned a {type(schema).__name__}, not the schema"]
    problems = strict_schema_problems(schema)
    if not problems and step not in _META_CHECKED:
        import jsonschema
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return [f"not a valid JSON schema: {exc.message}"]
        _META_CHECKED.add(step)
    return problems


def constrain(schema: dict, path: str, **keywords: Any) -> dict:
    """Set JSON Schema ``keywords`` on the node at ``path`` of ``schema`` and return that node
    (for a ``shape`` function, :class:`LLMStep`).

    ``path`` names properties from the root, ``.``-separated; ``[]`` after a name steps into
    the array's ``items``: ``"pages"`` is the pages array, ``"pages[].panels[].cast[]"`` a
    panel's cast id. A keyword set to None is removed. Keywords strict structured outputs
    enforce while generating (OpenAI's "Supported schemas"; llama.cpp's, vLLM's and Ollama's
    grammars): ``minItems``/``maxItems``, ``minimum``/``maximum``, ``enum``, ``const``,
    ``pattern``.

    Raises:
        KeyError: a name in ``path`` is not a property there, or ``[]`` follows a non-array.
        ValueError: a count (``minItems``, ``maxItems``, ``minLength``, ``maxLength``) that is
            not an integer >= 0, a bound that is not a number, an ``enum`` that is not a list.
    """
    for key, value in keywords.items():
        if value is None:
            continue
        if key in ("minItems", "maxItems", "minLength", "maxLength") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{key}={value!r} at {path!r}: a count is an integer >= 0")
        if key in ("minimum", "maximum") and (not isinstance(value, (int, float))
                                              or isinstance(value, bool)):
            raise ValueError(f"{key}={value!r} at {path!r}: a bound is a number")
        if key == "enum" and not isinstance(value, list):
            raise ValueError(f"enum={value!r} at {path!r}: a list of the allowed values")
    node = schema
    for part in path.split("."):
        name, arrays = part.rstrip("[]"), (len(part) - len(part.rstrip("[]"))) // 2
        if name:
            props = node.get("properties") or {}
            if name not in props:
                raise KeyError(f"{path!r}: no property {name!r} (there are {sorted(props)})")
            node = props[name]
        for _ in range(arrays):
            if not isinstance(node.get("items"), dict):
                raise KeyError(f"{path!r}: {name or 'the root'} is not an array")
            node = node["items"]
    for key, value in keywords.items():
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return node


def _validator(schema: dict):
    """A compiled validator per schema (building one per call costs more than the check)."""
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        import jsonschema
        if len(_VALIDATORS) >= _MAX_VALIDATORS:
            _VALIDATORS.clear()  # shaped per story: 10,000 stories must not keep 10,000
        v = _VALIDATORS[key] = jsonschema.Draft202012Validator(schema)
    return v


def validate_output(schema: dict | None, data: Any, step: LLMStep, inputs: dict,
                    ctx: StepContext) -> list[str]:
    """Schema errors plus the step's own checks, as sentences for the model (empty = valid)."""
    errors: list[str] = []
    if schema is not None:
        v = _validator(schema)
        for err in sorted(v.iter_errors(data), key=lambda e: list(e.path))[:10]:
            where = "/".join(str(p) for p in err.path) or "(root)"
            errors.append(f"{where}: {err.message}")
    elif not str(data).strip():
        errors.append("the answer is empty")
    if not errors and step.validate is not None:
        errors += step.validate(data, inputs, ctx)
    return errors
