"""cloops' own doit commands (registered as doit plugins in ``pyproject.toml``).

Layer: **steer**.

- ``doit report``: spend per template, story and step from the usage ledger (rich tables); the
  story table also shows each story's eval score and failed checks (its ``evals.json``).
- ``doit cache``: the response cache's size; ``--prune-days N`` deletes entries unused for N days
  (and the temp files of writes a killed run left).

They read files under ``build/`` only: no task is loaded, nothing is built, nothing is called.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

from doit.cmd_base import Command
from rich.table import Table

from ..core.console import make_console
from ..run.ledger import LEDGER_FILE, SCHEMA, connect
from .evals import eval_summary, score_text

_GROUPS = {"template": ["template"], "story": ["template", "story"], "step": ["template", "step"],
           "story-step": ["template", "story", "step"], "worker": ["worker"]}


def shared_ledger(root: Path) -> tuple[sqlite3.Connection, str]:
    """Every worker's ledger rows from the shared URL (``ledger/<worker>/<run>.jsonl``, see
    :mod:`cloops.run.fleet`) in an in-memory ledger with a ``worker`` column, and the URL.
    The URL is ``CLOOPS_CACHE_URL`` or the first backlog's template's ``cache.shared``;
    nothing is written there.

    Raises:
        InputError: no shared URL is set. SharedCacheError: it cannot be read.
    """
    from ..core.errors import InputError
    from ..data.project import load_project
    from ..run.fleet import shared_setting
    from ..services.shared_cache import SharedTier
    proj = load_project(root)
    setting = next((s for s in (shared_setting(proj, b.template) for b in proj.backlogs) if s),
                   None)
    if setting is None:
        raise InputError("doit report --shared: no shared URL is set.", field="cache.shared",
                         fix="set CLOOPS_CACHE_URL (or cache.shared in the template's config) "
                             "to the URL the workers used.")
    tier = SharedTier(setting.url, source=setting.source, storage_options=setting.options,
                      mode="read", worker="report")
    tier.check()
    con = sqlite3.connect(":memory:")
    con.executescript(SCHEMA)
    con.execute("ALTER TABLE calls ADD COLUMN worker TEXT")
    cols = [r[1] for r in con.execute("PRAGMA table_info(calls)") if r[1] != "id"]
    for rel in tier.list("ledger"):
        for line in (tier.read(rel) or b"").decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a row cut short: the others still count
            con.execute(f"INSERT INTO calls ({', '.join(cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})", [row.get(c) for c in cols])
    return con, tier.url


def spend(root: Path, by: str, *, run: str | None = None,
          con: sqlite3.Connection | None = None) -> list[dict]:
    """Totals of the ledger grouped ``by`` template, story, step, story-step or (a merged
    ledger from :func:`shared_ledger` as ``con``) worker.

    Returns rows ``{template, [story], [step], calls, cache_hits, retries, input_tokens,
    output_tokens, reasoning_tokens, images, cost_usd, saved_usd}`` (cost in US dollars),
    most expensive first. ``run``: only that run id (``"last"`` for the latest run).
    """
    path = root / LEDGER_FILE
    if con is None and not path.exists():
        return []
    cols = _GROUPS[by]
    owned = con is None
    con = connect(path) if con is None else con
    con.row_factory = sqlite3.Row
    try:
        where, args = "", []
        if run == "last":
            where = "WHERE run_id = (SELECT run_id FROM calls ORDER BY id DESC LIMIT 1)"
        elif run:
            where, args = "WHERE run_id = ?", [run]
        sql = (f"SELECT {', '.join(cols)}, SUM(1 - cache_hit) AS calls, SUM(cache_hit) AS cache_hits, "
               "SUM(attempts - 1) AS retries, SUM(input_tokens) AS input_tokens, "
               "SUM(output_tokens) AS output_tokens, SUM(reasoning_tokens) AS reasoning_tokens, "
               "SUM(images) AS images, SUM(cost_usd) AS cost_usd, SUM(saved_usd) AS saved_usd "
               f"FROM calls {where} GROUP BY {', '.join(cols)} ORDER BY cost_usd DESC, {', '.join(cols)}")
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        if owned:
            con.close()


class Report(Command):
    """``doit report [--by template|story|step] [--run last|<id>] [--json]``."""

    name = "report"
    doc_purpose = "print what the builds spent, per template, story and step (usage ledger)"
    doc_usage = "[--by template|story|step] [--run last|RUN_ID] [--json]"
    doc_description = ("Reads build/.cloops/ledger.sqlite. Costs come from the price table in "
                       "each template's config (prices.<model>); cache hits cost nothing and are "
                       "counted as saved.")
    cmd_options = (
        {"name": "by", "long": "by", "type": str, "default": "",
         "help": "one table: template, story or step (default: all three)"},
        {"name": "run", "long": "run", "type": str, "default": "",
         "help": "only one run: 'last' or a run id (default: every run)"},
        {"name": "as_json", "long": "json", "type": bool, "default": False,
         "help": "print JSON for scripts"},
        {"name": "shared", "long": "shared", "type": bool, "default": False,
         "help": "every worker's rows from the shared URL (CLOOPS_CACHE_URL or cache.shared), "
                 "with a table per worker"},
    )

    def execute(self, params, args):
        root = Path(os.getcwd())
        shared = params.get("shared")
        groups = [params["by"]] if params["by"] else (
            ["template", "story", "step"] + (["worker"] if shared else []))
        for g in groups:
            if g not in _GROUPS or (g == "worker" and not shared):
                print(f"ERROR: --by {g!r}: use template, story or step (worker with --shared).",
                      file=sys.stderr)
                return 2
        run = params["run"] or None
        con = None
        if shared:
            from ..core.errors import CloopsError
            try:
                con, url = shared_ledger(root)
            except CloopsError as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                return 2
        data = {g: spend(root, g, run=run, con=con) for g in groups}
        evals = {}
        for r in data.get("story", []):  # what each story's evals.json says
            ev = evals[r["template"], r["story"]] = eval_summary(
                root / "build" / r["template"] / r["story"])
            r.update(score=ev["score"], needs_review=ev["needsReview"],
                     failed_checks=ev["failed"])
        if params["as_json"]:
            print(json.dumps(data, indent=2))
            return 0
        console = make_console()
        if not any(data.values()):
            console.print("No calls recorded yet (" + (f"no worker's ledger at {url}/ledger"
                          if shared else "build/.cloops/ledger.sqlite is empty") + ").")
            return 0
        for g in groups:
            table = Table(title=f"Spend per {g}" + (f" (run {run})" if run else "")
                          + (f" across the workers at {url}" if shared else ""),
                          title_justify="left")
            for c in _GROUPS[g]:
                table.add_column(c)
            for c in ("calls", "cache hits", "retries", "tokens in/out (reasoning)", "images",
                      "cost USD", "saved USD"):
                table.add_column(c, justify="right")
            by_story = g == "story"
            if by_story:
                table.add_column("score", justify="right")
                table.add_column("failed checks")
            tot = [0, 0, 0, 0, 0, 0, 0, 0.0, 0.0]
            for r in data[g]:
                cells = ([score_text(evals[r["template"], r["story"]]), _review_cell(r)]
                         if by_story else [])
                table.add_row(*[str(r[c]) for c in _GROUPS[g]], str(r["calls"]),
                              str(r["cache_hits"]), str(r["retries"]),
                              f"{r['input_tokens']:,}/{r['output_tokens']:,} ({r['reasoning_tokens']:,})",
                              str(r["images"]), f"{r['cost_usd']:.4f}", f"{r['saved_usd']:.4f}",
                              *cells)
                for i, k in enumerate(("calls", "cache_hits", "retries", "input_tokens",
                                       "output_tokens", "reasoning_tokens", "images",
                                       "cost_usd", "saved_usd")):
                    tot[i] += r[k] or 0
            table.add_section()
            table.add_row("total", *([""] * (len(_GROUPS[g]) - 1)), str(tot[0]), str(tot[1]),
                          str(tot[2]), f"{tot[3]:,}/{tot[4]:,} ({tot[5]:,})", str(tot[6]),
                          f"{tot[7]:.4f}", f"{tot[8]:.4f}", *([""] * (2 if by_story else 0)))
            console.print(table)
            review = [r for r in data[g] if r.get("needs_review")] if by_story else []
            if review:
                console.print(f"{len(review)} stories need review (evals.json): "
                              + ", ".join(f"{r['template']}/{r['story']}" for r in review)
                              + " — `doit status <story>` says why.")
        return 0


def _review_cell(row: dict) -> str:
    """The failed-checks column of a story row: the checks' names, or what else made it need
    review."""
    if row.get("failed_checks"):
        names = list(dict.fromkeys(f.split(" ")[0].split(":")[0] for f in row["failed_checks"]))
        return ", ".join(names)
    if row.get("needs_review"):
        return "low score"
    return "none" if row.get("needs_review") is False else ""


class Cache(Command):
    """``doit cache [--prune-days N] [--dir DIR]``."""

    name = "cache"
    doc_purpose = "show the response cache's size, or prune entries unused for N days"
    doc_usage = "[--prune-days N] [--dir DIR]"
    cmd_options = (
        {"name": "prune_days", "long": "prune-days", "type": float, "default": -1.0,
         "help": "delete entries not used (hit or written) for this many days; 0 empties it"},
        {"name": "dir", "long": "dir", "type": str, "default": "build/.cloops/cache",
         "help": "the cache folder (config cache.dir)"},
    )

    def execute(self, params, args):
        from ..services.cache import ResponseCache
        cache = ResponseCache(Path(params["dir"]))
        if params["prune_days"] >= 0:
            removed, freed = cache.prune(older_than_s=params["prune_days"] * 86400)
            print(f"pruned {removed} cache entries, {freed / 1e6:.1f} MB freed")
        st = cache.stats()
        print(f"response cache {cache.dir}: {st['entries']} entries, {st['bytes'] / 1e6:.1f} MB")
        return 0
