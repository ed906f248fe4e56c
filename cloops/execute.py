"""What a task does when doit runs it: gather inputs, call the service, write the target.

Every action marks its story ``in_progress`` the first time in a run, marks it ``failed`` with
the error when it fails (the run goes on with other stories: doit ``continue``), and the bundle
step marks it ``completed`` — unless any of its artifacts came from an offline backend, in which
case it stays ``pending`` (a draft is never published).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import jsonschema
from doit.exceptions import TaskFailed

from . import backlog as backlog_mod
from .engine import Fanout, expand, value_inputs
from .errors import CloopsError, InputError, OutputInvalidError, ServiceError
from .fileio import dump_json, remove_temp_files
from .project import Project, load_project
from .services.base import ImageRequest, LLMRequest, VoiceRequest
from .services.hub import CallMeta, hub_for
from .services.structured import parse_problem, reask_feedback
from .steps import (AssembleStep, BundleStep, EachInput, FileInput, ImageStep, LLMStep,
                    StepContext, VoiceStep)
from .targets import read_manifest, write_target
from .template import Template

# Notes for the reporter (same process in serial and thread mode): task name -> lines.
NOTES: dict[str, list[str]] = {}
_started: set[str] = set()
_slock = threading.Lock()


def note(task: str, text: str) -> None:
    with _slock:
        NOTES.setdefault(task, []).append(text)


def _mark_started(proj: Project, template: str, story_id: str) -> None:
    from .engine import dry_mode
    key = f"{template}/{story_id}"
    with _slock:
        if key in _started:
            return
        # the story's first task in this run: nothing writes in its folder yet (its other
        # tasks wait here), so any temp file there was left by a killed run
        remove_temp_files(proj.story_dir(template, story_id))
        _started.add(key)
    if dry_mode():
        return  # a dry run does not build the story: its status stays as it was
    b = proj.backlog_for(template)
    backlog_mod.set_status(proj.root, b.path, story_id, "in_progress")


def read_inputs(proj: Project, tpl: Template, step, story_dir: Path, story_input: dict,
                n: int | None, count: int | None, fan: Fanout | None) -> dict[str, Any]:
    """All inputs of a step: files read (``.json`` parsed), values from the story/fan-out."""
    inputs = value_inputs(tpl, step, story_input, n, fan)
    for name, inp in step.inputs.items():
        if isinstance(inp, FileInput):
            rel = expand(inp.path, n)
            path = story_dir / rel
            if rel.endswith(".json"):
                try:
                    inputs[name] = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise InputError(f"is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                     f"column {exc.colno}.", file=str(path),
                                     fix="correct your edit, or delete the file to regenerate it.") from None
            elif rel.endswith((".md", ".txt")):
                inputs[name] = path.read_text(encoding="utf-8")
            else:
                inputs[name] = str(path)
        elif isinstance(inp, EachInput):
            inputs[name] = [expand(inp.pattern, i) for i in range(1, (count or 0) + 1)]
    return inputs


def mark_failed(root: Path, template: str, story_id: str, message: str) -> TaskFailed:
    """Mark a story ``failed`` with ``message``; return the doit failure to report."""
    proj = load_project(root)
    try:
        backlog_mod.set_status(proj.root, proj.backlog_for(template).path, story_id, "failed",
                               error=message)
    except CloopsError:
        pass
    return TaskFailed(message)


def run_step(root: Path, template: str, story_id: str, step_name: str, n: int | None,
             count: int | None):
    """Run one task. Returns None on success or a doit ``TaskFailed`` with a clear message."""
    proj = load_project(root)
    tpl = proj.template(template)
    step = tpl.step(step_name)
    item = proj.item(template, story_id)
    tname = f"{step.name}:{template}/{story_id}" + (f"/{n}" if n is not None else "")
    from .locks import is_locked, mark_stale
    sdir = proj.story_dir(template, story_id)
    rel = expand(step.target, n)
    if is_locked(sdir, rel) and (sdir / rel).exists():
        mark_stale(sdir, rel, "an input file changed")
        note(tname, f"{rel} is locked: kept as it is although an input changed "
                    f"(doit unlock to rebuild it)")
        return None
    try:
        _mark_started(proj, template, story_id)
        _run(proj, tpl, step, item.input, story_id, n, count, tname)
    except CloopsError as exc:
        msg = f"{template}/{story_id} step '{step.name}'" + (f" #{n}" if n else "")
        if isinstance(exc, ServiceError):
            service = exc.service or step.service or "?"
            msg += f" ({service} service, backend {exc.backend or '?'}"
            msg += f", {exc.attempts} attempts)" if exc.attempts > 1 else ")"
        msg += f": {exc}"
        failure = mark_failed(root, template, story_id, msg)
        if os.environ.get("CLOOPS_DEBUG"):
            raise
        return failure
    except Exception as exc:
        b = proj.backlog_for(template)
        backlog_mod.set_status(proj.root, b.path, story_id, "failed",
                               error=f"{tname}: {type(exc).__name__}: {exc}")
        raise
    return None


def _run(proj: Project, tpl: Template, step, story_input: dict, story_id: str, n: int | None,
         count: int | None, tname: str) -> None:
    sdir = proj.story_dir(tpl.name, story_id)
    fan = Fanout(tpl, sdir) if step.name in tpl.dynamic_steps else None
    if fan is not None and fan.items is not None:
        count = len(fan.items)
    ctx = StepContext(template=tpl.name, story_id=story_id, story=story_input, config=tpl.config,
                      n=n, count=count, story_dir=sdir)
    inputs = read_inputs(proj, tpl, step, sdir, story_input, n, count, fan)
    hub = hub_for(proj)
    rel = expand(step.target, n)
    reroll = tname in {t.strip() for t in os.environ.get("CLOOPS_REROLL", "").split(",")}
    meta = CallMeta(template=tpl.name, story=story_id, step=step.name, target=rel, reroll=reroll)

    if isinstance(step, LLMStep):
        data, made_by, offline = _run_llm(proj, tpl, step, inputs, ctx, meta)
        out = step.write(data, inputs, ctx) if step.write else data
        _write(sdir, rel, out, made_by=made_by, offline=offline, task=tname)
    elif isinstance(step, ImageStep):
        backend = hub.backend(tpl.name, "image")
        prompt = inputs[step.prompt]
        ann = step.annotate(inputs, ctx) if (step.annotate and backend.uses_annotations) else None
        model = tpl.config.engine.generation.model
        if backend.name == "comfyui":  # the workflow decides the image: part of the request
            from .engine import comfyui_workflow_digest
            model = f"comfyui-workflow:{comfyui_workflow_digest(tpl)}"
        req = ImageRequest(prompt=prompt.strip(), model=model,
                           params=tpl.image_params(step), annotations=ann,
                           timeout_s=tpl.config.engine.generation.timeout_s)
        res = hub.generate_image(meta, req)
        _write(sdir, rel, res.jpeg, made_by=f"{backend.name} {req.model}",
               offline=backend.offline, task=tname)
    elif isinstance(step, VoiceStep):
        _run_voice(proj, tpl, step, inputs, ctx, meta, sdir, rel, n, tname)
    elif isinstance(step, AssembleStep):
        out = step.run(inputs, ctx)
        _write(sdir, rel, out, made_by="assembled", offline=False, task=tname)
    elif isinstance(step, BundleStep):
        _run_bundle(proj, tpl, step, sdir, count, story_id, tname)
    else:  # pragma: no cover - new step kinds must be handled here
        raise InputError(f"unknown step kind {type(step).__name__}.", file=str(tpl.dir))


def _run_voice(proj: Project, tpl: Template, step: VoiceStep, inputs: dict, ctx: StepContext,
               meta: CallMeta, sdir: Path, rel: str, n: int | None, tname: str) -> None:
    """Speak the step's segments; write the MP3 and the per-segment timings (``also[0]``)."""
    hub = hub_for(proj)
    backend = hub.backend(tpl.name, "voice")
    segments = [s.strip() for s in step.segments(inputs, ctx)]
    if not segments or not all(segments):
        raise InputError("has an empty segment: every page needs narration text to speak.",
                         file=str(sdir / next((i.path for i in step.inputs.values()
                                               if isinstance(i, FileInput)), rel)),
                         fix="write the missing narration, or delete the file to regenerate it.")
    cfg = tpl.config.engine.voice
    req = VoiceRequest(segments=tuple(segments), voice_id=cfg.voice_id, model=cfg.model,
                       output_format=cfg.output_format,
                       settings=cfg.settings.model_dump(exclude_none=True), pause_s=cfg.pause_s,
                       timeout_s=cfg.timeout_s)
    res = hub.synthesize(meta, req)
    made_by = f"{backend.name} {req.model}"
    _write(sdir, rel, res.mp3, made_by=made_by, offline=backend.offline, task=tname)
    if step.also:
        timings = {"durationS": round(res.duration_s, 3), "segments": [
            {"startS": round(a, 3), "endS": round(b, 3), "text": t}
            for (a, b), t in zip(res.timings, segments)]}
        _write(sdir, expand(step.also[0], n), timings, made_by=made_by, offline=backend.offline,
               task=tname)


