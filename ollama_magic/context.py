"""What a turn brings along besides its question: earlier cells (`--cells`),
files (`--file`), and which variables it used (so a changed one marks it stale).

Everything here produces plain text for the prompt; every piece is bounded by
`OllamaMagics.max_var_chars` like an interpolated variable, and fenced so that
backticks inside a cell or a file cannot end the block early.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .bounds import NotRegularFile, read_bounded
from .errors import OllamaMagicError
from .interpolate import default_renderer, render_ref, split_conversion
from .render import fence
from .reprs import DEFAULT_MAX_CHARS, bound

__all__ = ["Staleness", "cells_block", "file_block", "fingerprint", "fingerprints", "language_of", "stale_turns"]

_MAX_FILE_READ = 4 * 1024 * 1024  # bytes read of one --file; the rest only counts as cut
_BINARY_SNIFF = 8192

_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".ipynb": "json", ".json": "json", ".js": "javascript",
    ".mjs": "javascript", ".ts": "typescript", ".tsx": "tsx", ".jsx": "jsx", ".md": "markdown",
    ".rst": "rst", ".txt": "text", ".csv": "csv", ".tsv": "tsv", ".toml": "toml", ".yaml": "yaml",
    ".yml": "yaml", ".ini": "ini", ".cfg": "ini", ".sh": "bash", ".bash": "bash", ".zsh": "zsh",
    ".sql": "sql", ".html": "html", ".htm": "html", ".css": "css", ".xml": "xml", ".c": "c",
    ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".rs": "rust", ".go": "go",
    ".java": "java", ".kt": "kotlin", ".rb": "ruby", ".r": "r", ".jl": "julia", ".lua": "lua",
    ".php": "php", ".swift": "swift", ".tex": "latex", ".diff": "diff", ".patch": "diff",
    ".dockerfile": "dockerfile", ".log": "text",
}
_NAMED = {"dockerfile": "dockerfile", "makefile": "makefile"}


def _ours(code: str) -> bool:
    """A cell of this extension: its question is in the chat already."""
    return code.lstrip().startswith(("%%ollama", "%ollama"))


def cells_block(inputs: Sequence[str], outputs: Mapping[int, Any], n: int, *,
                current: str | None, render: Callable[[Any], str], limit: int) -> str:
    """The last `n` cells run before this one (code, then `Out`), as fenced blocks.

    `inputs` is IPython's raw input history (index = execution count) and
    `outputs` its `Out`. The running cell is the last input when it is stored
    in the history (`current` is its source); `%%ollama` / `%ollama` cells and
    empty ones are skipped, since their questions are in the chat already.
    """
    if n < 1:
        raise OllamaMagicError(f"--cells takes a number of cells, 1 or more, not {n}")
    last = len(inputs) - 1
    if last >= 1 and current is not None and inputs[last] == current:
        last -= 1
    picked: list[int] = []
    for count in range(last, 0, -1):
        code = inputs[count]
        if code.strip() and not _ours(code):
            picked.append(count)
            if len(picked) == n:
                break
    if not picked:
        raise OllamaMagicError(f"--cells {n}: no code cell has run before this one in this kernel")
    parts = []
    for count in reversed(picked):
        parts.append(f"In [{count}]:\n{fence(bound(inputs[count].strip(chr(10)), limit, what='cell'), 'python')}")
        if count in outputs:
            try:
                shown = render(outputs[count])
            except Exception as exc:  # a result whose rendering fails is still worth a line
                shown = f"(cannot show this result: {type(exc).__name__})"
            parts.append(f"Out [{count}]:\n{fence(shown, 'text')}")
    return "\n\n".join(parts)


def language_of(path: Path) -> str:
    """The fence language for a file name (`text` when unknown)."""
    return _LANGUAGES.get(path.suffix.lower()) or _NAMED.get(path.name.lower(), "text")


def file_block(ref: str, limit: int) -> str:
    """A text file as a fenced block with its name and language; one-line errors."""
    path = Path(ref).expanduser()
    try:
        raw, size = read_bounded(path, _MAX_FILE_READ)
    except IsADirectoryError:
        raise OllamaMagicError(f"--file {ref}: is a folder; give a text file") from None
    except NotRegularFile:
        raise OllamaMagicError(f"--file {ref}: not a regular file; give a text file") from None
    except FileNotFoundError:
        raise OllamaMagicError(f"--file {ref}: no such file (relative paths start at {Path.cwd()})") from None
    except PermissionError:
        raise OllamaMagicError(f"--file {ref}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise OllamaMagicError(f"--file {ref}: cannot read it ({exc.strerror or exc})") from None
    if b"\x00" in raw[:_BINARY_SNIFF]:
        raise OllamaMagicError(f"--file {ref}: not a text file (binary); attach images with --image")
    cut = len(raw) > _MAX_FILE_READ
    try:
        # A multi-byte character may straddle the read limit: only there may bytes be dropped.
        text = raw[:_MAX_FILE_READ].decode("utf-8") if not cut else _decode_prefix(raw[:_MAX_FILE_READ])
    except UnicodeDecodeError:
        raise OllamaMagicError(f"--file {ref}: not UTF-8 text; attach images with --image") from None
    text = text.replace("\r\n", "\n")
    shown = bound(text, limit, what="file")
    if cut and shown is text:
        shown += f"\n[… the file is {size:,} bytes; only the first {_MAX_FILE_READ:,} were read …]"
    elif cut:
        shown += f"\n[… and the file goes on: {size:,} bytes in all …]"
    return f"File `{ref}`:\n{fence(shown, language_of(path))}"


def _decode_prefix(raw: bytes) -> str:
    for drop in range(4):  # at most 3 bytes of a UTF-8 character can be cut off
        try:
            return raw[: len(raw) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8")  # raises: the file is not UTF-8


# -- stale turns ------------------------------------------------------------------
def fingerprint(text: str) -> str:
    """A short digest of what was sent for one variable."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


