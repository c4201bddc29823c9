"""Talking to Ollama: clients, one streamed request, the tool-call loop.

The official `ollama.Client` is the only transport. This module knows nothing
of IPython display or of the store: it takes messages, returns a `Reply`, and
lets exceptions through for `errors.translate` to make friendly (only a
host that is not a URL at all is refused here, as the client is built).
`ollama` itself is imported when the first client is built, not at
`%load_ext`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from .bounds import bounded
from .errors import OllamaMagicError, redact_host
from .store import Message, WireMessages

if TYPE_CHECKING:  # `import ollama` costs ~300 ms (pydantic models): it waits for the first request
    import ollama

__all__ = [
    "ChatRequest",
    "IncompleteReply",
    "Reply",
    "Sink",
    "ToolRoundsExceeded",
    "client_for",
    "converse",
    "installed_models",
    "send",
]

_STAT_KEYS = (
    "done_reason", "total_duration", "load_duration", "prompt_eval_count",
    "prompt_eval_duration", "eval_count", "eval_duration",
)


class IncompleteReply(Exception):
    """The stream ended without Ollama's final `done` chunk."""


class ToolRoundsExceeded(Exception):
    """The model kept asking for tools past `max_tool_rounds`."""


@functools.lru_cache(maxsize=16)
def _client(host: str | None, headers: tuple[tuple[str, str], ...], timeout: float | None,
            api_key: str | None) -> ollama.Client:
    # `api_key` only keys the cache: the client reads OLLAMA_API_KEY itself.
    import ollama

    return ollama.Client(host=host, headers=dict(headers) or None, timeout=timeout)


def client_for(host: str | None, headers: Mapping[str, str] | None = None,
               timeout: float | None = None) -> ollama.Client:
    """The shared client for these settings (building one costs ~20 ms).

    A changed OLLAMA_API_KEY gets a new client, without the key (or anything
    derived from it) being sent as a header of its own.
    """
    key = os.environ.get("OLLAMA_API_KEY") or None
    try:
        return _client(host or None, tuple(sorted((headers or {}).items())), timeout, key)
    except ValueError as exc:  # the client parses the host as it is built: a bad URL fails here
        raise OllamaMagicError(
            f"The Ollama host {redact_host(host or '')!r} is not a valid URL ({exc}). Set OLLAMA_HOST "
            "or %config OllamaMagics.host to one like http://127.0.0.1:11434."
        ) from None


@dataclass
class ChatRequest:
    """Everything one `/api/chat` call needs."""

    model: str
    messages: list[Message] | WireMessages  # WireMessages: the history not copied
    options: dict[str, Any] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    tools: Mapping[str, Callable[..., Any]] | None = None
    stream: bool = True
    keep_alive: float | str | None = None  # Ollama's default (5 m) when None


@dataclass
class Reply:
    """A reply as it arrives; filled in place so a caller keeps the partial one."""

    parts: list[str] = field(default_factory=list)
    thinking_parts: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    chunks: int = 0

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_parts)

    def message(self, *, with_tool_calls: bool = True) -> Message:
        msg: Message = {"role": "assistant", "content": self.content}
        if self.thinking_parts:
            msg["thinking"] = self.thinking
        if with_tool_calls and self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    def _take(self, chunk: ollama.ChatResponse) -> None:
        self.chunks += 1
        msg = chunk.message
        if msg.content:
            self.parts.append(msg.content)
        if msg.thinking:
            self.thinking_parts.append(msg.thinking)
        if msg.tool_calls:
            # Bounded as it comes in: whatever is stored can be saved, loaded and forked.
            self.tool_calls.extend(bounded(tc.model_dump(exclude_none=True)) for tc in msg.tool_calls)
        if chunk.done:
            self.done = True
            self.stats = {k: getattr(chunk, k, None) for k in _STAT_KEYS}


class Sink(Protocol):
    """Where a turn shows itself while it runs (the renderer)."""

    def begin(self, reply: Reply) -> None: ...

    def update(self, reply: Reply) -> None: ...

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None: ...


