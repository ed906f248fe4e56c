"""Templates: a folder under ``templates/`` with ``config.json`` and ``workflow.py``.

Layer: **data**.

Layout::

    templates/<name>/
        config.json          settings, style, llm, generation (validated, see cloops.data.config)
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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..core.errors import InputError
from . import prompts as prompt_vars
from .config import TemplateConfig, read_json

TEMPLATES_DIR = "templates"


@dataclass
class Template:
    """A loaded, validated template.

    Attributes:
        name: folder name.
        dir: the template folder.
        config: the validated config (merged over the base's when it extends one).
        steps: the declared steps (:class:`cloops.graph.steps.Step` instances), in order.
        search_path: folders searched for prompts/schemas/knowledge (own first, then bases).
        memo: values computed once per template by the layers above (the rendered prompts,
            the artifact graph of its steps: :func:`cloops.graph.plan.plan_of`).
    """

    name: str
    dir: Path
    config: TemplateConfig
    steps: list[Any]
    search_path: list[Path]
    _texts: dict[str, str] = field(default_factory=dict, repr=False)
    _digests: dict[str, str] = field(default_factory=dict, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

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
        """16 hex digits of the SHA-256 of :meth:`text` (cached with it)."""
        found = self._digests.get(rel)
        if found is None:
            found = self._digests[rel] = hashlib.sha256(
                self.text(rel).encode("utf-8")).hexdigest()[:16]
        return found

    def shown(self, rel: str) -> str:
        """The path of ``rel`` as shown to the user (the file that is actually used), relative
        to the project root."""
        path = self.find(rel)
        try:
            return str(path.relative_to(self.dir.parent.parent))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------ steps

    def step(self, name: str) -> Any:
        """The declared step called ``name``.

        Raises:
            KeyError: no such step.
        """
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def render(self, rel: str) -> str:
        """The text of template file ``rel`` with its ``{a.b}`` config variables injected
        (cached for the process).

        Raises:
            InputError: unknown variable (names the file and the variable).
        """
        key = ("rendered", rel)
        if key not in self.memo:
            self.memo[key] = prompt_vars.render(self.text(rel), self.config.get,
                                                file=self.shown(rel))
        return self.memo[key]

    def collection(self, name: str) -> dict[str, Any]:
        """The template's JSON files under ``<name>/``, by file stem, along the search path
        (the template's own over its base's): ``collection("cast")`` is the cast library.

        Raises:
            InputError: a file is not valid JSON (names it).
        """
        key = ("collection", name)
        if key not in self.memo:
            found: dict[str, Any] = {}
            for folder in reversed(self.search_path):  # bases first, own last: own wins
                sub = folder / name
                if sub.is_dir():
                    for path in sorted(sub.glob("*.json")):
                        try:
                            shown = str(path.relative_to(self.dir.parent.parent))
                        except ValueError:
                            shown = str(path)
                        found[path.stem] = read_json(path, shown)
            self.memo[key] = found
        return self.memo[key]

    def template_file(self, rel: str) -> Path | None:
        """The first ``rel`` on the search path, or None (no error: an optional file)."""
        for folder in self.search_path:
            p = folder / rel
            if p.is_file():
                return p
        return None

    def llm_settings(self, key: str) -> dict[str, Any]:
        """Model, reasoning effort and verbosity for the LLM steps whose settings key is
        ``key`` (``llm.steps.<key>`` over ``llm``)."""
        llm = self.config.engine.llm
        over = llm.steps.get(key)
        out = {"model": llm.model, "reasoning": llm.reasoning, "verbosity": llm.verbosity}
        if over:
            for k in out:
                v = getattr(over, k)
                if v is not None:
                    out[k] = v
        return out


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
    """Check the declared steps against the template: names and targets unique, each step's
    own checks (:meth:`cloops.graph.steps.Step.check`: prompts render, schemas are strict),
    every config value a step uses is set. The checks of the artifact graph (one fan-out
    source, registered kinds) are :class:`cloops.graph.plan.Plan`'s.

    Raises:
        InputError: naming the workflow or config file and the fix.
    """
    wf = str(tpl.dir / "workflow.py")
    if not tpl.steps:
        raise InputError("declares no STEPS.", file=wf)
    names = [getattr(s, "name", None) for s in tpl.steps]
    for n in names:
        if names.count(n) > 1:
            raise InputError(f"step name {n!r} is declared twice.", file=wf)
    for s in tpl.steps:
        if not callable(getattr(s, "check", None)):
            raise InputError(f"STEPS holds {s!r}, which is not a step.", file=wf,
                             fix="declare steps with the classes of cloops.steps.")
    targets = [t for s in tpl.steps for t in (s.target, *s.also)]
    for t in targets:
        if targets.count(t) > 1:
            raise InputError(f"target {t!r} is made by two steps.", file=wf)
    for s in tpl.steps:
        s.check(tpl)
        for path in s.config_paths(tpl):
            if not tpl.config.has(path):
                raise InputError(f"step {s.name!r} uses config value '{path}', which is not set.",
                                 file=tpl.config.file, field=path,
                                 fix=f"add '{path}' to config.json.")
