"""Structured-output schemas of templates: meta-schema check (once per content) and OpenAI
strict-mode rules.

Layer: **data**.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.errors import InputError

_SCHEMAS_OK = "build/.cloops/schemas-ok.json"


def check_schema(tpl, rel: str, schema: dict) -> None:
    """Validate a schema file against the JSON Schema meta-schema, once per content.

    Schemas that passed are remembered by digest in ``build/.cloops/schemas-ok.json``, so
    the cost (importing jsonschema) is paid when a schema changes, not at every start-up.

    Raises:
        InputError: the schema is invalid.
    """
    digest = tpl.digest(rel)
    root = tpl.dir.parent.parent
    ok_file = root / _SCHEMAS_OK
    try:
        ok = set(json.loads(ok_file.read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        ok = set()
    if digest in ok:
        return
    import jsonschema
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"is not a valid JSON schema: {exc.message}.",
                         file=tpl.shown(rel)) from None
    if (root / "build").is_dir() or (root / "dodo.py").is_file():
        from ..core.fileio import atomic_write_json
        atomic_write_json(ok_file, sorted(ok | {digest}))


def strict_schema_problems(schema: Any, path: str = "$") -> list[str]:
    """Check OpenAI strict-mode rules; return the problems found (empty when strict).

    Rules (source: OpenAI Structured Outputs guide, "Supported schemas"): root is an object;
    every object lists all its properties in ``required`` and sets
    ``additionalProperties: false``; ``allOf``, ``not``, ``if/then/else`` are not supported.
    """
    problems: list[str] = []
    if path == "$" and (not isinstance(schema, dict) or schema.get("type") != "object"):
        return ["the root must be an object"]
    if isinstance(schema, dict):
        for bad in ("allOf", "not", "if", "then", "else"):
            if bad in schema:
                problems.append(f"{path} uses '{bad}'")
        if schema.get("type") == "object":
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                problems.append(f"{path} lacks 'additionalProperties': false")
            missing = set(props) - set(schema.get("required", []))
            if missing:
                problems.append(f"{path} does not require {sorted(missing)}")
            for k, v in props.items():
                problems += strict_schema_problems(v, f"{path}.{k}")
        if "items" in schema:
            problems += strict_schema_problems(schema["items"], f"{path}[]")
        for key in ("anyOf", "$defs", "definitions"):
            sub = schema.get(key)
            if isinstance(sub, list):
                for i, v in enumerate(sub):
                    problems += strict_schema_problems(v, f"{path}.{key}[{i}]")
            elif isinstance(sub, dict):
                for k, v in sub.items():
                    problems += strict_schema_problems(v, f"{path}.{key}.{k}")
    return problems