def _run_llm(proj: Project, tpl: Template, step: LLMStep, inputs: dict, ctx: StepContext,
             meta: CallMeta) -> tuple[Any, str, bool]:
    """Call the LLM, validate, re-ask with the errors when invalid. Returns (output, by, offline)."""
    hub = hub_for(proj)
    backend = hub.backend(tpl.name, "llm")
    settings = tpl.llm_settings(step)
    schema = tpl.schema(step)
    user = step.user(inputs, ctx)
    draft = step.draft(inputs, ctx) if step.draft else None  # cheap; only offline backends use it
    llm_cfg = tpl.config.engine.llm
    tries = 1 + (0 if backend.offline else llm_cfg.schema_retries)
    feedback = ""
    last = first = None
    usage_total = [0, 0, 0]

    def problems(result) -> list[str]:  # text with no JSON in it is re-asked like a violation
        if schema is not None and result.parse_error is not None:
            return [parse_problem(result.parse_error)]
        return validate_output(schema, result.data if schema else result.text, step, inputs, ctx)

    def valid(result) -> bool:  # an invalid answer is never cached: a re-ask or re-run asks again
        return not problems(result)

    for attempt in range(1, tries + 1):
        req = LLMRequest(system=tpl.system_prompt(step), user=user + feedback,
                         model=settings["model"], reasoning=settings["reasoning"],
                         verbosity=settings["verbosity"], schema=schema,
                         schema_name=(step.schema or step.name).removesuffix(".json"),
                         timeout_s=llm_cfg.timeout_s, draft=draft)
        first = first or req
        last = hub.complete(meta, req, accept=valid)
        u = last.usage
        usage_total = [usage_total[0] + u.input_tokens, usage_total[1] + u.output_tokens,
                       usage_total[2] + u.reasoning_tokens]
        errors = problems(last)
        if not errors:
            if req is not first:
                hub.remember(meta, first, last)
            return (last.data if schema else last.text), f"{backend.name} {req.model}", backend.offline
        feedback = reask_feedback(errors, last.text, not_json=last.parse_error is not None)
    raise OutputInvalidError(
        f"the {backend.name} output for step '{step.name}' is still invalid after {tries} "
        f"attempt(s): {'; '.join(errors)}. Last raw output: {(last.text or '')[:300]!r}. "
        f"Usage: {usage_total[0]} input / {usage_total[1]} output tokens.",
        service="llm", backend=backend.name, raw_output=last.text if last else None,
        usage=usage_total, attempts=tries)


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict):
    """A compiled validator per schema (building one per call costs more than the check)."""
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
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


