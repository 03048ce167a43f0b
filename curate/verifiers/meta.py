"""Read the field a row-judging verifier needs (tests, demonstrations) from the row's
`problem_meta` JSON, with the reason when it is missing or unusable."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def meta_field(
    meta: str | None, fields: tuple[str, ...], *, what: str, usable: Callable[[Any], bool]
) -> tuple[dict[str, Any], str] | str:
    """(the parsed problem_meta object, the first of `fields` whose value is usable), or why
    there is none; `what` names the thing looked for in the messages ("tests")."""
    if not meta:
        return f"no problem_meta (map the {what} column with input.columns.meta)"
    try:
        data = json.loads(meta)
    except ValueError:
        return "problem_meta is not JSON"
    if not isinstance(data, dict):
        return "problem_meta is not a JSON object"
    name = next((f for f in fields if usable(data.get(f))), None)
    if name is None:
        return f"no {what} in problem_meta (looked for {', '.join(map(repr, fields))})"
    return data, name
