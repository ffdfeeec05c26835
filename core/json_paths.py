"""Reading and writing JSON values by dot path (``messages.0.id``). Pure.

The generic HTTP provider is configured with such paths, so one adapter fits providers whose
JSON differs only in field names and nesting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MISSING = object()


def get_path(document: Any, path: str) -> Any:
    """The value at ``path``, or None when any step is missing. A numeric step indexes a list."""
    current = document
    for step in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(step, _MISSING)
        elif isinstance(current, list) and step.isdigit() and int(step) < len(current):
            current = current[int(step)]
        else:
            return None
        if current is _MISSING:
            return None
    return current


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``document``, creating the objects on the way."""
    steps = path.split(".")
    current = document
    for step in steps[:-1]:
        nested = current.get(step)
        if not isinstance(nested, dict):
            nested = {}
            current[step] = nested
        current = nested
    current[steps[-1]] = value
