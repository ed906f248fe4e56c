"""Rules: standing instructions every page obeys, for a series (a template's ``config.json``
``rules``) or for one story (a backlog item's ``input.rules``).

Layer: **data**. Imports the core only.

A rule is ``{"id": slug, "text": str, "scope": "text" | "visual" | "both", "forbid": [str]}``:

- ``text`` is what the steps it governs are told ("God is never drawn as a person; show
  light");
- ``scope`` says which steps: ``text`` — the narrative, the page plan and its narration;
  ``visual`` — the reference sheets, the page and cover prompts; ``both``;
- ``forbid`` (optional) lists words or phrases (matched as whole words, any case) or patterns
  (``/regex/``, Python syntax, any case) that the no-call rule check looks for in the
  narrative, the narration and the prompts.

A story's rule with the id of a series rule replaces it for that story.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ..core.errors import InputError
from ..core.prose import may_hold, tokens

SCOPES = ("text", "visual", "both")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_KEYS = {"id", "text", "scope", "forbid"}


def validate_rules(raw: Any, *, file: str, field: str) -> list[dict]:
    """The rules of ``raw`` (a list of rule objects), normalised: ``forbid`` always a list.

    Args:
        raw: the JSON value found at ``field`` of ``file``.
        file, field: where it was found (for the error).

    Returns:
        ``[{"id", "text", "scope", "forbid"}, ...]`` in the order written.

    Raises:
        InputError: not a list; a rule not an object, with an unknown key, a missing or
            non-slug id, an id used twice, an empty text, a scope not one of :data:`SCOPES`,
            a ``forbid`` not a list of non-empty strings, or a ``/pattern/`` that does not
            compile — naming the file, the field (``rules[2].scope``) and the fix.
    """
    if not isinstance(raw, list):
        raise _error("must be a list of rules.", file=file, field=field,
                         fix='write [{"id": "no-blood", "text": "...", "scope": "both"}].')
    out, seen = [], set()
    for i, r in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(r, dict):
            raise _error("must be an object.", file=file, field=where,
                             fix='write {"id", "text", "scope", "forbid"}.')
        extra = sorted(set(r) - _KEYS)
        if extra:
            raise _error(f"has unknown key {extra[0]!r}.", file=file, field=where,
                             fix="a rule has only id, text, scope and forbid.")
        rid = r.get("id")
        if not isinstance(rid, str) or not _SLUG.fullmatch(rid):
            raise _error(f"id {rid!r} is not a slug.", file=file, field=f"{where}.id",
                             fix='use lowercase letters, digits and single "-", e.g. "no-blood".')
        if rid in seen:
            raise _error(f"id {rid!r} is used twice.", file=file, field=f"{where}.id",
                             fix="give each rule its own id.")
        seen.add(rid)
        text = r.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _error("is missing or empty.", file=file, field=f"{where}.text",
                             fix="write the rule as one sentence the steps are told.")
        scope = r.get("scope")
        if scope not in SCOPES:
            raise _error(f"scope {scope!r} is not one of {', '.join(SCOPES)}.", file=file,
                             field=f"{where}.scope",
                             fix='"text" (narrative, plan, narration), "visual" (sheets, page '
                                 'and cover prompts) or "both".')
        forbid = r.get("forbid", [])
        if not isinstance(forbid, list) or not all(isinstance(w, str) and w.strip()
                                                    for w in forbid):
            raise _error("must be a list of non-empty words, phrases or /patterns/.",
                             file=file, field=f"{where}.forbid")
        for k, w in enumerate(forbid):
            if _is_pattern(w):
                try:
                    re.compile(w[1:-1])
                except re.error as exc:
                    raise _error(f"pattern {w!r} does not compile ({exc}).", file=file,
                                     field=f"{where}.forbid[{k}]",
                                     fix="write a Python regular expression between slashes, "
                                         "or a plain word.") from None
        out.append({"id": rid, "text": text.strip(), "scope": scope, "forbid": list(forbid)})
    return out


def _error(message: str, *, file: str, field: str, fix: str | None = None) -> InputError:
    """An :class:`InputError` that also keeps its bare ``detail`` (a config model re-raises it
    as a pydantic error under its own file)."""
    err = InputError(message, file=file, field=field, fix=fix)
    err.detail = message
    return err


def _is_pattern(word: str) -> bool:
    return len(word) > 2 and word.startswith("/") and word.endswith("/")


def merged(series: list[dict] | None, own: list[dict] | None) -> list[dict]:
    """The rules a story obeys: the series' (each marked ``"from": "series"``) with the story's
    own (``"from": "story"``) replacing same-id ones in place, the others appended."""
    out = {r["id"]: {**r, "forbid": list(r.get("forbid") or []), "from": "series"}
           for r in series or []}
    for r in own or []:
        out[r["id"]] = {**r, "forbid": list(r.get("forbid") or []), "from": "story"}
    return list(out.values())


def by_scope(rules: list[dict]) -> dict[str, list[dict]]:
    """``{"text": [...], "visual": [...]}``: each rule under the scopes it governs (``both``
    under each)."""
    return {"text": [r for r in rules if r["scope"] in ("text", "both")],
            "visual": [r for r in rules if r["scope"] in ("visual", "both")]}


@lru_cache(maxsize=4096)
def _word_re(word: str) -> re.Pattern:
    """A forbidden word or phrase as a whole-word, any-case pattern."""
    return re.compile(r"(?<![\w-])" + r"\s+".join(map(re.escape, word.split())) + r"(?![\w-])",
                      re.I)


@lru_cache(maxsize=1024)
def _pattern_re(rule: str) -> re.Pattern:
    """A forbidden ``/pattern/`` compiled, any case."""
    return re.compile(rule[1:-1], re.I)


def forbidden(text: str, forbid: list[str]) -> list[str]:
    """The forbidden words, phrases or ``/patterns/`` found in ``text``, as they appear there
    (in order of ``forbid``, each once; case-insensitive; words and phrases whole)."""
    found: list[str] = []
    toks = tokens(text)
    for w in forbid:
        if _is_pattern(w):
            rx = _pattern_re(w)
        elif not may_hold(toks, w):
            continue  # its first word is nowhere in the text: no search
        else:
            rx = _word_re(w)
        m = rx.search(text)
        if m and m.group(0) not in found:
            found.append(m.group(0))
    return found


def rule_lines(rules: list[dict]) -> list[str]:
    """The rules as the steps are told them: ``- <text>`` each."""
    return [f"- {r['text']}" for r in rules]
