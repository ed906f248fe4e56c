"""Prompt experiments: a variant template built over a sample of its base's backlog, and the
comparison of the two (doit plugins ``experiment`` and ``compare``).

Layer: **steer**.

A variant is a template folder that ``"extends"`` its base and overrides some of its prompts
or config values (``templates/<variant>/config.json`` + e.g.
``system-prompts/step3-prompts.md``). ``doit experiment <variant> --sample N``:

1. samples N stories of the base's backlog, deterministically: the N ids first when ordered by
   the SHA-256 of the id (the same stories for every variant and every run; a story added to
   the backlog later joins the sample only if it sorts among the first N);
2. writes them to ``backlogs/<variant>.json`` (a backlog like any other, marked
   ``"experiment": {"base", "sample", "from"}``; statuses of stories kept from an earlier run
   are kept), so the variant builds under ``build/<variant>/`` beside the base's;
3. runs ``doit build:<variant>/<id> ...`` for the sample: every request is looked up in the
   shared response cache (``build/.cloops/cache/``, keyed by the whole request), so the steps
   the variant does not change cost nothing and only what differs is paid for;
4. prints ``doit compare <base> <variant>``.

``doit compare <template> <variant>`` prints, per story of the variant's backlog and in
total, each eval score (``evals.json``), the failed checks, what each side paid (the usage
ledger) and which targets differ (by content).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from doit.cmd_base import Command
from rich.table import Table

from ..core.console import make_console
from ..core.errors import InputError
from ..core.fileio import atomic_write_text, dump_json, sha256_file
from ..data.backlog import BACKLOGS_DIR
from ..data.config import read_json
from ..data.project import BUILD_DIR, load_project
from ..graph.targets import META_DIR, read_manifest
from .commands import _json_flag, _user_errors
from .evals import eval_summary
from .spend import spend

DEFAULT_SAMPLE = 10


def sample_ids(ids: list[str], n: int) -> list[str]:
    """The ``n`` ids first by the SHA-256 of the id, in backlog order (deterministic: the same
    for every variant and run)."""
    chosen = set(sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:max(n, 0)])
    return [i for i in ids if i in chosen]


def variant_base(root: Path, variant: str) -> str:
    """The template ``variant`` extends.

    Raises:
        InputError: no such template folder, or it extends nothing (names the fix).
    """
    cfg = root / "templates" / variant / "config.json"
    shown = f"templates/{variant}/config.json"
    if not cfg.is_file():
        raise InputError(f"there is no variant {variant!r} ({shown} does not exist).",
                         fix=f"create {shown} with {{\"name\": \"{variant}\", \"extends\": "
                             "\"comic-books-standard\"}, then the prompts it overrides (e.g. "
                             f"templates/{variant}/system-prompts/step3-prompts.md).")
    raw = read_json(cfg, shown)
    base = raw.get("extends") if isinstance(raw, dict) else None
    if not base:
        raise InputError("does not extend a template: an experiment compares a variant with "
                         "its base.", file=shown, field="extends",
                         fix="add \"extends\": \"<the template it varies>\".")
    return str(base)


def write_sample(root: Path, variant: str, base: str, n: int) -> tuple[Path, list[str]]:
    """Write ``backlogs/<variant>.json`` with the sample of the base's backlog; return its path
    and the sampled ids.

    Raises:
        InputError: the base has no backlog, or ``backlogs/<variant>.json`` exists and is not
            an experiment's (it would be overwritten).
    """
    proj = load_project(root)
    try:
        base_log = proj.backlog_for(base)
    except KeyError:
        raise InputError(f"template {base!r} has no backlog to sample.",
                         fix=f"add backlogs/{base}.json.") from None
    path = root / BACKLOGS_DIR / f"{variant}.json"
    kept: dict[str, dict] = {}
    if path.exists():
        old = read_json(path, str(path.relative_to(root)))
        if not (isinstance(old, dict) and isinstance(old.get("experiment"), dict)):
            raise InputError("is a backlog of its own, not an experiment's sample: it is not "
                             "overwritten.", file=str(path.relative_to(root)),
                             fix="move it away, or run the experiment under another name.")
        kept = {it["id"]: it for it in old.get("items", []) if isinstance(it, dict)}
    ids = sample_ids([it.id for it in base_log.items], n)
    items = []
    for sid in ids:
        inp = base_log.get(sid).input
        prev = kept.get(sid) or {}
        same = prev.get("input") == inp
        items.append({"id": sid, "status": prev.get("status", "pending") if same else "pending",
                      "input": inp, "completedAt": prev.get("completedAt") if same else None,
                      "error": prev.get("error") if same else None})
    shown_base = os.path.relpath(base_log.path, root)
    atomic_write_text(path, dump_json({
        "templateId": variant,
        "experiment": {"base": base, "sample": len(ids), "from": shown_base,
                       "how": "the ids first by sha256 of the id; rewritten by doit experiment"},
        "items": items}))
    return path, ids


class Experiment(Command):
    """``doit experiment VARIANT [--sample N]``."""

    name = "experiment"
    doc_purpose = "build a variant template over a sample of its base's backlog, then compare"
    doc_usage = "VARIANT [--sample N]"
    doc_description = ("VARIANT is a folder templates/<variant>/ whose config.json \"extends\" "
                       "its base. N stories of the base's backlog (the first by sha256 of their "
                       "id) are written to backlogs/<variant>.json and built under "
                       "build/<variant>/; the response cache is shared, so only what the "
                       "variant changes is paid for. Ends with `doit compare <base> <variant>`.")
    cmd_options = (
        {"name": "sample", "long": "sample", "type": int, "default": DEFAULT_SAMPLE,
         "help": f"how many stories of the base's backlog (default {DEFAULT_SAMPLE})"},
    )

    @_user_errors
    def execute(self, params, args):
        args, sample = _sample_option(list(args), params["sample"])
        if len(args) != 1:
            raise InputError(f"expected one VARIANT, got {' '.join(args) or 'nothing'}.",
                             fix="doit experiment <variant> --sample 10")
        root = Path(os.getcwd()).resolve()
        variant = args[0]
        base = variant_base(root, variant)
        path, ids = write_sample(root, variant, base, sample)
        console = make_console(soft_wrap=True)
        console.print(f"experiment [bold]{variant}[/bold] (extends {base}): {len(ids)} stories "
                      f"sampled from backlogs/{base}.json (the first by sha256 of their id) into "
                      f"{path.relative_to(root)}; built under {BUILD_DIR}/{variant}/, sharing the "
                      "response cache: unchanged steps cost nothing")
        console.print("  " + ", ".join(ids))
        sys.stdout.flush()
        rc = subprocess.call([sys.executable, "-m", "doit",
                              *[f"build:{variant}/{sid}" for sid in ids]], cwd=root)
        console.print()
        compare(root, base, variant, console)
        return rc


def _sample_option(args: list[str], given: int) -> tuple[list[str], int]:
    """Take ``--sample N`` (or ``--sample=N``) out of the positional arguments too: doit stops
    parsing options at the first argument (``doit experiment wide --sample 10``).

    Raises:
        InputError: N is not a whole number of at least 1.
    """
    rest, value = [], str(given)
    it = iter(args)
    for a in it:
        if a == "--sample":
            value = next(it, "")
        elif a.startswith("--sample="):
            value = a.partition("=")[2]
        else:
            rest.append(a)
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--sample {value!r} is not a number of stories.",
                         fix="doit experiment <variant> --sample 10")
    return rest, int(value)


# ---------------------------------------------------------------- compare

def paid_by_story(root: Path) -> dict[tuple[str, str], float]:
    """``{(template, story): US dollars paid}`` over every run in the ledger (cache hits: 0)."""
    return {(r["template"], r["story"]): r["cost_usd"] or 0.0 for r in spend(root, "story")}


def differing_targets(a: Path, b: Path) -> list[str]:
    """The targets (paths in the story folder) whose content differs between two builds of a
    story, or that only one has; bundle copies are left out (their sources are listed)."""
    rels = set(read_manifest(a)) | set(read_manifest(b))
    return sorted(r for r in rels if not r.startswith(("bundle/", META_DIR))
                  and sha256_file(a / r) != sha256_file(b / r))


def compact(rels: list[str]) -> str:
    """``prompts/1.txt, prompts/2.txt, images/1.jpg`` → ``prompts/{1,2}.txt, images/1.jpg``."""
    groups: dict[str, list[str]] = {}
    for rel in rels:
        m = re.fullmatch(r"(.*?)(\d+)(\.[^/]*)?", rel)
        key = f"{m.group(1)}{{}}{m.group(3) or ''}" if m else rel
        groups.setdefault(key, []).append(m.group(2) if m else "")
    out = []
    for key, nums in groups.items():
        if "{}" not in key:
            out.append(key)
        else:
            out.append(key.replace("{}", nums[0] if len(nums) == 1 else "{" + ",".join(nums) + "}"))
    return ", ".join(out)


def comparison(root: Path, base: str, variant: str) -> dict:
    """What ``doit compare`` prints, as JSON-ready data: ``{"base", "variant", "stories":
    [{"story", "base": side, "variant": side, "differ": [rel, ...]}], "total": {"base": side,
    "variant": side, "differ": int}}``; a side is ``{"built", "score", "scores", "failed",
    "needsReview", "paidUsd"}``.

    Raises:
        InputError: ``variant`` has no backlog (run ``doit experiment`` first).
    """
    path = root / BACKLOGS_DIR / f"{variant}.json"
    if not path.is_file():
        raise InputError(f"{variant!r} has no backlog: nothing was built to compare.",
                         fix=f"doit experiment {variant} --sample 10")
    log = read_json(path, str(path.relative_to(root)))
    ids = [it["id"] for it in log.get("items", []) if isinstance(it, dict) and "id" in it]
    paid = paid_by_story(root)
    rows = []
    for sid in ids:
        row: dict = {"story": sid}
        for side, template in (("base", base), ("variant", variant)):
            ev = eval_summary(root / BUILD_DIR / template / sid)
            row[side] = {"built": ev["built"], "score": ev["score"], "scores": ev["scores"],
                         "failed": len(ev["failed"]), "needsReview": ev["needsReview"],
                         "paidUsd": round(paid.get((template, sid), 0.0), 6)}
        row["differ"] = differing_targets(root / BUILD_DIR / base / sid,
                                          root / BUILD_DIR / variant / sid)
        rows.append(row)

    def total(side: str) -> dict:
        scored = [r[side]["score"] for r in rows if r[side]["score"] is not None]
        crits = sorted({c for r in rows for c in r[side]["scores"]})
        return {"score": round(sum(scored) / len(scored), 2) if scored else None,
                "scores": {c: round(sum(v) / len(v), 2) for c in crits
                           if (v := [r[side]["scores"][c] for r in rows
                                     if c in r[side]["scores"]])},
                "failed": sum(r[side]["failed"] for r in rows),
                "needsReview": sum(1 for r in rows if r[side]["needsReview"]),
                "paidUsd": round(sum(r[side]["paidUsd"] for r in rows), 6)}
    return {"base": base, "variant": variant, "experiment": log.get("experiment"),
            "stories": rows, "total": {"base": total("base"), "variant": total("variant"),
                                       "differ": sum(len(r["differ"]) for r in rows)}}


def _pair(a, b, fmt) -> str:
    return f"{fmt(a)} → {fmt(b)}"


def compare(root: Path, base: str, variant: str, console, *, as_json: bool = False) -> dict:
    """Print the comparison of ``variant`` with ``base`` (a table, or JSON); return its data."""
    data = comparison(root, base, variant)
    if as_json:
        print(json.dumps(data, indent=2))
        return data
    crits = sorted({c for r in data["stories"] for side in ("base", "variant")
                    for c in r[side]["scores"]})
    console.print(f"[bold]{variant}[/bold] compared with [bold]{base}[/bold] "
                  f"(base = {base}, variant = {variant})")
    table = Table(title="Per story", title_justify="left")
    for col in ("story", "score base", "score variant", "failed checks", "paid base",
                "paid variant", "targets that differ"):
        table.add_column(col, justify="left" if col in ("story", "targets that differ")
                         else "right", overflow="fold")

    def score(v) -> str:
        return "–" if v is None else f"{v:.2f}"

    def cells(b: dict, v: dict, name: str, differ: str) -> list[str]:
        return [name, score(b["score"]) if b.get("built", True) else "?",
                score(v["score"]) if v.get("built", True) else "?",
                _pair(b["failed"], v["failed"], str), f"${b['paidUsd']:.4f}",
                f"${v['paidUsd']:.4f}", differ]
    for r in data["stories"]:
        differ = (compact(r["differ"]) or "none" if r["base"]["built"]
                  else f"(not built in {base}: doit build:{base}/{r['story']})")
        table.add_row(*cells(r["base"], r["variant"], r["story"], differ))
    t = data["total"]
    table.add_section()
    table.add_row(*cells(t["base"], t["variant"], "total", f"{t['differ']} targets"))
    console.print(table)
    if crits:
        per = Table(title="Judged criteria, 1-5 (base → variant)", title_justify="left")
        for col in ("story", *crits):
            per.add_column(col, justify="left" if col == "story" else "right")
        for r in data["stories"]:
            per.add_row(r["story"], *[_pair(r["base"]["scores"].get(c),
                                            r["variant"]["scores"].get(c), score)
                                      for c in crits])
        per.add_section()
        per.add_row("mean", *[_pair(t["base"]["scores"].get(c), t["variant"]["scores"].get(c),
                                    score) for c in crits])
        console.print(per)
    console.print("score: the mean of the judged criteria (–: no judge ran, checks only); "
                  "paid: what the ledger recorded for the story's builds in each template "
                  "(cache hits are free); stories needing review: "
                  f"{t['base']['needsReview']} → {t['variant']['needsReview']}.")
    return data


class Compare(Command):
    """``doit compare TEMPLATE VARIANT [--json]``."""

    name = "compare"
    doc_purpose = "compare a variant's experiment with its base: scores, failed checks, cost, diffs"
    doc_usage = "TEMPLATE VARIANT [--json]"
    doc_description = ("Per story of backlogs/<variant>.json and in total: the eval score and "
                       "each judged criterion (evals.json), failed checks, what each side paid "
                       "(build/.cloops/ledger.sqlite) and which targets differ by content. "
                       "Nothing is built or called.")
    cmd_options = ({"name": "as_json", "long": "json", "type": bool, "default": False,
                    "help": "print JSON for scripts"},)

    @_user_errors
    def execute(self, params, args):
        args, as_json = _json_flag(args, params["as_json"])
        if len(args) != 2:
            raise InputError(f"expected TEMPLATE VARIANT, got {' '.join(args) or 'nothing'}.",
                             fix="doit compare comic-books-standard <variant>")
        compare(Path(os.getcwd()).resolve(), args[0], args[1],
                make_console(soft_wrap=True), as_json=as_json)
        return 0

