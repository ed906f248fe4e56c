"""System prompt variables: ``{a.b}`` is replaced by the config value at that dotted path.

Layer: **data**.

``{{name}}`` is the literal text ``{name}``. A brace followed by anything but an identifier
(for instance a JSON example ``{"a": {"b": 1}}``) is left alone. An unknown variable is an error naming the
prompt file and the variable: a typo must never reach a paid model as literal text.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from ..core.errors import InputError

_TOKEN = re.compile(r"\{\{([^{}\n]*)\}\}|\{([A-Za-z_]\w*(?:\.\w+)*)\}")


def variables(text: str) -> list[str]:
    """Return the variables referenced in ``text``, in order of first use, without duplicates."""
    seen: dict[str, None] = {}
    for m in _TOKEN.finditer(text):
        if m.group(2):
            seen.setdefault(m.group(2), None)
    return list(seen)


def render(text: str, lookup: Callable[[str], Any], *, file: str) -> str:
    """Inject variables into ``text``.

    ``lookup(path)`` returns the value or raises KeyError. Strings are inserted as-is, other
    values as compact JSON.

    Raises:
        InputError: a variable that ``lookup`` does not know, naming ``file`` and the variable.
    """

    def sub(m: re.Match) -> str:
        if m.group(2) is None:
            return "{" + m.group(1) + "}"
        path = m.group(2)
        try:
            value = lookup(path)
        except KeyError:
            raise InputError(f"unknown prompt variable {{{path}}}.", file=file, field=path,
                             fix=f"define '{path}' in the template's config.json, correct the "
                                 "name, or write a literal {name} as {{name}}.") from None
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    return _TOKEN.sub(sub, text)
