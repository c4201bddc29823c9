"""Tests for ollama_magic.widget.HistoryPanel, without a browser.

The panel is driven the way a frontend would drive it: by setting widget
traits (text area values, dropdown values) and clicking buttons.
"""

from __future__ import annotations

import base64
import subprocess
from html.parser import HTMLParser
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets as w
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_magic.store import ConversationStore, StoreError, Turn, TurnMeta
from ollama_magic.widget import HistoryPanel

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


def make_turn(i: int, *, cell: str | None = None, model: str = "llama3.2", prompt: int | None = None,
              tokens: int | None = 10, status: str = "ok", question: str | None = None,
              answer: str | None = None, **reply_extra: Any) -> Turn:
    user = {"role": "user", "content": question if question is not None else f"question {i}"}
    reply = {"role": "assistant", "content": answer if answer is not None else f"answer {i}", **reply_extra}
    meta = TurnMeta(cell_id=cell if cell is not None else f"cell-{i:04d}-abcdef", model=model,
                    prompt_eval_count=prompt if prompt is not None else 20 * (i + 1),
                    eval_count=tokens, status=status)  # type: ignore[arg-type]
    return Turn((user, reply), meta)


def filled(n: int, **kw: Any) -> ConversationStore:
    store = ConversationStore(model="llama3.2", **kw)
    for i in range(n):
        store.commit(make_turn(i))
    return store


def walk(widget: w.Widget) -> Iterator[w.Widget]:
    stack = [widget]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(getattr(x, "children", ()) or ())


def texts(panel: HistoryPanel) -> list[str]:
    return [row.text.value for row in panel.rows]


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


# -- building -------------------------------------------------------------------

