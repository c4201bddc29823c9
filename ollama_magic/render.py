"""Showing replies: a throttled display handle in a notebook, plain text in a terminal.

Model output is untrusted; every piece of it is shown through `safe` (the one
inert rendering path). While a reply streams, the notebook shows plain text
only (the tail of the reply, control characters escaped): no Markdown, HTML or
math is made of untrusted text until the reply is complete, and then it is
rendered once, in Python, sanitised, and published as `text/html` with
`text/plain` beside it.

Streaming costs O(reply) display bytes: a live frame carries at most the last
`LIVE_TAIL` characters, and frames go out only while the bytes sent so far
stay within `LIVE_RATIO` times the text plus `LIVE_SLACK` (and at most
`display_rate` times a second). A short reply is shown whole as it grows; a
long one shows its growing tail with a character count, a frame every
`LIVE_TAIL / LIVE_RATIO` new characters or so.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import safe
from .chat import Reply

__all__ = ["LIVE_RATIO", "LIVE_SLACK", "LIVE_TAIL", "LiveBudget", "NotebookView", "TerminalView",
           "View", "fence", "footer_text"]

LIVE_TAIL = 1200  # characters of the reply a live frame shows at most
LIVE_RATIO = 3.0  # live bytes per character of the reply, at most
LIVE_SLACK = 1500  # bytes of live frames allowed before the budget counts
MESSAGE_COST = 700  # what one display message costs on iopub besides its text (header, ids)
_LABEL = 80  # the live frame's own words around the text, at most


_TICKS = re.compile(r"`+")


def fence(text: str, info: str = "text") -> str:
    """A fenced block that `text` cannot close, however many backticks it holds (for prompts we build)."""
    longest = max((len(m.group(0)) for m in _TICKS.finditer(text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


# -- footer -------------------------------------------------------------------
def footer_text(model: str, stats: Mapping[str, Any], seconds: float, notes: list[str]) -> str:
    """`model · N tokens · X tok/s · Y s`, then any notes (interrupted, warnings)."""
    parts = [model]
    tokens = stats.get("eval_count")
    if tokens is not None:
        parts.append(f"{tokens} tokens")
        eval_ns = stats.get("eval_duration") or 0
        if eval_ns > 0:
            parts.append(f"{tokens / (eval_ns / 1e9):.1f} tok/s")
    parts.append(f"{seconds:.2f} s")
    parts.extend(notes)
    return " · ".join(parts)


# -- views --------------------------------------------------------------------
@dataclass
class _ToolEvent:
    name: str
    arguments: Mapping[str, Any]
    result: str
    ok: bool


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class View:
    """What a turn shows while it runs; subclasses decide where it goes."""

    model: str
    reply: Reply = field(default_factory=Reply)
    tools: list[_ToolEvent] = field(default_factory=list)

    def begin(self, reply: Reply) -> None:
        self.reply = reply

    def update(self, reply: Reply) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        self.tools.append(_ToolEvent(name, dict(arguments), result, ok))

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def abandon(self) -> None:
        """The request failed before any reply: take back the placeholder."""

    def _tool_lines(self) -> list[str]:
        lines = []
        for ev in self.tools:
            args = ", ".join(f"{k}={v!r}" for k, v in ev.arguments.items())
            mark = "→" if ev.ok else "✗"
            lines.append(f"{ev.name}({_shorten(args, 200)}) {mark} {_shorten(ev.result)}")
        return lines


def _ignored_lines(calls: list[dict[str, Any]] | None) -> list[str]:
    lines = []
    for call in calls or []:
        fn = call.get("function") or {}
        lines.append(f"{fn.get('name')}({_shorten(str(fn.get('arguments')), 200)}) (not run: no --tools)")
    return lines


class LiveBudget:
    """When a live frame may go out: at most `rate` a second, and within the byte budget.

    The budget keeps streaming O(reply): all live frames together cost at
    most `LIVE_RATIO` bytes per character received plus `LIVE_SLACK`, so the
    first frame goes out at once and later ones as the text grows.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = 0.0  # no frame before this time.monotonic()
        self.sent = 0  # bytes of live frames so far (text + message overhead)

    def allows(self, now: float, cost: int, chars: int) -> bool:
        return now >= self.next and self.sent + cost <= LIVE_RATIO * chars + LIVE_SLACK

    def spent(self, cost: int, started: float, done: float) -> None:
        self.sent += cost
        # A redraw that got slow (a busy frontend) spaces the next one out.
        self.next = done + max(self.interval - (done - started), 4 * (done - started))


