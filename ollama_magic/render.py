"""Showing replies: a throttled display handle in a notebook, plain text in a terminal.

Model output is untrusted. Everything a reply says reaches the frontend as
Markdown in which raw HTML is inert: `<` and `&` outside code become entities
(so `<script>` is shown, not run), links with script-capable schemes lose
their target, and images become links (shown, they would be fetched). The
only HTML in the output is the `<details>`/`<summary>`/`<small>` we write.
"""

from __future__ import annotations

import html
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from .chat import Reply

__all__ = ["NotebookView", "TerminalView", "View", "fence", "footer_text", "safe_markdown"]

# -- Markdown safety ----------------------------------------------------------
# The scanner errs one way only: text is left literal only where every
# renderer (CommonMark, and marked, which JupyterLab uses) must show it as
# code; where it cannot tell, it escapes (`&lt;` may then show in code).
_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_TICKS = re.compile(r"`+")
_BAD_SCHEME = re.compile(r"(?:javascript|vbscript|data|file):", re.IGNORECASE)
_PUNCT_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_CTRL = re.compile(r"[\x00-\x20\x7f]+")
_IMAGE = re.compile(r"(?<!\\)((?:\\\\)*)!\[")  # `![` not already escaped
_LINK_START = re.compile(r"\](?:\(|:)")
# Where marked (JupyterLab's renderer) may pair backticks unlike CommonMark:
# strikethrough and text runs (`~`), table cells (`|`), links, bare URLs.
_RISKY = re.compile(r"[~|\[\]@]|://|www\.", re.IGNORECASE)


def _unsafe_url(url: str) -> bool:
    # Judge the URL as a browser finally sees it: entities decoded (some
    # renderers decode twice), backslash escapes gone, and control characters
    # and spaces dropped, as URL parsers drop tabs and newlines inside a scheme.
    for _ in range(4):
        plain = _CTRL.sub("", _PUNCT_ESCAPE.sub(r"\1", html.unescape(url))).lstrip("<")
        if plain == url:
            break
        url = plain
    return bool(_BAD_SCHEME.match(url))


def _destination_end(text: str, i: int) -> int:
    """End of the link destination starting at `i` (CommonMark: balanced parentheses)."""
    if text.startswith("<", i):
        close = text.find(">", i)
        return len(text) if close < 0 else close + 1
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            i += 2
            continue
        if c <= " ":
            break
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                break
            depth -= 1
        i += 1
    return i


def _defuse_links(text: str) -> str:
    """Drop the target of every link (inline or reference) with a script-capable scheme.

    Every destination follows `](` or `]:`; looking there, rather than parsing
    link text, also catches nested brackets, multi-line labels and
    definitions inside lists and quotes.
    """
    out: list[str] = []
    pos = 0
    for m in _LINK_START.finditer(text):
        if m.start() < pos:
            continue
        start = m.end()
        while start < len(text) and text[start] in " \t\n":
            start += 1
        end = _destination_end(text, start)
        if _unsafe_url(text[start:end]):
            out.append(text[pos:start])
            out.append("#unsafe-link-removed")
            pos = end
    out.append(text[pos:])
    return "".join(out)


