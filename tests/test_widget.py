"""Tests for ollama_magic.widget.HistoryPanel, without a browser.

The panel is one anywidget whose front end talks to it with custom messages.
These tests drive it as that front end does: `panel.receive({...})` for a
button, an edit or a page request (one test goes through ipywidgets' own
custom-message entry point), and they read what the panel sends back from a
recording comm that stands in for the kernel's: every `comm_open`, state
update and custom message with its size in bytes. `Front` is a small model of
panel.js (it applies the same messages to its list of shown turns), so the
property test can check that what a browser would show mirrors the store.
"""

from __future__ import annotations

import base64
import dataclasses
import html as html_lib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comm as comm_pkg
import pytest
from comm import DummyComm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import HOSTILE_MODEL_NAMES, PAYLOADS, violations
from ollama_magic.store import ConversationStore, Turn, TurnMeta
from ollama_magic.widget import HistoryPanel, count, model_names, transcript_html, transcript_text

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
HOSTILE = list(PAYLOADS.values())
def make_turn(i: int, *, cell: str | None = None, model: str = "llama3.2", prompt: int | None = None,
              tokens: int | None = 10, status: str = "ok", question: str | None = None,
              answer: str | None = None, **reply_extra: Any) -> Turn:
    user = {"role": "user", "content": question if question is not None else f"question {i}"}
    reply = {"role": "assistant", "content": answer if answer is not None else f"answer {i}", **reply_extra}
    meta = TurnMeta(cell_id=cell if cell is not None else f"cell-{i:04d}-abcdef-0123456789", model=model,
                    prompt_eval_count=prompt if prompt is not None else 20 * (i + 1),
                    eval_count=tokens, status=status, total_duration=1_500_000_000)  # type: ignore[arg-type]
    return Turn((user, reply), meta)


def filled(n: int, **kw: Any) -> ConversationStore:
    store = ConversationStore(model="llama3.2", **kw)
    for i in range(n):
        store.commit(make_turn(i))
    return store


# -- the wire: a recording comm in place of the kernel's ------------------------------------
class Wire:
    """Every widget message that would go to the frontend, with its size."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, dict[str, Any], int]] = []  # (comm id, msg type, data, bytes)
        self.listeners: list[Any] = []

    def record(self, comm_id: str, msg_type: str, data: Any, buffers: Any) -> None:
        size = len(json.dumps(data, default=str)) + sum(len(b) for b in buffers or [])
        self.log.append((comm_id, msg_type, data or {}, size))
        for listener in list(self.listeners):
            listener(comm_id, msg_type, data or {})

    def mark(self) -> int:
        return len(self.log)

    def since(self, mark: int) -> list[tuple[str, str, dict[str, Any], int]]:
        return self.log[mark:]

    def bytes_since(self, mark: int) -> int:
        return sum(size for *_, size in self.since(mark))

    def opened(self, mark: int = 0) -> int:
        return sum(1 for _, kind, _, _ in self.since(mark) if kind == "comm_open")

    def closed(self, mark: int = 0) -> set[str]:
        return {cid for cid, kind, _, _ in self.since(mark) if kind == "comm_close"}

    def custom(self, mark: int = 0) -> list[dict[str, Any]]:
        return [d["content"] for _, kind, d, _ in self.since(mark)
                if kind == "comm_msg" and d.get("method") == "custom"]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    rec = Wire()

    class RecordingComm(DummyComm):
        def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                        **keys: Any) -> None:
            rec.record(self.comm_id, msg_type, data, buffers)

    monkeypatch.setattr(comm_pkg, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return rec


@pytest.fixture
def panels() -> Iterator[list[HistoryPanel]]:
    """Panels made in a test are closed after it."""
    made: list[HistoryPanel] = []
    yield made
    for p in made:
        p.close()


def open_panel(panels: list[HistoryPanel], store: ConversationStore, **kw: Any) -> HistoryPanel:
    panel = HistoryPanel(store, **kw)
    panels.append(panel)
    return panel


def last(panel: HistoryPanel, kind: str) -> dict[str, Any]:
    for msg in reversed(panel.sent):
        if msg.get("kind") == kind:
            return msg
    raise AssertionError(f"no {kind!r} message sent; sent: {[m.get('kind') for m in panel.sent]}")


def page(panel: HistoryPanel, **kw: Any) -> list[dict[str, Any]]:
    panel.receive({"do": "page", "req": "t", **kw})
    return last(panel, "rows")["rows"]


def row_of(panel: HistoryPanel, index: int) -> dict[str, Any]:
    return next(r for r in panel.rows(index + 1, 1))


def act(panel: HistoryPanel, do: str, index: int, **kw: Any) -> None:
    panel.receive({"do": do, "index": index, "key": row_of(panel, index)["key"], **kw})


def edit(panel: HistoryPanel, index: int, part: int, text: str) -> None:
    act(panel, "save", index, part=part, text=text)


def contents(rows: list[dict[str, Any]]) -> list[str]:
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", m["html"])).strip() for r in rows for m in r["messages"]]


# -- a model of panel.js ---------------------------------------------------------------------
class Front:
    """Applies the panel's messages as panel.js does, to a list of shown rows."""

    def __init__(self, panel: HistoryPanel, wire: Wire) -> None:
        self.panel = panel
        self.rows: list[dict[str, Any]] = []
        self.reloads = 0
        self.comm_id = panel.comm.comm_id
        wire.listeners.append(self.on_wire)
        self.load_last()

    def load_last(self) -> None:
        self.reloads += 1
        self.panel.receive({"do": "page", "req": "front"})

    def on_wire(self, comm_id: str, kind: str, data: dict[str, Any]) -> None:
        if comm_id != self.comm_id or kind != "comm_msg":
            return
        if data.get("method") == "update" and "version" in data.get("state", {}):
            self.load_last()
        if data.get("method") != "custom":
            return
        msg = data["content"]
        kind = msg.get("kind")
        if msg.get("req") == "front":
            self.rows = list(msg["rows"])
        elif kind == "append":
            if not self.rows or self.rows[-1]["index"] == msg["row"]["index"] - 1:
                self.rows.append(msg["row"])
                del self.rows[:-self.panel.page]
        elif kind == "replace":
            self.rows = [msg["row"] if r["index"] == msg["row"]["index"] else r for r in self.rows]
        elif kind == "deleted":
            self.rows = [dict(r, index=r["index"] - (r["index"] > msg["index"])) for r in self.rows
                         if r["index"] != msg["index"]]
            if not self.rows and msg["total"]:
                self.load_last()
        elif kind == "truncated":
            self.rows = [r for r in self.rows if r["index"] < msg["keep"]]
            if not self.rows and msg["total"]:
                self.load_last()
        elif kind == "stale":  # panel.js setStale: every shown row takes its mark (or loses it)
            self.rows = [{k: v for k, v in r.items() if k != "stale"}
                         | ({"stale": msg["marks"][r["key"]]} if r["key"] in msg["marks"] else {})
                         for r in self.rows]