def _tail(parts: list[str], limit: int) -> str:
    """The last `limit` characters of "".join(parts), without joining all of it."""
    out: list[str] = []
    n = 0
    for part in reversed(parts):
        out.append(part)
        n += len(part)
        if n >= limit:
            break
    text = "".join(reversed(out))
    return text[-limit:] if len(text) > limit else text


class NotebookView(View):
    """One display handle per reply: plain-text live frames within a byte budget, then the sanitised reply."""

    def __init__(self, model: str, *, rate: float = 15.0) -> None:
        super().__init__(model)
        from IPython.display import display

        self._budget = LiveBudget(rate)
        self._chars = 0  # characters of reply, thinking and tool results received
        self._content = 0  # characters of this round's reply text received
        self._thinking = 0  # characters of this round's thinking received
        self._counted = (0, 0)  # parts and thinking parts already counted
        self.updates = 0
        self.live_bytes = 0
        # Shown at once so the cell visibly works while the model loads.
        self._handle = display({"text/plain": "…"}, raw=True, display_id=True)

    def begin(self, reply: Reply) -> None:
        super().begin(reply)
        self._counted = (0, 0)
        self._content = self._thinking = 0

    def update(self, reply: Reply) -> None:
        self.reply = reply
        # Counted in new parts only: O(1) per chunk however long the reply is.
        done, thought = self._counted
        new = sum(len(p) for p in reply.parts[done:])
        new_thinking = sum(len(p) for p in reply.thinking_parts[thought:])
        self._content += new
        self._thinking += new_thinking
        self._chars += new + new_thinking
        self._counted = (len(reply.parts), len(reply.thinking_parts))
        self._live()

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        self._chars += len(name) + len(result)
        self._live()  # through the same throttle as the text

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        reply = self.reply
        self._push(safe.reply_bundle(reply.content, thinking=reply.thinking,
                                     tool_lines=self._tool_lines() + _ignored_lines(ignored_calls),
                                     footer=footer))

    def abandon(self) -> None:
        self._push({"text/plain": ""})

    def _live(self) -> None:
        now = time.monotonic()
        shown = min(self._content or self._thinking, LIVE_TAIL)
        # Judged on the frame's size before building it: building costs O(LIVE_TAIL).
        if not self._budget.allows(now, shown + _LABEL + MESSAGE_COST, self._chars):
            return
        frame = safe.live_bundle(self._frame_text())
        cost = len(frame["text/plain"]) + MESSAGE_COST
        self._push(frame)
        self.live_bytes += cost
        self._budget.spent(cost, now, time.monotonic())

    def _frame_text(self) -> str:
        """The live view: the reply's tail as plain text (thinking's tail until the reply starts)."""
        reply = self.reply
        if reply.parts:
            parts, label, total = reply.parts, "", self._content
        else:
            parts, label, total = reply.thinking_parts, "Thinking…\n", self._thinking
        text = _tail(parts, LIVE_TAIL)
        if total > len(text):
            label += f"… (the last {len(text):,} of {total:,} characters so far)\n"
        tools = f"\n[{len(self.tools)} tool call{'s' if len(self.tools) != 1 else ''}]" if self.tools else ""
        return f"{label}{text} ▌{tools}"

    def _push(self, bundle: dict[str, str]) -> None:
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
            self.updates += 1


class TerminalView(View):
    """Prints the reply as it streams; no display objects, so no reprs."""

    def __init__(self, model: str, *, out: TextIO | None = None) -> None:
        super().__init__(model)
        self._out = out
        self._printed = 0  # reply parts already written
        self._thought = 0  # thinking parts already written

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def begin(self, reply: Reply) -> None:
        super().begin(reply)
        self._printed = self._thought = 0

    def update(self, reply: Reply) -> None:
        self.reply = reply
        out = self.out
        # Counted in parts, not characters: joining the whole reply for every
        # chunk would make a long reply quadratic.
        if len(reply.thinking_parts) > self._thought:
            if not self._thought:
                out.write("[thinking] ")
            out.write(safe.terminal("".join(reply.thinking_parts[self._thought:])))
            self._thought = len(reply.thinking_parts)
        if len(reply.parts) > self._printed:
            if self._thought and not self._printed:
                out.write("\n[/thinking]\n")
            out.write(safe.terminal("".join(reply.parts[self._printed:])))
            self._printed = len(reply.parts)
        out.flush()

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        lead = "\n" if self._printed or self._thought else ""  # start a line of its own
        self.out.write(f"{lead}[tool] {safe.terminal(self._tool_lines()[-1])}\n")

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        self.update(self.reply)
        for line in _ignored_lines(ignored_calls):
            self.out.write(f"\n[tool] {safe.terminal(line)}")
        self.out.write(f"\n\n[{safe.terminal(footer)}]\n")
        self.out.flush()