def _escaped(text: str, i: int) -> bool:
    """Whether the character at `i` is backslash-escaped."""
    n = 0
    while i - n - 1 >= 0 and text[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _escape_line(line: str, trusted: bool) -> tuple[str, bool]:
    """Escape HTML in one line of prose; returns it and whether its backticks all pair up.

    Code spans are left literal only when `trusted`: every renderer then
    pairs this line's backticks as we do. Otherwise `<` is escaped inside
    them too (shown as `&lt;` if it is code after all, never run).
    """
    out: list[str] = []
    pos = 0
    paired = True
    while (m := _TICKS.search(line, pos)) is not None:
        if _escaped(line, m.start()):  # \` is a literal backtick
            out.append(_escape_text(line[pos:m.start() + 1]))
            pos = m.start() + 1
            continue
        close = re.compile(r"(?<!`)" + m.group(0) + r"(?!`)").search(line, m.end())
        if close is None:  # an unmatched run of backticks is plain text
            paired = False
            out.append(_escape_text(line[pos:m.end()]))
            pos = m.end()
            continue
        span = line[m.start():close.end()]
        out.append(_escape_text(line[pos:m.start()]))
        out.append(span if trusted else _IMAGE.sub(r"\1\\![", span.replace("<", "&lt;")))
        pos = close.end()
    out.append(_escape_text(line[pos:]))
    return "".join(out), paired


def _escape_prose(text: str) -> str:
    """Escape HTML in prose while leaving inline code spans literal where that is safe.

    A code span that a renderer does not see as one would let its HTML run.
    Renderers pair backticks alike within a line, but across lines of a
    paragraph, and around `~~`, tables, links and bare URLs (marked eats
    backticks there), they differ; after such a line we trust no span until
    the paragraph ends (a blank line).
    """
    lines: list[str] = []
    trusted = True
    for line in text.split("\n"):
        if not line.strip():
            trusted = True
            lines.append(line)
            continue
        clean = trusted and not _RISKY.search(line)
        escaped, paired = _escape_line(line, clean)
        lines.append(escaped)
        if "`" in line and not (clean and paired):
            trusted = False
    return _defuse_links("\n".join(lines))


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _escape_text(text: str) -> str:
    # `![alt](url)` becomes a plain link: an image would be fetched as soon as
    # it is shown, and a URL chosen by the model can carry the chat away.
    return _IMAGE.sub(r"\1\\![", _escape_html(text))


def _indent(line: str) -> int:
    col = 0
    for c in line:
        if c == " ":
            col += 1
        elif c == "\t":
            col += 4 - col % 4
        else:
            break
    return col


def _fence_line(line: str, indent: int, char: str, length: int) -> str:
    """What a line inside a fenced block is: 'code', 'close', or 'unsure'.

    A fence opened at column 0 is top level: it ends only at a closing fence
    indented at most 3 columns. One opened further in may sit in a list item
    whose width we do not know, so a line that could end that item, or close
    the fence for some item width but not another, is 'unsure'.
    """
    body = line.lstrip(" \t")
    if not body:
        return "code"
    col = _indent(line)
    rest = body.lstrip(char)
    is_run = len(body) - len(rest) >= length and not rest.strip(" \t")
    if indent == 0:
        return "close" if is_run and col <= 3 else "code"
    if col < indent:
        return "unsure"
    if is_run:
        return "close" if line.startswith(" " * indent + char) else "unsure"
    return "code"


def safe_markdown(text: str) -> str:
    """Markdown as written, but with raw HTML shown as text, never rendered.

    Fenced code stays literal. Where a renderer might end a fence that we
    cannot be sure of, and at the end of the text, we close it ourselves
    (indented as it was opened, which closes it for any list item it may be
    in): so we always know which lines are code, and what follows (our own
    `</details>` and footer) is never swallowed into a code block.
    """
    if not any(s in text for s in ("<", "&", "](", "]:", "```", "~~~")):
        return text  # the common case: nothing to defuse
    out: list[str] = []
    prose: list[str] = []
    fence: tuple[int, str, int] | None = None  # indent, character, length
    for line in text.split("\n"):
        if fence is not None:
            kind = _fence_line(line, *fence)
            if kind != "unsure":
                out.append(line)
                if kind == "close":
                    fence = None
                continue
            indent, char, length = fence
            out.append(" " * indent + char * length)
            fence = None
        m = _FENCE_OPEN.match(line)
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            if prose:
                out.append(_escape_prose("\n".join(prose)))
                prose = []
            fence = (len(m.group(1)), m.group(2)[0], len(m.group(2)))
            out.append(line)
            continue
        prose.append(line)
    if prose:
        out.append(_escape_prose("\n".join(prose)))
    if fence is not None:
        indent, char, length = fence
        out.append(" " * indent + char * length)
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


class NotebookView(View):
    """One display handle per reply, updated at most `rate` times a second (less when redraws get slow)."""

    def __init__(self, model: str, *, rate: float = 15.0) -> None:
        super().__init__(model)
        from IPython.display import display

        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0  # no redraw before this time.monotonic()
        self._dirty = False
        self.updates = 0
        # Shown at once so the cell visibly works while the model loads.
        self._handle = display({"text/markdown": "*…*", "text/plain": "…"}, raw=True, display_id=True)

    def update(self, reply: Reply) -> None:
        self.reply = reply
        now = time.monotonic()
        if now >= self._next:
            self._push(self._bundle(streaming=True))
            done = time.monotonic()
            # A redraw costs more as the reply grows. Spending at most a fifth
            # of the time on it keeps a long reply linear: were redraws slower
            # than the interval, every chunk would redraw the whole reply.
            self._next = done + max(self._interval - (done - now), 4 * (done - now))
            self._dirty = False
        else:
            self._dirty = True

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        self._push(self._bundle(streaming=True))

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        self._push(self._bundle(footer=footer, ignored=_ignored_lines(ignored_calls)))

    def abandon(self) -> None:
        self._push({"text/plain": ""})

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
        # The cursor goes inside: after a fence that safe_markdown closed it would reopen it.
        md.append(safe_markdown(content + " ▌" if streaming else content))
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
            out.write("".join(reply.thinking_parts[self._thought:]))
            self._thought = len(reply.thinking_parts)
        if len(reply.parts) > self._printed:
            if self._thought and not self._printed:
                out.write("\n[/thinking]\n")
            out.write("".join(reply.parts[self._printed:]))
            self._printed = len(reply.parts)
        out.flush()

    def tool(self, name: str, arguments: Mapping[str, Any], result: str, ok: bool) -> None:
        super().tool(name, arguments, result, ok)
        lead = "\n" if self._printed or self._thought else ""  # start a line of its own
        self.out.write(f"{lead}[tool] {self._tool_lines()[-1]}\n")

    def finish(self, footer: str, *, ignored_calls: list[dict[str, Any]] | None = None) -> None:
        self.update(self.reply)
        for line in _ignored_lines(ignored_calls):
            self.out.write(f"\n[tool] {line}")
        self.out.write(f"\n\n[{footer}]\n")
        self.out.flush()