def test_one_row_per_message_with_role_model_tokens_cell(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    assert panel.rows_built == 6
    assert texts(panel) == ["question 0", "answer 0", "question 1", "answer 1", "question 2", "answer 2"]
    assert [row.part for row in panel.rows] == [0, 1] * 3
    reply = panel.rows[1]
    assert "llama3.2" in reply.info.value
    assert "10 tokens" in reply.info.value
    assert "cell cell-000" in reply.info.value and "cell-0000-abcdef" not in reply.info.value
    assert "prompt 20 tokens" in panel.rows[0].info.value
    assert [v.index for v in panel.turn_views] == [0, 1, 2]
    assert "Turn 3" in panel.turn_views[2].title.value
    assert panel.header.value.startswith("3 turns · 30 tokens generated")


def test_tool_exchange_gets_a_row_per_message_and_each_is_editable(panels):
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
    assert panel.rows_built == 4
    assert "calls add(" in panel.rows[1].info.value
    tool_row = panel.rows[2]
    tool_row.text.value = "three"
    tool_row.save_button.click()
    assert store.active.turns[0].messages[2]["content"] == "three"
    assert store.active.history()[2] == {"role": "tool", "content": "three", "tool_name": "add"}
    depth = store.undo_depth()
    panel.rows[1].save_button.click()  # empty content, unchanged: no undo step
    assert store.undo_depth() == depth and "no change" in panel.status_text


def test_thinking_is_collapsed_and_interrupted_is_marked(panels):
    store = ConversationStore()
    store.commit(make_turn(0, thinking="let me think", status="interrupted"))
    panel = open_panel(panels, store)
    reply = panel.rows[1]
    assert reply.thinking is not None
    assert reply.thinking.selected_index is None  # collapsed
    assert reply.thinking.children[0].value == "let me think"
    assert reply.interrupted and "⚠ interrupted" in reply.info.value
    assert not panel.rows[0].interrupted and "interrupted" not in panel.rows[0].info.value


def test_textarea_rows_follow_content(panels):
    store = ConversationStore()
    store.commit(make_turn(0, question="one line", answer="\n".join(["x"] * 40)))
    panel = open_panel(panels, store)
    assert panel.rows[0].text.rows == 1
    assert panel.rows[1].text.rows == 12


def test_image_thumbnails(panels):
    store = ConversationStore()
    user = {"role": "user", "content": "what is this?",
            "images": [base64.b64encode(PNG).decode(), "not base64 at all!"]}
    store.commit(Turn((user, {"role": "assistant", "content": "a pixel"}), TurnMeta()))
    panel = open_panel(panels, store)
    row = panel.rows[0]
    assert len(row.images) == 1
    img = row.images[0]
    assert isinstance(img, w.Image)
    assert img.value == PNG and img.format == "png"
    assert img.layout.max_height == "96px"
    notes = [x.value for x in walk(row) if isinstance(x, w.HTML)]
    assert any("(unreadable image)" in n for n in notes)
    assert panel.rows[1].images == []


# -- editing ----------------------------------------------------------------------

def test_edit_message_reaches_history(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    panel.rows[3].text.value = "a better answer"
    panel.rows[3].save_button.click()
    assert store.active.history()[3] == {"role": "assistant", "content": "a better answer"}
    panel.rows[0].text.value = "a better question"
    panel.rows[0].save_button.click()
    assert store.active.history()[0] == {"role": "user", "content": "a better question"}
    assert store.active.turns[0].meta.edited
    assert "edited" in panel.turn_views[0].title.value
    assert texts(panel)[0] == "a better question"


def test_save_without_change_is_a_no_op(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    depth = store.undo_depth()
    panel.rows[1].save_button.click()
    assert store.undo_depth() == depth
    assert "no change" in panel.status_text


def test_edit_rebuilds_only_that_turn(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    before = panel.rows
    built = panel.rows_built
    panel.rows[2].text.value = "edited"
    panel.rows[2].save_button.click()
    after = panel.rows
    assert panel.rows_built == built + 2
    assert after[0] is before[0] and after[1] is before[1]
    assert after[4] is before[4] and after[5] is before[5]
    assert after[2] is not before[2]


def test_delete_turn(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    keep = panel.turn_views[2]
    panel.turn_views[1].delete_button.click()
    assert [t.user["content"] for t in store.active.turns] == ["question 0", "question 2"]
    assert texts(panel) == ["question 0", "answer 0", "question 2", "answer 2"]
    assert panel.turn_views[1] is keep and keep.index == 1
    assert "Turn 2<" in keep.title.value
    assert "deleted turn 2" in panel.status_text


def test_rewind_then_undo_restores(panels):
    store = filled(4)
    panel = open_panel(panels, store)
    first = panel.turn_views[0]
    panel.turn_views[1].rewind_button.click()
    assert len(store.active.turns) == 2
    assert len(panel.rows) == 4
    assert panel.turn_views[0] is first
    panel.undo_button.click()
    assert len(store.active.turns) == 4
    assert texts(panel) == [f"{k} {i}" for i in range(4) for k in ("question", "answer")]
    assert panel.turn_views[0] is first  # unchanged turns keep their widgets


def test_branch_from_here(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    panel.turn_views[1].branch_button.click()
    assert store.active_name == "default-branch-1"
    assert len(store.active.turns) == 2
    assert panel.chat == "default-branch-1"
    assert panel.chat_selector.value == "default-branch-1"
    assert "default-branch-1" in panel.chat_selector.options
    assert len(panel.rows) == 4
    panel.chat_selector.value = "default"
    panel.turn_views[0].branch_button.click()
    assert store.active_name == "default-branch-2"
    assert len(store.active.turns) == 1
    assert len(store.get("default").turns) == 3


def test_system_prompt(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.system_text.value = "Be brief."
    panel.system_save.click()
    assert store.active.history()[0] == {"role": "system", "content": "Be brief."}
    store.set_system("Be verbose.")
    assert panel.system_text.value == "Be verbose."
    panel.system_text.value = ""
    panel.system_save.click()
    assert store.active.system is None
    assert store.active.history()[0]["role"] == "user"


def test_reset_and_undo_buttons(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    panel.reset_button.click()
    assert store.active.turns == [] and panel.rows == []
    assert panel.header.value.startswith("0 turns")
    panel.undo_button.click()
    assert len(store.active.turns) == 3 and len(panel.rows) == 6
    while store.can_undo():
        panel.undo_button.click()
    assert panel.undo_button.disabled
    panel.undo_button.click()  # nothing to undo: says so, no exception
    assert "nothing to undo" in panel.status_text


def test_undo_shares_the_store_stack(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    store.truncate(1)  # e.g. %ollama magic or another panel
    assert len(panel.rows) == 2
    panel.undo_button.click()
    assert len(store.active.turns) == 2 and len(panel.rows) == 4


# -- chats and models -----------------------------------------------------------

def test_chat_switch_via_selector(panels):
    store = filled(2)
    store.create("other", switch=False)
    store.commit(make_turn(9, question="other question"), chat="other")
    panel = open_panel(panels, store)
    assert set(panel.chat_selector.options) == {"default", "other"}
    panel.chat_selector.value = "other"
    assert store.active_name == "other"
    assert texts(panel) == ["other question", "answer 9"]
    store.switch("default")
    assert panel.chat_selector.value == "default"
    assert len(panel.rows) == 4


def test_new_chat_button(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.new_chat_name.value = "ideas"
    panel.new_chat_button.click()
    assert store.active_name == "ideas"
    assert panel.chat == "ideas" and panel.rows == []
    assert "ideas" in panel.chat_selector.options
    assert panel.new_chat_name.value == ""
    panel.new_chat_name.value = "ideas"
    panel.new_chat_button.click()  # exists already: an error line, no exception
    assert panel.status_text.startswith("⚠") and "exists already" in panel.status_text
    panel.new_chat_name.value = "two words"
    panel.new_chat_button.click()
    assert "one word" in panel.status_text
    assert "\n" not in panel.status_text


def test_other_chat_events_only_touch_selector(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    rows, built = panel.rows, panel.rows_built
    store.create("side", switch=False)
    store.commit(make_turn(5), chat="side")
    store.edit(0, "changed", chat="side")
    store.reset(chat="side")
    assert panel.rows == rows and panel.rows_built == built
    assert "side" in panel.chat_selector.options
    store.remove("side")
    assert "side" not in panel.chat_selector.options
    assert panel.chat_selector.value == "default"


def test_removing_the_shown_chat_follows_the_store(panels):
    store = filled(1)
    store.create("gone")
    panel = open_panel(panels, store)
    assert panel.chat == "gone"
    store.remove("gone")
    assert panel.chat == store.active_name == "default"
    assert len(panel.rows) == 2


def test_model_dropdown_when_models_are_known(panels):
    store = filled(1)
    panel = open_panel(panels, store, list_models=lambda: ["qwen3", "gemma3"], default_model=lambda: "qwen3")
    field = panel.model_field
    assert isinstance(field, w.Dropdown)
    values = [v for _, v in field.options]
    assert {"qwen3", "gemma3", "llama3.2"} <= set(values)  # installed plus the current one
    assert field.value == "llama3.2"
    field.value = "gemma3"
    assert store.active.model == "gemma3"
    store.set_model("qwen3")
    assert field.value == "qwen3"
    field.value = ""  # the "(default: ...)" entry
    assert store.active.model is None


def test_model_change_keeps_an_unsaved_system_edit(panels):
    store = filled(1)
    panel = open_panel(panels, store)
    panel.system_text.value = "half typed"
    store.set_model("other")
    store.commit(make_turn(1))
    assert panel.system_text.value == "half typed"


def test_model_text_when_server_unknown(panels):
    store = filled(1)
    panel = open_panel(panels, store, list_models=lambda: None)
    field = panel.model_field
    assert isinstance(field, w.Text) and not isinstance(field, w.Dropdown)
    assert field.value == "llama3.2"
    field.value = "mistral"
    assert store.active.model == "mistral"
    store.set_model("phi4")
    assert field.value == "phi4"


def test_list_models_failure_falls_back_to_text(panels):
    def broken() -> list[str]:
        raise ConnectionError("no server")

    panel = open_panel(panels, filled(0), list_models=broken)
    assert isinstance(panel.model_field, w.Text)


def test_header_context_use(panels):
    store = ConversationStore(model="m")
    store.commit(make_turn(0, prompt=3700, tokens=50))
    asked: list[str] = []

    def window(model: str) -> int | None:
        asked.append(model)
        return 8192

    panel = open_panel(panels, store, context_window=window)
    assert "context 3,700 / 8,192 (45%)" in panel.header.value
    store.set_options({"num_ctx": 4000})
    assert "context 3,700 / 4,000 (92%)" in panel.header.value
    assert "near the limit" in panel.header.value
    store.set_options({})
    store.commit(make_turn(1, prompt=4000))
    assert asked == ["m"]  # cached per model
    other = open_panel(panels, store, default_num_ctx=5000)
    assert "/ 5,000" in other.header.value


# -- live updates ---------------------------------------------------------------

def test_commit_adds_exactly_two_rows_and_keeps_old_ones(panels):
    store = filled(5)
    panel = open_panel(panels, store)
    old_rows = panel.rows
    old_views = panel.turn_views
    built = panel.rows_built
    store.commit(make_turn(5))
    assert panel.rows_built == built + 2
    new_rows = panel.rows
    assert len(new_rows) == len(old_rows) + 2
    assert all(a is b for a, b in zip(old_rows, new_rows))
    assert all(a is b for a, b in zip(old_views, panel.turn_views))
    assert texts(panel)[-2:] == ["question 5", "answer 5"]
    assert panel.header.value.startswith("6 turns")


def test_rerun_replaces_only_that_turn(panels):
    store = filled(3)
    panel = open_panel(panels, store)
    views = panel.turn_views
    built = panel.rows_built
    store.commit(make_turn(2, cell="cell-0002-abcdef", answer="new answer"))  # last turn re-run
    assert panel.rows_built == built + 2
    assert panel.turn_views[:2] == views[:2]
    assert texts(panel)[-1] == "new answer"
    store.commit(make_turn(0, cell="cell-0000-abcdef", answer="first again"))  # rewinds
    assert texts(panel) == ["question 0", "first again"]
    assert len(store.active.turns) == 1


def test_fresh_commit_and_load_are_followed(panels, tmp_path: Path):
    from ollama_magic import persist

    store = filled(3)
    panel = open_panel(panels, store)
    persist.save(store, tmp_path / "chats.json")
    store.commit(make_turn(10), fresh=True)  # --new: reset and the new turn, one undo step
    assert texts(panel) == ["question 10", "answer 10"]
    persist.load(store, tmp_path / "chats.json")  # replaces the chat: a "restored" event
    assert texts(panel) == [f"{k} {i}" for i in range(3) for k in ("question", "answer")]
    panel.undo_button.click()
    assert texts(panel) == ["question 10", "answer 10"]


def test_two_panels_stay_in_sync(panels):
    store = filled(2)
    a = open_panel(panels, store)
    b = open_panel(panels, store)
    a.rows[1].text.value = "from panel a"
    a.rows[1].save_button.click()
    assert texts(b)[1] == "from panel a"
    b.turn_views[0].delete_button.click()
    assert texts(a) == texts(b) == ["question 1", "answer 1"]
    store.commit(make_turn(7))
    assert texts(a) == texts(b)
    b.system_text.value = "shared"
    b.system_save.click()
    assert a.system_text.value == "shared"
    a.new_chat_name.value = "x"
    a.new_chat_button.click()
    assert b.chat == "x" and b.rows == []


def test_close_unsubscribes_and_closes_widgets():
    from ipywidgets.widgets.widget import _instances

    store = filled(3)
    listeners = store.listener_count
    widgets = len(_instances)
    for _ in range(100):
        panel = HistoryPanel(store)
        assert store.listener_count == listeners + 1
        panel.close()
    assert store.listener_count == listeners
    assert len(_instances) == widgets  # every child, layout and style closed
    panel.close()  # twice is harmless
    store.commit(make_turn(3))  # a closed panel is not called
    assert store.listener_count == listeners


def test_rows_removed_by_events_are_closed(panels):
    from ipywidgets.widgets.widget import _instances

    store = filled(3)
    _panel = open_panel(panels, store)  # kept open (panels hold weak references)
    widgets = len(_instances)
    store.commit(make_turn(3))
    store.truncate(3)
    store.edit(0, "x")
    store.undo()
    assert len(_instances) == widgets


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_inert_html(value: str) -> None:
    """Only our own markup: span/b tags with style/title attributes, nothing else."""
    for bad in ("<script", "<img", "<iframe", "<svg", "javascript:"):
        assert bad not in value.lower(), value
    parser = _TagCollector()
    parser.feed(value)
    for tag, attrs in parser.tags:
        assert tag in {"b", "span"}, value
        for name, attr_value in attrs:
            assert name in {"style", "title"}, value
            assert "<" not in (attr_value or "") and "alert" not in (attr_value or ""), value


def test_hostile_content_is_plain_text_only(panels):
    store = ConversationStore(model="<b>m</b>")
    call = {"function": {"name": HOSTILE[0], "arguments": {"x": HOSTILE[1]}}}
    for i, bad in enumerate(HOSTILE):
        store.commit(make_turn(i, question=bad, answer=f"reply {bad}", cell=bad, model=bad, thinking=bad,
                               status="interrupted"))
    store.commit(Turn((
        {"role": "user", "content": HOSTILE[0], "images": [HOSTILE[1]]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": HOSTILE[1], "tool_name": HOSTILE[1]},
        {"role": "assistant", "content": "$\\href{javascript:alert(1)}{x}$"},
    ), TurnMeta(model=HOSTILE[0], cell_id="c" + HOSTILE[1])))
    store.set_system(HOSTILE[0])
    store.set_options({"num_ctx": HOSTILE[0]})
    store.create("<script>", switch=False)
    panel = open_panel(panels, store, list_models=lambda: [HOSTILE[0]], default_model=lambda: HOSTILE[1])
    panel.export_path.value = "/nonexistent-dir/<script>alert(1)</script>.md"
    panel.export_button.click()
    assert "<script>alert(1)</script>" in panel.status_text  # the error names the path, as text
    assert texts(panel)[:4] == [HOSTILE[0], f"reply {HOSTILE[0]}", HOSTILE[1], f"reply {HOSTILE[1]}"]
    html_widgets = 0
    shown_as_text = 0
    for x in walk(panel):
        assert not isinstance(x, w.HTMLMath)
        if isinstance(x, w.HTML):
            html_widgets += 1
            assert_inert_html(x.value)
            assert_inert_html(x.description or "")
        if isinstance(x, w.Label):  # Labels are MathJax-typeset: no data may reach one
            raise AssertionError(f"unexpected Label {x.value!r}")
        if isinstance(x, w.Textarea) and ("<script>" in x.value or "<img" in x.value):
            shown_as_text += 1
    assert html_widgets > 10
    assert shown_as_text >= 6  # questions, replies, thinking, tool output, system prompt
    escaped = [x.value for x in walk(panel) if isinstance(x, w.HTML) and "&lt;script&gt;" in x.value]
    assert escaped  # the model name / cell id / tool name are shown, escaped


# -- files and namespace ------------------------------------------------------------

def test_export_writes_markdown(panels, tmp_path: Path):
    store = filled(2)
    panel = open_panel(panels, store)
    target = tmp_path / "chat.md"
    panel.export_path.value = str(target)
    panel.export_button.click()
    text = target.read_text(encoding="utf-8")
    assert "question 1" in text and "answer 1" in text
    assert str(target) in panel.status_text and panel.status_text.startswith("✓")


def test_export_errors_go_to_status(panels, tmp_path: Path):
    panel = open_panel(panels, filled(1))
    panel.export_path.value = str(tmp_path / "missing" / "chat.md")
    panel.export_button.click()
    assert panel.status_text.startswith("⚠") and "does not exist" in panel.status_text
    panel.export_path.value = str(tmp_path)
    panel.export_button.click()
    assert "directory" in panel.status_text


def test_copy_messages_into_namespace(panels):
    store = filled(2)
    store.set_system("sys")
    ns: dict[str, Any] = {}
    panel = open_panel(panels, store, namespace=ns)
    panel.copy_button.click()
    assert ns["messages"] == store.active.messages()
    assert ns["messages"][0] == {"role": "system", "content": "sys"}
    ns["messages"][1]["content"] = "mutated"
    assert store.active.turns[0].user["content"] == "question 0"  # a copy
    panel.copy_var.value = "msgs2"
    panel.copy_button.click()
    assert isinstance(ns["msgs2"], list) and len(ns["msgs2"]) == 5
    panel.copy_var.value = "not a name"
    panel.copy_button.click()
    assert "not a valid variable name" in panel.status_text
    assert "not a name" not in ns


def test_copy_without_namespace_reports(panels):
    panel = open_panel(panels, filled(1))
    panel.copy_button.click()
    assert panel.status_text.startswith("⚠")


def test_no_exception_escapes_a_click(panels, monkeypatch):
    store = filled(2)
    panel = open_panel(panels, store)

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(store, "delete", boom)
    panel.turn_views[0].delete_button.click()
    assert panel.status_text == "⚠ RuntimeError: disk on fire second line"
    monkeypatch.setattr(store, "truncate", lambda *a, **k: (_ for _ in ()).throw(StoreError("nope")))
    panel.turn_views[0].rewind_button.click()
    assert panel.status_text == "⚠ nope"


def test_stale_row_is_reported_not_raised(panels):
    store = filled(2)
    panel = open_panel(panels, store)
    row = panel.rows[0]
    store.delete(0)
    row.text.value = "late edit"
    row.save_button.click()  # the row was removed (and closed) by the event
    assert panel.status_text.startswith("⚠")
    assert store.active.turns[0].user["content"] == "question 1"


# -- scale ----------------------------------------------------------------------------

def test_pagination(panels):
    store = filled(120)
    panel = open_panel(panels, store, page_size=50)
    assert panel.rows_built == 100
    assert panel.first_shown == 70
    assert panel.turn_views[0].index == 70
    assert panel.earlier_button.layout.display != "none"
    assert "Show 50 earlier turns" in panel.earlier_button.description
    panel.earlier_button.click()
    assert len(panel.turn_views) == 100 and panel.first_shown == 20
    assert "Show 20 earlier turns" in panel.earlier_button.description
    panel.earlier_button.click()
    assert len(panel.rows) == 240 and panel.first_shown == 0
    assert panel.earlier_button.layout.display == "none"
    assert texts(panel)[:2] == ["question 0", "answer 0"]
    assert panel.header.value.startswith("120 turns")


def test_pagination_keeps_indices_right(panels):
    store = filled(30)
    panel = open_panel(panels, store, page_size=10)
    store.delete(3)  # not shown: shown turns move up
    assert panel.first_shown == 19
    assert [v.index for v in panel.turn_views] == list(range(19, 29))
    panel.turn_views[0].rewind_button.click()  # keep turns 0..19
    assert len(store.active.turns) == 20
    assert [v.index for v in panel.turn_views] == [19]
    store.truncate(5)  # below the shown window: a page of earlier turns appears
    assert [v.index for v in panel.turn_views] == [0, 1, 2, 3, 4]
    panel.turn_views[2].delete_button.click()
    assert [t.user["content"] for t in store.active.turns] == [f"question {i}" for i in (0, 1, 4, 5)]


def test_thousand_turns_build_only_a_page(panels):
    store = filled(1000)
    panel = open_panel(panels, store)
    assert panel.rows_built == 100
    built = panel.rows_built
    store.commit(make_turn(1000))
    assert panel.rows_built == built + 2


def test_importing_the_package_does_not_import_ipywidgets():
    code = ("import sys, ollama_magic, ollama_magic.store, ollama_magic.persist; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- property: the panel always mirrors the store ---------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 6)),
        st.tuples(st.just("edit"), st.integers(0, 10)),
        st.tuples(st.just("delete"), st.integers(0, 10)),
        st.tuples(st.just("truncate"), st.integers(0, 10)),
        st.tuples(st.just("reset"), st.just(0)),
        st.tuples(st.just("undo"), st.just(0)),
        st.tuples(st.just("switch"), st.integers(0, 1)),
        st.tuples(st.just("earlier"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ops)
def test_panel_mirrors_store(ops):
    store = ConversationStore(model="m")
    store.create("b", switch=False)
    panel = HistoryPanel(store, page_size=3)
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
            elif op == "truncate" and arg <= n:
                store.truncate(arg)
            elif op == "reset":
                store.reset()
            elif op == "undo":
                store.undo()
            elif op == "switch":
                store.switch(["default", "b"][arg])
            elif op == "earlier":
                panel.earlier_button.click()
            turns = store.active.turns
            assert panel.chat == store.active_name
            assert panel.first_shown + len(panel.turn_views) == len(turns)
            for view in panel.turn_views:
                assert view.turn is turns[view.index]
            expected = [m["content"] for t in turns[panel.first_shown:] for m in t.messages]
            assert texts(panel) == expected
            assert panel.header.value.startswith(f"{len(turns):,} turn")
            assert not panel.status_text.startswith("⚠")  # no error, no emergency redraw
    finally:
        panel.close()
