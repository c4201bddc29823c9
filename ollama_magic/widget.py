"""The history panel: a live, editable conversation view in a notebook.

One anywidget (`HistoryPanel`) with its own small front end (`panel.js`,
`panel.css`). Why one custom widget rather than stock ipywidgets: a stock
panel needs widgets per row (text areas, buttons, labels), so its model count,
its `comm_open` traffic and the widget state saved into the notebook all grow
with the conversation (863 models for 1,000 turns before this design). Here
the count is fixed (the widget and its layout), whatever the number of turns.

What travels, and how:

* Synced traits hold only small, current facts (chat name, header figures,
  chat list, models, status line). They are what a saved notebook keeps.
* Turns never live in traits. The front end asks for a page of turns with a
  custom message and gets rendered rows back; a store event sends only what
  changed (the new turn, the edited turn, "turn 3 deleted"). So an append
  costs one row, and the saved widget state stays small.
* The front end keeps only a bounded window of rows in the page (dropping the
  oldest as new ones arrive) and asks for earlier pages on demand.

Safety: message text reaches the page only as HTML made by `markdown_html`
(Markdown rendered with raw HTML off, then sanitised by an allow-list), or as
plain text the front end sets with `textContent` / text-area values. The
front end never turns model text into markup itself.

Liveness: the panel subscribes to the store's events (and to its stream of a
reply in flight); nothing is polled.

Bursts: a loop that commits 1,000 turns in one cell would cost a message per
event (and a few state updates each), enough for Jupyter Server to hit its
IOPub rate limit and drop output. So when events come faster than `BURST`,
the panel stops sending per event and marks itself dirty; when the burst ends
(the cell's `post_execute`, a timer on the kernel's event loop, or the next
event after a quiet spell) it sends one bounded update: the header figures
and a version bump, after which the front end fetches its one page.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import keyword
import asyncio
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from . import persist
from .context import stale_turns
from .images import image_kind
from .reprs import DEFAULT_MAX_CHARS
from .safe import container, markdown_html, terminal, text_html
from .store import Conversation, ConversationStore, Event, Message, StoreError, Turn

__all__ = ["HistoryPanel", "count", "model_names", "transcript_html", "transcript_text"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
PAGE = 20  # turns per page the front end asks for
_SEARCH_HITS = 200  # most turns a search returns
_IMAGE_BYTES = 512 * 1024  # larger images are named, not drawn
_FALLBACK_TURNS = 20  # turns in the static transcript (nbviewer, GitHub)
_FALLBACK_CHARS = 4000  # characters per message in that transcript
_STATUS_MAX = 300
BURST = (10, 0.5)  # more store events than this many in this many seconds is a burst


def count(n: int, word: str, plural: str | None = None) -> str:
    """`1 turn`, `2 turns`, `1,000 turns`."""
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def model_names(names: Sequence[str]) -> list[str]:
    """Each model once, by the name a user types: `llama3.2`, not also `llama3.2:latest`."""
    seen: list[str] = []
    for name in names:
        short = name[: -len(":latest")] if name.endswith(":latest") else name
        if short and short not in seen:
            seen.append(short)
    return seen


def _one_line(text: str, limit: int = _STATUS_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _call_text(call: Any) -> str:
    try:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = json.dumps(fn.get("arguments"), ensure_ascii=False)
        return _one_line(f"{fn.get('name')}({args})", 200)
    except Exception:
        return "?"


def _image_url(data: Any) -> str | None:
    """A data: URL for a stored PNG/JPEG (checked by its bytes), else None."""
    try:
        raw = bytes(data) if isinstance(data, (bytes, bytearray)) else base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    kind = image_kind(raw) if raw else None
    if kind is None or len(raw) > _IMAGE_BYTES:
        return None
    return f"data:image/{kind.lower()};base64,{base64.b64encode(raw).decode()}"


def turn_key(turn: Turn) -> str:
    """Names one stored turn object (an edit stores a new one, so the key changes)."""
    return f"{id(turn):x}-{turn.meta.created!r}"


def render_turn(index: int, turn: Turn) -> dict[str, Any]:
    """One turn as the front end draws it: sanitised HTML and plain metadata."""
    meta = turn.meta
    msgs: list[dict[str, Any]] = []
    for part, msg in enumerate(turn.messages):
        role = str(msg.get("role") or "")
        content = str(msg.get("content") or "")
        entry: dict[str, Any] = {"part": part, "role": role, "html": markdown_html(content) if content else ""}
        if msg.get("thinking"):
            entry["thinking"] = markdown_html(str(msg["thinking"]))
        if msg.get("tool_calls"):
            entry["calls"] = [_call_text(c) for c in msg["tool_calls"]]
        if role == "tool":
            entry["tool"] = str(msg.get("tool_name") or msg.get("name") or "tool")
        if msg.get("images"):
            urls = [_image_url(d) for d in msg["images"]]
            entry["images"] = [u for u in urls if u]
            entry["unreadable"] = sum(1 for u in urls if not u)
        msgs.append(entry)
    seconds = meta.total_duration / 1e9 if meta.total_duration else None
    return {
        "index": index,
        "key": turn_key(turn),
        "messages": msgs,
        "meta": {
            "model": meta.model or "",
            "cell": meta.cell_id or "",
            "tokens": meta.eval_count,
            "prompt": meta.prompt_eval_count,
            "seconds": round(seconds, 2) if seconds is not None else None,
            "created": meta.created,
            "status": meta.status,
            "edited": meta.edited,
        },
    }


# -- the static transcript (a notebook without widget state) -------------------------
def _tail(conv: Conversation, limit: int) -> tuple[int, list[Turn]]:
    first = max(0, len(conv.turns) - limit)
    return first, conv.turns[first:]


def _cut(text: str) -> str:
    return text if len(text) <= _FALLBACK_CHARS else text[:_FALLBACK_CHARS] + " …"


_ROLE = {"user": "You", "assistant": "Assistant", "tool": "Tool", "system": "System"}


def transcript_text(conv: Conversation, limit: int = _FALLBACK_TURNS) -> str:
    """The last `limit` turns as plain text (control characters shown escaped)."""
    first, turns = _tail(conv, limit)
    lines = [f"History of chat {conv.name!r}: {count(len(conv.turns), 'turn')}"
             + (f" (the last {len(turns)} shown)" if first else "")]
    if conv.system:
        lines.append(f"\n[System] {_cut(conv.system)}")
    for i, turn in enumerate(turns, start=first + 1):
        for msg in turn.messages:
            role = _ROLE.get(str(msg.get("role")), str(msg.get("role")))
            lines.append(f"\n[{i}. {role}] {_cut(str(msg.get('content') or ''))}")
    return terminal("\n".join(lines) + "\n")


def transcript_html(conv: Conversation, limit: int = _FALLBACK_TURNS) -> str:
    """The last `limit` turns as sanitised HTML (what nbviewer and GitHub show)."""
    first, turns = _tail(conv, limit)
    esc = text_html
    out = [f"<p><strong>History of chat {esc(conv.name)}</strong> · {esc(count(len(conv.turns), 'turn'))}"
           + (f" (the last {len(turns)} shown)" if first else "")
           + f" · as of {esc(time.strftime('%Y-%m-%d %H:%M'))}</p>"]
    if conv.system:
        out.append(f"<p><em>System:</em> {esc(_cut(conv.system))}</p>")
    for i, turn in enumerate(turns, start=first + 1):
        for msg in turn.messages:
            role = str(msg.get("role") or "")
            content = str(msg.get("content") or "")
            if not content:
                continue
            label = f"{i}. {_ROLE.get(role, role)}"
            if role == "assistant" and turn.meta.model:
                label += f" ({turn.meta.model})"
            out.append(f"<h4>{esc(label)}</h4>\n{markdown_html(_cut(content))}")
    return container("\n".join(out), "history")


def _read(name: str) -> str:
    return (_HERE / name).read_text(encoding="utf-8")


class HistoryPanel(anywidget.AnyWidget):
    """A live, editable view of the active chat of a `ConversationStore`.

    list_models: installed model names, or None when the server is unknown
        (then the model field is free text).
    default_model: the model a turn uses when the chat has none.
    context_window: the model's context window (num_ctx) if known.
    namespace: where "Copy messages" puts the message list (the user namespace);
        also what stale turns are checked against (`context.stale_turns`).
    max_var_chars: the bound the turns' variables were rendered with.
    """

    _esm = t.Unicode(_read("panel.js")).tag(sync=True)
    _css = t.Unicode(_read("panel.css")).tag(sync=True)

    chat = t.Unicode("").tag(sync=True)
    chats = t.List(t.Dict()).tag(sync=True)  # [{name, turns, changed}]
    header = t.Unicode("").tag(sync=True)
    warn = t.Bool(False).tag(sync=True)  # the context is nearly full
    total = t.Int(0).tag(sync=True)  # turns in the shown chat
    version = t.Int(0).tag(sync=True)  # bumped when the turns must be fetched afresh
    models = t.List(t.Unicode(), allow_none=True).tag(sync=True)
    model = t.Unicode("").tag(sync=True)
    system = t.Unicode("").tag(sync=True)
    status = t.Dict().tag(sync=True)  # {text, error, undo, seq}
    undo_label = t.Unicode("").tag(sync=True)  # what Undo would undo ("" when nothing)
    copy_name = t.Unicode("messages").tag(sync=True)
    page = t.Int(PAGE).tag(sync=True)

    def __init__(self, store: ConversationStore, *,
                 list_models: Callable[[], list[str] | None] = lambda: None,
                 default_model: Callable[[], str | None] = lambda: None,
                 context_window: Callable[[str], int | None] = lambda model: None,
                 default_num_ctx: int = 4096, namespace: dict[str, Any] | None = None,
                 page_size: int = PAGE, max_var_chars: Callable[[], int] = lambda: DEFAULT_MAX_CHARS,
                 events: Any = None, burst: tuple[int, float] = BURST) -> None:
        super().__init__()
        self.store = store
        self.namespace = namespace
        self._max_var_chars = max_var_chars
        self._stale_sent: dict[str, list[str]] = {}  # turn key -> stale refs, as last sent for the whole chat
        self.default_num_ctx = default_num_ctx
        self.page = max(1, int(page_size))
        self._default_model = default_model
        self._context_window = context_window
        self._ctx_cache: dict[str, int | None] = {}
        self._closed = False
        self._changed: dict[str, float] = {}
        # Per chat, what each undo step would undo: (the store's step, words).
        self._labels: dict[str, list[tuple[object, str]]] = {}
        self._live: dict[str, Any] | None = None  # the reply in flight: chat, parts sent
        self.sent: list[dict[str, Any]] = []  # recent messages (for tests); bounded
        # Burst coalescing: recent event times, whether the view is behind the store.
        self._burst = (max(1, int(burst[0])), float(burst[1]))
        self._recent: deque[float] = deque(maxlen=self._burst[0] + 1)
        self._dirty = False
        self._switched = False
        self._timer: asyncio.TimerHandle | None = None
        self._events = events  # IPython's shell.events: flush at each cell's end
        if events is not None:
            events.register("post_execute", self.flush)
        models: list[str] | None
        try:
            models = list_models()
        except Exception as exc:
            log.debug("list_models failed: %s", exc)
            models = None
        self.models = model_names(models) if models is not None else None  # type: ignore[assignment]  # None: free text
        self.chat = store.active_name
        for conv in store:
            self._changed[conv.name] = max((x.meta.created for x in conv.turns), default=time.time())
        self._fill()
        self.copy_name = self._free_name("messages")
        self.on_msg(self._on_msg)
        self._unsubscribe: Callable[[], None] | None = store.subscribe(self._on_event)
        self._unwatch: Callable[[], None] | None = store.watch_stream(self._on_stream)

    # -- public ------------------------------------------------------------------
    def rows(self, end: int | None = None, size: int | None = None) -> list[dict[str, Any]]:
        """Rendered turns `end - size` .. `end` of the shown chat (the last page by default)."""
        turns = self._conv().turns
        end = len(turns) if end is None else max(0, min(int(end), len(turns)))
        start = max(0, end - (size or self.page))
        return self._marked([render_turn(i, turns[i]) for i in range(start, end)])

    # -- stale turns: checked when rows are sent and on store events, never by polling -----
    def _stale(self, indices: Sequence[int] | None = None) -> dict[int, list[str]]:
        """{turn index: refs that now render differently}, for these turns (all when None)."""
        if self.namespace is None:
            return {}
        conv = self._conv()
        try:
            if indices is None:
                return stale_turns(conv, self.namespace, self._max_var_chars())
            turns = conv.turns
            picked = [i for i in indices if 0 <= i < len(turns) and turns[i].meta.variables]
            if not picked:  # the usual case: nothing rendered at all
                return {}
            found = stale_turns([turns[i] for i in picked], self.namespace, self._max_var_chars())
            return {picked[j]: refs for j, refs in found.items()}
        except Exception as exc:  # a value whose rendering fails must not break the panel
            log.debug("stale check failed: %s", exc)
            return {}

    def _marked(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stale = self._stale([r["index"] for r in rows])
        for row in rows:
            if row["index"] in stale:
                row["stale"] = stale[row["index"]]
        return rows

    def _post_stale(self) -> None:
        """Send the chat's stale marks when they changed (a turn event may follow a changed variable)."""
        turns = self._conv().turns
        marks = {turn_key(turns[i]): refs for i, refs in self._stale(None).items() if i < len(turns)}
        if marks != self._stale_sent:
            self._stale_sent = marks
            self._post({"kind": "stale", "marks": marks})

    def receive(self, content: dict[str, Any]) -> None:
        """Handle one message from the front end (buttons, edits, paging, search)."""
        if self._closed or not isinstance(content, dict):
            return
        action = content.get("do")
        handler = getattr(self, f"_do_{action}", None) if isinstance(action, str) and action.isidentifier() else None
        if handler is None:
            self._say(f"unknown action {action!r}", error=True)
            return
        try:
            handler(content)
        except (StoreError, persist.FileError) as exc:
            self._say(str(exc), error=True)
        except Exception as exc:  # no exception may escape into the kernel's comm handler
            log.debug("history panel action failed", exc_info=True)
            self._say(f"{type(exc).__name__}: {exc}", error=True)

    def edit(self, turn: int, text: str, *, reply: bool = False) -> None:
        """What an edit's Save does, from code: turn `turn` (numbered from 1, as shown)."""
        turns = self._conv().turns
        if not 1 <= turn <= len(turns):
            raise StoreError(f"chat {self.chat!r} has no turn {turn} (it has {count(len(turns), 'turn')})")
        self.receive({"do": "save", "index": turn - 1, "key": turn_key(turns[turn - 1]),
                      "part": -1 if reply else 0, "text": text})

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop listening to the store and close the widget (its views go too)."""
        if self._closed:
            return
        self._closed = True
        for stop in (self._unsubscribe, self._unwatch):
            if stop is not None:
                stop()
        self._unsubscribe = self._unwatch = None
        if self._events is not None:
            try:
                self._events.unregister("post_execute", self.flush)
            except ValueError:
                pass
            self._events = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        layout = self.layout
        super().close()
        layout.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The widget, plus a readable transcript where widgets cannot be drawn."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle
        conv = self._conv()
        data = {**data, "text/plain": transcript_text(conv), "text/html": transcript_html(conv)}
        return data, meta

    # -- sending -------------------------------------------------------------------
    def _post(self, message: dict[str, Any]) -> None:
        if self._closed:
            return
        self.sent.append(message)
        del self.sent[:-50]
        self.send(message)

    def _say(self, text: str, *, error: bool = False, undo: bool = False, where: int | None = None) -> None:
        seq = int(self.status.get("seq", 0)) + 1
        self.status = {"text": _one_line(text), "error": error, "undo": undo and not error,
                       "seq": seq, "where": where}

    @property
    def status_text(self) -> str:
        return str(self.status.get("text", ""))

    # -- state ---------------------------------------------------------------------
    def _conv(self) -> Conversation:
        return self.store.get(self.chat)

    def _fill(self) -> None:
        conv = self._conv()
        self.system = conv.system or ""
        self.model = conv.model or ""
        self._fill_chats()
        self._refresh()

    def _fill_chats(self) -> None:
        self.chats = [{"name": c.name, "turns": len(c.turns), "changed": self._changed.get(c.name, 0.0)}
                      for c in self.store]

    def _num_ctx(self, conv: Conversation) -> int:
        raw = conv.options.get("num_ctx")
        try:
            if raw:
                return int(raw)
        except (TypeError, ValueError):
            pass
        model = conv.model or self._default()
        if model:
            if model not in self._ctx_cache:
                try:
                    self._ctx_cache[model] = self._context_window(model)
                except Exception as exc:
                    log.debug("context_window(%r) failed: %s", model, exc)
                    self._ctx_cache[model] = None
            window = self._ctx_cache[model]
            if window:
                return int(window)
        return self.default_num_ctx

    def _default(self) -> str | None:
        try:
            return self._default_model()
        except Exception:
            return None

    def _refresh(self) -> None:
        """Header figures, undo label and turn count: always the store's current ones."""
        conv = self._conv()
        n = len(conv.turns)
        used = conv.context_tokens if any(x.meta.prompt_eval_count is not None for x in conv.turns) else None
        num_ctx = self._num_ctx(conv)
        context = f"context {'—' if used is None else f'{used:,}'} / {num_ctx:,}"
        warn = False
        if used is not None and num_ctx:
            share = used / num_ctx
            context += f" ({share:.0%})"
            if share >= 0.9:
                warn = True
                context += " ⚠ near the limit: Ollama drops the oldest messages beyond it"
        self.header = f"{count(n, 'turn')} · {count(conv.generated_tokens, 'token')} generated · {context}"
        self.warn = warn
        self.total = n
        labels = self._labels.get(conv.name, [])
        top = self.store.undo_top(conv.name)
        if not self.store.can_undo(conv.name):
            self.undo_label = ""
        elif labels and labels[-1][0] is top:
            self.undo_label = labels[-1][1]
        else:
            self.undo_label = f"the last change to chat {conv.name!r}"

    def _note_change(self, event: Event) -> None:
        """Remember when each chat changed and what its undo steps would undo."""
        name = event.chat
        self._changed[name] = time.time()
        depth = self.store.undo_depth(name)
        top = self.store.undo_top(name)
        labels = self._labels.setdefault(name, [])
        del labels[depth:]  # undone steps
        label = _describe(event)
        if not depth or not label:
            return
        if labels and labels[-1][0] is top:  # the same step (one commit, several events)
            if event.kind in _TURN_EVENTS:
                labels[-1] = (top, label)
        else:
            labels.append((top, label))
            del labels[:-depth]

    # -- bursts ------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """True while a burst of store events has not yet been sent."""
        return self._dirty

    def flush(self, *_args: Any) -> None:
        """After a burst: one bounded update (header, chat list, a version bump so the front
        end fetches its page). A no-op when the view is current."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed or not self._dirty:
            return
        self._dirty = False
        self._recent.clear()
        try:
            if self._switched or self.chat not in self.store:
                self.chat = self.store.active_name
                self.status = {}  # what it said was about the other chat
            self._switched = False
            self._end_live()
            with self.hold_sync():  # the state changes go as one update message
                self._fill()
                self.version += 1
                self._post_stale()  # at most one message; the page fetched next carries its marks too
        except Exception as exc:
            log.exception("ollama_magic: history panel failed to catch up")
            self._say(f"panel redrawn after an error: {exc}", error=True)

    def _bursting(self, event: Event) -> bool:
        """Note `event` while the view is behind; start a burst when events come too fast."""
        now = time.monotonic()
        many, seconds = self._burst
        if self._dirty and self._recent and now - self._recent[-1] > seconds:
            self.flush()  # a quiet spell ended the burst: catch up, then this event as usual
        self._recent.append(now)
        if not self._dirty and len(self._recent) > many and now - self._recent[0] <= seconds:
            self._dirty = True
            self._schedule()
        if not self._dirty:
            return False
        kind = event.kind
        self._keep_books(event)  # no message
        if kind == "switched":
            self._switched = True
        elif kind == "options":
            self._ctx_cache.clear()
        if kind in ("turn_added", "turn_replaced", "restored") and event.chat == self.chat:
            self._end_live()
        return True

    def _schedule(self) -> None:
        """A flush on the kernel's event loop, for bursts outside a cell (a button, a comm)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a plain script, a test): post_execute or the next event flushes
        self._timer = loop.call_later(self._burst[1], self.flush)

    # -- store events ----------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if self._closed:
            return
        try:
            if not self._bursting(event):
                with self.hold_sync():  # this event's state changes go as one update message
                    self._apply(event)
        except Exception as exc:  # never leave the view half-updated: fetch afresh
            log.exception("ollama_magic: history panel failed on %s", event)
            self.version += 1
            self._say(f"panel redrawn after an error: {exc}", error=True)

    def _keep_books(self, event: Event) -> None:
        """What the panel remembers of every event, sent or not (undo labels, change times)."""
        kind = event.kind
        if kind not in ("switched", "chat_created", "chat_removed"):
            self._note_change(event)
        if kind == "chat_removed":
            self._changed.pop(event.chat, None)
            self._labels.pop(event.chat, None)
        if kind == "chat_created":
            self._changed[event.chat] = time.time()

    def _apply(self, event: Event) -> None:
        kind = event.kind
        self._keep_books(event)
        if kind == "switched" or (kind == "chat_removed" and event.chat == self.chat):
            self.chat = self.store.active_name
            self.status = {}  # what it said was about the other chat
            self._fill()
            self.version += 1
            return
        self._fill_chats()
        if event.chat != self.chat:
            return  # another chat's change: only the chat list shows it
        turns = self._conv().turns
        if kind == "turn_added" and event.index == len(turns) - 1:
            self._end_live()
            self._post({"kind": "append", "row": self._marked([render_turn(event.index, turns[event.index])])[0],
                        "total": len(turns)})
        elif kind in ("turn_replaced", "edited") and event.index is not None and event.index < len(turns):
            if kind == "turn_replaced":
                self._end_live()
            self._post({"kind": "replace", "row": self._marked([render_turn(event.index, turns[event.index])])[0],
                        "total": len(turns)})
        elif kind == "deleted" and event.index is not None:
            self._post({"kind": "deleted", "index": event.index, "total": len(turns)})
        elif kind in ("truncated", "reset"):
            self._post({"kind": "truncated", "keep": event.index or 0, "total": len(turns)})
        elif kind == "system":
            self.system = self._conv().system or ""
        elif kind == "model":
            self.model = self._conv().model or ""
        elif kind == "options":
            self._ctx_cache.clear()
        else:  # restored (undo, load), fresh commits, anything new: fetch afresh
            self._end_live()
            self.system = self._conv().system or ""
            self.model = self._conv().model or ""
            self.version += 1
        if kind in _STALE_EVENTS:
            self._post_stale()
        self._refresh()

    # -- a reply in flight -------------------------------------------------------------
    def _on_stream(self, chat: str, user: Message | None, parts: Sequence[str] | None) -> None:
        if self._closed or chat != self.chat:
            return
        if parts is None:
            self._end_live()
            return
        live = self._live
        if live is None or live["chat"] != chat:
            live = self._live = {"chat": chat, "sent": 0}
            first = str((user or {}).get("content") or "")
            self._post({"kind": "live", "start": True, "index": len(self._conv().turns),
                        "user": markdown_html(first) if first else "", "text": "".join(parts)})
            live["sent"] = len(parts)
            return
        new = parts[live["sent"]:]
        if new:
            live["sent"] = len(parts)
            self._post({"kind": "live", "text": "".join(new)})  # only what arrived since

    def _end_live(self) -> None:
        if self._live is not None:
            self._live = None
            self._post({"kind": "live", "end": True})

    # -- front-end actions -------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        self.receive(content)

    def _turn_at(self, content: dict[str, Any]) -> int:
        """The index of the turn a message names by index and key (checked, or found)."""
        turns = self._conv().turns
        key = content.get("key")
        index = content.get("index")
        if isinstance(index, int) and 0 <= index < len(turns) and turn_key(turns[index]) == key:
            return index
        for i, turn in enumerate(turns):
            if turn_key(turn) == key:
                return i
        self.version += 1
        raise StoreError("that turn has changed or is gone (another change came first); "
                         "the panel now shows the current turns")

    def _do_page(self, content: dict[str, Any]) -> None:
        end = content.get("end")
        size = content.get("size")
        rows = self.rows(end if isinstance(end, int) else None, size if isinstance(size, int) and size > 0 else None)
        self._post({"kind": "rows", "req": content.get("req"), "rows": rows, "total": self.total,
                    "version": self.version})

    def _do_rows(self, content: dict[str, Any]) -> None:
        """Rows for given turn indices (a search's matches)."""
        turns = self._conv().turns
        wanted = [i for i in content.get("indices") or [] if isinstance(i, int) and 0 <= i < len(turns)]
        rows = self._marked([render_turn(i, turns[i]) for i in wanted[: self.page * 5]])
        self._post({"kind": "rows", "req": content.get("req"), "rows": rows, "total": self.total,
                    "version": self.version, "filtered": True})

    def _do_source(self, content: dict[str, Any]) -> None:
        """The raw text of one message, for its edit box."""
        index = self._turn_at(content)
        part = int(content.get("part", -1))
        msg = self._conv().turns[index].messages[part]
        self._post({"kind": "source", "req": content.get("req"), "key": content.get("key"),
                    "part": part, "text": str(msg.get("content") or "")})

    def _do_save(self, content: dict[str, Any]) -> None:
        index = self._turn_at(content)
        part = int(content.get("part", -1))
        text = str(content.get("text", ""))
        turn = self._conv().turns[index]
        if str(turn.messages[part].get("content") or "") == text:
            self._say("no change to save")
            return
        self.store.edit(index, text, part=part, chat=self.chat)
        who = "your message" if turn.messages[part].get("role") == "user" else "the reply"
        self._say(f"saved the edit of {who} in turn {index + 1}; the next cell sends it", undo=True, where=index)

    def _do_delete(self, content: dict[str, Any]) -> None:
        index = self._turn_at(content)
        self.store.delete(index, chat=self.chat)
        self._say(f"deleted turn {index + 1}", undo=True, where=index)

    def _do_rewind(self, content: dict[str, Any]) -> None:
        index = self._turn_at(content)
        dropped = self.store.truncate(index + 1, chat=self.chat)
        if dropped:
            self._say(f"rewound to turn {index + 1}: {count(dropped, 'later turn')} removed", undo=True,
                      where=index + 1)
        else:
            self._say(f"turn {index + 1} is already the last turn")

    def _do_branch(self, content: dict[str, Any]) -> None:
        index = self._turn_at(content)
        source = self.chat
        n = 1
        while f"{source}-branch-{n}" in self.store:
            n += 1
        name = f"{source}-branch-{n}"
        self.store.fork(name, at=index + 1, chat=source)
        self._say(f"branched chat {source!r} at turn {index + 1} into chat {name!r} (now shown)")

    def _do_undo(self, content: dict[str, Any]) -> None:
        name = self.chat
        what = self.undo_label or "the last change"
        if self.store.undo(chat=name):
            self._say(f"undid {what}")
        else:
            self._say("nothing to undo")

    def _do_reset(self, content: dict[str, Any]) -> None:
        removed = self.store.reset(chat=self.chat)
        if removed:
            self._say(f"removed {count(removed, 'turn')}", undo=True, where=0)
        else:
            self._say("the chat is already empty")

    def _do_switch(self, content: dict[str, Any]) -> None:
        name = str(content.get("name") or "")
        if name and name != self.store.active_name:
            self.store.switch(name)
            self._say(f"switched to chat {name!r}")

    def _do_new_chat(self, content: dict[str, Any]) -> None:
        name = str(content.get("name") or "").strip()
        if not name:
            n = 2
            while f"chat-{n}" in self.store:
                n += 1
            name = f"chat-{n}"
        self.store.create(name)
        self._say(f"created chat {name!r} (now shown)")

    def _do_model(self, content: dict[str, Any]) -> None:
        model = str(content.get("name") or "").strip() or None
        self.store.set_model(model, chat=self.chat)
        self._say(f"model set to {model}" if model else "model cleared: turns use the default model", undo=True)

    def _do_system(self, content: dict[str, Any]) -> None:
        text = str(content.get("text") or "")
        before = self._conv().system
        self.store.set_system(text, chat=self.chat)
        after = self._conv().system
        if after == before:
            self._say("system prompt unchanged")
        else:
            self._say("system prompt saved" if after else "system prompt removed", undo=True)

    def _do_export(self, content: dict[str, Any]) -> None:
        conv = self._conv()
        # No path given: not the notebook's folder (often a repository) but a folder of our own,
        # named in the status line.
        path = str(content.get("path") or "").strip() or str(_export_dir() / f"{conv.name}.md")
        target = persist.write_text(path, persist.export_markdown(conv))
        self._say(f"exported chat {conv.name!r} ({count(len(conv.turns), 'turn')}) to {target}")

    def _free_name(self, base: str) -> str:
        ns = self.namespace or {}
        if base not in ns:
            return base
        n = 2
        while f"{base}_{n}" in ns:
            n += 1
        return f"{base}_{n}"

    def _do_copy(self, content: dict[str, Any]) -> None:
        """Put a copy of the message list into a notebook variable; never overwrite silently."""
        var = str(content.get("name") or "").strip() or "messages"
        if not var.isidentifier() or keyword.iskeyword(var):
            raise StoreError(f"{var!r} is not a valid variable name")
        if self.namespace is None:
            raise StoreError("this panel has no notebook namespace to copy into")
        if var in self.namespace and not content.get("replace"):
            kind = type(self.namespace[var]).__name__
            self._say(f"{var} already exists (a {kind}): press Replace to overwrite it, or pick another name",
                      error=True)
            self._post({"kind": "confirm_copy", "name": var})
            return
        messages = copy.deepcopy(self._conv().messages())
        self.namespace[var] = messages
        self._say(f"copied {count(len(messages), 'message')} into the variable {var}")
        self.copy_name = self._free_name("messages")

    def _do_search(self, content: dict[str, Any]) -> None:
        """Turns whose messages contain the query (case-insensitive): this chat, or every chat."""
        query = str(content.get("q") or "").strip().lower()
        everywhere = bool(content.get("all"))
        hits: list[dict[str, Any]] = []
        chats = list(self.store) if everywhere else [self._conv()]
        for conv in chats:
            for i, turn in enumerate(conv.turns):
                if len(hits) >= _SEARCH_HITS:
                    break
                for msg in turn.messages:
                    text = str(msg.get("content") or "")
                    at = text.lower().find(query) if query else -1
                    if at >= 0:
                        start = max(0, at - 40)
                        snippet = ("…" if start else "") + _one_line(text[start:at + len(query) + 80], 160)
                        hits.append({"chat": conv.name, "index": i, "role": msg.get("role"), "text": snippet})
                        break
        self._post({"kind": "hits", "req": content.get("req"), "q": query, "all": everywhere, "hits": hits,
                    "more": len(hits) >= _SEARCH_HITS})

    def _do_gone(self, content: dict[str, Any]) -> None:
        """The front end has no view left (its output was cleared): retire."""
        self.close()


_TURN_EVENTS = frozenset({"turn_added", "turn_replaced", "truncated"})
_STALE_EVENTS = frozenset({"turn_added", "turn_replaced", "edited", "deleted", "truncated", "reset"})


def _describe(event: Event) -> str:
    """What undoing `event` undoes, in words."""
    i = (event.index or 0) + 1
    return {
        "turn_added": f"the new turn {i}",
        "turn_replaced": f"the re-run of turn {i}",
        "truncated": f"the rewind that removed {count(event.count, 'turn')}",
        "edited": f"the edit of turn {i}",
        "deleted": f"deleting turn {i}",
        "reset": f"the reset that removed {count(event.count, 'turn')}",
        "system": "the system prompt change",
        "model": "the model change",
        "options": "the options change",
        "restored": "the load",
    }.get(event.kind, "")


def _export_dir() -> Path:
    """Where the panel's Export writes when given no path: <temp>/ollama_magic-exports."""
    folder = Path(tempfile.gettempdir()) / "ollama_magic-exports"
    folder.mkdir(exist_ok=True)
    return folder
