"""A chained SHA-256 over messages: what the journal's request key is built from.

`chain(prev, messages)` extends a digest message by message, so the digest of
a history is the digest of its prefix extended by what was added since: the
store keeps one per turn position (`Conversation.chain`) and a request key
costs the new messages only, however long the chat (issue #17 point 3).
Equal message sequences always give equal digests and any change to a message
(content, role, images, tool calls, key order aside) gives another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["SEED", "canonical", "chain"]

SEED = b""  # the digest of no messages


def canonical(value: Any) -> bytes:
    """Sorted-key compact ASCII JSON (str() for anything JSON lacks): one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("ascii")


def chain(prev: bytes, messages: Iterable[Any]) -> bytes:
    """`prev` extended by each message: sha256(prev || canonical(message)), in order."""
    sha = hashlib.sha256
    for msg in messages:
        prev = sha(prev + b"\n" + canonical(msg)).digest()
    return prev
