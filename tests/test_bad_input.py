"""Bad input: every kind gets one clear error, a non-zero exit and no damage.

Each case runs a real ``doit`` in the two-story temp project (see ``conftest.py``) and checks
that (1) the exit code is non-zero, (2) stderr holds exactly one ``ERROR:`` line naming the file
and the field (and the fix where there is one) and no traceback, and (3) nothing was written or
lost: the backlog is byte-for-byte unchanged, no story folder exists under ``build/`` and no
service was called. The hand-edit case builds first and then checks the built targets instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloops.core.errors import InputError
from cloops.data.prompts import render, variables

TEMPLATE = "comic-books-standard"
CONFIG = f"templates/{TEMPLATE}/config.json"
BACKLOG = f"backlogs/{TEMPLATE}.json"


# ---------------------------------------------------------------- helpers

def story_dirs(project) -> list[Path]:
    """Story folders under build/ (``build/<template>/<id>``), whatever the template."""
    build = project.root / "build"
    if not build.is_dir():
        return []
    return [d for t in build.iterdir() if t.is_dir() and not t.name.startswith(".")
            for d in t.iterdir()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every target under a story ``folder`` (relative path → bytes); bookkeeping in hidden
    folders (``.cloops/manifest.json``) is left out."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = p.read_bytes()
    return out


def run_rejected(project, *args: str) -> str:
    """Run doit on a project whose input is bad; assert it was refused cleanly.

    Returns the single error line (without ``ERROR: ``) for the case's own assertions.
    """
    backlog_before = project.backlog_path().read_bytes()
    run = project.doit(*args)
    assert run.rc != 0, run.out
    assert "Traceback" not in run.err, run.err
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{run.err}"
    assert lines[0].startswith("ERROR: "), run.err
    assert project.backlog_path().read_bytes() == backlog_before, "the backlog was rewritten"
    assert story_dirs(project) == [], "a story folder was created"
    assert run.calls == [], "a service was called"
    return lines[0].removeprefix("ERROR: ")


def edit_backlog_text(project, fn) -> None:
    p = project.backlog_path()
    p.write_text(fn(p.read_text()))


# ---------------------------------------------------------------- backlog

def test_malformed_backlog_json_gives_line_and_column(project):
    # a stray comma right after "items": [  -> line 3 of the indented file
    edit_backlog_text(project, lambda t: t.replace('"items": [', '"items": [,', 1))
    msg = run_rejected(project)
    assert BACKLOG in msg
    assert "not valid JSON" in msg
    assert "line 3, column 13" in msg


def test_missing_input_field_names_its_path(project):
    data = project.backlog()
    del data["items"][1]["input"]["summary"]
    project.write_backlog(data)
    msg = run_rejected(project)
    assert BACKLOG in msg
    assert "'items[1].input.summary'" in msg
    assert "missing" in msg and "Fix:" in msg


def test_duplicate_id(project):
    data = project.backlog()
    data["items"][1]["id"] = data["items"][0]["id"]
    project.write_backlog(data)
    msg = run_rejected(project)
    assert BACKLOG in msg
    assert "'items[1].id'" in msg
    assert "duplicate id 'noah-s-ark'" in msg and "items[0]" in msg
    assert "unique" in msg


@pytest.mark.parametrize("bad_id", ["../x", "Noah's Ark"])
def test_id_that_is_not_a_slug(project, bad_id):
    data = project.backlog()
    data["items"][0]["id"] = bad_id
    project.write_backlog(data)
    msg = run_rejected(project)
    assert BACKLOG in msg
    assert "'items[0].id'" in msg
    assert repr(bad_id) in msg and "not a slug" in msg
    assert "lowercase letters, digits" in msg
    assert not (project.root / "build" / "x").exists()  # '../x' led nowhere either


def test_unknown_template_lists_the_known_ones(project):
    data = project.backlog()
    data["templateId"] = "comic-books-deluxe"
    project.write_backlog(data)
    msg = run_rejected(project)
    assert BACKLOG in msg
    assert "'templateId'" in msg
    assert "'comic-books-deluxe'" in msg
    assert "use one of: " in msg and TEMPLATE in msg.split("use one of: ")[1]


# ---------------------------------------------------------------- prompts

def test_unknown_prompt_variable_names_prompt_file_and_variable(project):
    prompt = project.prompt_path("step1-narrative.md")
    prompt.write_text(prompt.read_text() + "\nDraw it in {style.missingThing}.\n")
    msg = run_rejected(project)
    assert f"templates/{TEMPLATE}/system-prompts/step1-narrative.md" in msg
    assert "{style.missingThing}" in msg
    assert "config.json" in msg  # the fix: define it there (or correct the name)


# ---------------------------------------------------------------- config

CONFIG_CASES = {
    "pageCount-min-0": (lambda c: c["settings"]["pageCount"].__setitem__("min", 0),
                        "settings.pageCount.min", ["invalid value 0", "greater than or equal to 1"]),
    "unknown-style-key": (lambda c: c["style"].__setitem__("lineWeight", "thin"),
                          "style.lineWeight", ["unknown key"]),
    "size-3K": (lambda c: c["generation"]["params"].__setitem__("size", "3K"),
                "generation.params.size", ['"3K"', "'1K', '2K', '4K' or 'custom'"]),
    "reasoning-extreme": (lambda c: c["llm"].__setitem__("reasoning", "extreme"),
                          "llm.reasoning", ['"extreme"', "'none', 'low', 'medium' or 'high'"]),
    "unknown-llm-backend": (lambda c: c["llm"].__setitem__("backend", "openia"),
                            "llm.backend", ["'openia'", "auto", "openai"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_invalid_config_value_names_config_and_field(project, case):
    edit, field, expected = CONFIG_CASES[case]
    project.edit_config(edit)
    msg = run_rejected(project)
    assert CONFIG in msg
    assert f"field '{field}':" in msg  # the clean path: no pydantic internals in it
    assert "function-after" not in msg
    for text in expected:
        assert text in msg
    assert "Fix:" in msg


# ---------------------------------------------------------------- hand-edited intermediate

def test_broken_hand_edit_of_pages_json_fails_that_story_only(project):
    first = project.doit()
    assert first.rc == 0, first.err
    noah = project.story_dir("noah-s-ark")
    david = project.story_dir("david-and-goliath")
    pages = noah / "pages.json"
    broken = pages.read_text().replace("{", "{,", 1)  # invalid at line 1, column 2
    pages.write_text(broken)
    noah_before = snapshot(noah)
    david_before = snapshot(david)

    run = project.doit()

    assert run.rc != 0, run.out
    assert "Traceback" not in run.err + run.out
    report = run.out + run.err
    assert "noah-s-ark" in report and "pages.json" in report
    assert "line 1, column 2" in report
    assert pages.read_text() == broken, "the hand edit was overwritten"
    assert snapshot(noah) == noah_before, "a target of the failed story changed"
    assert snapshot(david) == david_before, "the other story was touched"
    assert run.calls == [], "a service was called"
    items = {it["id"]: it for it in project.backlog()["items"]}
    assert items["noah-s-ark"]["status"] == "failed"
    assert "pages.json" in items["noah-s-ark"]["error"]
    assert "line 1, column 2" in items["noah-s-ark"]["error"]
    assert items["david-and-goliath"]["status"] != "failed"
    assert items["david-and-goliath"]["error"] is None


# ---------------------------------------------------------------- prompts.render (unit)

def _lookup(values: dict):
    def lookup(path: str):
        if path not in values:
            raise KeyError(path)
        return values[path]
    return lookup


def test_render_substitutes_escapes_and_leaves_json_alone():
    text = 'Style: {style.artStyle}; pages {settings.pageCount}; literal {{x}}; json {"a": 1}'
    out = render(text, _lookup({"style.artStyle": "ink", "settings.pageCount": {"min": 3}}),
                 file="p.md")
    assert out == 'Style: ink; pages {"min": 3}; literal {x}; json {"a": 1}'
    assert variables(text) == ["style.artStyle", "settings.pageCount"]


def test_render_unknown_variable_names_file_and_variable():
    with pytest.raises(InputError) as info:
        render("Hello {style.missingThing}.", _lookup({}), file="system-prompts/s.md")
    err = info.value
    assert err.file == "system-prompts/s.md"
    assert err.field == "style.missingThing"
    assert "system-prompts/s.md" in str(err) and "{style.missingThing}" in str(err)
    assert err.fix
