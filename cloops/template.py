"""Templates: a folder under ``templates/`` with ``config.json`` and ``workflow.py``.

Layout::

    templates/<name>/
        config.json          settings, style, llm, generation (validated, see cloops.config)
        workflow.py          STEPS = [...]  (see cloops.steps); optional CONFIG_MODEL
        system-prompts/*.md  step system prompts with {a.b} variables
        schemas/*.json       strict JSON schemas for structured outputs
        knowledge/*.md       text appended to a step's system prompt

A template may ``"extends": "<base>"``: its config is deep-merged over the base's, any file it
does not have is taken from the base, and without a ``workflow.py`` of its own it uses the base's
steps. The engine has no special case for any template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


from . import prompts as prompt_vars
from .config import TemplateConfig, read_json
from .errors import InputError
from .steps import (BundleStep, EachInput, FileInput, ImageStep, ItemInput, LLMStep, PartInput,
                    Step)

TEMPLATES_DIR = "templates"


@dataclass
class Template:
    """A loaded, validated template.

    Attributes:
        name: folder name.
        dir: the template folder.
        config: the validated config (merged over the base's when it extends one).
        steps: the declared steps, in order.
        search_path: folders searched for prompts/schemas/knowledge (own first, then bases).
    """

    name: str
    dir: Path
    config: TemplateConfig
    steps: list[Step]
    search_path: list[Path]
    _texts: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ files

    def find(self, rel: str) -> Path:
        """Return the first ``rel`` on the search path.

        Raises:
            InputError: no template on the path has it.
        """
        for folder in self.search_path:
            p = folder / rel
            if p.is_file():
                return p
        raise InputError("does not exist.", file=str(self.dir / rel),
                         fix=f"create it, or correct the file name in {self.dir / 'workflow.py'}.")

    def text(self, rel: str) -> str:
        """Return the text of template file ``rel`` (cached for the process)."""
        if rel not in self._texts:
            self._texts[rel] = self.find(rel).read_text(encoding="utf-8")
        return self._texts[rel]

    def digest(self, rel: str) -> str:
        return hashlib.sha256(self.text(rel).encode("utf-8")).hexdigest()[:16]

    def shown(self, rel: str) -> str:
        """The path of ``rel`` as shown to the user (the file that is actually used), relative
        to the project root."""
        path = self.find(rel)
        try:
            return str(path.relative_to(self.dir.parent.parent))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------ steps

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def prompt_files(self, step: Step) -> list[str]:
        """Template files whose content the step's output depends on (prompt, knowledge, schema)."""
        files: list[str] = []
        if isinstance(step, LLMStep):
            files.append(f"system-prompts/{step.system_prompt}")
            files.extend(f"knowledge/{k}" for k in step.knowledge)
            if step.schema:
                files.append(f"schemas/{step.schema}")
        return files

    def prompt_variables(self, step: Step) -> list[str]:
        if isinstance(step, LLMStep):
            return prompt_vars.variables(self.text(f"system-prompts/{step.system_prompt}"))
        return []

    def system_prompt(self, step: LLMStep) -> str:
        """The rendered system prompt with knowledge appended (cached).

        Raises:
            InputError: unknown variable (names the prompt file and the variable).
        """
        key = f"\0rendered:{step.name}"
        if key not in self._texts:
            rel = f"system-prompts/{step.system_prompt}"
            text = prompt_vars.render(self.text(rel), self.config.get, file=self.shown(rel))
            for k in step.knowledge:
                text += f"\n\n<knowledge>\n{self.text('knowledge/' + k).strip()}\n</knowledge>\n"
            self._texts[key] = text
        return self._texts[key]

    def schema(self, step: LLMStep) -> dict | None:
        if not step.schema:
            return None
        return json.loads(self.text(f"schemas/{step.schema}"))

    def config_paths(self, step: Step) -> list[str]:
        """The config paths a step depends on: its prompt variables plus ``uses``."""
        paths = list(self.prompt_variables(step))
        for p in step.uses:
            if p not in paths:
                paths.append(p)
        if isinstance(step, ImageStep) and step.params_override and step.params_override not in paths:
            paths.append(step.params_override)
        return paths

    def llm_settings(self, step: LLMStep) -> dict[str, Any]:
        """Model, reasoning effort and verbosity for a step (``llm.steps.<name>`` over ``llm``)."""
        llm = self.config.engine.llm
        over = llm.steps.get(step.settings or step.name)
        out = {"model": llm.model, "reasoning": llm.reasoning, "verbosity": llm.verbosity}
        if over:
            for k in out:
                v = getattr(over, k)
                if v is not None:
                    out[k] = v
        return out

    def image_params(self, step: ImageStep) -> dict[str, Any]:
        """``generation.params`` with the step's override merged over it."""
        params = dict(self.config.engine.generation.params)
        if step.params_override:
            over = self.config.get(step.params_override, {})
            if not isinstance(over, dict):
                raise InputError("must be an object of image model params.",
                                 file=self.config.file, field=step.params_override)
            params.update(over)
        return params

    @cached_property
    def foreach_source(self) -> str | None:
        for s in self.steps:
            if s.foreach:
                return s.foreach.source
        return None

    @cached_property
    def producers(self) -> dict[str, Step]:
        """Target pattern → the step that makes it."""
        return {t: s for s in self.steps for t in (s.target, *s.also)}

    @cached_property
    def media_steps(self) -> set[str]:
        """Steps that call a media service (image, voice) and every step that reads their output:
        what a dry run leaves out."""
        media = {s.name for s in self.steps if s.service in ("image", "voice")}
        changed = True
        while changed:
            changed = False
            for s in self.steps:
                if s.name in media:
                    continue
                sources = [i.path for i in s.inputs.values() if isinstance(i, FileInput)]
                sources += [i.pattern for i in s.inputs.values() if isinstance(i, EachInput)]
                if isinstance(s, BundleStep):
                    sources += list(s.files.values())
                if any(self.producers.get(src) is not None and self.producers[src].name in media
                       for src in sources):
                    media.add(s.name)
                    changed = True
        return media

    @cached_property
    def depth(self) -> dict[str, int]:
        """Step name → its depth in the artifact graph: 0 for steps that read no other step's
        output, else one more than the deepest step whose output it reads (``image`` is deeper
        than ``prompt``, which is deeper than ``pages``)."""
        def sources(s: Step) -> list[str]:
            out = [i.path for i in s.inputs.values() if isinstance(i, (FileInput, PartInput))]
            out += [i.pattern for i in s.inputs.values() if isinstance(i, EachInput)]
            if any(isinstance(i, ItemInput) for i in s.inputs.values()) and self.foreach_source:
                out.append(self.foreach_source)
            if isinstance(s, BundleStep):
                out += list(s.files.values())
            return out

        depth: dict[str, int] = {}
        for _ in range(len(self.steps) + 1):  # a valid workflow has no cycle: this settles
            for s in self.steps:
                ups = [self.producers[src].name for src in sources(s) if src in self.producers]
                depth[s.name] = 1 + max((depth.get(u, 0) for u in ups), default=-1)
        return depth

    @cached_property
    def dynamic_steps(self) -> set[str]:
        """Steps that can only be created once the foreach source exists.

        A step is dynamic when it fans out, reads an item/part/each input, or reads a file made
        by a dynamic step.
        """
        dyn: set[str] = set()
        changed = True
        while changed:
            changed = False
            for s in self.steps:
                if s.name in dyn:
                    continue
                is_dyn = s.foreach is not None or isinstance(s, BundleStep) and any(
                    "{n}" in v for v in s.files.values())
                for inp in s.inputs.values():
                    if isinstance(inp, (ItemInput, PartInput, EachInput)):
                        is_dyn = True
                    elif isinstance(inp, FileInput):
                        prod = self.producers.get(inp.path)
                        if prod is not None and prod.name in dyn:
                            is_dyn = True
                if isinstance(s, BundleStep):
                    for src in s.files.values():
                        prod = self.producers.get(src)
                        if prod is not None and prod.name in dyn:
                            is_dyn = True
                if is_dyn:
                    dyn.add(s.name)
                    changed = True
        return dyn


# ---------------------------------------------------------------- loading

_CACHE: dict[tuple[str, str], Template] = {}


def template_names(root: Path) -> list[str]:
    """Names of the template folders under ``root/templates`` (those with a config.json)."""
    tdir = root / TEMPLATES_DIR
    if not tdir.is_dir():
        return []
    return sorted(p.name for p in tdir.iterdir() if (p / "config.json").is_file())


def load_template(root: Path, name: str, *, _chain: tuple[str, ...] = ()) -> Template:
    """Load and validate template ``name`` (cached per process).

    Raises:
        InputError: unknown template, invalid config, missing prompt/schema, unknown prompt
            variable, invalid schema, inconsistent steps.
    """
    key = (str(root), name)
    if key in _CACHE:
        return _CACHE[key]
    tdir = root / TEMPLATES_DIR / name
    if not (tdir / "config.json").is_file():
        known = ", ".join(template_names(root)) or "none"
        raise InputError(f"unknown template {name!r} (no {tdir / 'config.json'}).",
                         fix=f"use one of: {known}; or create {tdir}/config.json and workflow.py.")
    cfg_shown = str(Path(TEMPLATES_DIR) / name / "config.json")  # as shown in errors
    if name in _chain:
        raise InputError(f"template inheritance loops: {' -> '.join(_chain + (name,))}.",
                         file=cfg_shown, field="extends")
    raw = read_json(tdir / "config.json", cfg_shown)
    base: Template | None = None
    if isinstance(raw, dict) and raw.get("extends"):
        base = load_template(root, str(raw["extends"]), _chain=_chain + (name,))
    module = None
    if (tdir / "workflow.py").is_file():
        module = _import_workflow(tdir, name, base)
    elif base is None:
        raise InputError("has no workflow.py.", file=str(tdir),
                         fix="add a workflow.py declaring STEPS, or \"extends\" another template.")
    steps = list(getattr(module, "STEPS", None) or (base.steps if base else []))
    extra_model = getattr(module, "CONFIG_MODEL", None) if module else None
    if extra_model is None and base is not None:
        extra_model = base._extra_model  # type: ignore[attr-defined]
    base_raw = dict(base.config.raw) if base else {}
    base_raw.pop("extends", None)
    base_raw.pop("name", None)
    config = TemplateConfig.load(tdir / "config.json", extra_model=extra_model, base=base_raw,
                                 shown=cfg_shown)
    config.base = base.config if base else None
    if config.engine.name != name:
        raise InputError(f"name {config.engine.name!r} differs from the folder name {name!r}.",
                         file=cfg_shown, field="name",
                         fix=f"set \"name\": \"{name}\".")
    search = [tdir] + (base.search_path if base else [])
    tpl = Template(name=name, dir=tdir, config=config, steps=steps, search_path=search)
    tpl._extra_model = extra_model  # type: ignore[attr-defined]
    _validate(tpl)
    _CACHE[key] = tpl
    return tpl


def _import_workflow(tdir: Path, name: str, base: "Template | None" = None):
    """Import a template's workflow.py. A variant's module gets ``BASE`` (the base template's
    workflow module) and ``BASE_STEPS`` before it runs, to derive its steps from them."""
    modname = "cloops_templates." + name.replace("-", "_")
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, tdir / "workflow.py")
    module = importlib.util.module_from_spec(spec)
    if base is not None:
        module.BASE = sys.modules.get("cloops_templates." + base.name.replace("-", "_"))
        module.BASE_STEPS = list(base.steps)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:
        del sys.modules[modname]
        raise InputError(f"failed to load: {type(exc).__name__}: {exc}.",
                         file=str(tdir / "workflow.py")) from exc
    return module


