"""The history panel: read, edit, delete and rewind a conversation in a notebook.

`HistoryPanel` is built from stock ipywidgets only (no custom JavaScript) and
is the one module of the package that imports ipywidgets; `%ollama history`
imports it when a panel is shown.

Safety: everything a user or a model wrote is shown as plain text. Message
text, thinking and the system prompt live in Textareas (plain text by nature).
The one-line headers (role, model, tokens, cell, status, tool calls) are HTML
widgets built from fixed markup with every piece of data passed through
`html.escape`; HTML widgets rather than Labels because a Label is typeset by
MathJax, which would interpret `$...$` in model output. No Markdown widgets.

Liveness: the panel subscribes to the store and applies each event to the rows
it concerns: a new turn appends that turn's rows, an edit rebuilds that turn's
rows, a rewind or delete removes rows; nothing is polled and nothing unrelated
is rebuilt. Events of a chat the panel does not show only update the chat
selector. Two panels on one store stay in sync because both listen.

Scale: only the last `page_size` turns get widgets; a "Show N earlier turns"
button loads earlier pages on demand. Layouts and styles are shared by all
rows, so a row costs a handful of widgets.
"""

from __future__ import annotations

import base64
import binascii
import copy
import html
import json
import keyword
import logging
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as w
from ipywidgets.widgets.widget_string import HTMLStyle, TextStyle  # not exported at top level

from . import persist
from .images import image_kind
from .store import Conversation, ConversationStore, Event, Message, StoreError, Turn, TurnMeta

__all__ = ["HistoryPanel"]

log = logging.getLogger(__name__)

_MAX_ROWS = 12  # tallest a text area opens (it scrolls beyond)
_WRAP = 100  # characters per visual line when sizing text areas
_STATUS_MAX = 300  # the status line is one line, cut to this length
_ROLE_TEXT = {"user": "You", "assistant": "Assistant", "tool": "Tool", "system": "System"}
_ROLE_COLOR = {"user": "#0b5cad", "assistant": "#1a7f37", "tool": "#8250df"}
_MUTED = "color:#57606a;font-size:12px"
_WARN = "color:#b00020;font-weight:bold;font-size:12px"


def _esc(value: object) -> str:
    """Data as HTML text: every `<`, `>`, `&` and quote escaped."""
    return html.escape(str(value), quote=True)


def _rows_for(text: str) -> int:
    """Text area height for `text`: one row per (wrapped) line, 1 to _MAX_ROWS."""
    rows = 0
    for line in text.split("\n"):
        rows += 1 + len(line) // _WRAP
        if rows >= _MAX_ROWS:
            return _MAX_ROWS
    return max(1, rows)


