"""Limits on what comes in: values stored from the server, and files read.

A model's tool-call arguments are arbitrary JSON: nesting thousands deep
breaks `copy.deepcopy` (fork), pydantic and every recursive walk with a
`RecursionError`, and NaN/Infinity is not JSON a save file may hold. So
values are bounded where a turn comes in, and a loaded file is checked
against the same bound. A file (`--file`, `%ollama load`) is read only up to
a limit, and only if it is a regular file: a FIFO or a device would block or
never end.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_DEPTH", "TOO_DEEP", "NotRegularFile", "bounded", "depth_exceeds", "read_bounded"]

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


class NotRegularFile(OSError):
    """A FIFO, socket or device: reading it could block or never end."""


def read_bounded(path: Path, limit: int, *, head: bool = True) -> tuple[bytes, int]:
    """At most the first `limit + 1` bytes of a regular file, and its size in bytes.

    The size is the larger of what `stat` said and what was read, so a file
    that grows while it is read still shows as over `limit`. With `head=False`
    a file `stat` already finds over `limit` is not read at all (b"").
    Raises IsADirectoryError, NotRegularFile, and what opening or reading
    raises (FileNotFoundError, PermissionError, OSError); callers word them.
    """
    mode = path.stat()  # follows symlinks, as open does
    if stat.S_ISDIR(mode.st_mode):
        raise IsADirectoryError(str(path))
    if not stat.S_ISREG(mode.st_mode):
        raise NotRegularFile(str(path))
    if not head and mode.st_size > limit:
        return b"", mode.st_size
    with path.open("rb") as fh:
        raw = fh.read(limit + 1)
    return raw, max(mode.st_size, len(raw))