def _validate(tpl: Template) -> None:
    wf = str(tpl.dir / "workflow.py")
    if not tpl.steps:
        raise InputError("declares no STEPS.", file=wf)
    names = [s.name for s in tpl.steps]
    for n in names:
        if names.count(n) > 1:
            raise InputError(f"step name {n!r} is declared twice.", file=wf)
    targets = [t for s in tpl.steps for t in (s.target, *s.also)]
    for t in targets:
        if targets.count(t) > 1:
            raise InputError(f"target {t!r} is made by two steps.", file=wf)
    sources = {s.foreach.source for s in tpl.steps if s.foreach}
    if len(sources) > 1:
        raise InputError(f"steps fan out over different files {sorted(sources)}; one is supported.",
                         file=wf)
    for s in tpl.steps:
        if isinstance(s, LLMStep):
            if s.user is None:
                raise InputError(f"LLM step {s.name!r} has no user message function.", file=wf)
            # renders: an unknown variable fails here, at load, naming its prompt file
            tpl.system_prompt(s)
            schema = tpl.schema(s)
            if schema is not None:
                _check_schema(tpl, f"schemas/{s.schema}", schema)
                problems = strict_schema_problems(schema)
                if problems:
                    raise InputError(f"is not a strict structured-output schema: {problems[0]}.",
                                     file=tpl.shown(f"schemas/{s.schema}"),
                                     fix="list every property in 'required' and set "
                                         "'additionalProperties': false on every object.")
        for path in tpl.config_paths(s):
            if not tpl.config.has(path):
                raise InputError(f"step {s.name!r} uses config value '{path}', which is not set.",
                                 file=tpl.config.file, field=path,
                                 fix=f"add '{path}' to config.json.")
        for inp in s.inputs.values():
            if isinstance(inp, (ItemInput, EachInput)) and not tpl.foreach_source:
                raise InputError(f"step {s.name!r} reads item()/each() but no step has foreach.",
                                 file=wf)