# -- building ---------------------------------------------------------------------------------

def test_rows_render_messages_roles_and_metadata(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    rows = page(panel)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert contents(rows) == ["question 0", "answer 0", "question 1", "answer 1", "question 2", "answer 2"]
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    meta = rows[1]["meta"]
    assert meta["model"] == "llama3.2" and meta["tokens"] == 10 and meta["prompt"] == 40
    assert meta["cell"] == "cell-0001-abcdef-0123456789"  # the whole cell id, not cut short
    assert meta["seconds"] == 1.5 and meta["status"] == "ok" and not meta["edited"]
    assert panel.header.startswith("3 turns · 30 tokens generated · context 70 / 4,096")
    assert panel.total == 3 and panel.chat == "default"


def test_markdown_is_rendered_not_shown_raw(panels):
    store = ConversationStore()
    store.commit(make_turn(0, answer="Some **bold** text and `code`.\n\n- one\n- two"))
    panel = open_panel(panels, store)
    html = page(panel)[0]["messages"][1]["html"]
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html and "<li>two</li>" in html
    assert "**" not in html


def test_counts_are_worded_right(panels):
    assert count(1, "turn") == "1 turn" and count(2, "turn") == "2 turns" and count(1000, "turn") == "1,000 turns"
    assert count(1, "match", "matches") == "1 match"
    store = filled(1)
    panel = open_panel(panels, store)
    assert panel.header.startswith("1 turn · 10 tokens generated")
    panel.namespace = {}
    panel.receive({"do": "copy", "name": "one"})
    assert panel.status_text == "copied 2 messages into the variable one"
    store.reset()
    store.commit(Turn(({"role": "user", "content": "q"}, {"role": "assistant", "content": "a", }), TurnMeta(eval_count=1)))
    assert panel.header.startswith("1 turn · 1 token generated")


def test_tool_exchange_is_grouped_and_each_message_is_editable(panels):
    store = ConversationStore()
    call = {"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    msgs = (
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3", "tool_name": "add"},
        {"role": "assistant", "content": "It is 3."},
    )
    store.commit(Turn(msgs, TurnMeta(cell_id="c1", model="m")))
    panel = open_panel(panels, store)
    (row,) = page(panel)
    parts = row["messages"]
    assert [m["role"] for m in parts] == ["user", "assistant", "tool", "assistant"]
    assert parts[1]["calls"] == ['add({"a": 1, "b": 2})']
    assert parts[2]["tool"] == "add"
    edit(panel, 0, 2, "three")
    assert store.active.turns[0].messages[2]["content"] == "three"
    assert store.active.history()[2] == {"role": "tool", "content": "three", "tool_name": "add"}
    depth = store.undo_depth()
    edit(panel, 0, 1, "")  # empty content, unchanged: no undo step
    assert store.undo_depth() == depth and "no change" in panel.status_text


def test_thinking_is_sent_apart_and_interrupted_is_marked(panels):
    store = ConversationStore()
    store.commit(make_turn(0, thinking="let me *think*", status="interrupted"))
    panel = open_panel(panels, store)
    (row,) = page(panel)
    reply = row["messages"][1]
    assert "think" in reply["thinking"] and "let me" not in reply["html"]  # drawn collapsed, apart
    assert row["meta"]["status"] == "interrupted"
    assert "thinking" not in row["messages"][0]


def test_images_become_checked_data_urls(panels):
    store = ConversationStore()
    user = {"role": "user", "content": "what is this?",
            "images": [base64.b64encode(PNG).decode(), "not base64 at all!", base64.b64encode(b"<svg onload=x>").decode()]}
    store.commit(Turn((user, {"role": "assistant", "content": "a pixel"}), TurnMeta()))
    panel = open_panel(panels, store)
    msg = page(panel)[0]["messages"][0]
    assert msg["images"] == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    assert msg["unreadable"] == 2  # neither text nor an SVG becomes an image


# -- editing ------------------------------------------------------------------------------------

def test_edit_control_gets_the_source_and_save_reaches_history(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    act(panel, "source", 1, part=-1, req="e1")
    src = last(panel, "source")
    assert src["text"] == "answer 1" and src["req"] == "e1"
    edit(panel, 1, -1, "a better answer")
    assert store.active.history()[3] == {"role": "assistant", "content": "a better answer"}
    replaced = last(panel, "replace")
    assert replaced["row"]["index"] == 1 and replaced["row"]["meta"]["edited"]
    assert "a better answer" in replaced["row"]["messages"][1]["html"]
    edit(panel, 0, 0, "a better question")
    assert store.active.history()[0] == {"role": "user", "content": "a better question"}
    assert store.active.turns[0].meta.edited
    assert panel.status_text.startswith("saved the edit of your message in turn 1")
    assert panel.status["undo"] and panel.undo_label == "the edit of turn 1"


def test_save_without_change_is_a_no_op(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    depth = store.undo_depth()
    edit(panel, 0, 1, "answer 0")
    assert store.undo_depth() == depth
    assert "no change" in panel.status_text


def test_a_stale_turn_is_reported_not_raised(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    key = row_of(panel, 1)["key"]
    store.edit(1, "changed elsewhere", part=0)  # a new Turn: the old key names nothing
    version = panel.version
    panel.receive({"do": "save", "index": 1, "key": key, "part": 0, "text": "mine"})
    assert panel.status["error"] and "changed or is gone" in panel.status_text
    assert panel.version == version + 1  # the front end fetches the current turns
    assert store.active.turns[1].user["content"] == "changed elsewhere"
    moved = row_of(panel, 2)["key"]
    store.delete(0)  # the key still finds its turn at its new index
    panel.receive({"do": "save", "index": 2, "key": moved, "part": 0, "text": "found"})
    assert store.active.turns[1].user["content"] == "found"


def test_delete_is_undoable_right_there_and_undo_says_what(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    act(panel, "delete", 1)
    assert [t.user["content"] for t in store.active.turns] == ["question 0", "question 2"]
    assert last(panel, "deleted") == {"kind": "deleted", "index": 1, "total": 2}
    assert panel.status["undo"] and panel.status["where"] == 1  # the notice goes where the turn was
    assert panel.status_text == "deleted turn 2"
    assert panel.undo_label == "deleting turn 2"
    panel.receive({"do": "undo"})
    assert len(store.active.turns) == 3
    assert panel.status_text == "undid deleting turn 2"


def test_rewind_then_undo_restores(panels, wire):
    store = filled(4)
    panel = open_panel(panels, store)
    front = Front(panel, wire)
    act(panel, "rewind", 1)
    assert len(store.active.turns) == 2
    assert last(panel, "truncated")["keep"] == 2
    assert [r["index"] for r in front.rows] == [0, 1]
    assert panel.status_text == "rewound to turn 2: 2 later turns removed" and panel.status["undo"]
    panel.receive({"do": "undo"})
    assert panel.status_text == "undid the rewind that removed 2 turns"
    assert len(store.active.turns) == 4 and [r["index"] for r in front.rows] == [0, 1, 2, 3]
    act(panel, "rewind", 3)
    assert "already the last turn" in panel.status_text


def test_branch_from_here(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    act(panel, "branch", 1)
    assert store.active_name == "default-branch-1" and len(store.active.turns) == 2
    assert panel.chat == "default-branch-1"
    assert [c["name"] for c in panel.chats] == ["default", "default-branch-1"]
    assert len(panel.rows()) == 2
    panel.receive({"do": "switch", "name": "default"})
    act(panel, "branch", 0)
    assert store.active_name == "default-branch-2" and len(store.active.turns) == 1
    assert len(store.get("default").turns) == 3


def test_system_prompt(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.receive({"do": "system", "text": "Be brief."})
    assert store.active.history()[0] == {"role": "system", "content": "Be brief."}
    assert panel.status_text == "system prompt saved"
    store.set_system("Be verbose.")
    assert panel.system == "Be verbose."
    panel.receive({"do": "system", "text": ""})
    assert store.active.system is None and panel.system == ""
    assert store.active.history()[0]["role"] == "user"
    panel.receive({"do": "system", "text": ""})
    assert panel.status_text == "system prompt unchanged"


def test_reset_and_undo(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    panel.receive({"do": "reset"})
    assert store.active.turns == [] and panel.total == 0
    assert panel.status_text == "removed 2 turns" and panel.status["undo"]
    assert last(panel, "truncated") == {"kind": "truncated", "keep": 0, "total": 0}
    assert panel.header.startswith("0 turns")
    panel.receive({"do": "undo"})
    assert len(store.active.turns) == 2 and panel.status_text == "undid the reset that removed 2 turns"
    panel.receive({"do": "reset"})
    panel.receive({"do": "reset"})
    assert panel.status_text == "the chat is already empty"


def test_undo_shares_the_store_stack_and_names_outside_changes(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    assert panel.undo_label == "the last change to chat 'default'"  # made before the panel opened
    store.commit(make_turn(2))  # a cell ran
    assert panel.undo_label == "the new turn 3"
    store.commit(make_turn(3, cell="cell-0001-abcdef-0123456789"))  # an earlier cell re-run: rewinds
    assert panel.undo_label == "the re-run of turn 2"
    panel.receive({"do": "undo"})
    assert panel.status_text == "undid the re-run of turn 2" and len(store.active.turns) == 3
    while store.can_undo():
        store.undo()
    assert panel.undo_label == ""
    panel.receive({"do": "undo"})
    assert panel.status_text == "nothing to undo"


def test_chat_selector_lists_turns_and_last_change(panels):
    store = filled(2)
    store.create("other", switch=False)
    panel = open_panel(panels, store)
    chats = {c["name"]: c for c in panel.chats}
    assert chats["default"]["turns"] == 2 and chats["other"]["turns"] == 0
    assert chats["default"]["changed"] >= store.active.turns[-1].meta.created
    version = panel.version
    panel.receive({"do": "switch", "name": "other"})
    assert store.active_name == "other" and panel.chat == "other" and panel.version == version + 1
    assert panel.rows() == [] and panel.header.startswith("0 turns")
    before = chats["default"]["changed"]
    store.commit(make_turn(9), chat="default")
    after = {c["name"]: c for c in panel.chats}["default"]
    assert after["turns"] == 3 and after["changed"] >= before
    panel.receive({"do": "switch", "name": "nope"})
    assert panel.status["error"] and "no chat named 'nope'" in panel.status_text


def test_new_chat(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.receive({"do": "new_chat", "name": "side"})
    assert store.active_name == "side" and panel.chat == "side"
    assert store.active.model == "llama3.2"
    panel.receive({"do": "new_chat", "name": ""})
    assert store.active_name == "chat-2"
    panel.receive({"do": "new_chat", "name": "side"})
    assert panel.status["error"] and "exists already" in panel.status_text


def test_other_chat_events_only_touch_the_chat_list(panels, wire):
    store = filled(2)
    store.create("b", switch=False)
    panel = open_panel(panels, store)
    mark = wire.mark()
    store.commit(make_turn(5), chat="b")
    assert wire.custom(mark) == []  # no row went out
    assert {c["name"]: c["turns"] for c in panel.chats}["b"] == 1
    assert panel.total == 2


def test_removing_the_shown_chat_follows_the_store(panels):
    store = filled(1)
    store.create("b")
    panel = open_panel(panels, store)
    assert panel.chat == "b"
    store.remove("b")
    assert panel.chat == "default" and [c["name"] for c in panel.chats] == ["default"]


def test_model_selector_lists_each_model_once(panels):
    assert model_names(["llama3.2:latest", "llama3.2", "qwen3:8b", "qwen3:latest"]) == ["llama3.2", "qwen3:8b", "qwen3"]
    store = filled(1)
    panel = open_panel(panels, store, list_models=lambda: ["llama3.2:latest", "qwen3:latest", "llama3.2"])
    assert panel.models == ["llama3.2", "qwen3"]
    assert panel.model == "llama3.2"
    panel.receive({"do": "model", "name": "qwen3"})
    assert store.active.model == "qwen3" and panel.status_text == "model set to qwen3"
    store.set_model("llama3.2")
    assert panel.model == "llama3.2"
    panel.receive({"do": "model", "name": ""})
    assert store.active.model is None and "default model" in panel.status_text


def test_model_is_free_text_when_the_server_is_unknown(panels):
    store = filled(1)
    panel = open_panel(panels, store, list_models=lambda: None)
    assert panel.models is None

    def broken() -> list[str]:
        raise ConnectionError("down")

    panel2 = open_panel(panels, store, list_models=broken)
    assert panel2.models is None


def test_header_figures_stay_current_after_delete_and_options(panels):
    store = ConversationStore(model="m")
    store.commit(make_turn(0, prompt=100, tokens=20))
    store.commit(make_turn(1, prompt=3500, tokens=200))
    panel = open_panel(panels, store, context_window=lambda model: 4096)
    assert panel.header == "2 turns · 220 tokens generated · context 3,700 / 4,096 (90%) ⚠ near the limit: Ollama drops the oldest messages beyond it"
    assert panel.warn
    act(panel, "delete", 1)
    assert panel.header == "1 turn · 20 tokens generated · context 120 / 4,096 (3%)"
    assert not panel.warn
    store.set_options({"num_ctx": 8192})
    assert panel.header.endswith("context 120 / 8,192 (1%)")


# -- liveness and cost --------------------------------------------------------------------------

@pytest.mark.parametrize("turns", [10, 100, 1000])
def test_widget_model_count_does_not_grow_with_turns(panels, wire, turns):
    store = filled(turns)
    mark = wire.mark()
    panel = open_panel(panels, store)
    Front(panel, wire)
    assert wire.opened(mark) == 2  # the panel and its layout, whatever the number of turns
    for i in range(turns, turns + 5):
        store.commit(make_turn(i))
    act(panel, "delete", 0)
    edit(panel, turns - 1, 0, "edited")
    assert wire.opened(mark) == 2  # appends, edits and deletes open no widget
    state = panel.get_state()
    saved = json.dumps(state)
    assert f"question {turns - 2}" not in saved and "answer 1" not in saved  # no turn in synced (saved) state


def test_an_append_sends_only_the_new_turn(panels, wire):
    sizes = {}
    for n in (10, 1000):
        store = filled(n)
        panel = open_panel(panels, store)
        Front(panel, wire)
        mark = wire.mark()
        store.commit(make_turn(n))
        sent = wire.since(mark)
        custom = wire.custom(mark)
        assert [m["kind"] for m in custom] == ["append"]
        assert custom[0]["row"]["index"] == n
        row_bytes = len(json.dumps(custom[0]))
        sizes[n] = wire.bytes_since(mark)
        # the row itself plus a few small state updates (header, total, chat list)
        assert sizes[n] < row_bytes + 600 + 60 * len(store.names), sent
    # the same cost at 10 and at 1,000 turns, but for longer numbers ("1,001 turns", indices)
    assert abs(sizes[1000] - sizes[10]) < 150, sizes


def test_commit_appends_and_a_rerun_replaces_only_that_turn(panels, wire):
    store = filled(3)
    panel = open_panel(panels, store)
    front = Front(panel, wire)
    mark = wire.mark()
    store.commit(make_turn(3))
    assert [r["index"] for r in front.rows] == [0, 1, 2, 3]
    store.commit(make_turn(9, cell="cell-0003-abcdef-0123456789", answer="new answer"))  # re-run of the last cell
    replaced = [m for m in wire.custom(mark) if m["kind"] == "replace"]
    assert len(replaced) == 1 and replaced[0]["row"]["index"] == 3
    assert contents(front.rows)[-1] == "new answer"
    assert front.reloads == 1  # nothing made the front end fetch everything again


def test_an_open_panel_keeps_only_its_page_as_turns_arrive(panels, wire):
    store = filled(5)
    panel = open_panel(panels, store, page_size=10, burst=(1000, 0.5))  # every event sent as it comes
    front = Front(panel, wire)
    for i in range(5, 60):
        store.commit(make_turn(i))
    assert not panel.dirty and [m["kind"] for m in panel.sent[-3:]] == ["append"] * 3
    assert [r["index"] for r in front.rows] == list(range(50, 60))
    assert wire.opened() == 2


def test_fresh_commit_and_load_make_the_front_end_refetch(panels, wire, tmp_path: Path):
    from ollama_magic import persist

    store = filled(3)
    panel = open_panel(panels, store)
    front = Front(panel, wire)
    store.commit(make_turn(7), fresh=True)
    assert [r["index"] for r in front.rows] == [0] and contents(front.rows) == ["question 7", "answer 7"]
    path = tmp_path / "c.json"
    persist.save(store, path)
    store.reset()
    persist.load(store, path)
    assert contents(front.rows) == ["question 7", "answer 7"]
    assert panel.undo_label == "the load"


def test_two_panels_stay_in_sync(panels, wire):
    store = filled(2)
    a, b = open_panel(panels, store), open_panel(panels, store)
    fa, fb = Front(a, wire), Front(b, wire)
    edit(a, 0, 0, "from a")
    assert contents(fb.rows)[0] == "from a"
    store.commit(make_turn(2))
    assert len(fa.rows) == len(fb.rows) == 3
    assert store.listener_count == 2 and store.stream_listener_count == 2


def test_close_unsubscribes_and_closes_its_widgets(wire):
    store = filled(3)
    panel = HistoryPanel(store)
    ids = {cid for cid, kind, _, _ in wire.log if kind == "comm_open"}
    assert len(ids) == 2 and store.listener_count == 1 and store.stream_listener_count == 1
    panel.close()
    assert store.listener_count == 0 and store.stream_listener_count == 0
    assert wire.closed() == ids  # the panel and its layout
    panel.close()  # twice is harmless
    store.commit(make_turn(3))  # a closed panel hears nothing and sends nothing
    panel.receive({"do": "page"})


def test_a_cleared_output_retires_the_panel(panels, wire):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.receive({"do": "gone"})
    assert panel.closed and store.listener_count == 0


def test_the_reply_in_flight_streams_as_deltas(panels, wire):
    store = filled(2)
    open_panel(panels, store)
    mark = wire.mark()
    user = {"role": "user", "content": "tell me"}
    parts: list[str] = []
    for word in ("Once ", "upon ", "a ", "time"):
        parts.append(word)
        store.stream("default", user, parts)
    store.stream("other-chat", user, parts)  # another chat's reply: not shown
    live = [m for m in wire.custom(mark) if m["kind"] == "live"]
    assert live[0]["start"] and live[0]["index"] == 2 and "tell me" in live[0]["user"]
    assert [m["text"] for m in live] == ["Once ", "upon ", "a ", "time"]  # each piece once: O(reply)
    store.commit(make_turn(2, answer="Once upon a time"))
    kinds = [m["kind"] for m in wire.custom(mark)]
    assert kinds[-2:] == ["live", "append"] and wire.custom(mark)[-2] == {"kind": "live", "end": True}
    store.stream("default", user, None)  # the feed's own end: nothing more to say
    assert [m["kind"] for m in wire.custom(mark)][-1] == "append"


def test_a_failed_reply_in_flight_is_taken_back(panels, wire):
    store = filled(1)
    open_panel(panels, store)
    mark = wire.mark()
    store.stream("default", {"role": "user", "content": "q"}, ["par"])
    store.stream("default", {"role": "user", "content": "q"}, None)
    assert wire.custom(mark)[-1] == {"kind": "live", "end": True}
    assert len(store.active.turns) == 1


def test_hostile_content_reaches_the_page_only_sanitised(panels):
    store = ConversationStore()
    for i, bad in enumerate(HOSTILE):
        name = HOSTILE_MODEL_NAMES[i % len(HOSTILE_MODEL_NAMES)]
        store.commit(make_turn(i, question=bad, answer=bad, thinking=bad, model=name, cell=bad))
    store.set_system(HOSTILE[0])
    panel = open_panel(panels, store)
    for row in page(panel):
        for msg in row["messages"]:
            for key in ("html", "thinking"):
                if key in msg:
                    assert violations(msg[key]) == [], msg[key]
    user = {"role": "user", "content": HOSTILE[1]}
    store.stream("default", user, [HOSTILE[0]])
    live = last(panel, "live")
    assert violations(live["user"]) == []  # the question as sanitised HTML
    assert live["text"] == HOSTILE[0]  # the reply so far: plain text, set with textContent
    bundle = panel._repr_mimebundle_()[0]
    assert violations(bundle["text/html"], allowed_classes={"tex2jax_ignore", "mathjax_ignore",
                                                            "ollama-magic-history"}) == []
    assert "\x1b" not in bundle["text/plain"]  # controls shown escaped in the plain transcript
    assert "text/markdown" not in bundle  # JupyterLab's math pre-pass makes Markdown unsafe
    js = (Path(__file__).resolve().parents[1] / "ollama_magic" / "panel.js").read_text()
    # innerHTML is only ever given the sanitised fields
    assigned = re.findall(r"innerHTML\s*=\s*([^;]+);", js)
    assert assigned and set(assigned) <= {"m.thinking", "m.html", "msg.user"}, assigned
    assert "eval(" not in js and "new Function" not in js


# -- chat actions --------------------------------------------------------------------------------

def test_export_writes_markdown(panels, tmp_path: Path):
    store = filled(2)
    panel = open_panel(panels, store)
    target = tmp_path / "out.md"
    panel.receive({"do": "export", "path": str(target)})
    assert "## 1. User" in target.read_text() and "answer 1" in target.read_text()
    assert panel.status_text == f"exported chat 'default' (2 turns) to {target}"


def test_export_errors_go_to_the_status_line(panels, tmp_path: Path):
    panel = open_panel(panels, filled(1))
    panel.receive({"do": "export", "path": str(tmp_path)})
    assert panel.status["error"] and "is a directory" in panel.status_text


def test_copy_messages_names_the_variable_and_never_overwrites_silently(panels):
    store = filled(2)
    ns: dict[str, Any] = {"messages": "mine"}
    panel = open_panel(panels, store, namespace=ns)
    assert panel.copy_name == "messages_2"  # the suggestion is a free name
    panel.receive({"do": "copy", "name": "messages"})
    assert ns["messages"] == "mine"
    assert panel.status["error"] and "messages already exists (a str)" in panel.status_text
    assert last(panel, "confirm_copy") == {"kind": "confirm_copy", "name": "messages"}
    panel.receive({"do": "copy", "name": "messages", "replace": True})
    assert ns["messages"] == store.active.messages() and ns["messages"] is not store.active.messages()
    assert panel.status_text == "copied 4 messages into the variable messages"
    panel.receive({"do": "copy", "name": panel.copy_name})
    assert "messages_2" in ns and panel.copy_name == "messages_3"
    ns["messages_2"][0]["content"] = "changed"
    assert store.active.turns[0].user["content"] == "question 0"  # a copy, not the store's dicts
    panel.receive({"do": "copy", "name": "not a name"})
    assert "not a valid variable name" in panel.status_text
    panel.receive({"do": "copy", "name": "class"})
    assert "not a valid variable name" in panel.status_text


def test_copy_without_namespace_reports(panels):
    panel = open_panel(panels, filled(1))
    panel.receive({"do": "copy", "name": "x"})
    assert "no notebook namespace" in panel.status_text


def test_no_exception_escapes_a_message(panels, monkeypatch):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.receive({"do": "explode"})
    assert "unknown action" in panel.status_text
    panel.receive("not even a dict")  # type: ignore[arg-type]

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "reset", boom)
    panel.receive({"do": "reset"})
    assert panel.status["error"] and "RuntimeError: disk on fire" in panel.status_text


def test_custom_messages_arrive_through_ipywidgets(panels):
    panel = open_panel(panels, filled(2))
    panel._handle_custom_msg({"do": "page", "req": "w"}, [])  # what the kernel's comm handler calls
    assert [r["index"] for r in last(panel, "rows")["rows"]] == [0, 1]


# -- paging and finding ---------------------------------------------------------------------------

def test_paging_reaches_every_turn(panels):
    store = filled(45)
    panel = open_panel(panels, store, page_size=20)
    assert [r["index"] for r in page(panel)] == list(range(25, 45))
    assert [r["index"] for r in page(panel, end=25)] == list(range(5, 25))
    assert [r["index"] for r in page(panel, end=5)] == list(range(0, 5))
    assert page(panel, end=0) == []
    assert [r["index"] for r in page(panel, end=10, size=3)] == [7, 8, 9]


def test_search_filters_this_chat_and_finds_across_chats(panels):
    store = filled(30)
    store.create("other", switch=False)
    store.commit(make_turn(0, question="Where is the LLAMA?"), chat="other")
    panel = open_panel(panels, store)
    panel.receive({"do": "search", "req": "s", "q": "question 2"})
    hits = last(panel, "hits")["hits"]
    assert [h["index"] for h in hits] == [2] + list(range(20, 30))
    assert all(h["chat"] == "default" for h in hits)
    panel.receive({"do": "rows", "req": "r", "indices": [h["index"] for h in hits] + [999, "x"]})
    shown = last(panel, "rows")
    assert shown["filtered"] and [r["index"] for r in shown["rows"]] == [2] + list(range(20, 30))
    panel.receive({"do": "search", "req": "s", "q": "llama", "all": True})
    found = last(panel, "hits")["hits"]
    assert [(h["chat"], h["index"]) for h in found] == [("other", 0)]
    assert "LLAMA" in found[0]["text"]
    panel.receive({"do": "search", "req": "s", "q": "answer 29"})
    assert [(h["index"], h["role"]) for h in last(panel, "hits")["hits"]] == [(29, "assistant")]


# -- where widgets cannot be drawn -------------------------------------------------------------

def test_without_widget_state_the_output_is_a_readable_transcript(panels):
    store = filled(30)
    store.set_system("Be brief.")
    panel = open_panel(panels, store)
    data, _ = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    text = data["text/plain"]
    assert "HistoryPanel(" not in text and "object at 0x" not in text
    assert text.startswith("History of chat 'default': 30 turns (the last 20 shown)")
    assert "[30. Assistant] answer 29" in text and "question 9" not in text
    html = data["text/html"]
    assert "answer 29" in html and "question 9" not in html and "30 turns" in html
    one = ConversationStore()
    one.commit(make_turn(0))
    assert transcript_text(one.active).startswith("History of chat 'default': 1 turn\n")
    assert "1 turn" in transcript_html(one.active)


def test_saved_widget_state_is_small_whatever_the_turns(panels):
    store = ConversationStore(model="llama3.2")
    for i in range(1000):
        store.commit(make_turn(i, question=f"question {i} " + "q" * 150, answer=f"answer {i} " + "lorem ipsum " * 50))
    text = sum(len(m.get("content") or "") for t in store.active.turns for m in t.messages)
    panel = open_panel(panels, store)
    state = json.dumps(panel.get_state())
    data, _ = panel._repr_mimebundle_()
    output = json.dumps(data)
    assert len(state) + len(output) < text / 5, (len(state), len(output), text)


def test_importing_the_package_does_not_import_widgets():
    code = ("import sys, ollama_magic, ollama_magic.store, ollama_magic.persist, ollama_magic.live; "
            "assert 'ipywidgets' not in sys.modules and 'anywidget' not in sys.modules, 'widgets imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- property: what the front end shows always mirrors the store ---------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 6)),
        st.tuples(st.just("edit"), st.integers(0, 10)),
        st.tuples(st.just("delete"), st.integers(0, 10)),
        st.tuples(st.just("truncate"), st.integers(0, 10)),
        st.tuples(st.just("reset"), st.just(0)),
        st.tuples(st.just("undo"), st.just(0)),
        st.tuples(st.just("switch"), st.integers(0, 1)),
        st.tuples(st.just("panel-delete"), st.integers(0, 10)),
    ),
    max_size=25,
)


def _mirrors(panel: HistoryPanel, front: Front, store: ConversationStore) -> None:
    turns = store.active.turns
    assert panel.chat == store.active_name and panel.total == len(turns)
    shown = [r["index"] for r in front.rows]
    if shown:  # a contiguous run of real turns
        assert shown == list(range(shown[0], shown[0] + len(shown))) and shown[-1] < len(turns)
    else:
        assert not turns
    for r in front.rows:
        expected = [m["content"] for m in turns[r["index"]].messages]
        assert contents([r]) == expected
    assert panel.header.startswith(f"{len(turns):,} turn")
    assert not panel.status.get("error")  # no error, no emergency redraw


# per event: every store event is sent as it comes; bursting: after 3 quick events the panel
# goes quiet, and what it shows once the burst is flushed (the cell's end) must mirror the store
@pytest.mark.parametrize("burst", [(1000, 60.0), (3, 60.0)], ids=["per-event", "bursting"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=_ops)
def test_front_end_mirrors_store(wire, burst, ops):
    store = ConversationStore(model="m")
    store.create("b", switch=False)
    panel = HistoryPanel(store, page_size=3, burst=burst)
    front = Front(panel, wire)
    try:
        counter = 0
        for op, arg in ops:
            n = len(store.active.turns)
            if op == "commit":  # arg picks a cell id: re-runs replace / rewind
                store.commit(make_turn(counter, cell=f"c{arg}"))
                counter += 1
            elif op == "edit" and arg < n:
                store.edit(arg, f"edit {counter}")
                counter += 1
            elif op == "delete" and arg < n:
                store.delete(arg)
            elif op == "panel-delete" and arg < n:
                act(panel, "delete", arg)
            elif op == "truncate" and arg <= n:
                store.truncate(arg)
            elif op == "reset":
                store.reset()
            elif op == "undo":
                store.undo()
            elif op == "switch":
                store.switch(["default", "b"][arg])
            if not panel.dirty:
                _mirrors(panel, front, store)
        panel.flush()
        assert not panel.dirty
        _mirrors(panel, front, store)
    finally:
        panel.close()


# -- stale turns (issue #16 point 4) -----------------------------------------------------------

class Counted:
    """A value that counts how often it is rendered."""

    renders = 0

    def __init__(self, label: str) -> None:
        self.label = label

    def __str__(self) -> str:
        Counted.renders += 1
        return self.label


def asked_with(i: int, ns: dict[str, Any], cell: str | None = None) -> Turn:
    """A turn whose question interpolated {df} as the magic does (fingerprints of what was sent)."""
    from ollama_magic import context
    from ollama_magic.interpolate import default_renderer, interpolate_refs

    text, used = interpolate_refs("about {df}", ns, default_renderer(8000))
    turn = make_turn(i, cell=cell, question=text)
    return Turn(turn.messages, dataclasses.replace(turn.meta, variables=context.fingerprints(used)))


def test_a_turn_whose_variable_changed_is_marked_stale_and_the_mark_goes_when_its_cell_is_rerun(panels, wire):
    ns: dict[str, Any] = {"df": Counted("rows 1 2 3")}
    store = filled(1)
    store.commit(asked_with(1, ns, cell="cell-df"))
    panel = open_panel(panels, store, namespace=ns)
    front = Front(panel, wire)
    assert [r.get("stale") for r in front.rows] == [None, None]  # what was sent is what it renders now

    ns["df"] = Counted("rows 1 2 3 4")  # the variable changed in an ordinary cell: no event, nothing sent
    assert [r.get("stale") for r in page(panel)] == [None, ["df"]]  # a page/row fetch carries the mark

    store.commit(make_turn(2))  # a store event: the open panel's rows get the mark without a fetch
    assert last(panel, "stale")["marks"] == {front.rows[1]["key"]: ["df"]}
    assert [r.get("stale") for r in front.rows] == [None, ["df"], None]

    store.commit(asked_with(1, ns, cell="cell-df"))  # the cell re-run (rewind): fresh fingerprints
    assert [r["index"] for r in front.rows] == [0, 1]
    assert [r.get("stale") for r in front.rows] == [None, None]
    assert last(panel, "stale")["marks"] == {}
    assert all("stale" not in r for r in page(panel))


def test_stale_marks_are_cheap_and_only_for_turns_that_used_variables(panels, wire):
    ns: dict[str, Any] = {"df": Counted("a")}
    store = filled(30)
    panel = open_panel(panels, store, namespace=ns)
    front = Front(panel, wire)
    Counted.renders = 0
    page(panel)
    store.commit(make_turn(30))
    assert Counted.renders == 0  # no turn used a variable: nothing rendered, no stale message
    assert not [m for m in wire.custom() if m.get("kind") == "stale"]
    store.commit(asked_with(31, ns))
    Counted.renders = 0
    page(panel)
    assert Counted.renders == 1  # one render for the page's one turn with a variable
    ns["df"] = Counted("b")
    page(panel, end=10)  # a page without that turn renders nothing
    assert Counted.renders == 1 and front.rows


def test_the_stale_mark_is_drawn_as_text(panels):
    """panel.js draws the mark with textContent (variable names are user text), never innerHTML."""
    js = (Path(__file__).parent.parent / "ollama_magic" / "panel.js").read_text()
    body = js[js.index("function setStale"):js.index("function openEditor")]
    assert "row.stale.textContent =" in body and "innerHTML" not in body
    assert '"stale: "' in body and '" changed"' in body


# -- bursts: a loop of commits must not flood iopub ------------------------------------------------

def _shell_events() -> Any:
    from IPython.core.events import EventManager, available_events

    return EventManager(None, available_events)  # type: ignore[arg-type]


def _burst_of(n: int, wire: Wire, panels: list[HistoryPanel], **kw: Any) -> tuple[HistoryPanel, Front, int]:
    """An open panel, then `n` commits in one cell: the messages that cost."""
    store = ConversationStore(model="llama3.2")
    events = _shell_events()
    panel = open_panel(panels, store, events=events, **kw)
    front = Front(panel, wire)
    mark = wire.mark()
    for i in range(n):
        store.commit(make_turn(i))
    events.trigger("post_execute")  # the cell ends
    return panel, front, len(wire.since(mark))


def test_a_burst_of_commits_sends_one_bounded_update(panels, wire):
    panel, front, sent = _burst_of(1000, wire, panels)
    assert sent <= 30, sent
    assert not panel.dirty
    fresh = open_panel(panels, panel.store)
    assert panel.header == fresh.header and panel.header.startswith("1,000 turns")
    assert (panel.total, panel.chat, panel.warn) == (fresh.total, fresh.chat, fresh.warn)
    assert [(c["name"], c["turns"]) for c in panel.chats] == [(c["name"], c["turns"]) for c in fresh.chats]
    assert panel.undo_label == "the new turn 1000"  # it still names what Undo undoes
    assert [r["key"] for r in front.rows] == [r["key"] for r in fresh.rows()]  # the last page, as a fresh panel's
    assert [r["index"] for r in front.rows] == list(range(980, 1000))
    # without coalescing the same loop costs a few messages per commit
    _, _, per_event = _burst_of(1000, wire, panels, burst=(10**6, 1.0))
    assert per_event > 1000, per_event


def test_sparse_commits_still_appear_at_once(panels, wire):
    store = filled(3)
    panel = open_panel(panels, store, events=_shell_events())
    front = Front(panel, wire)
    for i in range(3, 8):  # a few turns: each is sent as it comes, no flush needed
        store.commit(make_turn(i))
        assert not panel.dirty and front.rows[-1]["index"] == i and panel.total == i + 1


def test_a_quiet_spell_ends_a_burst_without_a_cell_end(panels, wire):
    store = ConversationStore(model="llama3.2")
    panel = open_panel(panels, store, burst=(3, 0.3))
    front = Front(panel, wire)
    for i in range(10):
        store.commit(make_turn(i))
    assert panel.dirty and panel.total < 10
    time.sleep(0.5)
    store.commit(make_turn(10))  # the next event after a quiet spell catches up first
    assert not panel.dirty and panel.total == 11 and [r["index"] for r in front.rows][-1] == 10


def test_a_burst_outside_a_cell_is_flushed_by_the_event_loop(panels, wire):
    import asyncio

    async def main() -> HistoryPanel:
        store = ConversationStore(model="llama3.2")
        panel = open_panel(panels, store, burst=(3, 0.2))
        for i in range(50):
            store.commit(make_turn(i))
        assert panel.dirty
        for _ in range(100):  # the timer fires once the loop gets control back
            await asyncio.sleep(0.05)
            if not panel.dirty:
                break
        return panel

    panel = asyncio.run(main())
    assert not panel.dirty and panel.total == 50 and panel.header.startswith("50 turns")


def test_close_unregisters_the_cell_end_hook(wire):
    events = _shell_events()
    store = filled(2)
    panel = HistoryPanel(store, events=events)
    assert panel.flush in events.callbacks["post_execute"]
    panel.close()
    assert not events.callbacks["post_execute"]
    events.trigger("post_execute")  # harmless


def test_a_burst_keeps_the_stale_marks(panels, wire):
    ns: dict[str, Any] = {"df": Counted("rows 1 2 3")}
    store = ConversationStore(model="llama3.2")
    events = _shell_events()
    panel = open_panel(panels, store, namespace=ns, events=events)
    front = Front(panel, wire)
    for i in range(25):
        store.commit(make_turn(i))
    store.commit(asked_with(25, ns, cell="cell-df"))
    ns["df"] = Counted("rows 1 2 3 4")
    store.commit(make_turn(26))
    assert panel.dirty
    events.trigger("post_execute")
    assert [r.get("stale") for r in front.rows[-2:]] == [["df"], None]
    assert last(panel, "stale")["marks"] == {front.rows[-2]["key"]: ["df"]}
