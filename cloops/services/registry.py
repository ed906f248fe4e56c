"""Backend registry: every backend, built-in or not, registers here by name.

Layer: **services**.

A :class:`BackendSpec` says which service it serves (``llm``, ``image``, ``voice``), whether it
is offline, which environment variables hold its key (``auto`` picks the first real backend
whose key is set, else the offline one) and a factory ``factory(section, env) -> backend`` where
``section`` is the service's validated config section (:class:`cloops.data.config.LLMConfig`,
:class:`cloops.data.config.GenerationConfig`) and ``env`` the process environment plus ``.env``.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..core.errors import InputError

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
        warm_up: called once in the main thread before worker threads call the backend (e.g.
            to build an SDK's response models once rather than in every thread at once).
    """

    name: str
    service: str
    offline: bool
    factory: Callable[[Any, Mapping[str, str]], Any]
    key_env: tuple[str, ...] = ()
    auto_rank: int = 100
    describe: str = ""
    imports: tuple[str, ...] = ()
    warm_up: Callable[[], None] | None = None
    module: str = ""  # set for a built-in not imported yet: import it to get the full spec

    def full(self) -> "BackendSpec":
        """The complete spec (importing a built-in backend's module if not done yet)."""
        if self.module:
            importlib.import_module(self.module)
            return _REGISTRY[self.service][self.name]
        return self


_REGISTRY: dict[str, dict[str, BackendSpec]] = {s: {} for s in SERVICES}

# Built-in backends: what choosing one needs, without importing its module (start-up time:
# the SDK-facing modules are only imported when a backend is constructed). Each module
# registers its full spec when imported; tests/test_registry.py checks the two agree.
#   name: (service, module, offline, key_env, auto_rank)
BUILTINS: dict[str, tuple[str, str, bool, tuple[str, ...], int]] = {
    "draft": ("llm", "cloops.services.draft_backend", True, (), 100),
    "openai": ("llm", "cloops.services.openai_backend", False, ("OPENAI_API_KEY",), 10),
    "openai-chat": ("llm", "cloops.services.openai_backend", False, (), 100),
    "storyboard": ("image", "cloops.services.storyboard_backend", True, (), 100),
    "replicate": ("image", "cloops.services.replicate_backend", False, ("REPLICATE_API_TOKEN",), 10),
    "comfyui": ("image", "cloops.services.comfyui_backend", False, ("COMFYUI_URL",), 20),
    "piper": ("voice", "cloops.services.piper_backend", True, (), 100),
    "elevenlabs": ("voice", "cloops.services.elevenlabs_backend", False, ("ELEVENLABS_API_KEY",), 10),
}
BUILTIN_MODULES = tuple(dict.fromkeys(v[1] for v in BUILTINS.values()))
_loaded = False


def _lazy_factory(module: str, name: str, service: str):
    def factory(section, env):
        importlib.import_module(module)  # registers the real spec
        return _REGISTRY[service][name].factory(section, env)
    return factory


_PRELOAD_LOCKS: dict[str, threading.Lock] = {}
_PRELOADED: set[str] = set()
_PRELOAD_GUARD = threading.Lock()


def preload(spec: BackendSpec) -> None:
    """Import a backend's SDK modules and run its ``warm_up``, once per process.

    Thread-safe: a second caller waits for the first to finish (two threads importing an SDK
    for the first time at once can see half-initialized modules).

    Raises:
        ImportError: the SDK is not installed (the hub's caller fails that story's task).
    """
    spec = spec.full()
    with _PRELOAD_GUARD:
        lock = _PRELOAD_LOCKS.setdefault(spec.name, threading.Lock())
    with lock:
        if spec.name in _PRELOADED:
            return
        for mod in spec.imports:
            importlib.import_module(mod)
        if spec.warm_up is not None:
            spec.warm_up()
        _PRELOADED.add(spec.name)


def register(spec: BackendSpec) -> BackendSpec:
    """Add (or replace) a backend. Returns the spec so it can be used as a module constant."""
    if spec.service not in SERVICES:
        raise ValueError(f"unknown service {spec.service!r}; expected one of {SERVICES}")
    _REGISTRY[spec.service][spec.name] = spec
    return spec


_ENTRY_POINTS: list = []


def plugin_entry_points(group: str) -> list:
    """The installed entry points of ``group`` (``cloops.backends``, ``cloops.step_kinds``).

    The installed distributions are scanned once per process for every group
    (:func:`importlib.metadata.entry_points` reads each one's metadata: ~3 ms a scan in a
    virtualenv of ~140 packages, paid at every ``doit`` start), not once per group.
    """
    if not _ENTRY_POINTS:
        from importlib.metadata import entry_points
        _ENTRY_POINTS.append(entry_points())
    return list(_ENTRY_POINTS[0].select(group=group))


def _load_builtins() -> None:
    """Import the built-in backends, then plugins: the ``cloops.backends`` entry-point group
    and the modules named in ``CLOOPS_PLUGINS`` (comma-separated), each registering itself."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, (service, module, offline, key_env, rank) in BUILTINS.items():
        if name not in _REGISTRY[service]:
            _REGISTRY[service][name] = BackendSpec(
                name=name, service=service, offline=offline, key_env=key_env, auto_rank=rank,
                factory=_lazy_factory(module, name, service), module=module)
    for ep in plugin_entry_points("cloops.backends"):
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
