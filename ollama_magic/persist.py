"""Files: the versioned JSON save format (validated by pydantic) and Markdown export.

A loaded file is data only: it is parsed as JSON and validated against the
schema below, never evaluated. Writes are atomic (temp file + `os.replace`),
so a failure mid-write leaves the old file as it was.

Speed: `save` uses the C JSON encoder (compact ASCII, no indent: a
pretty-printed file costs ~3x as long); `load` checks a file whose every value already has
exactly the schema's type with plain type tests (`_fast_chats`, ~10x faster
than building pydantic models) and hands anything else to the pydantic schema,
which stays the definition of a valid file and words its errors. The size
limit is checked when saving too, so whatever `save` writes, `load` reads.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .bounds import _FILE_DEPTH, NotRegularFile, depth_exceeds, read_bounded
from .parsing import NotFinite, loads_finite
from .store import _META_FIELDS, Conversation, ConversationStore, Message, Turn, TurnMeta, meta_of

__all__ = ["FORMAT_VERSION", "MAX_LOAD_BYTES", "FileError", "export_markdown", "load", "save"]

FORMAT_VERSION = 1
MAX_LOAD_BYTES = 256 * 1024 * 1024  # a chat file beyond this is not ours (save refuses to write one)


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
    forked: bool = False
    variables: dict[str, str] | None = None


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


def _messages_out(msgs: tuple[Message, ...]) -> tuple[Message, ...] | list[dict[str, Any]]:
    # The store's own messages have no None values: they are written as they are
    # (a tuple is a JSON array), without a copy.
    for m in msgs:
        if None in m.values():
            return [_message_out(x) for x in msgs]
    return msgs


def dump(store: ConversationStore) -> dict[str, Any]:
    """The store as the save file's JSON object (secrets are never in the store).

    It shares the store's message dicts (read-only use: encoding)."""
    chats = []
    for conv in store:
        chats.append({
            "name": conv.name,
            "model": conv.model,
            "system": conv.system,
            "options": conv.options,
            "turns": [{"messages": _messages_out(t.messages), "meta": t.meta.to_dict()}
                      for t in conv.turns],
        })
    return {"format": "ollama_magic", "version": FORMAT_VERSION, "active": store.active_name, "chats": chats}


def save(store: ConversationStore, path: str | os.PathLike[str]) -> Path:
    """Write all chats to `path` atomically; returns the resolved path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise FileError(f"{target} is a directory; give a file name such as chat.json")
    data = dump(store)
    try:
        # The C encoder, compact, ASCII (non-ASCII as \u escapes): no indent, no re-encoding
        # pass, and a lone surrogate a server sent ("\ud800") is kept as an escape.
        # No circular check (a marker per container, ~10% of the time): a cycle, which only code
        # can put in a chat, ends in RecursionError instead.
        raw = json.dumps(data, allow_nan=False, separators=(",", ":"), check_circular=False).encode("ascii")
    except ValueError:  # NaN/Infinity: load would refuse the file, so it is not written
        raise FileError(f"a chat holds NaN or Infinity, which a chat file cannot; nothing was written to {target}") from None
    except RecursionError:
        raise FileError(f"a chat holds a value that contains itself or nests too deeply; nothing was written to {target}") from None
    if len(raw) > MAX_LOAD_BYTES:
        raise FileError(
            f"the chats are {len(raw):,} bytes as JSON, over the {MAX_LOAD_BYTES:,}-byte limit of "
            f"%ollama load; nothing was written to {target}. Fork the turns you need into a new chat "
            "(%ollama fork NEW --at N) and reset or remove old chats, then save again"
        )
    _atomic_write(target, raw)
    return target


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _datasync(fd: int) -> None:
    """The data (and the size that finds it) on disk before the rename; macOS has no fdatasync."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _atomic_write(target: Path, text: str | bytes) -> None:
    """Temp file + `os.replace`, so a reader sees the old file or the new one, never half.

    Files behave like files: a new file gets the mode `open()` would give it
    (0666 less the umask), an existing file keeps its mode, and a symlink
    keeps pointing where it did: its target is what gets replaced.
    """
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileError(f"cannot write {target}: folder {directory} does not exist")
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise FileError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:  # read-only folder, disk full, ...
        raise FileError(f"cannot write {target}: {exc.strerror or exc}; the old file is unchanged") from None
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600 whatever the umask
        # backslashreplace: a lone surrogate in an export must not abort the write
        data = text if isinstance(text, bytes) else text.encode("utf-8", "backslashreplace")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            _datasync(fh.fileno())
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
        raw, size = read_bounded(source, limit, head=False)  # bounded even if the file grows under us
    except IsADirectoryError:
        raise FileError(f"{source} is a directory, not a saved chat file") from None
    except NotRegularFile:  # a FIFO or a device (/dev/zero) would block or never end
        raise FileError(f"{source} is not a regular file, not a saved chat file") from None
    except FileNotFoundError:
        raise FileError(f"no file {source}; check the path (relative paths start at {Path.cwd()})") from None
    except PermissionError:
        raise FileError(f"cannot read {source}: permission denied") from None
    except OSError as exc:
        raise FileError(f"cannot read {source}: {exc.strerror or exc}") from None
    if size > limit:
        raise FileError(f"{source} is {size:,} bytes, over the {limit:,}-byte limit for chat files")
    try:
        # NaN/Infinity parse in Python but are no number Ollama (or any JSON encoder) accepts.
        data = loads_finite(raw.decode("utf-8"))
    except NotFinite as exc:
        raise FileError(f"{source} is not a valid chat file: it holds {exc}") from None
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
    chats = _fast_chats(data)
    if chats is None:  # anything unusual: the schema decides, and says what is wrong
        return _validated_chats(data, source)
    return chats, data["active"]


