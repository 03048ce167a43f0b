"""Operators by name. The table maps each name to where its class lives; classes are imported
only when asked for, so `curate ops` or validating a spec does not import torch or vLLM."""

from __future__ import annotations

import difflib
import importlib

from curate.operators import Operator

OPERATORS: dict[str, str] = {
    "sample": "curate.sample:Sample",
    "verify": "curate.verify:Verify",
    "grade": "curate.filters.grade:Grade",
    "select": "curate.filters.select:Select",
    "prune": "curate.filters.prune:Prune",
    "pair": "curate.filters.pair:Pair",
    "dedup": "curate.filters.dedup:Dedup",
    "decontaminate": "curate.filters.decontaminate:Decontaminate",
    "quality": "curate.filters.quality:Quality",
}


def operator_names() -> list[str]:
    return sorted(OPERATORS)


def closest_name(name: str, candidates: list[str]) -> str | None:
    """The closest valid name to a misspelt one, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None


def get_operator(name: str) -> type[Operator]:
    """The operator class registered under `name`; KeyError with a hint when there is none."""
    try:
        target = OPERATORS[name]
    except KeyError:
        hint = closest_name(name, operator_names())
        suffix = f" (did you mean '{hint}'?)" if hint else ""
        raise KeyError(f"unknown operator '{name}'{suffix}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Operator] = getattr(importlib.import_module(module_name), class_name)
    return cls
