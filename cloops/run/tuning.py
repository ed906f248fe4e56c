"""The run's process tuning: garbage-collector settings and SDK warm-up.

Layer: **run**. None of it changes what a build makes; all of it is measured in
``benchmarks/`` (start-up, makespan).
"""

from __future__ import annotations

from typing import Any

from ..graph.plan import plan_of
from ..services import registry
from .context import current_project, run_context


def freeze_live_objects() -> None:
    """Move every object alive now to the garbage collector's permanent generation
    (:func:`gc.freeze`).

    Called after start-up (modules, SDK types, templates, task definitions: they live until the
    process ends, so collecting them is wasted work, and each full collection during the run
    would traverse them) and at the end of the run, before the interpreter's exit, whose final
    collection would otherwise traverse everything the run made: about 0.1-0.2 s at the end of
    every ``doit`` (measured on the makespan benchmark: 0.13 s -> 0.03 s). Objects that become
    unreachable are still freed by reference counting; only cycles among frozen objects wait.
    """
    import gc
    gc.freeze()


GC_YOUNG_THRESHOLD = 20_000  # net allocations between young-generation collections


def relax_gc() -> None:
    """Let Python's cyclic garbage collector run its young generation every
    :data:`GC_YOUNG_THRESHOLD` net allocations instead of the default 700
    (:func:`gc.set_threshold`; a higher threshold already set is kept).

    A build allocates steadily (SDK responses, task results). With the default, a 100-story
    build ran ~430 young, ~40 middle and 3 full collections: 0.3 s with the GIL held, the full
    ones stopping every worker thread for up to 45 ms while 8 image calls wait to be answered.
    With 20,000: ~13 young collections, 0.09 s in all, none over ~12 ms (measured on the makespan
    benchmark, ``benchmarks/``). A build's cyclic garbage is small (~20,000 objects in all), so
    collecting it later costs no real memory.
    """
    import gc
    if gc.get_threshold()[0] < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD)


MALLOC_ARENAS = 2  # glibc malloc arenas for the whole process (its default: 8 per core)
MMAP_THRESHOLD_BYTES = 4 << 20  # blocks this large are mapped and unmapped on their own
_M_ARENA_MAX = -8  # glibc malloc.h: mallopt's parameter numbers
_M_MMAP_THRESHOLD = -3


def _libc() -> Any:
    """glibc as a ctypes library, or None (not Linux, or not glibc)."""
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None  # another C library (musl has no mallopt)
    return libc


def tune_malloc() -> bool:
    """Fit glibc's malloc to a build's memory pattern before the worker threads start: at most
    :data:`MALLOC_ARENAS` arenas (``mallopt(M_ARENA_MAX)``, what ``MALLOC_ARENA_MAX`` does) and
    a fixed mmap threshold of :data:`MMAP_THRESHOLD_BYTES` (``mallopt(M_MMAP_THRESHOLD)``).
    Returns True when set (glibc), False elsewhere (other C libraries, macOS, Windows:
    nothing to do). Called by :func:`preload_sdks` when a run has tasks to execute, so a
    start-up with nothing to do does not import ctypes (~10 ms).

    glibc gives threads their own arenas (up to 8 per core) and keeps what a thread freed in
    its arena for that arena's next allocations; and each large block freed raises the size
    from which blocks are mapped on their own, so 5-16 MB images and audio buffers end up
    inside the arenas, which they fragment. A build's worker threads compose frames, decode
    images and speak lines at different times: the README's offline build reached 1.44 GB
    resident with ~0.32 GB live (memray). Two arenas: 0.64 GB; and a fixed 4 MB threshold:
    0.44-0.49 GB, for ~4 % more CPU time (page faults of the blocks mapped anew; measured on
    this project's 2-core machine, benchmarks/README.md; a ``malloc_trim`` once a second took
    another 5 % for 15 MB, and was left out). Source: glibc manual, "Memory Allocation Tunables"
    (``glibc.malloc.arena_max``, ``glibc.malloc.mmap_threshold``: setting it disables the
    dynamic adjustment) and ``mallopt(3)``.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)) and \
        bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def service_depths(tpl: Any) -> dict[str, int]:
    """``{service: depth}``: each service a template's steps call, with the depth in the step
    graph (:attr:`cloops.graph.plan.Plan.depth`) of the shallowest step calling it."""
    depth = plan_of(tpl).depth
    out: dict[str, int] = {}
    for step in tpl.steps:
        if step.service:
            out[step.service] = min(out.get(step.service, depth[step.name]), depth[step.name])
    return out


def first_services(tpl: Any) -> set[str]:
    """The services a build of ``tpl`` calls first: those of the shallowest steps that call
    one. Steps that call nothing (a ``rules`` step, checks) are passed over: depth 0 alone
    would find no service in a template whose first step is one of them."""
    depths = service_depths(tpl)
    if not depths:
        return set()
    lowest = min(depths.values())
    return {service for service, d in depths.items() if d == lowest}


def preload_sdks() -> None:
    """Import the SDKs of the real backends in use and run their ``warm_up``
    (:func:`cloops.services.registry.preload`) before tasks run in worker threads.

    The services the first calling steps call (:func:`first_services`: the LLM of a narrative)
    are preloaded now, in the main thread; the others (image, voice) in a background thread,
    shallowest first, so importing the image SDK overlaps the first LLM calls' network time
    instead of delaying them. A task that needs a service before its preload is done waits for
    it. When tasks will run, malloc is tuned first (:func:`tune_malloc`), before doit starts
    their threads.
    """
    import threading

    proj = current_project()
    if proj is None:
        return
    _book, sealed, items = run_context()
    if items and set(items) <= sealed:
        return  # every selected story is sealed: no task will call a service
    tune_malloc()  # tasks will run: before their threads start (not in every start-up)
    now: dict[str, Any] = {}
    later: dict[str, tuple[int, Any]] = {}  # backend name -> (depth of its first step, spec)
    for b in proj.backlogs:
        tpl = proj.template(b.template)
        order = service_depths(tpl)
        first = first_services(tpl)
        for service, depth in order.items():
            spec = proj.resolved(b.template, service).spec
            if service in first:
                now[spec.name] = spec
            else:
                later[spec.name] = min(later.get(spec.name, (depth, spec)), (depth, spec),
                                       key=lambda d_s: d_s[0])
    for spec in now.values():
        registry.preload(spec)
    freeze_live_objects()  # the SDK's modules and models, imported just now
    rest = [spec for name, (_d, spec) in sorted(later.items(), key=lambda kv: kv[1][0])
            if name not in now]
    if rest:
        def preload_rest() -> None:
            for spec in rest:
                try:
                    registry.preload(spec)
                except Exception:  # noqa: BLE001 - the backend's first call reports it
                    pass
        threading.Thread(target=preload_rest, name="cloops-preload", daemon=True).start()


