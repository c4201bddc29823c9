"""Files: the versioned JSON save format (validated by pydantic) and Markdown export.

A loaded file is data only: it is parsed as JSON and validated against the
schema below, never evaluated. Writes are atomic (temp file + `os.replace`),
so a failure mid-write leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .store import Conversation, ConversationStore, Message, Turn, TurnMeta

__all__ = ["FORMAT_VERSION", "MAX_LOAD_BYTES", "FileError", "export_markdown", "load", "save"]

FORMAT_VERSION = 1
MAX_LOAD_BYTES = 64 * 1024 * 1024  # a chat file beyond this is not ours


class FileError(ValueError):
    """A save, load or export that could not be done; nothing was changed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Function(_Strict):
    name: str
    arguments: dict[str, Any]
    index: int | None = None


class _ToolCall(_Strict):
    function: _Function
    id: str | None = None
    type: str | None = None


class _Message(_Strict):
    role: Literal["user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_name: str | None = None


class _Meta(_Strict):
    cell_id: str | None = None
    model: str | None = None
    created: float = 0.0
    status: Literal["ok", "interrupted"] = "ok"
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None
    num_ctx: int | None = None
    edited: bool = False


class _Turn(_Strict):
    messages: list[_Message] = Field(min_length=2)
    meta: _Meta = Field(default_factory=_Meta)


class _Chat(_Strict):
    name: str = Field(min_length=1, pattern=r"^\S+$")
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    turns: list[_Turn] = Field(default_factory=list)


class SaveFile(_Strict):
    """The whole file: `{"format": "ollama_magic", "version": 1, ...}`."""

    format: Literal["ollama_magic"] = "ollama_magic"
    version: Literal[1] = 1  # FORMAT_VERSION
    active: str
    chats: list[_Chat]


def _message_out(msg: Message) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if v is not None}


def dump(store: ConversationStore) -> dict[str, Any]:
    """The store as the save file's JSON object (secrets are never in the store)."""
    chats = []
    for conv in store:
        chats.append({
            "name": conv.name,
            "model": conv.model,
            "system": conv.system,
            "options": conv.options,
            "turns": [
                {"messages": [_message_out(m) for m in t.messages],
                 "meta": t.meta.to_dict()}
                for t in conv.turns
            ],
        })
    return {"format": "ollama_magic", "version": FORMAT_VERSION, "active": store.active_name, "chats": chats}


