"""A reply in flight, passed on to whoever watches the store's stream (the history panel).

`Feed` stands between the turn's renderer and `chat.converse`: every chunk goes
to the renderer as before, and at most `rate` times a second the store's
stream watchers hear how the reply stands. With no watcher it costs one
length check per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .chat import Reply, Sink
from .store import ConversationStore, Message

__all__ = ["Feed"]


class Feed:
    """A `chat.Sink` that forwards to `view` and feeds `store.stream`, throttled.

    Use as a context manager around the request: leaving it (reply, error or
    interrupt) tells the watchers that the reply ended.
    """

    def __init__(self, store: ConversationStore, chat: str, user: Message, view: Sink, *,
                 rate: float = 15.0) -> None:
        self.store = store
        self.chat = chat
        self.user = user
        self.view = view
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._reply: Reply | None = None
        self.sent = 0  # progress reports made (for tests)

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.sent:
            self.store.stream(self.chat, self.user, None)

    def begin(self, reply: Reply) -> None:
        self.view.begin(reply)
        self._reply = reply
        self._next = 0.0  # a new round (after tool calls) shows at once

    def update(self, reply: Reply) -> None:
        self.view.update(reply)
        if not self.store.stream_listener_count:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self.sent += 1
            self.store.stream(self.chat, self.user, reply.parts)

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        self.view.tool(name, arguments, result, ok)