def send(client: ollama.Client, req: ChatRequest, reply: Reply,
         on_update: Callable[[Reply], None] | None = None) -> Reply:
    """One `/api/chat` request, filling `reply` as chunks arrive.

    On any exception (Ctrl-C included) the stream is closed first, which closes
    the socket, so Ollama stops generating; `reply` keeps what had arrived.
    """
    kwargs: dict[str, Any] = {
        "model": req.model,
        "messages": req.messages,
        "options": req.options or None,
        "format": req.format or None,
        "think": req.think,
        "tools": list(req.tools.values()) if req.tools else None,
        "keep_alive": req.keep_alive,
    }
    if not req.stream:
        reply._take(client.chat(stream=False, **kwargs))
        if not reply.done:  # a cut-short answer must not pass for a whole one
            raise IncompleteReply("Ollama's answer was not marked done")
        if on_update:
            on_update(reply)
        return reply
    # The client returns a generator: closing it closes the HTTP stream.
    stream = cast("Generator[ollama.ChatResponse, None, None]", client.chat(stream=True, **kwargs))
    try:
        for chunk in stream:
            reply._take(chunk)
            if on_update:
                on_update(reply)
    finally:
        stream.close()
    if not reply.done:
        raise IncompleteReply("the stream ended before Ollama's final chunk")
    return reply


def converse(client: ollama.Client, req: ChatRequest, sink: Sink, *,
             max_tool_rounds: int = 5, max_tool_calls: int = 20) -> tuple[list[Message], Reply]:
    """Run a turn to its final text reply, calling tools when the model asks.

    Returns the tool exchange (assistant `tool_calls` messages and `tool`
    answers, in order) and the final reply. Only functions in `req.tools` are
    ever called; a cell without tools never calls anything. At most
    `max_tool_calls` calls of a round run (and are shown and stored); the
    model is told the rest were not run.
    """
    exchange: list[Message] = []
    rounds = 0
    base = req.messages
    eval_total = 0
    while True:
        reply = Reply()
        sink.begin(reply)  # the caller keeps the partial reply if this round fails
        # Without a tool exchange the request is the caller's list as it is: no copy of a long history.
        send(client, dataclasses.replace(req, messages=base + exchange) if exchange else req, reply, sink.update)
        eval_total += reply.stats.get("eval_count") or 0
        if not (reply.tool_calls and req.tools):
            if exchange:
                reply.stats["eval_count"] = eval_total
            return exchange, reply
        if rounds >= max_tool_rounds:
            raise ToolRoundsExceeded(
                f"the model still asked for tools after {max_tool_rounds} rounds"
            )
        rounds += 1
        calls, over = reply.tool_calls[:max_tool_calls], reply.tool_calls[max_tool_calls:]
        exchange.append({**reply.message(), "tool_calls": calls})
        for call in calls:
            fn = call.get("function") or {}
            name, args = str(fn.get("name", "")), fn.get("arguments") or {}
            result, ok = call_tool(req.tools, name, args)
            sink.tool(name, args, result, ok)
            exchange.append({"role": "tool", "tool_name": name, "content": result})
        if over:  # a flood: one answer for the rest, so what is shown and stored stays bounded
            name = str((over[0].get("function") or {}).get("name", ""))
            result = (f"Error: {len(reply.tool_calls)} tool calls in one round; only the first {max_tool_calls} "
                      f"were run; {len(over)} were not run. Ask for fewer at a time.")
            sink.tool(name, {}, result, False)
            exchange.append({"role": "tool", "tool_name": name, "content": result})


def call_tool(tools: Mapping[str, Callable[..., Any]], name: str,
              arguments: Any) -> tuple[str, bool]:
    """Call an offered tool; every failure becomes text for the model."""
    fn = tools.get(name)
    if fn is None:
        return f"Error: there is no tool named {name!r}; offered tools: {', '.join(tools)}", False
    if not isinstance(arguments, Mapping):
        return f"Error: arguments for {name} must be an object, got {type(arguments).__name__}", False
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as exc:
        return f"Error: bad arguments for {name}: {exc}", False
    try:
        value = fn(**arguments)
    except Exception as exc:  # the model is told; the kernel goes on
        return f"Error: {name} raised {type(exc).__name__}: {exc}", False
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, default=str), True
        except (TypeError, ValueError):
            pass
    return str(value), True


# -- what the server knows about models -----------------------------------


def installed_models(client: ollama.Client) -> list[str]:
    """Names of the models on the server, as users type them (raises like any request)."""
    return [m.model.removesuffix(":latest") for m in client.list().models if m.model]

