"""Showing replies: a throttled display handle in a notebook, plain text in a terminal.

Model output is untrusted. Everything a reply says reaches the frontend as
Markdown in which raw HTML is inert: `<` and `&` outside code become entities
(so `<script>` is shown, not run) and links with script-capable schemes lose
their target. The only HTML in the output is the `<details>` we write ourselves.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from .chat import Reply

__all__ = ["NotebookView", "TerminalView", "View", "fence", "footer_text", "safe_markdown"]

# -- Markdown safety ----------------------------------------------------------
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*$")
_TICKS = re.compile(r"`+")
_BAD_SCHEME = re.compile(r"^\s*(?:javascript|vbscript|data|file)\s*:", re.IGNORECASE)
# [text](destination "title"): the destination may hold one level of parentheses.
_INLINE_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*([^\s()]*(?:\([^()\s]*\)[^\s()]*)*)([^)\n]*)\)")
_REF_DEF = re.compile(r"^( {0,3}\[[^\]\n]+\]:)(\s*)(\S+)", re.MULTILINE)
_ENTITY_OR_CTRL = re.compile(r"&#?\w+;|[\x00-\x20]")


def _unsafe_url(url: str) -> bool:
    # Browsers ignore control characters and entities inside a scheme
    # ("java&#9;script:"), so judge the URL without them.
    return bool(_BAD_SCHEME.match(_ENTITY_OR_CTRL.sub("", url.strip("<>"))))


def _defuse_links(text: str) -> str:
    def inline(m: re.Match[str]) -> str:
        bang, label, dest = m.group(1), m.group(2), m.group(3)
        return f"{bang}[{label}](#unsafe-link-removed)" if _unsafe_url(dest) else m.group(0)

    def ref(m: re.Match[str]) -> str:
        return f"{m.group(1)}{m.group(2)}#unsafe-link-removed" if _unsafe_url(m.group(3)) else m.group(0)

    return _REF_DEF.sub(ref, _INLINE_LINK.sub(inline, text))


def _escape_prose(text: str) -> str:
    """Escape HTML in prose while leaving inline code spans literal."""
    out: list[str] = []
    pos = 0
    while (m := _TICKS.search(text, pos)) is not None:
        close = re.compile(r"(?<!`)" + m.group(0) + r"(?!`)").search(text, m.end())
        if close is None:  # an unmatched run of backticks is plain text
            out.append(_escape_html(text[pos:m.end()]))
            pos = m.end()
            continue
        out.append(_escape_html(text[pos:m.start()]))
        out.append(text[m.start():close.end()])
        pos = close.end()
    out.append(_escape_html(text[pos:]))
    return _defuse_links("".join(out))


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


def safe_markdown(text: str) -> str:
    """Markdown as written, but with raw HTML shown as text, never rendered."""
    if "<" not in text and "&" not in text and "](" not in text and "]:" not in text:
        return text  # the common case: nothing to defuse
    lines = text.split("\n")
    out: list[str] = []
    prose: list[str] = []
    fence_char = ""
    fence_len = 0
    for line in lines:
        if fence_char:  # inside a fenced code block: literal
            out.append(line)
            stripped = line.strip()
            if stripped and set(stripped) == {fence_char} and len(stripped) >= fence_len:
                fence_char = ""
            continue
        m = _FENCE_OPEN.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in line[m.end(1):]):
            if prose:
                out.append(_escape_prose("\n".join(prose)))
                prose = []
            fence_char, fence_len = m.group(1)[0], len(m.group(1))
            out.append(line)
            continue
        prose.append(line)
    if prose:
        out.append(_escape_prose("\n".join(prose)))
    return "\n".join(out)


def fence(text: str, info: str = "text") -> str:
    """A fenced block that `text` cannot close, however many backticks it holds."""
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


class NotebookView(View):
    """One display handle per reply, updated at most `rate` times a second."""

    def __init__(self, model: str, *, rate: float = 15.0) -> None:
        super().__init__(model)
        from IPython.display import display

        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._last = 0.0
        self._dirty = False
        self.updates = 0
        # Shown at once so the cell visibly works while the model loads.
        self._handle = display({"text/markdown": "*…*", "text/plain": "…"}, raw=True, display_id=True)

    def update(self, reply: Reply) -> None:
        self.reply = reply
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._push(self._bundle(streaming=True))
            self._last = now
            self._dirty = False
        else:
            self._dirty = True

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        self._push(self._bundle(streaming=True))

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        self._push(self._bundle(footer=footer, ignored=_ignored_lines(ignored_calls)))

    def _push(self, bundle: dict[str, str]) -> None:
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
            self.updates += 1

    def _bundle(self, *, streaming: bool = False, footer: str = "",
                ignored: list[str] | None = None) -> dict[str, str]:
        reply = self.reply
        md: list[str] = []
        thinking = reply.thinking
        if thinking:
            summary = "Thinking…" if streaming and not reply.parts else "Thinking"
            md.append(f"<details><summary>{summary}</summary>\n\n{safe_markdown(thinking)}\n\n</details>\n")
        content = reply.content
        md.append(safe_markdown(content) + (" ▌" if streaming else ""))
        tool_lines = self._tool_lines() + (ignored or [])
        if tool_lines:
            label = f"{len(tool_lines)} tool call{'s' if len(tool_lines) != 1 else ''}"
            md.append(f"\n<details><summary>{label}</summary>\n\n{fence(chr(10).join(tool_lines))}\n\n</details>\n")
        plain = content
        if footer:
            md.append(f"\n\n---\n<small>{_escape_html(footer)}</small>")
            plain = f"{content}\n\n{footer}"
        return {"text/markdown": "\n".join(md), "text/plain": plain}


class TerminalView(View):
    """Prints the reply as it streams; no display objects, so no reprs."""

    def __init__(self, model: str, *, out: TextIO | None = None) -> None:
        super().__init__(model)
        self._out = out
        self._printed = 0
        self._thought = 0

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def begin(self, reply: Reply) -> None:
        super().begin(reply)
        self._printed = self._thought = 0

    def update(self, reply: Reply) -> None:
        self.reply = reply
        out = self.out
        thinking = reply.thinking
        if len(thinking) > self._thought:
            if not self._thought:
                out.write("[thinking] ")
            out.write(thinking[self._thought:])
            self._thought = len(thinking)
        content = reply.content
        if len(content) > self._printed:
            if self._thought and not self._printed:
                out.write("\n[/thinking]\n")
            out.write(content[self._printed:])
            self._printed = len(content)
        out.flush()

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        self.out.write(f"\n[tool] {self._tool_lines()[-1]}\n")

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        self.update(self.reply)
        for line in _ignored_lines(ignored_calls):
            self.out.write(f"\n[tool] {line}")
        self.out.write(f"\n\n[{footer}]\n")
        self.out.flush()
