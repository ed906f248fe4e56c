"""What a run says before and after its tasks: the header (which backend serves each
service, loudly when offline), the calls table, the stories whose evals ask for a review and
the completed stories a change made stale.

Layer: **run**.
"""

from __future__ import annotations

from ..graph.completion import stale_completed
from ..services import registry
from .context import current_project


def header_lines() -> list[str]:
    """The run header: which backend serves each service, loudly when offline (and then,
    where ads are on, that draft clips are 540x960 proxies: ``ads.drafts``)."""
    proj = current_project()
    if proj is None:
        return []
    lines = []
    for b in proj.backlogs:
        if getattr(b, "loaded", True):
            pending = sum(1 for it in b.items if it.status != "completed")
            count = f"{pending} of {len(b.items)} stories not completed"
        else:  # a Firestore backlog of which only the stories named were read
            count = f"stories named, from {b.path}"
        parts = []
        tpl = proj.template(b.template)
        services = sorted({s.service for s in tpl.steps if s.service})
        for service in services:
            r = proj.resolved(b.template, service)
            style = "bold yellow" if r.spec.offline else "bold green"
            parts.append(f"{service}: [{style}]{r.spec.name}[/{style}] ({r.reason})")
        lines.append(f"[bold]{b.template}[/bold]: {count} · " + " · ".join(parts))
        offline = [s for s in services if proj.resolved(b.template, s).spec.offline]
        if offline:
            keys = [spec.key_env[0] for s in offline
                    for spec in sorted(registry.backends(s).values(), key=lambda x: x.auto_rank)[:1]
                    if spec.key_env]
            lines.append("  [yellow]OFFLINE backends in use: outputs are drafts and stories stay "
                         f"pending. Set {' / '.join(keys)} (or .env) to build for real.[/yellow]")
            ads = tpl.config.engine.ads
            if "image" in offline and ads.enabled and ads.drafts == "proxy":
                lines.append("  [yellow]Ad clips of draft pictures are 540x960 proxies: the "
                             "layout, timing and sound of the 1080x1920 clip "
                             "(ads.drafts: \"full\" draws them in full).[/yellow]")
    from .fleet import header_lines as fleet_header
    return lines + fleet_header(proj)


def fleet_lines(keys: list[str]) -> list[str]:
    """End of run with a shared cache tier or a shard: the last ledger upload, where the
    statuses of ``keys`` (``<template>/<id>``, the stories this run touched) went, and what
    the shared tier did (:func:`cloops.run.fleet.finish`). Empty on a lone machine."""
    from .fleet import finish, shard_from_env, tiers
    proj = current_project()
    if proj is None or (not tiers() and shard_from_env(proj.env) is None):
        return []
    from ..data.backlog import load_backlog
    statuses = {}
    for b in proj.backlogs:
        mine = [k for k in keys if k.startswith(b.template + "/")]
        if not mine:
            continue
        try:
            items = {it.id: it for it in load_backlog(b.path).items}
        except Exception:  # noqa: BLE001 - a report line must not fail the run's end
            continue
        for k in mine:
            it = items.get(k.partition("/")[2])
            if it is not None:
                statuses[k] = {"status": it.status, "completedAt": it.completed_at,
                               "error": it.error}
    return finish(proj, statuses)


def summary_rows() -> list[tuple]:
    """Per (service, backend) totals of this run's calls, from the ledger:
    ``(service, backend, calls, cache hits, retries, "in/out" tokens, images, cost, saved)``."""
    proj = current_project()
    if proj is None:
        return []
    import sys
    hub_module = sys.modules.get(f"{__package__}.hub")  # imported by the first call's task:
    if hub_module is None:  # a run that called nothing does not import it to learn so
        return []
    hub = hub_module.existing_hub(proj)
    if hub is None:
        return []
    agg: dict[tuple[str, str], list] = {}
    for c in hub.ledger.calls():
        a = agg.setdefault((c["service"], c["backend"]), [0, 0, 0, 0, 0, 0, 0.0, 0.0])
        a[1 if c["cache_hit"] else 0] += 1
        a[2] += (c["attempts"] or 1) - 1
        a[3] += c["input_tokens"] or 0
        a[4] += c["output_tokens"] or 0
        a[5] += c["images"] or 0
        a[6] += c["cost_usd"] or 0.0
        a[7] += c["saved_usd"] or 0.0
    return [(svc, be, a[0], a[1], a[2], f"{a[3]:,}/{a[4]:,}", a[5], f"{a[6]:.4f}", f"{a[7]:.4f}")
            for (svc, be), a in sorted(agg.items())]


def stale_completed_report() -> list[str]:
    """Lines naming completed stories that a change made stale (they are not rebuilt by
    a bare ``doit``; ``doit build:<id>`` rebuilds one)."""
    proj = current_project()
    if proj is None:
        return []
    stale = stale_completed(proj)
    if not stale:
        return []
    lines = [f"[yellow]{len(stale)} completed stories are stale and were not rebuilt[/yellow] "
             "(run `doit build:<id>` to rebuild one):"]
    from rich.markup import escape
    for key, reasons in stale[:20]:
        lines.append(f"  {key}: {escape(reasons)}")
    if len(stale) > 20:
        lines.append(f"  … and {len(stale) - 20} more")
    return lines


def review_lines(keys: list[str]) -> list[str]:
    """Lines naming the stories among ``keys`` (``<template>/<id>``, those this run touched)
    whose ``evals.json`` says they need review, with the first reason of each."""
    import json
    proj = current_project()
    if proj is None:
        return []
    found = []
    for key in sorted(keys):
        try:
            data = json.loads((proj.root / "build" / key / "evals.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("needsReview"):
            found.append((key, (data.get("reviewReasons") or ["?"])[0]))
    if not found:
        return []
    lines = [f"[red]{len(found)} stories need review[/red] (evals.json; they still build, "
             "publishing refuses them): `doit status <story>` says why"]
    lines += [f"  {key}: {reason}" for key, reason in found[:20]]
    if len(found) > 20:
        lines.append(f"  … and {len(found) - 20} more")
    return lines