def _validated_chats(data: dict[str, Any], source: Path) -> tuple[list[Conversation], str]:
    """The file's chats through the pydantic schema (the definition of a valid file)."""
    if depth_exceeds(data):  # what was stored is bounded; deeper breaks validation and fork
        raise FileError(f"{source} is not a valid chat file: nested too deeply")
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
            msgs = tuple(_message_in(m, raw) for m, raw in zip(t.messages, raw_turn["messages"]))
            try:
                _check_turn(msgs)
                turns.append(Turn(msgs, TurnMeta(**t.meta.model_dump())))
            except ValueError as exc:
                raise FileError(f"{source} is not a valid chat file: chat {chat.name!r}, turn {i}: {exc}") from None
        chats.append(Conversation(chat.name, chat.model, chat.system, dict(chat.options), turns))
    return chats, parsed.active


def _message_in(msg: _Message, raw: Any) -> Message:
    """A validated message as the store keeps it: no None values, the file's key order."""
    out: Message = _in_order(msg.model_dump(exclude_none=True), raw)
    out.setdefault("content", "")
    return out


# -- the fast path: plain type tests for a file that is exactly as `save` writes it ----------
_NONE = type(None)
_FILE_KEYS = frozenset(SaveFile.model_fields)
_CHAT_KEYS = frozenset(_Chat.model_fields)
_TURN_KEYS = frozenset(_Turn.model_fields)
_CHAT_NAME = re.compile(r"\S+")
_ROLES = frozenset({"user", "assistant", "tool"})
_TEXT_KEYS = frozenset({"role", "content", "thinking", "tool_name"})  # str values; images: list of str
# Exactly the Python types json.loads gives for a valid value of each _Meta field
# (a float field given an int, or an int field given 2.0, goes to pydantic, which converts).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "cell_id": (str, _NONE), "model": (str, _NONE), "created": (float,), "status": (str,),
    "done_reason": (str, _NONE), "prompt_eval_count": (int, _NONE), "eval_count": (int, _NONE),
    "total_duration": (int, _NONE), "load_duration": (int, _NONE), "prompt_eval_duration": (int, _NONE),
    "eval_duration": (int, _NONE), "num_ctx": (int, _NONE), "edited": (bool,), "forked": (bool,),
    "variables": (dict, _NONE),  # and every key and value a str: checked in _fast_turn
}
# In TurnMeta's field order (meta_of takes values by position).
_META_DEFAULTS = {name: _Meta.model_fields[name].get_default(call_default_factory=True) for name in _META_FIELDS}
_META_KEYS = frozenset(_META_DEFAULTS)
# Every allowed combination of value types, in field order (2**11 tuples): one set lookup a turn.
_META_SIGNATURES = frozenset(itertools.product(*(_META_TYPES[name] for name in _META_DEFAULTS)))
_STATUSES = frozenset({"ok", "interrupted"})
# The file-wide nesting bound, checked where the fast path meets free-form JSON (options,
# tool-call arguments) instead of walking the whole file: how deep those sit in a file.
_OPTIONS_LEVEL = 3  # file {} > chats [] > chat {} > options
_MESSAGE_LEVEL = 6  # file {} > chats [] > chat {} > turns [] > turn {} > messages [] > message


