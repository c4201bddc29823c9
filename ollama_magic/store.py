"""The conversation store: named chats, their turns, undo, and change events.

Plain Python on purpose: nothing here imports IPython, ipywidgets or the HTTP
client, so the rules that keep a conversation consistent can be tested (and
reused) on their own.

Rules the store keeps:

* A turn is a user message, any tool exchange, and the final assistant reply,
  in Ollama's own message shape; it is only added once its reply has arrived.
* What is sent is built from the store every time (`Conversation.history`):
  the system prompt, then every turn's messages. Thinking is kept for display
  and never resent.
* Turns are immutable once stored; an edit stores a new `Turn`. That makes an
  undo snapshot a cheap tuple of references instead of a deep copy.
* Every change is undoable (a bounded stack per chat) and emits one `Event`.

Cost per turn does not grow with the chat: a `Conversation` keeps an index
cell id -> turn positions, the wire messages of every turn (so `history()` is
one list slice, and `wire()` a view that copies nothing), and running prefix
figures (largest prompt, context held, characters, messages and images sent),
all updated by the one primitive that changes turns (`_splice`, O(changed
turns)). An undo step stores only the suffix of turns a change replaced, so
undoing an append is O(1) and a snapshot costs O(changed turns) of memory.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import weakref
from array import array
from itertools import chain, islice
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, overload

__all__ = [
    "Commit",
    "Conversation",
    "ConversationStore",
    "Event",
    "KEEP",
    "Message",
    "StoreError",
    "Turn",
    "TurnMeta",
    "TurnsView",
    "WireMessages",
    "message_size",
    "meta_of",
]

log = logging.getLogger(__name__)

Message = dict[str, Any]
Status = Literal["ok", "interrupted"]
Rerun = Literal["rewind", "append"]

DEFAULT_CHAT = "default"
_BIG = 2**63 - 1  # the largest figure the per-turn arrays hold
# Keys that are stored with a message but never sent back to the model.
_UNSENT_KEYS = frozenset({"thinking"})


class _Keep:
    """Sentinel type: leave this setting as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


class StoreError(ValueError):
    """A request the store cannot honour (unknown chat, bad index, ...)."""


@dataclass(frozen=True, slots=True)
class TurnMeta:
    """What we know about a turn besides its messages; never sent to Ollama."""

    cell_id: str | None = None
    model: str | None = None
    created: float = field(default_factory=time.time)
    status: Status = "ok"
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration: int | None = None  # nanoseconds, as Ollama reports them
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None
    num_ctx: int | None = None  # the context window in force when it ran
    edited: bool = False
    # Copied into its chat by a fork: the cell was asked in another chat, where a re-run goes.
    forked: bool = False
    # {"df": digest, "x!r": digest}: what each interpolated {ref} became when
    # it was sent, fingerprinted, so a later change can mark the turn stale.
    variables: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, in declaration order (what a save file holds).

        Spelled out: a dict display is ~2x `dict(zip(fields, values))`, and a
        save builds one per turn (tests hold it to `fields()`).
        """
        return {"cell_id": self.cell_id, "model": self.model, "created": self.created, "status": self.status,
                "done_reason": self.done_reason, "prompt_eval_count": self.prompt_eval_count,
                "eval_count": self.eval_count, "total_duration": self.total_duration,
                "load_duration": self.load_duration, "prompt_eval_duration": self.prompt_eval_duration,
                "eval_duration": self.eval_duration, "num_ctx": self.num_ctx, "edited": self.edited,
                "forked": self.forked, "variables": self.variables}


_META_FIELDS = tuple(f.name for f in fields(TurnMeta))
# The slots' own setters: what a frozen dataclass's __init__ calls, without its keyword handling.
_META_SETTERS = tuple(getattr(TurnMeta, name).__set__ for name in _META_FIELDS)


def meta_of(values: Iterable[Any]) -> TurnMeta:
    """A `TurnMeta` from every field's value, in field order (loads build thousands: ~2x the keyword call).

    The caller has checked the values' types, as `TurnMeta(**fields)` would not either.
    """
    meta = object.__new__(TurnMeta)
    for set_field, value in zip(_META_SETTERS, values, strict=True):
        set_field(meta, value)
    return meta


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: `messages[0]` is the user's, `messages[-1]` the reply."""

    messages: tuple[Message, ...]
    meta: TurnMeta = field(default_factory=TurnMeta)

    def __post_init__(self) -> None:
        msgs = self.messages
        if len(msgs) < 2 or msgs[0].get("role") != "user" or msgs[-1].get("role") != "assistant":
            raise StoreError("a turn needs a user message first and an assistant reply last")

    @classmethod
    def of(cls, user: Message, reply: Message, meta: TurnMeta | None = None) -> Turn:
        return cls((user, reply), meta or TurnMeta())

    @property
    def user(self) -> Message:
        return self.messages[0]

    @property
    def reply(self) -> Message:
        return self.messages[-1]

    @property
    def tokens(self) -> int:
        return (self.meta.eval_count or 0)

    def sent(self) -> Iterator[Message]:
        """The messages as they go over the wire (without thinking)."""
        return map(_on_wire, self.messages)