def _encode(out: Any) -> bytes:
    if isinstance(out, (bytes, bytearray, memoryview)):
        return bytes(out)
    if isinstance(out, str):
        return (out if out.endswith("\n") else out + "\n").encode("utf-8")
    return dump_json(out).encode("utf-8")


def _write(sdir: Path, rel: str, out: Any, *, made_by: str, offline: bool, task: str) -> None:
    res = write_target(sdir, rel, _encode(out), made_by=made_by, offline=offline)
    if res.kept is not None and res.hand_edit:
        note(task, f"your hand edit of {rel} was replaced; it is kept at "
                   f"{res.kept.relative_to(sdir.parent.parent.parent)}")


def _run_bundle(proj: Project, tpl: Template, step: BundleStep, sdir: Path, count: int | None,
                story_id: str, tname: str) -> None:
    bdir = sdir / step.target
    wanted: dict[str, str] = {}
    for dest, src in step.files.items():
        ns = range(1, (count or 0) + 1) if "{n}" in dest else [None]
        for i in ns:
            wanted[expand(dest, i)] = expand(src, i)
    tmp = sdir / f".{step.target}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for dest, src in wanted.items():
        shutil.copy2(sdir / src, tmp / dest)
    # swap in whole: the bundle holds the deliverables and nothing else, never half of them
    old = sdir / f".{step.target}.old"
    if old.exists():
        shutil.rmtree(old)
    if bdir.exists():
        bdir.rename(old)
    tmp.rename(bdir)
    if old.exists():
        shutil.rmtree(old)
    _finish_story(proj, tpl, sdir, story_id, tname)


def settle_story(proj: Project, template: str, story_id: str) -> None:
    """After a run in which some of a story's tasks ran but its bundle did not need to (the
    outputs came out the same), set its status as the bundle step would have."""
    tpl = proj.template(template)
    _finish_story(proj, tpl, proj.story_dir(template, story_id), story_id, "")


def _finish_story(proj: Project, tpl: Template, sdir: Path, story_id: str, tname: str) -> None:
    """Mark the story completed, unless an artifact of it was built offline (then pending)."""
    manifest = read_manifest(sdir)
    offline = sorted(rel for rel, rec in manifest.items() if rec.get("offline"))
    b = proj.backlog_for(tpl.name)
    if offline:
        backlog_mod.set_status(proj.root, b.path, story_id, "pending")
        note(tname, f"built with offline backends ({len(offline)} draft artifacts): left "
                    f"pending; set the API keys and run doit again to build it for real")
    else:
        from .status import record_completed
        record_completed(proj, tpl.name, story_id, proj.item(tpl.name, story_id).input)
        backlog_mod.set_status(proj.root, b.path, story_id, "completed")