def _fast_chats(data: dict[str, Any]) -> list[Conversation] | None:
    """The chats of a file whose every value has exactly the type the schema asks for.

    None as soon as anything is unusual (a missing or extra key, a value pydantic
    would have to convert, a bad turn): then `_validated_chats` decides. What this
    accepts, the schema accepts, and it builds the same chats (a property test
    holds the two paths to that).
    """
    chats, active = data.get("chats"), data.get("active")
    if (type(chats) is not list or type(active) is not str or not data.keys() <= _FILE_KEYS
            or data.get("format") != "ollama_magic" or type(data.get("version")) is not int
            or data["version"] != FORMAT_VERSION):
        return None
    out: list[Conversation] = []
    for chat in chats:
        if type(chat) is not dict or not chat.keys() <= _CHAT_KEYS:
            return None
        name, model, system = chat.get("name"), chat.get("model"), chat.get("system")
        options, raw_turns = chat.get("options", {}), chat.get("turns", [])
        if (type(name) is not str or not _CHAT_NAME.fullmatch(name) or type(model) not in (str, _NONE)
                or type(system) not in (str, _NONE) or type(options) is not dict or type(raw_turns) is not list):
            return None
        if options and depth_exceeds(options, _FILE_DEPTH - _OPTIONS_LEVEL):
            return None
        turns = []
        for raw in raw_turns:
            turn = _fast_turn(raw)
            if turn is None:
                return None
            turns.append(turn)
        out.append(Conversation(name, model, system, dict(options), turns))
    if len({c.name for c in out}) != len(out):
        return None
    return out


def _fast_turn(raw: Any) -> Turn | None:
    if type(raw) is not dict or not raw.keys() <= _TURN_KEYS:
        return None
    raw_msgs, meta = raw.get("messages"), raw.get("meta", _META_DEFAULTS)
    if type(raw_msgs) is not list or len(raw_msgs) < 2 or type(meta) is not dict:
        return None
    # In the fields' order, so the types line up (what save writes already is: no merge).
    if tuple(meta) == _META_FIELDS:
        values = meta
    elif meta.keys() <= _META_KEYS:
        values = {**_META_DEFAULTS, **meta}
    else:
        return None
    msgs = []
    for m in raw_msgs:
        if type(m) is not dict:
            return None
        role, content = m.get("role"), m.get("content")
        if len(m) == 2 and type(content) is str and type(role) is str and role in _ROLES:
            pass  # {"role", "content"}, both text: most messages, tested without building anything
        elif m.keys() <= _TEXT_KEYS:
            try:
                "".join(m.values())  # every value a str, tested in C (json.loads makes no subclasses)
            except TypeError:
                return None
            if m.get("role") not in _ROLES:
                return None
            if "content" not in m:
                m = {**m, "content": ""}
        else:  # images, tool calls: through the message schema, as the slow path does
            if depth_exceeds(m, _FILE_DEPTH - _MESSAGE_LEVEL):
                return None
            try:
                m = _message_in(_Message.model_validate(m), m)
            except ValidationError:
                return None
        msgs.append(m)
    if tuple(map(type, values.values())) not in _META_SIGNATURES or values["status"] not in _STATUSES:
        return None
    fingerprints = values["variables"]
    if fingerprints is not None and not all(type(k) is str and type(v) is str for k, v in fingerprints.items()):
        return None
    msgs_t = tuple(msgs)
    if len(msgs_t) != 2 or msgs_t[0]["role"] != "user" or msgs_t[1]["role"] != "assistant" or "tool_calls" in msgs_t[1]:
        try:  # (a question and its reply, checked above: most turns)
            _check_turn(msgs_t)
        except ValueError:
            return None
    return Turn(msgs_t, meta_of(values.values()))


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


def export_markdown(conv: Conversation, *, last: int | None = None) -> str:
    """The chat as a Markdown transcript (thinking and tool calls included); `last`: only the last N turns."""
    lines = [f"# {conv.name}", ""]
    first = max(0, len(conv.turns) - last) if last is not None else 0
    if conv.model:
        lines += [f"Model: `{conv.model}`", ""]
    if conv.system:
        lines += ["## System", "", conv.system, ""]
    if first:
        lines += [f"*({first} earlier turn{'s' if first != 1 else ''} not shown)*", ""]
    for i, turn in enumerate(conv.turns[first:], first + 1):
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