def _on_wire(msg: Message) -> Message:
    """`msg` as it is sent: itself, or a copy without what is kept only for display (thinking)."""
    return msg if _UNSENT_KEYS.isdisjoint(msg) else {k: v for k, v in msg.items() if k not in _UNSENT_KEYS}


def message_size(msg: Mapping[str, Any]) -> tuple[int, int]:
    """(characters, images) of one wire message: its text and tool calls as JSON, and its images."""
    chars = len(str(msg.get("content") or ""))
    calls = msg.get("tool_calls")
    if calls:
        try:
            chars += len(json.dumps(calls, default=str))
        except (ValueError, RecursionError):  # a value that contains itself: never fail a commit over a size
            chars += len(repr(calls))
    images = msg.get("images")
    return chars, len(images) if isinstance(images, (list, tuple)) else 0


class TurnsView(Sequence[Turn]):
    """A chat's turns, read-only: every change goes through the store, which
    keeps the conversation's index in step (compares equal to a list of turns)."""

    __slots__ = ("_list",)

    def __init__(self, turns: list[Turn]) -> None:
        self._list = turns

    def __len__(self) -> int:
        return len(self._list)

    @overload
    def __getitem__(self, index: int) -> Turn: ...

    @overload
    def __getitem__(self, index: slice) -> list[Turn]: ...

    def __getitem__(self, index: int | slice) -> Turn | list[Turn]:
        return self._list[index]

    def __iter__(self) -> Iterator[Turn]:
        return iter(self._list)

    def __reversed__(self) -> Iterator[Turn]:
        return reversed(self._list)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TurnsView):
            return self._list == other._list
        if isinstance(other, (list, tuple)):
            return self._list == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._list)


class WireMessages(Sequence[Message]):
    """A request's messages without copying a long history.

    A system prompt, the first `end` of a chat's stored wire messages (the
    chat's own list, shared) and the messages after them (`append`). The
    chat copies the shared prefix into the view before it removes any of it
    (`Conversation._splice`), so a view reads what it was made with for as
    long as it lives. The client iterates it in C (`itertools.chain`).
    """

    __slots__ = ("_head", "_sent", "_end", "_tail", "_owner", "__weakref__")

    def __init__(self, head: list[Message], sent: list[Message], end: int, tail: list[Message] | None = None,
                 owner: Conversation | None = None) -> None:
        self._head, self._sent, self._end = head, sent, end
        self._tail: list[Message] = [] if tail is None else tail
        self._owner = owner
        if owner is not None:
            owner._lent[id(self)] = self

    def __len__(self) -> int:
        return len(self._head) + self._end + len(self._tail)

    def __iter__(self) -> Iterator[Message]:
        return chain(self._head, islice(self._sent, self._end), self._tail)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        h, n = len(self._head), len(self)
        if isinstance(index, slice):
            lo, hi, step = index.indices(n)
            if step != 1:
                return [self[i] for i in range(lo, hi, step)]
            hi = max(lo, hi)  # each part cut in C: a slice costs what it holds
            return (self._head[lo:hi] + self._sent[max(lo - h, 0):max(min(hi - h, self._end), 0)]
                    + self._tail[max(lo - h - self._end, 0):max(hi - h - self._end, 0)])
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("message index out of range")
        if i < h:
            return self._head[i]
        return self._sent[i - h] if i - h < self._end else self._tail[i - h - self._end]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (WireMessages, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Iterable[Message]) -> WireMessages:
        return WireMessages(self._head, self._sent, self._end, self._tail + list(other), self._owner)

    def __repr__(self) -> str:
        return f"WireMessages({list(self)!r})"

    def append(self, msg: Message) -> None:
        self._tail.append(msg)

    def _own(self, upto: int) -> None:
        """Copy the shared prefix if the lender is about to remove messages below `end`."""
        if upto < self._end:
            self._sent, self._owner = self._sent[:self._end], None


