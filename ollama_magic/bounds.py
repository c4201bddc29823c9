"""Limits on what is stored from the server, so anything stored can be saved, loaded and forked.

A model's tool-call arguments are arbitrary JSON: nesting thousands deep
breaks `copy.deepcopy` (fork), pydantic and every recursive walk with a
`RecursionError`, and NaN/Infinity is not JSON a save file may hold. So
values are bounded where a turn comes in, and a loaded file is checked
against the same bound.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_DEPTH", "TOO_DEEP", "bounded", "depth_exceeds"]

MAX_DEPTH = 32  # levels of lists/objects in one tool call's arguments; real tools use a handful
TOO_DEEP = "…(nested too deeply)"
_FILE_DEPTH = MAX_DEPTH + 16  # a save file wraps arguments in chats/turns/messages/tool_calls


def bounded(value: Any, depth: int = MAX_DEPTH) -> Any:
    """`value` with containers deeper than `depth` cut to a marker and non-finite floats as text."""
    if isinstance(value, dict):
        if depth <= 0:
            return TOO_DEEP
        return {str(k): bounded(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth <= 0:
            return TOO_DEEP
        return [bounded(v, depth - 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": what the model sent, as text
    return value


def depth_exceeds(value: Any, limit: int = _FILE_DEPTH) -> bool:
    """Whether lists/objects in `value` nest deeper than `limit` (iterative: any depth is safe)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
