"""Backend registry: every backend, built-in or not, registers here by name.

A :class:`BackendSpec` says which service it serves (``llm``, ``image``, ``voice``), whether it
is offline, which environment variables hold its key (``auto`` picks the first real backend
whose key is set, else the offline one) and a factory ``factory(section, env) -> backend`` where
``section`` is the service's validated config section (:class:`cloops.config.LLMConfig`,
:class:`cloops.config.GenerationConfig`) and ``env`` the process environment plus ``.env``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import InputError

SERVICES = ("llm", "image", "voice")


@dataclass(frozen=True)
class BackendSpec:
    """How to make one backend.

    Attributes:
        name: name used in config (``llm.backend: "openai"``).
        service: ``"llm"``, ``"image"`` or ``"voice"``.
        offline: True when it calls no paid service.
        key_env: env vars, any one of which enables this backend under ``auto``; empty for
            backends that ``auto`` never picks unless they are offline.
        factory: ``factory(section, env) -> backend``.
        auto_rank: lower wins among real backends whose key is set.
        describe: one line for the run header (``"OpenAI Responses API"``).
        imports: SDK modules the backend imports lazily; the hub imports them once, under a
            lock, before the first call, because two threads importing openai/httpx/replicate
            for the first time at once can see half-initialized modules.
    """

    name: str
    service: str
    offline: bool
    factory: Callable[[Any, Mapping[str, str]], Any]
    key_env: tuple[str, ...] = ()
    auto_rank: int = 100
    describe: str = ""
    imports: tuple[str, ...] = ()


_REGISTRY: dict[str, dict[str, BackendSpec]] = {s: {} for s in SERVICES}

# Built-in backends live in these modules; each registers itself when imported.
BUILTIN_MODULES = (
    "cloops.services.draft_backend",
    "cloops.services.openai_backend",
    "cloops.services.storyboard_backend",
    "cloops.services.replicate_backend",
    "cloops.services.comfyui_backend",
    "cloops.services.elevenlabs_backend",
    "cloops.services.piper_backend",
)
_loaded = False


def register(spec: BackendSpec) -> BackendSpec:
    """Add (or replace) a backend. Returns the spec so it can be used as a module constant."""
    if spec.service not in SERVICES:
        raise ValueError(f"unknown service {spec.service!r}; expected one of {SERVICES}")
    _REGISTRY[spec.service][spec.name] = spec
    return spec


def _load_builtins() -> None:
    """Import the built-in backends, then plugins: the ``cloops.backends`` entry-point group
    and the modules named in ``CLOOPS_PLUGINS`` (comma-separated), each registering itself."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a missing dependency inside the module is a real error
                raise
    from importlib.metadata import entry_points
    for ep in entry_points(group="cloops.backends"):
        ep.load()
    for mod in filter(None, (m.strip() for m in os.environ.get("CLOOPS_PLUGINS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise InputError(f"cannot import backend plugin {mod!r}: {exc}.",
                             field="CLOOPS_PLUGINS",
                             fix="install the plugin or correct the module name.") from None


def backends(service: str) -> dict[str, BackendSpec]:
    """Return the registered backends of ``service`` by name."""
    _load_builtins()
    return dict(_REGISTRY[service])


@dataclass(frozen=True)
class Resolved:
    """The backend chosen for a service and why (shown in the run header)."""

    spec: BackendSpec
    reason: str
    requested: str = "auto"


def resolve(service: str, requested: str, env: Mapping[str, str], *,
            where: str = "config.json") -> Resolved:
    """Pick the backend for ``service``.

    ``requested`` is a backend name or ``"auto"``: the real backend with the lowest
    ``auto_rank`` whose key variable is set, else the offline one.

    Raises:
        InputError: ``requested`` names no registered backend.
    """
    table = backends(service)
    if requested != "auto":
        if requested not in table:
            raise InputError(f"unknown {service} backend {requested!r}.", file=where,
                             field=f"{_section(service)}.backend",
                             fix=f"use one of: auto, {', '.join(sorted(table))}.")
        spec = table[requested]
        return Resolved(spec, f"set in config ({requested})", requested)
    real = sorted((s for s in table.values() if not s.offline and s.key_env),
                  key=lambda s: s.auto_rank)
    for spec in real:
        for var in spec.key_env:
            if env.get(var):
                return Resolved(spec, f"auto: {var} is set", requested)
    offline = [s for s in table.values() if s.offline]
    if not offline:
        raise InputError(f"no {service} backend is available.", file=where,
                         field=f"{_section(service)}.backend",
                         fix="set the key of a real backend.")
    keys = ", ".join(v for s in real for v in s.key_env) or "a key"
    return Resolved(offline[0], f"auto: OFFLINE, no key set ({keys})", requested)


def _section(service: str) -> str:
    return {"llm": "llm", "image": "generation", "voice": "voice"}[service]