class Conversation:
    """A named chat: system prompt, model, default options and turns.

    `turns` is read-only; the store changes it (through `_splice`), so the
    cell index and the cached wire messages can never drift from it.
    """

    __slots__ = ("name", "model", "system", "options", "_turns", "_view", "_cells", "_prev", "_sent",
                 "_ends", "_maxp", "_ctx", "_chars", "_images", "_edited", "_generated", "_with_vars", "_chain", "_lent", "__weakref__")

    def __init__(self, name: str, model: str | None = None, system: str | None = None,
                 options: dict[str, Any] | None = None, turns: Iterable[Turn] = ()) -> None:
        self.name = name
        self.model = model
        self.system = system
        self.options: dict[str, Any] = {} if options is None else options
        self._turns: list[Turn] = []
        self._view = TurnsView(self._turns)
        # Per-turn figures live in 64-bit arrays: 8 bytes a turn each, no int objects.
        self._cells: dict[str, int] = {}  # cell id -> position of its latest turn
        self._prev = array("q")  # _prev[i]: the position of the same cell's turn before i, or -1
        self._sent: list[Message] = []  # every turn's wire messages, in order
        self._ends = array("q")  # _ends[i]: where turn i's messages end in _sent
        self._maxp = array("q")  # _maxp[i]: largest prompt_eval_count of turns[:i+1]
        self._ctx = array("q")  # _ctx[i]: context_tokens after turns[:i+1]
        self._chars = array("q")  # _chars[i]: characters the model reads in the wire messages of turns[:i+1]
        self._images = array("q")  # _images[i]: images in the wire messages of turns[:i+1]
        self._edited = 0  # how many turns are edited
        self._generated = 0  # eval_count summed over the turns
        self._with_vars = array("q")  # positions of turns whose prompt used {variables}, ascending
        # _chain[32*i:32*i+32]: digest.chain of the wire messages of turns[:i+1]; filled on demand
        # (only the journal asks), cut wherever turns are spliced.
        self._chain = bytearray()
        # Requests reading _sent in place (by id: a view, like a list, is unhashable).
        self._lent: weakref.WeakValueDictionary[int, WireMessages] = weakref.WeakValueDictionary()
        self._splice(0, turns)

    def __repr__(self) -> str:
        return (f"Conversation(name={self.name!r}, model={self.model!r}, system={self.system!r}, "
                f"options={self.options!r}, turns={len(self._turns)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Conversation):
            return NotImplemented
        return (self.name, self.model, self.system, self.options, self._turns) == (
            other.name, other.model, other.system, other.options, other._turns)

    __hash__ = None  # type: ignore[assignment]

    @property
    def turns(self) -> TurnsView:
        return self._view

    # -- the one way turns change --------------------------------------------
    def _splice(self, start: int, new: Iterable[Turn] = ()) -> None:
        """Replace `turns[start:]` by `new`.

        O(removed + added): the index, wire messages and prefix figures of the
        turns before `start` stay as they are.
        """
        turns, cells, prev = self._turns, self._cells, self._prev
        for i in range(len(turns) - 1, start - 1, -1):  # newest first: each is its cell's latest turn
            meta = turns[i].meta
            if meta.cell_id:
                if prev[i] < 0:
                    del cells[meta.cell_id]
                else:
                    cells[meta.cell_id] = prev[i]
            self._edited -= meta.edited
            self._generated -= meta.eval_count or 0
        del turns[start:]
        lo = self._ends[start - 1] if start else 0
        if self._lent and lo < len(self._sent):
            for view in list(self._lent.values()):
                view._own(lo)
        del self._sent[lo:]
        del self._ends[start:], self._maxp[start:], self._ctx[start:], prev[start:]
        del self._chars[start:], self._images[start:]
        del self._chain[32 * start:]
        with_vars = self._with_vars
        while with_vars and with_vars[-1] >= start:
            with_vars.pop()
        self._extend(new)

    def _add(self, turn: Turn) -> None:
        self._extend((turn,))

    def _extend(self, new: Iterable[Turn]) -> None:
        """Append turns with their index and prefix figures (one loop: a load builds 10,000 turns)."""
        turns, cells, prev, sent, ends = self._turns, self._cells, self._prev, self._sent, self._ends
        maxp, ctx, chars_at, images_at = self._maxp, self._ctx, self._chars, self._images
        i = len(turns)
        mx, cx = (maxp[-1], ctx[-1]) if i else (0, 0)
        chars, images = (chars_at[-1], images_at[-1]) if i else (0, 0)
        edited = generated = 0
        for turn in new:
            turns.append(turn)
            meta = turn.meta
            cid = meta.cell_id
            if cid:
                prev.append(cells.get(cid, -1))
                cells[cid] = i
            else:
                prev.append(-1)
            for msg in turn.messages:
                content = msg.get("content")
                if len(msg) == 2 and type(content) is str:  # {"role", "content"}: most messages
                    chars += len(content)
                else:
                    msg = _on_wire(msg)
                    c, im = message_size(msg)
                    chars, images = chars + c, images + im
                sent.append(msg)
            ends.append(len(sent))
            chars_at.append(chars)
            images_at.append(images)
            prompt = meta.prompt_eval_count
            if prompt is not None:  # (clamped: the counts come from the server, the arrays hold 64-bit numbers)
                mx = min(max(mx, prompt), _BIG)
                cx = max(min(prompt + (meta.eval_count or 0), _BIG), -_BIG)
            maxp.append(mx)
            ctx.append(cx)
            edited += meta.edited
            generated += meta.eval_count or 0
            if meta.variables:
                self._with_vars.append(i)
            i += 1
        self._edited += edited
        self._generated += generated

    def _copy_turns(self, other: Conversation) -> None:
        """Take `other`'s turns with their index (copies made in C: no turn is re-added)."""
        self._turns[:] = other._turns
        self._cells = dict(other._cells)
        self._prev, self._ends = array("q", other._prev), array("q", other._ends)
        self._maxp, self._ctx = array("q", other._maxp), array("q", other._ctx)
        self._chars, self._images = array("q", other._chars), array("q", other._images)
        self._sent = list(other._sent)
        self._edited, self._generated = other._edited, other._generated
        self._with_vars = array("q", other._with_vars)
        self._chain = bytearray(other._chain)

    def _set(self, index: int, turn: Turn) -> Turn:
        """Replace one turn; returns the old one (what an edit does)."""
        old = self._turns[index]
        self._splice(index, [turn, *self._turns[index + 1:]])
        return old

    # -- reading -------------------------------------------------------------
    def history(self, upto: int | None = None, *, system: str | None | _Keep = KEEP) -> list[Message]:
        """Messages to send before a new user message (first `upto` turns).

        `system` overrides the chat's system prompt for this request.
        """
        k = slice(None, upto).indices(len(self._turns))[1]
        msgs = self._sent[:self._ends[k - 1]] if k > 0 else []  # one copy, made in C
        prompt = self.system if isinstance(system, _Keep) else system
        if prompt:
            msgs.insert(0, {"role": "system", "content": prompt})  # a move of pointers, not a second copy
        return msgs

    def wire(self, upto: int | None = None, *, system: str | None | _Keep = KEEP) -> WireMessages:
        """`history(upto, system=system)` as a view: O(1) however long the chat (what a request sends)."""
        k = slice(None, upto).indices(len(self._turns))[1]
        prompt = self.system if isinstance(system, _Keep) else system
        head: list[Message] = [{"role": "system", "content": prompt}] if prompt else []
        return WireMessages(head, self._sent, self._ends[k - 1] if k > 0 else 0, owner=self)

    def size(self, upto: int | None = None) -> tuple[int, int, int]:
        """(characters, messages, images) of `history(upto)` without a system prompt, in O(1).

        What the context-window estimate needs (`message_size` per message),
        kept as prefix sums so a long chat is sized without reading it.
        """
        k = slice(None, upto).indices(len(self._turns))[1]
        if k == 0:
            return 0, 0, 0
        return self._chars[k - 1], self._ends[k - 1], self._images[k - 1]

    def chain(self, upto: int) -> bytes:
        """`digest.chain(SEED, history(upto))` without a system prompt, in O(turns added since asked).

        Digests are kept per turn position and cut where the turns change, so
        asking after each new turn hashes only that turn's messages.
        """
        from .digest import SEED, chain

        k = slice(None, upto).indices(len(self._turns))[1]
        ch, ends, sent = self._chain, self._ends, self._sent
        done = len(ch) // 32
        if done < k:
            prev = bytes(ch[-32:]) if done else SEED
            lo = ends[done - 1] if done else 0
            for i in range(done, k):
                prev = chain(prev, sent[lo:ends[i]])
                lo = ends[i]
                ch += prev
        return bytes(ch[32 * (k - 1):32 * k]) if k else SEED

    def messages(self) -> list[Message]:
        """All stored messages, thinking included (for display and export)."""
        msgs: list[Message] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for turn in self._turns:
            msgs.extend(turn.messages)
        return msgs

    def find_cell(self, cell_id: str | None) -> int | None:
        """Index of the (latest) turn owned by `cell_id`, if any (O(1))."""
        if not cell_id:
            return None
        return self._cells.get(cell_id)

    def cell_ids(self) -> dict[str, list[int]]:
        """Every cell id that owns turns, with their positions, ascending."""
        out = {}
        for cid, i in self._cells.items():
            positions = []
            while i >= 0:
                positions.append(i)
                i = self._prev[i]
            out[cid] = positions[::-1]
        return out

    def turns_with_variables(self, upto: int | None = None) -> list[int]:
        """Positions of the turns (of the first `upto`) whose prompt used `{variables}` (O(those turns))."""
        k = slice(None, upto).indices(len(self._turns))[1]
        return [i for i in self._with_vars if i < k] if k < len(self._turns) else list(self._with_vars)

    @property
    def generated_tokens(self) -> int:
        return self._generated

    @property
    def edited(self) -> bool:
        """Whether any turn was edited (the history did not only grow)."""
        return self._edited > 0

    @property
    def context_tokens(self) -> int:
        """Tokens the model's context holds after the last turn (prompt + reply)."""
        return self._ctx[-1] if self._ctx else 0

    @property
    def max_prompt(self) -> int:
        return self._maxp[-1] if self._maxp else 0

    def copy(self, name: str | None = None, upto: int | None = None, start: int = 0) -> Conversation:
        """A deep, independent copy of turns[start:upto] (what a fork is), each marked `forked`."""
        return Conversation(
            name=name or self.name,
            model=self.model,
            system=self.system,
            options=copy.deepcopy(self.options),
            turns=[Turn(t.messages, replace(t.meta, forked=True)) for t in copy.deepcopy(self._turns[start:upto])],
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One change to the store, as listeners (the history panel) see it.

    kind: turn_added, turn_replaced, truncated, edited, deleted, reset,
    system, model, options, chat_created, chat_removed, switched, restored
    (undo or load replaced the whole chat).
    """

    kind: str
    chat: str
    index: int | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """What `ConversationStore.commit` did with a new turn."""

    kind: Literal["appended", "replaced", "rewound"]
    index: int
    dropped: int = 0  # later turns moved to the undo stack by a rewind


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """A chat before a change: its settings, and its turns from `keep` on.

    The turns before `keep` are the same after the change (and stay the same
    until this step is undone, as undo goes newest first), so only the
    replaced suffix is kept: undoing an append stores no turns at all.
    """

    model: str | None
    system: str | None
    options: dict[str, Any]
    keep: int
    tail: tuple[Turn, ...]


Listener = Callable[[Event], None]
# (chat, user message, reply text parts so far); parts None: the reply ended.
StreamListener = Callable[[str, Message | None, Sequence[str] | None], None]


class ConversationStore:
    """All chats of one kernel; one of them is active."""

    def __init__(self, *, model: str | None = None, options: Mapping[str, Any] | None = None,
                 undo_depth: int = 100) -> None:
        self._chats: dict[str, Conversation] = {
            DEFAULT_CHAT: Conversation(DEFAULT_CHAT, model, options=dict(options or {}))
        }
        self._active = DEFAULT_CHAT
        self._undo_depth = undo_depth
        # None on an undo stack means "this chat did not exist before".
        self._undo: dict[str, deque[_Snapshot | None]] = {}
        self._listeners: list[Listener] = []
        self._stream_listeners: list[StreamListener] = []

    # -- reading ---------------------------------------------------------
    @property
    def active(self) -> Conversation:
        return self._chats[self._active]

    @property
    def active_name(self) -> str:
        return self._active

    @property
    def names(self) -> list[str]:
        return list(self._chats)

    def __contains__(self, name: object) -> bool:
        return name in self._chats

    def __iter__(self) -> Iterator[Conversation]:
        return iter(list(self._chats.values()))

    def __len__(self) -> int:
        return len(self._chats)

    def get(self, name: str | None = None) -> Conversation:
        name = self._active if name is None else name
        try:
            return self._chats[name]
        except KeyError:
            raise StoreError(f"no chat named {name!r}; chats: {', '.join(self._chats)}") from None

    def can_undo(self, chat: str | None = None) -> bool:
        return bool(self._undo.get(self._active if chat is None else chat))

    def undo_depth(self, chat: str | None = None) -> int:
        return len(self._undo.get(self._active if chat is None else chat, ()))

    def undo_top(self, chat: str | None = None) -> object:
        """The newest undo step, to compare by identity (did a change add a step?)."""
        stack = self._undo.get(self._active if chat is None else chat)
        return stack[-1] if stack else None

    # -- events ----------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` after every change; returns the unsubscriber."""
        self._listeners.append(listener)
        return lambda: self.unsubscribe(listener)

    def unsubscribe(self, listener: Listener) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    # -- a reply in flight (progress only: nothing is stored) ------------
    def watch_stream(self, listener: StreamListener) -> Callable[[], None]:
        """Call `listener(chat, user, parts)` as a reply streams in; returns the unsubscriber."""
        self._stream_listeners.append(listener)
        return lambda: self._stream_listeners.remove(listener) if listener in self._stream_listeners else None

    @property
    def stream_listener_count(self) -> int:
        return len(self._stream_listeners)

    def stream(self, chat: str, user: Message | None, parts: Sequence[str] | None) -> None:
        """Tell watchers how a reply in flight stands (`parts` None: it ended)."""
        for listener in list(self._stream_listeners):
            try:
                listener(chat, user, parts)
            except Exception:  # a broken view must never break a turn
                log.exception("ollama_magic: stream listener failed")

    def _emit(self, kind: str, chat: str, index: int | None = None, count: int = 0) -> None:
        event = Event(kind, chat, index, count)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken view must never break the store
                log.exception("ollama_magic: store listener failed on %s", event)

    # -- undo ------------------------------------------------------------
    def _remember(self, name: str, keep: int | None = None) -> None:
        """Push an undo step for a change that leaves `turns[:keep]` as they are."""
        conv = self._chats[name]
        n = len(conv.turns)
        keep = n if keep is None else min(keep, n)
        snap = _Snapshot(conv.model, conv.system, dict(conv.options), keep, tuple(conv.turns[keep:]))
        self._push(name, snap)

    def _push(self, name: str, snap: _Snapshot | None) -> None:
        stack = self._undo.setdefault(name, deque(maxlen=self._undo_depth))
        stack.append(snap)

    def set_undo_depth(self, depth: int) -> None:
        """Keep at most `depth` undo steps per chat from now on (the newest ones)."""
        self._undo_depth = max(0, int(depth))
        for name, stack in self._undo.items():
            self._undo[name] = deque(stack, maxlen=self._undo_depth)

    def undo(self, chat: str | None = None) -> bool:
        """Restore the chat's previous state; False when there is nothing to undo."""
        name = self._active if chat is None else chat
        stack = self._undo.get(name)
        if not stack:
            return False
        snap = stack.pop()
        if snap is None:  # the chat was created by a load: undo removes it
            if len(self._chats) == 1:
                return False  # but never the last chat: a store always has one
            self._remove(name)
            return True
        conv = self._chats[name]
        conv.model, conv.system = snap.model, snap.system
        conv.options = dict(snap.options)
        conv._splice(snap.keep, snap.tail)
        self._emit("restored", name)
        return True

    # -- chats -----------------------------------------------------------
    def create(self, name: str, *, switch: bool = True) -> Conversation:
        """A new chat with the active chat's model and options, no system prompt."""
        name = _check_name(name)
        if name in self._chats:
            raise StoreError(f"a chat named {name!r} exists already")
        conv = self.draft(name)
        self._chats[name] = conv
        self._emit("chat_created", name)
        if switch:
            self.switch(name)
        return conv

    def draft(self, name: str) -> Conversation:
        """The chat `create(name)` would make, not added to the store (a turn is asked in it first)."""
        base = self.active
        return Conversation(_check_name(name), base.model, options=copy.deepcopy(base.options))

    def switch(self, name: str, *, create: bool = False) -> Conversation:
        if name not in self._chats:
            if not create:
                self.get(name)  # raises the friendly error
            return self.create(name, switch=True)
        if name != self._active:
            self._active = name
            self._emit("switched", name)
        return self._chats[name]

    def remove(self, name: str) -> None:
        """Delete a chat for good (not undoable); the default chat is kept."""
        self.get(name)
        if len(self._chats) == 1:
            raise StoreError("cannot remove the only chat; use reset to empty it")
        self._remove(name)

    def _remove(self, name: str) -> None:
        del self._chats[name]
        self._undo.pop(name, None)
        self._emit("chat_removed", name)
        if self._active == name:
            self._active = next(iter(self._chats))
            self._emit("switched", self._active)

    def fork(self, new: str, *, at: int | None = None, chat: str | None = None, start: int = 0) -> Conversation:
        """Copy a chat (its first `at` turns, from turn `start` on) into a new, active chat."""
        src = self.get(chat)
        new = _check_name(new)
        if at is not None and not 0 <= at <= len(src.turns):
            raise StoreError(f"--at must be between 0 and {len(src.turns)} (the turns of {src.name!r})")
        if not 0 <= start <= (len(src.turns) if at is None else at):
            raise StoreError(f"--from must be between 1 and {len(src.turns)} (the turns of {src.name!r})")
        conv = src.copy(new, at, start)
        old = self._chats.get(new)
        if old is not None:
            # The same fork run again (Run All; Restart & Run All after the journal
            # restored its chat): the chat still starts with exactly these turns, so
            # it becomes this fork again, undoably. Any other chat of that name is kept.
            # Messages, not metadata: a replayed turn has the same text, its own timing.
            n = len(conv.turns)
            if not n or old is src or [t.messages for t in old.turns[:n]] != [t.messages for t in conv.turns]:
                raise StoreError(f"a chat named {new!r} exists already; pick another name")
            # Its first n turns are this fork's copies (marked so, if a journal from before the mark held them).
            keep = next((i for i, t in enumerate(old.turns[:n]) if not t.meta.forked), n)
            self._remember(new, keep)
            old.model, old.system, old.options = conv.model, conv.system, conv.options
            old._splice(keep, [Turn(t.messages, replace(t.meta, forked=True)) for t in old.turns[keep:n]])
            self._emit("restored", new)
            self.switch(new)
            return old
        self._chats[new] = conv
        self._emit("chat_created", new)
        self.switch(new)
        return conv

    # -- turns -----------------------------------------------------------
    def base_for(self, cell_id: str | None, *, chat: str | None = None,
                 rerun: Rerun = "rewind") -> int:
        """How many turns a new turn from `cell_id` builds on.

        A re-run cell replaces its own turn, so it sees only what came before it.
        """
        conv = self.get(chat)
        if rerun == "rewind":
            idx = conv.find_cell(cell_id)
            if idx is not None:
                return idx
        return len(conv.turns)

    def commit(self, turn: Turn, *, chat: str | None = None, rerun: Rerun = "rewind",
               model: str | None = None, system: str | None | _Keep = KEEP,
               fresh: bool = False, create: bool = False, activate: bool = False) -> Commit:
        """Store a finished turn, replacing the cell's earlier turn when re-run.

        In the same undo step: `model`, if given, becomes the chat's model;
        `system` (unless KEEP) its system prompt; `fresh` empties the chat first;
        `create` makes the chat if it does not exist (undo removes it again).
        `activate` makes the chat active once the turn is in.
        """
        name = self._active if chat is None else chat
        # Change everything first, then tell listeners: an interrupt inside a
        # listener (a panel redrawing) must not leave the change half done.
        events: list[tuple[str, int | None, int]] = []
        if create and name not in self._chats:
            conv = self._chats[name] = self.draft(name)
            self._push(name, None)  # the chat's first undo step removes it
            events.append(("chat_created", None, 0))
            fresh, idx = False, None
        else:
            conv = self.get(name)
            idx = None if fresh or rerun != "rewind" else conv.find_cell(turn.meta.cell_id)
            self._remember(name, 0 if fresh else idx)
        if model and model != conv.model:
            conv.model = model
            events.append(("model", None, 0))
        if not isinstance(system, _Keep) and (system or None) != conv.system:
            conv.system = system or None
            events.append(("system", None, 0))
        if fresh:
            conv._splice(0, [turn])
            result = Commit("appended", 0)
            events.append(("restored", None, 0))  # views redraw the whole chat
        else:
            if idx is None:
                conv._add(turn)
                result = Commit("appended", len(conv.turns) - 1)
                events.append(("turn_added", result.index, 0))
            else:
                dropped = len(conv.turns) - idx - 1
                conv._splice(idx, [turn])
                result = Commit("rewound" if dropped else "replaced", idx, dropped)
                if dropped:
                    events.append(("truncated", idx + 1, dropped))
                events.append(("turn_replaced", idx, 0))
        if activate and name != self._active:
            self._active = name
            events.append(("switched", None, 0))  # last: a view redraws the chat with its new turn
        for kind, index, count in events:
            self._emit(kind, name, index, count)
        return result

    def edit(self, index: int, content: str, *, part: int = -1, chat: str | None = None) -> None:
        """Replace the text of one message of turn `index` (`part` 0: the user's, -1: the reply)."""
        name = self._active if chat is None else chat
        conv = self.get(name)
        turn = _at(conv, index)
        try:
            old = turn.messages[part]
        except IndexError:
            raise StoreError(f"turn {index} has no message {part}") from None
        if old.get("content") == content:
            return
        msgs = list(turn.messages)
        msgs[part] = {**old, "content": content}
        self._remember(name, index)
        conv._set(index, Turn(tuple(msgs), replace(turn.meta, edited=True)))
        self._emit("edited", name, index)

    def delete(self, index: int, *, chat: str | None = None) -> None:
        """Delete one turn (its question and its answer together)."""
        name = self._active if chat is None else chat
        conv = self.get(name)
        _at(conv, index)
        self._remember(name, index)
        conv._splice(index, conv.turns[index + 1:])
        self._emit("deleted", name, index)

    def truncate(self, keep: int, *, chat: str | None = None) -> int:
        """Keep only the first `keep` turns (rewind); returns how many went."""
        name = self._active if chat is None else chat
        conv = self.get(name)
        if not 0 <= keep <= len(conv.turns):
            raise StoreError(f"can keep between 0 and {len(conv.turns)} turns, not {keep}")
        dropped = len(conv.turns) - keep
        if dropped:
            self._remember(name, keep)
            conv._splice(keep)
            self._emit("truncated", name, keep, dropped)
        return dropped

    def reset(self, *, chat: str | None = None) -> int:
        """Empty a chat's turns (system prompt, model and options stay)."""
        name = self._active if chat is None else chat
        conv = self.get(name)
        count = len(conv.turns)
        if count:
            self._remember(name, 0)
            conv._splice(0)
            self._emit("reset", name, 0, count)
        return count

    # -- settings --------------------------------------------------------
    def set_system(self, text: str | None, *, chat: str | None = None) -> None:
        name = self._active if chat is None else chat
        conv = self.get(name)
        text = text or None
        if text != conv.system:
            self._remember(name)
            conv.system = text
            self._emit("system", name)

    def set_model(self, model: str | None, *, chat: str | None = None) -> None:
        name = self._active if chat is None else chat
        conv = self.get(name)
        if model != conv.model:
            self._remember(name)
            conv.model = model
            self._emit("model", name)

    def set_options(self, options: Mapping[str, Any], *, chat: str | None = None) -> None:
        """Replace the chat's default options."""
        name = self._active if chat is None else chat
        conv = self.get(name)
        if dict(options) != conv.options:
            self._remember(name)
            conv.options = dict(options)
            self._emit("options", name)

    # -- bulk ------------------------------------------------------------
    def absorb(self, chats: list[Conversation], active: str | None = None, *, undoable: bool = True) -> None:
        """Add loaded (or journal-restored) chats, replacing same-named ones.

        Undoable per chat unless `undoable` is False (a restore after a kernel
        restart has no earlier state to go back to). The chats' index comes
        with them: a `Conversation` builds it as it is made.
        """
        for conv in chats:
            if conv.name in self._chats:
                if undoable:
                    self._remember(conv.name, 0)
                else:  # older undo steps describe a state that is gone
                    self._undo.pop(conv.name, None)
                old = self._chats[conv.name]
                old.model, old.system, old.options = conv.model, conv.system, dict(conv.options)
                old._copy_turns(conv)
                self._emit("restored", conv.name)
            else:
                self._chats[conv.name] = conv
                if undoable:
                    self._push(conv.name, None)
                self._emit("chat_created", conv.name)
        if active and active in self._chats:
            self.switch(active)


def _at(conv: Conversation, index: int) -> Turn:
    if not 0 <= index < len(conv.turns):
        raise StoreError(f"chat {conv.name!r} has no turn {index} (it has {len(conv.turns)})")
    return conv.turns[index]


def _check_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or any(c.isspace() for c in name):
        raise StoreError(f"a chat name must be one word, not {name!r}")
    return name