# IPython's moving references: `_` is the last result whatever it was, so a
# turn that used it would be stale after every cell. `_3`, `In[3]` stay put.
# `{In}` / `{Out}` whole grow with every cell.
_MOVING = frozenset({"_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh"})


def _tracked(ref: str) -> bool:
    chain = split_conversion(ref)[0]
    root = chain.split(".", 1)[0].split("[", 1)[0]
    return root not in _MOVING and chain not in ("In", "Out")


def fingerprints(used: Mapping[str, str]) -> dict[str, str]:
    """`{ref: rendered}` as interpolation reports it -> `{ref: fingerprint}` for the turn."""
    return {ref: fingerprint(text) for ref, text in used.items() if _tracked(ref)}


def stale_turns(conv: Any, namespace: Mapping[str, Any], limit: int = DEFAULT_MAX_CHARS, *,
                upto: int | None = None) -> dict[int, list[str]]:
    """`{turn index: [references that now render differently]}` for a chat (or a list of turns).

    A turn remembers a fingerprint of what each `{ref}` became when it was
    sent (`TurnMeta.variables`). A reference that no longer resolves (a
    restarted kernel, a deleted variable) cannot be compared and is not
    counted. Each distinct reference is rendered once per call, however many
    turns used it; nothing is rendered when no turn used a variable.
    `limit` must be the `max_var_chars` the turns were sent with.
    """
    turns = getattr(conv, "turns", conv)
    render = default_renderer(limit)
    now: dict[str, str | None] = {}
    stale: dict[int, list[str]] = {}
    # A store's chat knows which turns used variables: the others are not even looked at.
    index = getattr(conv, "turns_with_variables", None)
    positions = index(upto) if index is not None else range(len(list(turns)[:upto]))
    for i in positions:
        turn = turns[i]
        used = turn.meta.variables
        if not used:
            continue
        for ref, sent in used.items():
            if ref not in now:
                text = render_ref(ref, namespace, render)
                now[ref] = None if text is None else fingerprint(text)
            current = now[ref]
            if current is not None and current != sent:
                stale.setdefault(i, []).append(ref)
    return stale


class Staleness:
    """Stale turns as the magics report them: footer notes (once each), `%ollama stale`, counts.

    Knows each cell's last execution count (from `post_run_cell`) so it can
    say which cell to re-run; re-running it replaces the turn with one whose
    fingerprints are fresh, which is what clears the mark.
    """

    def __init__(self, namespace: Callable[[], Mapping[str, Any]], limit: Callable[[], int]) -> None:
        self._namespace = namespace
        self._limit = limit
        self.counts: dict[str, int] = {}  # cell id -> its last execution count in this kernel
        self._told: set[tuple[str, float, str | None, str]] = set()

    def ran(self, cell_id: str | None, count: int | None) -> None:
        if cell_id and count:
            self.counts[cell_id] = count

    def of(self, conv: Any, upto: int | None = None) -> dict[int, list[str]]:
        return stale_turns(conv, self._namespace(), self._limit(), upto=upto)

    def _fix(self, turn: Any) -> str:
        cell = turn.meta.cell_id
        if cell is None:
            return "ask again to refresh it"
        count = self.counts.get(cell)
        return f"re-run In [{count}] to refresh it" if count else "re-run its cell to refresh it"

    def notes(self, conv: Any, upto: int | None = None) -> list[str]:
        """Footer notes for the turns about to be (or just) sent; each staleness is told once."""
        parts = []
        for i, refs in self.of(conv, upto).items():
            turn = conv.turns[i]
            new = [r for r in refs if (conv.name, turn.meta.created, turn.meta.cell_id, r) not in self._told]
            if not new:
                continue
            self._told.update((conv.name, turn.meta.created, turn.meta.cell_id, r) for r in new)
            names = ", ".join(f"{{{r}}}" for r in refs)
            parts.append(f"turn {i + 1} used {names}, changed since; {self._fix(turn)}")
        return [f"⚠ stale: {'; '.join(parts)}"] if parts else []

    def report(self, chats: Iterable[Any]) -> str:
        """`%ollama stale`: every chat's stale turns, or a line saying there are none."""
        lines = []
        for conv in chats:
            found = self.of(conv)
            if not found:
                continue
            lines.append(f"chat {conv.name}:")
            for i, refs in found.items():
                turn = conv.turns[i]
                question = " ".join(str(turn.user.get("content", "")).split())
                question = question[:57] + "…" if len(question) > 60 else question
                lines.append(f"  turn {i + 1} ({question!r}): {', '.join(f'{{{r}}}' for r in refs)} changed since; {self._fix(turn)}")
        return "\n".join(lines) or "No stale turns: every variable a turn used still reads as it did when it was sent."