def save(store: ConversationStore, path: str | os.PathLike[str]) -> Path:
    """Write all chats to `path` atomically; returns the resolved path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise FileError(f"{target} is a directory; give a file name such as chat.json")
    text = json.dumps(dump(store), ensure_ascii=False, indent=1)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a server sent "\ud800"): keep it, as an escape
        text = json.dumps(dump(store), ensure_ascii=True, indent=1)
    _atomic_write(target, text)
    return target


def _atomic_write(target: Path, text: str) -> None:
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileError(f"cannot write {target}: folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:  # read-only folder, disk full, ...
        raise FileError(f"cannot write {target}: {exc.strerror or exc}; the old file is unchanged") from None
    try:
        # backslashreplace: a lone surrogate in an export must not abort the write
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise FileError(f"cannot write {target}: {exc.strerror or exc}; the old file is unchanged") from None
        raise


def read(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> tuple[list[Conversation], str]:
    """Parse and validate a save file; returns its chats and active chat name."""
    limit = MAX_LOAD_BYTES if max_bytes is None else max_bytes
    source = Path(path).expanduser()
    try:
        if source.is_dir():
            raise FileError(f"{source} is a directory, not a saved chat file")
        if source.exists() and not source.is_file():
            # A FIFO or a device (/dev/zero) would block or never end.
            raise FileError(f"{source} is not a regular file, not a saved chat file")
        size = source.stat().st_size
        if size <= limit:
            with source.open("rb") as fh:
                raw = fh.read(limit + 1)  # bounded even if the file grows under us
            size = max(size, len(raw))
        if size > limit:
            raise FileError(f"{source} is {size:,} bytes, over the {limit:,}-byte limit for chat files")
    except FileNotFoundError:
        raise FileError(f"no file {source}; check the path (relative paths start at {Path.cwd()})") from None
    except PermissionError:
        raise FileError(f"cannot read {source}: permission denied") from None
    except OSError as exc:
        raise FileError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileError(f"{source} is not a valid chat file: not JSON ({exc})") from None
    except RecursionError:  # nesting deeper than any chat file has
        raise FileError(f"{source} is not a valid chat file: nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != "ollama_magic":
        raise FileError(f"{source} is not an ollama_magic chat file (save one with %ollama save)")
    if type(data.get("version")) is not int or data["version"] != FORMAT_VERSION:  # (True == 1 in Python)
        raise FileError(
            f"{source} has format version {data.get('version')!r}; this ollama_magic reads version {FORMAT_VERSION}"
        )
    try:
        parsed = SaveFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FileError(f"{source} is not a valid chat file: {where}: {first['msg']}") from None
    names = [c.name for c in parsed.chats]
    if len(set(names)) != len(names):
        raise FileError(f"{source} is not a valid chat file: a chat name appears twice")
    chats = []
    for chat, raw_chat in zip(parsed.chats, data["chats"]):
        turns = []
        for i, (t, raw_turn) in enumerate(zip(chat.turns, raw_chat.get("turns") or [])):
            # In the file's key order, so a save/load round trip sends the same bytes.
            msgs = tuple(_in_order(m.model_dump(exclude_none=True), raw)
                         for m, raw in zip(t.messages, raw_turn["messages"]))
            for m in msgs:
                m.setdefault("content", "")
            try:
                _check_turn(msgs)
                turns.append(Turn(msgs, TurnMeta(**t.meta.model_dump())))
            except ValueError as exc:
                raise FileError(f"{source} is not a valid chat file: chat {chat.name!r}, turn {i}: {exc}") from None
        chats.append(Conversation(chat.name, chat.model, chat.system, dict(chat.options), turns))
    return chats, parsed.active


def _in_order(value: Any, raw: Any) -> Any:
    """`value` (validated) with its dict keys in the order `raw` (as read) has them."""
    if isinstance(value, dict) and isinstance(raw, dict):
        keys = [k for k in raw if k in value] + [k for k in value if k not in raw]
        return {k: _in_order(value[k], raw.get(k)) for k in keys}
    if isinstance(value, list) and isinstance(raw, list) and len(value) == len(raw):
        return [_in_order(v, r) for v, r in zip(value, raw)]
    return value


def _check_turn(msgs: tuple[Message, ...]) -> None:
    """A turn is user, then any tool exchange (assistant tool_calls, tool answers), then the reply."""
    if len(msgs) < 2 or msgs[0]["role"] != "user" or msgs[-1]["role"] != "assistant":
        raise ValueError("a turn is a user message, then the assistant's reply")
    if msgs[-1].get("tool_calls"):
        raise ValueError("the reply that ends a turn cannot ask for tools")
    asked = False  # a tool answer needs an assistant message asking for tools before it
    for msg in msgs[1:-1]:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            asked = True
        elif msg["role"] == "tool" and asked:
            continue
        else:
            raise ValueError(f"a {msg['role']} message in the middle of a turn must be part of a tool exchange")
    if len(msgs) > 2 and msgs[-2]["role"] != "tool":
        raise ValueError("tool calls must be answered before the reply")


def load(store: ConversationStore, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> list[str]:
    """Add the file's chats to the store (same names are replaced, undoably)."""
    chats, active = read(path, max_bytes=max_bytes)
    store.absorb(chats, active)
    return [c.name for c in chats]


def export_markdown(conv: Conversation) -> str:
    """The chat as a Markdown transcript (thinking and tool calls included)."""
    lines = [f"# {conv.name}", ""]
    if conv.model:
        lines += [f"Model: `{conv.model}`", ""]
    if conv.system:
        lines += ["## System", "", conv.system, ""]
    for i, turn in enumerate(conv.turns, 1):
        for msg in turn.messages:
            role = msg.get("role", "")
            title = {"user": "User", "assistant": "Assistant", "tool": f"Tool `{msg.get('tool_name', '')}`"}.get(role, role)
            status = " (interrupted)" if msg is turn.reply and turn.meta.status == "interrupted" else ""
            lines += [f"## {i}. {title}{status}", ""]
            if msg.get("thinking"):
                lines += ["<details><summary>Thinking</summary>", "", msg["thinking"], "", "</details>", ""]
            if msg.get("content"):
                lines += [msg["content"], ""]
            for call in msg.get("tool_calls") or []:
                fn = call.get("function", {})
                lines += [f"- call `{fn.get('name')}` with `{json.dumps(fn.get('arguments'))}`"]
            if msg.get("images"):
                lines += [f"*({len(msg['images'])} image(s) attached)*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file (exports)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise FileError(f"{target} is a directory; give a file name such as chat.md")
    _atomic_write(target, text)
    return target