def _one_line(text: str, limit: int = _STATUS_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


class _Kit:
    """Layouts and styles shared by every row (one widget each, not one per row)."""

    def __init__(self) -> None:
        L = w.Layout
        # "auto" widths: flex children stretch to the panel without overflowing
        # it (100% plus padding, border or margin would stick out).
        # flex 0 0 auto: inside the scrolling turns box rows must keep their
        # height (a shrinking flex child squashes text areas to nothing).
        self.turn = L(width="auto", margin="4px 0", padding="2px 6px", flex="0 0 auto",
                      border_left="3px solid #d0d7de")
        self.row = L(width="auto", margin="1px 0", flex="0 0 auto")
        self.bar = L(width="auto", align_items="center", min_height="24px")
        self.info = L(width="auto", flex="1 1 auto")
        self.auto = L(width="auto")
        self.button = L(width="auto", height="24px", margin="0 0 0 4px")
        self.text = L(width="auto", min_width="200px")
        self.thumb = L(max_height="96px", width="auto", height="auto", object_fit="contain",
                       margin="2px 4px 2px 0")
        self.thumbs = L(width="auto", flex_flow="row wrap")
        self.acc = L(width="auto")
        self.html_style = HTMLStyle()
        self.button_style = w.ButtonStyle(font_size="12px")
        self.text_style = TextStyle()
        self.all: list[w.Widget] = [
            self.turn, self.row, self.bar, self.info, self.auto, self.button, self.text,
            self.thumb, self.thumbs, self.acc, self.html_style, self.button_style, self.text_style,
        ]
        self.ids = {id(x) for x in self.all}

    def close(self) -> None:
        for x in self.all:
            x.close()


def _dispose(widget: w.Widget, shared: set[int]) -> None:
    """Close `widget`, its descendants and their own (unshared) layouts and styles."""
    stack = [widget]
    while stack:
        x = stack.pop()
        stack.extend(getattr(x, "children", ()) or ())
        for attr in ("layout", "style"):
            sub = getattr(x, attr, None) if x.has_trait(attr) else None
            if isinstance(sub, w.Widget) and id(sub) not in shared:
                sub.close()
        x.close()


class _MessageRow(w.VBox):
    """One message: a bar (role, model, tokens, cell, status; Save edit) and its text."""

    def __init__(self, children: Iterable[w.Widget], *, part: int, role: str, text: w.Textarea,
                 save_button: w.Button, interrupted: bool, thinking: w.Accordion | None,
                 images: list[w.Image], info: w.HTML, layout: w.Layout) -> None:
        super().__init__(children=tuple(children), layout=layout)
        self.part = part
        self.role = role
        self.text = text
        self.save_button = save_button
        self.interrupted = interrupted
        self.thinking = thinking
        self.images = images
        self.info = info
        self.turn_view: _TurnView | None = None


class _TurnView(w.VBox):
    """One turn: its number and turn buttons, then one `_MessageRow` per message."""

    def __init__(self, turn: Turn, index: int, title: w.HTML, rows: list[_MessageRow],
                 bar: w.HBox, delete_button: w.Button, rewind_button: w.Button,
                 branch_button: w.Button, layout: w.Layout) -> None:
        super().__init__(children=(bar, *rows), layout=layout)
        self.turn = turn
        self.index = index
        self.title = title
        self.rows = rows
        self.delete_button = delete_button
        self.rewind_button = rewind_button
        self.branch_button = branch_button
        for row in rows:
            row.turn_view = self

    def set_index(self, index: int) -> None:
        if index != self.index:
            self.index = index
            self.title.value = _turn_title(index, self.turn.meta)


def _turn_title(index: int, meta: TurnMeta) -> str:
    """The turn's header as HTML: fixed markup, escaped data."""
    bits = [f"Turn {index + 1}"]
    if meta.edited:
        bits.append("edited")
    return f'<b style="{_MUTED}">{_esc(" · ".join(bits))}</b>'


class HistoryPanel(w.VBox):
    """A live, editable view of the active chat of a `ConversationStore`.

    list_models: installed model names, or None when the server is unknown
        (then the model field is free text).
    default_model: the model a turn uses when the chat has none.
    context_window: the model's context window (num_ctx) if known.
    namespace: where "Copy messages" puts the message list (the user namespace).
    page_size: how many of the latest turns get rows; earlier pages load on demand.
    """

    def __init__(self, store: ConversationStore, *,
                 list_models: Callable[[], list[str] | None] = lambda: None,
                 default_model: Callable[[], str | None] = lambda: None,
                 context_window: Callable[[str], int | None] = lambda model: None,
                 default_num_ctx: int = 4096, namespace: dict[str, Any] | None = None,
                 page_size: int = 50) -> None:
        super().__init__(layout=w.Layout(width="100%"))
        self.store = store
        self.namespace = namespace
        self.page_size = max(1, int(page_size))
        self.default_num_ctx = default_num_ctx
        self._list_models = list_models
        self._default_model = default_model
        self._context_window = context_window
        self._ctx_cache: dict[str, int | None] = {}
        self._kit = _Kit()
        self._chat = store.active_name
        self._views: list[_TurnView] = []
        self._first = 0  # index of the first turn that has a view
        self._quiet = 0  # >0 while the panel itself sets widget values
        self._closed = False
        self.rows_built = 0  # message rows ever built (for tests and benchmarks)
        self.turns_built = 0

        kit = self._kit
        # -- top: chat, model, new chat ------------------------------------
        self.chat_selector = w.Dropdown(description="Chat", options=store.names, value=self._chat,
                                        layout=w.Layout(width="240px"),
                                        style={"description_width": "40px"})
        self.chat_selector.observe(self._on_chat_selected, names="value")
        self.model_field = self._make_model_field()
        self.new_chat_name = w.Text(placeholder="new chat name", layout=w.Layout(width="150px"))
        self.new_chat_button = w.Button(description="New chat", icon="plus", layout=kit.auto,
                                        tooltip="Create a chat (with this chat's model and options) and switch to it")
        self.new_chat_button.on_click(lambda _: self._guard(self._new_chat))
        top = w.HBox([self.chat_selector, self.model_field, self.new_chat_name, self.new_chat_button],
                     layout=w.Layout(width="auto", flex_flow="row wrap", align_items="center"))

        # -- summary -------------------------------------------------------
        self.header = w.HTML(layout=w.Layout(width="auto"))
        self.header_text = ""

        # -- system prompt -------------------------------------------------
        self.system_text = w.Textarea(placeholder="System prompt (none)", continuous_update=False,
                                      layout=w.Layout(width="auto"))
        self.system_save = w.Button(description="Save system prompt",
                                    layout=w.Layout(width="auto", align_self="flex-start"),
                                    tooltip="Store this text as the chat's system prompt (empty removes it)")
        self.system_save.on_click(lambda _: self._guard(self._save_system))
        system = w.VBox([self.system_text, self.system_save], layout=w.Layout(width="auto"))

        # -- actions -------------------------------------------------------
        self.undo_button = w.Button(description="Undo", icon="undo", layout=kit.auto,
                                    tooltip="Undo the last change to this chat (same as %ollama undo)")
        self.undo_button.on_click(lambda _: self._guard(self._undo))
        self.reset_button = w.Button(description="Reset", icon="trash", button_style="warning",
                                     layout=kit.auto, tooltip="Remove all turns (undoable)")
        self.reset_button.on_click(lambda _: self._guard(self._reset))
        self.export_path = w.Text(placeholder="chat.md", layout=w.Layout(width="160px"))
        self.export_button = w.Button(description="Export Markdown", icon="download", layout=kit.auto,
                                      tooltip="Write this chat as Markdown to the path on the left")
        self.export_button.on_click(lambda _: self._guard(self._export))
        self.copy_var = w.Text(value="messages", layout=w.Layout(width="120px"))
        self.copy_button = w.Button(description="Copy messages", icon="copy", layout=kit.auto,
                                    tooltip="Put a copy of the message list into this notebook variable")
        self.copy_button.on_click(lambda _: self._guard(self._copy_messages))
        actions = w.HBox([self.undo_button, self.reset_button, self.export_path, self.export_button,
                          self.copy_var, self.copy_button],
                         layout=w.Layout(width="auto", flex_flow="row wrap", align_items="center"))
        self.status = w.HTML(layout=w.Layout(width="auto"))
        self.status_text = ""  # the status line as plain text

        # -- turns ---------------------------------------------------------
        self.earlier_button = w.Button(layout=w.Layout(width="auto", display="none"), icon="chevron-up")
        self.earlier_button.on_click(lambda _: self._guard(self.show_earlier))
        self._turns_box = w.VBox(layout=w.Layout(width="auto", max_height="70vh", overflow="auto"))

        self.children = (top, self.header, system, actions, self.status, self.earlier_button,
                         self._turns_box)
        self._fill_settings()
        self._render_turns(keep_visible=False)
        self._refresh_summary()
        self._unsubscribe: Callable[[], None] | None = store.subscribe(self._on_event)

    # -- public ------------------------------------------------------------
    @property
    def chat(self) -> str:
        """The name of the chat shown (the store's active chat)."""
        return self._chat

    @property
    def turn_views(self) -> list[_TurnView]:
        """The turns that have widgets, oldest first."""
        return list(self._views)

    @property
    def rows(self) -> list[_MessageRow]:
        """All message rows that have widgets, in display order."""
        return [row for view in self._views for row in view.rows]

    @property
    def first_shown(self) -> int:
        """Index of the first turn that has widgets (earlier ones are paged out)."""
        return self._first

    def show_earlier(self) -> int:
        """Give the previous page of turns widgets; returns how many were added."""
        if self._first == 0:
            return 0
        conv = self._conv()
        start = max(0, self._first - self.page_size)
        new = [self._build_turn(i, conv.turns[i]) for i in range(start, self._first)]
        self._views = new + self._views
        self._first = start
        self._turns_box.children = tuple(self._views)
        self._refresh_earlier()
        return len(new)

    def close(self) -> None:
        """Stop listening to the store and close every widget of the panel."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        shared = self._kit.ids
        for view in self._views:
            _dispose(view, shared)
        self._views = []
        self._turns_box.children = ()
        for child in self.children:
            _dispose(child, shared)
        self._kit.close()
        self.layout.close()
        super().close()

    # -- building ------------------------------------------------------------
    def _conv(self) -> Conversation:
        return self.store.get(self._chat)

    def _make_model_field(self) -> w.Widget:
        try:
            installed = self._list_models()
        except Exception as exc:  # a broken callback means "server unknown"
            log.debug("list_models failed: %s", exc)
            installed = None
        self._installed = None if installed is None else [str(m) for m in installed]
        tooltip = "The chat's model (used from the next turn)"
        if self._installed is None:
            field = w.Text(description="Model", continuous_update=False, tooltip=tooltip,
                           layout=w.Layout(width="260px"), style={"description_width": "48px"})
        else:
            field = w.Dropdown(description="Model", tooltip=tooltip, layout=w.Layout(width="260px"),
                               style={"description_width": "48px"})
        field.observe(self._on_model_changed, names="value")
        return field

    def _default(self) -> str | None:
        try:
            return self._default_model()
        except Exception:
            return None

    def _fill_settings(self) -> None:
        """Chat selector, model field and system prompt from the store."""
        self._fill_selector()
        self._fill_model()
        self._fill_system()
        self.export_path.placeholder = f"{self._chat}.md"

    def _fill_model(self) -> None:
        conv = self._conv()
        default = self._default()
        self._quiet += 1
        try:
            if isinstance(self.model_field, w.Dropdown):
                names = list(self._installed or [])
                if conv.model and conv.model not in names:
                    names.append(conv.model)
                blank = f"(default: {default})" if default else "(none)"
                options = [(blank, "")] + [(n, n) for n in names]
                if list(self.model_field.options) != options:
                    self.model_field.options = options
                self.model_field.value = conv.model or ""
            else:
                self.model_field.placeholder = default or "model name"
                self.model_field.value = conv.model or ""
        finally:
            self._quiet -= 1

    def _fill_system(self) -> None:
        text = self._conv().system or ""
        self._quiet += 1
        try:
            self.system_text.value = text
            self.system_text.rows = max(2, _rows_for(text))
        finally:
            self._quiet -= 1

    def _fill_selector(self) -> None:
        self._quiet += 1
        try:
            names = self.store.names
            if list(self.chat_selector.options) != names:
                self.chat_selector.options = names
            if self._chat in names and self.chat_selector.value != self._chat:
                self.chat_selector.value = self._chat
        finally:
            self._quiet -= 1

    def _render_turns(self, *, keep_visible: bool) -> None:
        """Show the last page of turns, reusing the views of turns that did not change."""
        conv = self._conv()
        n = len(conv.turns)
        visible = max(self.page_size, len(self._views)) if keep_visible else self.page_size
        first = max(0, n - visible)
        pool: dict[int, list[_TurnView]] = {}
        for view in self._views:
            pool.setdefault(id(view.turn), []).append(view)
        views: list[_TurnView] = []
        for i in range(first, n):
            turn = conv.turns[i]
            bucket = pool.get(id(turn))
            if bucket:
                view = bucket.pop(0)
                view.set_index(i)
            else:
                view = self._build_turn(i, turn)
            views.append(view)
        self._first, self._views = first, views
        self._turns_box.children = tuple(views)
        for bucket in pool.values():
            for view in bucket:
                _dispose(view, self._kit.ids)
        self._refresh_earlier()

    def _build_turn(self, index: int, turn: Turn) -> _TurnView:
        kit = self._kit
        self.turns_built += 1
        title = w.HTML(_turn_title(index, turn.meta), layout=kit.info, style=kit.html_style)
        rewind = w.Button(description="Rewind to here", layout=kit.button, style=kit.button_style,
                          tooltip="Keep the turns up to and including this one (undoable)")
        branch = w.Button(description="Branch from here", layout=kit.button, style=kit.button_style,
                          tooltip="Copy the chat up to this turn into a new chat and switch to it")
        delete = w.Button(description="Delete turn", layout=kit.button, style=kit.button_style,
                          button_style="danger", tooltip="Delete this question and its answer (undoable)")
        bar = w.HBox([title, rewind, branch, delete], layout=kit.bar)
        rows = [self._build_row(part, msg, turn, len(turn.messages)) for part, msg in enumerate(turn.messages)]
        view = _TurnView(turn, index, title, rows, bar, delete, rewind, branch, layout=kit.turn)
        rewind.on_click(lambda _: self._guard(self._rewind, view))
        branch.on_click(lambda _: self._guard(self._branch, view))
        delete.on_click(lambda _: self._guard(self._delete, view))
        return view

    def _build_row(self, part: int, msg: Message, turn: Turn, count: int) -> _MessageRow:
        kit = self._kit
        meta = turn.meta
        self.rows_built += 1
        role = str(msg.get("role") or "?")
        last = part == count - 1
        role_text = _ROLE_TEXT.get(role, role)
        if role == "tool" and msg.get("tool_name"):
            role_text = f"Tool {msg['tool_name']}"
        info_bits: list[str] = []
        if meta.model:
            info_bits.append(meta.model)
        if part == 0 and meta.prompt_eval_count is not None:
            info_bits.append(f"prompt {meta.prompt_eval_count:,} tokens")
        if last and role == "assistant" and meta.eval_count is not None:
            info_bits.append(f"{meta.eval_count:,} tokens")
        if meta.cell_id:
            info_bits.append(f"cell {meta.cell_id[:8]}")
        calls = msg.get("tool_calls") or []
        if calls:
            info_bits.append("calls " + ", ".join(_call_text(c) for c in calls))
        interrupted = last and meta.status == "interrupted"
        color = _ROLE_COLOR.get(role, "inherit")
        markup = (f'<b style="display:inline-block;min-width:84px;color:{color}">{_esc(_one_line(role_text, 60))}</b>'
                  f'<span style="{_MUTED}">{_esc(_one_line(" · ".join(info_bits), 240))}</span>')
        if interrupted:
            markup += (f' <span style="{_WARN}" title="The reply was stopped before it finished">'
                       "⚠ interrupted</span>")
        info = w.HTML(markup, layout=kit.info, style=kit.html_style)
        save = w.Button(description="Save edit", layout=kit.button, style=kit.button_style,
                        tooltip="Store the edited text of this message (undoable)")
        bar_items: list[w.Widget] = [info, save]
        content = msg.get("content")
        content = "" if content is None else str(content)
        text = w.Textarea(value=content, rows=_rows_for(content), continuous_update=False,
                          layout=kit.text, style=kit.text_style)
        children: list[w.Widget] = [w.HBox(bar_items, layout=kit.bar)]
        thinking = None
        if msg.get("thinking"):
            thought = str(msg["thinking"])
            inner = w.Textarea(value=thought, rows=_rows_for(thought), disabled=True,
                               layout=kit.text, style=kit.text_style)
            thinking = w.Accordion(children=[inner], titles=("Thinking",), selected_index=None,
                                   layout=kit.acc)
            children.append(thinking)
        children.append(text)
        images: list[w.Image] = []
        if role == "user" and msg.get("images"):
            thumbs: list[w.Widget] = []
            for data in msg["images"]:
                img = _thumbnail(data, kit)
                if isinstance(img, w.Image):
                    images.append(img)
                thumbs.append(img)
            children.append(w.HBox(thumbs, layout=kit.thumbs))
        row = _MessageRow(children, part=part, role=role, text=text, save_button=save,
                          interrupted=interrupted, thinking=thinking, images=images, info=info,
                          layout=kit.row)
        save.on_click(lambda _: self._guard(self._save_edit, row))
        return row

    # -- summary -------------------------------------------------------------
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

    def _refresh_summary(self) -> None:
        conv = self._conv()
        n = len(conv.turns)
        used = None
        for turn in reversed(conv.turns):
            if turn.meta.prompt_eval_count is not None:
                used = turn.meta.prompt_eval_count
                break
        num_ctx = self._num_ctx(conv)
        context = f"context {_fmt(used)} / {num_ctx:,}"
        if used is not None and num_ctx:
            share = used / num_ctx
            context += f" ({share:.0%})"
            if share >= 0.9:
                context += " ⚠ near the limit: Ollama drops the oldest messages beyond it"
        text = f"{n:,} turn{'s' if n != 1 else ''} · {conv.generated_tokens:,} tokens generated · {context}"
        if self.header_text != text:
            self.header_text = text
            self.header.value = _esc(text)
        depth = self.store.undo_depth(self._chat)
        self.undo_button.disabled = depth == 0
        self.undo_button.tooltip = f"Undo the last change to this chat ({depth} step{'s' if depth != 1 else ''} available)"
        self.reset_button.disabled = n == 0
        self._refresh_earlier()

    def _refresh_earlier(self) -> None:
        hidden = self._first
        if hidden:
            page = min(self.page_size, hidden)
            self.earlier_button.description = (
                f"Show {page:,} earlier turn{'s' if page != 1 else ''} ({hidden:,} not shown)")
            self.earlier_button.layout.display = None
        else:
            self.earlier_button.layout.display = "none"

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status_text = _one_line(("⚠ " if error else "✓ ") + text)
        style = "color:#b00020" if error else "color:#1a7f37"
        self.status.value = f'<span style="{style}">{_esc(self.status_text)}</span>'

    # -- store events --------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if self._closed:
            return
        try:
            self._apply(event)
        except Exception as exc:  # never leave the panel half-updated: redraw it
            log.exception("ollama_magic: history panel failed on %s", event)
            try:
                if event.chat == self._chat or event.kind in ("switched", "chat_removed"):
                    self._chat = self.store.active_name
                    self._fill_settings()
                    self._render_turns(keep_visible=True)
                    self._refresh_summary()
            except Exception:
                log.exception("ollama_magic: history panel redraw failed")
            self._say(f"panel redrawn after an error: {exc}", error=True)

    def _apply(self, event: Event) -> None:
        kind = event.kind
        if kind in ("chat_created", "chat_removed"):
            self._fill_selector()
            return
        if kind == "switched":
            self._chat = event.chat
            self._fill_settings()
            self._render_turns(keep_visible=False)
            self._refresh_summary()
            return
        if event.chat != self._chat:
            return  # another chat's change: nothing of it is shown
        if kind == "turn_added":
            self._on_added(event.index)
        elif kind in ("turn_replaced", "edited"):
            self._on_replaced(event.index)
        elif kind == "truncated":
            self._drop_from(event.index if event.index is not None else 0)
        elif kind == "deleted":
            self._on_deleted(event.index)
        elif kind == "reset":
            self._drop_from(0)
        elif kind == "system":
            self._fill_system()
        elif kind == "model":
            self._fill_model()
        elif kind == "options":
            pass  # num_ctx may have changed: the summary below shows it
        elif kind == "restored":
            self._fill_settings()
            self._render_turns(keep_visible=True)
        else:
            self._render_turns(keep_visible=True)
        self._check()
        self._refresh_summary()

    def _check(self) -> None:
        """The shown views must be exactly turns[first:]; redraw if not (never expected)."""
        turns = self._conv().turns
        if self._first + len(self._views) != len(turns) or (
                self._views and self._views[-1].turn is not turns[-1]):
            log.debug("history panel out of step; redrawing")
            self._render_turns(keep_visible=True)

    def _on_added(self, index: int | None) -> None:
        turns = self._conv().turns
        if index is None or index != self._first + len(self._views) or index != len(turns) - 1:
            self._render_turns(keep_visible=True)
            return
        view = self._build_turn(index, turns[index])
        self._views.append(view)
        self._turns_box.children = (*self._turns_box.children, view)

    def _on_replaced(self, index: int | None) -> None:
        if index is None:
            self._render_turns(keep_visible=True)
            return
        pos = index - self._first
        if pos < 0:
            return  # not shown
        if pos >= len(self._views):
            self._render_turns(keep_visible=True)
            return
        turn = self._conv().turns[index]
        old = self._views[pos]
        if old.turn is turn:
            return
        new = self._build_turn(index, turn)
        self._views[pos] = new
        self._turns_box.children = tuple(self._views)
        _dispose(old, self._kit.ids)

    def _drop_from(self, keep: int) -> None:
        """Remove the views of turns `keep` and later."""
        pos = max(0, keep - self._first)
        gone = self._views[pos:]
        if not gone and keep >= self._first:
            return
        self._views = self._views[:pos]
        if keep < self._first:
            self._first = keep
        self._turns_box.children = tuple(self._views)
        for view in gone:
            _dispose(view, self._kit.ids)
        if not self._views and self._first:
            self.show_earlier()

    def _on_deleted(self, index: int | None) -> None:
        if index is None:
            self._render_turns(keep_visible=True)
            return
        pos = index - self._first
        if pos < 0:  # an unshown turn went: every shown turn moves up one
            self._first -= 1
            for i, view in enumerate(self._views):
                view.set_index(self._first + i)
            return
        if pos >= len(self._views):
            self._render_turns(keep_visible=True)
            return
        gone = self._views.pop(pos)
        for i in range(pos, len(self._views)):
            self._views[i].set_index(self._first + i)
        self._turns_box.children = tuple(self._views)
        _dispose(gone, self._kit.ids)
        if not self._views and self._first:
            self.show_earlier()

    # -- widget callbacks ------------------------------------------------------
    def _guard(self, action: Callable[..., Any], *args: Any) -> None:
        """Run a user action; any error becomes one line in the status label."""
        try:
            action(*args)
        except (StoreError, persist.FileError) as exc:
            self._say(str(exc), error=True)
        except Exception as exc:  # no exception may escape a click handler
            log.debug("history panel action failed", exc_info=True)
            self._say(f"{type(exc).__name__}: {exc}", error=True)

    def _index_of(self, view: _TurnView) -> int:
        turns = self._conv().turns
        i = view.index
        if not (0 <= i < len(turns) and turns[i] is view.turn):
            try:
                i = next(j for j, t in enumerate(turns) if t is view.turn)
            except StopIteration:
                raise StoreError("that turn is no longer in the chat (another change removed it); "
                                 "the panel shows the current turns") from None
            finally:
                self._check()
        return i

    def _on_chat_selected(self, change: dict[str, Any]) -> None:
        if self._quiet or self._closed:
            return
        name = change["new"]
        if not name or name == self.store.active_name:
            return

        def switch() -> None:
            try:
                self.store.switch(name)
            except StoreError:
                self._fill_selector()
                raise
            self._say(f"switched to chat {name!r}")

        self._guard(switch)

    def _on_model_changed(self, change: dict[str, Any]) -> None:
        if self._quiet or self._closed:
            return
        model = str(change["new"] or "").strip() or None

        def set_model() -> None:
            self.store.set_model(model, chat=self._chat)
            self._say(f"model set to {model}" if model else "model cleared: turns use the default model")

        self._guard(set_model)

    def _save_system(self) -> None:
        text = self.system_text.value
        before = self._conv().system
        self.store.set_system(text, chat=self._chat)
        after = self._conv().system
        if after == before:
            self._say("system prompt unchanged")
        else:
            self._say("system prompt saved" if after else "system prompt removed")

    def _save_edit(self, row: _MessageRow) -> None:
        view = row.turn_view
        if view is None:
            raise StoreError("this row is no longer part of the panel")
        index = self._index_of(view)
        new = row.text.value
        if (view.turn.messages[row.part].get("content") or "") == new:
            self._say("no change to save")
            return
        self.store.edit(index, new, part=row.part, chat=self._chat)
        self._say(f"saved the edit of turn {index + 1} (undo reverts it)")

    def _delete(self, view: _TurnView) -> None:
        index = self._index_of(view)
        self.store.delete(index, chat=self._chat)
        self._say(f"deleted turn {index + 1} (undo brings it back)")

    def _rewind(self, view: _TurnView) -> None:
        index = self._index_of(view)
        dropped = self.store.truncate(index + 1, chat=self._chat)
        if dropped:
            self._say(f"rewound to turn {index + 1}: {dropped} later turn{'s' if dropped != 1 else ''} "
                      "removed (undo brings them back)")
        else:
            self._say(f"turn {index + 1} is already the last turn")

    def _branch(self, view: _TurnView) -> None:
        index = self._index_of(view)
        source = self._chat
        n = 1
        while f"{source}-branch-{n}" in self.store:
            n += 1
        name = f"{source}-branch-{n}"
        self.store.fork(name, at=index + 1, chat=source)
        self._say(f"branched {source!r} at turn {index + 1} into chat {name!r}")

    def _new_chat(self) -> None:
        name = self.new_chat_name.value.strip()
        if not name:
            n = 2
            while f"chat-{n}" in self.store:
                n += 1
            name = f"chat-{n}"
        self.store.create(name)
        self._quiet += 1
        try:
            self.new_chat_name.value = ""
        finally:
            self._quiet -= 1
        self._say(f"created chat {name!r}")

    def _reset(self) -> None:
        count = self.store.reset(chat=self._chat)
        if count:
            self._say(f"removed {count} turn{'s' if count != 1 else ''} (undo brings them back)")
        else:
            self._say("the chat is already empty")

    def _undo(self) -> None:
        name = self._chat
        if self.store.undo(chat=name):
            self._say(f"undid the last change to chat {name!r}")
        else:
            self._say("nothing to undo")

    def _export(self) -> None:
        conv = self._conv()
        path = self.export_path.value.strip() or f"{conv.name}.md"
        target = persist.write_text(path, persist.export_markdown(conv))
        self._say(f"exported chat {conv.name!r} ({len(conv.turns)} turns) to {target}")

    def _copy_messages(self) -> None:
        var = self.copy_var.value.strip() or "messages"
        if not var.isidentifier() or keyword.iskeyword(var):
            raise StoreError(f"{var!r} is not a valid variable name")
        if self.namespace is None:
            raise StoreError("this panel has no notebook namespace to copy into")
        messages = copy.deepcopy(self._conv().messages())
        self.namespace[var] = messages
        self._say(f"copied {len(messages)} messages into {var}")


def _call_text(call: Any) -> str:
    try:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = json.dumps(fn.get("arguments"), ensure_ascii=False)
        return _one_line(f"{fn.get('name')}({args})", 120)
    except Exception:
        return "?"


def _thumbnail(data: Any, kit: _Kit) -> w.Widget:
    """An Image for a base64 image (bytes pass through), or a note when unreadable."""
    try:
        raw = bytes(data) if isinstance(data, (bytes, bytearray)) else base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raw = b""
    kind = image_kind(raw) if raw else None
    if kind is None:
        return w.HTML(f'<span style="{_MUTED}">(unreadable image)</span>', layout=kit.auto,
                      style=kit.html_style)
    return w.Image(value=raw, format=kind.lower(), layout=kit.thumb)