_SCHEMAS_OK = "build/.cloops/schemas-ok.json"


def _check_schema(tpl: Template, rel: str, schema: dict) -> None:
    """Validate a schema file against the JSON Schema meta-schema, once per content.

    Schemas that passed are remembered by digest in ``build/.cloops/schemas-ok.json``, so
    the cost (importing jsonschema) is paid when a schema changes, not at every start-up.

    Raises:
        InputError: the schema is invalid.
    """
    digest = tpl.digest(rel)
    root = tpl.dir.parent.parent
    ok_file = root / _SCHEMAS_OK
    try:
        ok = set(json.loads(ok_file.read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        ok = set()
    if digest in ok:
        return
    import jsonschema
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"is not a valid JSON schema: {exc.message}.",
                         file=tpl.shown(rel)) from None
    if (root / "build").is_dir() or (root / "dodo.py").is_file():
        from .fileio import atomic_write_json
        atomic_write_json(ok_file, sorted(ok | {digest}))


def strict_schema_problems(schema: Any, path: str = "$") -> list[str]:
    """Check OpenAI strict-mode rules; return the problems found (empty when strict).

    Rules (source: OpenAI Structured Outputs guide, "Supported schemas"): root is an object;
    every object lists all its properties in ``required`` and sets
    ``additionalProperties: false``; ``allOf``, ``not``, ``if/then/else`` are not supported.
    """
    problems: list[str] = []
    if path == "$" and (not isinstance(schema, dict) or schema.get("type") != "object"):
        return ["the root must be an object"]
    if isinstance(schema, dict):
        for bad in ("allOf", "not", "if", "then", "else"):
            if bad in schema:
                problems.append(f"{path} uses '{bad}'")
        if schema.get("type") == "object":
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                problems.append(f"{path} lacks 'additionalProperties': false")
            missing = set(props) - set(schema.get("required", []))
            if missing:
                problems.append(f"{path} does not require {sorted(missing)}")
            for k, v in props.items():
                problems += strict_schema_problems(v, f"{path}.{k}")
        if "items" in schema:
            problems += strict_schema_problems(schema["items"], f"{path}[]")
        for key in ("anyOf", "$defs", "definitions"):
            sub = schema.get(key)
            if isinstance(sub, list):
                for i, v in enumerate(sub):
                    problems += strict_schema_problems(v, f"{path}.{key}[{i}]")
            elif isinstance(sub, dict):
                for k, v in sub.items():
                    problems += strict_schema_problems(v, f"{path}.{key}.{k}")
    return problems
