"""Dotted keys (`train.beta`) into nested config dicts: the one getter and the one setter.

Used by `--set` overrides (`awm_platform.config.apply_overrides`), the sweep spec's boundary
checks and the sweep orchestrator's trial configs. Imports nothing first-party, so every
config-level module can use it without import cycles.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any


class NotASectionError(ValueError):
    """A dotted key runs through a value that is not a mapping (`train.beta.x` with `beta: 0.1`)."""

    def __init__(self, part: str) -> None:
        super().__init__(f"'{part}' is not a section")
        self.part = part


def _parts(dotted: str | Sequence[str]) -> list[str]:
    return dotted.split(".") if isinstance(dotted, str) else list(dotted)


def get_dotted(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at `dotted`; KeyError(dotted) when any part is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def set_dotted(data: Mapping[str, Any], dotted: str | Sequence[str], value: Any) -> dict[str, Any]:
    """A deep copy of `data` with `value` at `dotted` (a dotted string or its parts); missing
    sections are created. Raises NotASectionError when a non-mapping value is in the way."""
    out = copy.deepcopy(dict(data))
    parts = _parts(dotted)
    node = out
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise NotASectionError(part)
        node = nxt
    node[parts[-1]] = value
    return out
