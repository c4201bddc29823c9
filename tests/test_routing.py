"""Which chat a re-run cell goes to: where its turn was asked, not a fork's copy (routing.py).

The store and `routing.target_chat` alone, then the magics in an in-process
shell with cell ids (the real-kernel proof of Restart & Run All is in
test_journal_kernel.py).
"""

from __future__ import annotations

from typing import Any

from conftest import magics_of, run

from ollama_magic import persist
from ollama_magic.routing import asked_in, target_chat
from ollama_magic.store import Conversation, ConversationStore, Turn, TurnMeta


def turn(q: str, cell: str | None = None) -> Turn:
    return Turn.of({"role": "user", "content": q}, {"role": "assistant", "content": f"re: {q}"},
                   TurnMeta(cell_id=cell))


def forked_store() -> ConversationStore:
    """default: c1, c2; what-if (active): a fork of c1, then c3."""
    s = ConversationStore()
    s.commit(turn("first", "c1"))
    s.commit(turn("second", "c2"))
    s.fork("what-if", at=1)
    s.commit(turn("the other way", "c3"))
    return s


def test_a_fork_marks_its_copies_and_they_stay_marked_through_edits_save_and_load(tmp_path):
    s = forked_store()
    assert [t.meta.forked for t in s.get("default").turns] == [False, False]
    assert [t.meta.forked for t in s.get("what-if").turns] == [True, False]
    s.edit(0, "an edited copy", chat="what-if")
    assert s.get("what-if").turns[0].meta.forked  # still the copy of the cell asked in default
    path = tmp_path / "chats.json"
    persist.save(s, path)
    back = ConversationStore()
    persist.load(back, path)
    assert [t.meta.forked for t in back.get("what-if").turns] == [True, False]
    assert back.get("what-if") == s.get("what-if")


def test_a_rerun_goes_where_its_turn_was_asked_and_makes_that_chat_active():
    s = forked_store()
    assert s.active_name == "what-if" and s.get("what-if").find_cell("c1") == 0  # the active chat holds a copy
    assert asked_in(s, "c1") == "default"
    target = target_chat(s, None, "c1")
    assert target.name == "default" and target.activate and not target.create
    assert target.note == "re-run: replaced this cell's turn in chat 'default', active again (was 'what-if')"
    assert s.base_for("c1", chat="default") == 0
    s.commit(turn("first, again", "c1"), chat=target.name, activate=target.activate)
    assert s.active_name == "default"
    assert [t.user["content"] for t in s.get("default").turns] == ["first, again"]
    assert [t.user["content"] for t in s.get("what-if").turns] == ["first", "the other way"]  # untouched
    # The fork's own cell stays in the fork; the active chat holding the cell comes first.
    assert target_chat(s, None, "c3").name == "what-if"
    assert target_chat(ConversationStore(), None, "c1").name == "default"  # nobody holds it: the active chat


def test_explicit_chats_append_mode_and_copies_alone_keep_their_rules():
    s = forked_store()
    target = target_chat(s, "what-if", "c1")  # -c what-if: the chat it names
    assert target.name == "what-if" and s.base_for("c1", chat="what-if") == 0  # it replaces the copy there
    s.commit(turn("first, asked in the fork", "c1"), chat="what-if", activate=True)
    assert not s.get("what-if").turns[0].meta.forked  # asked there now: both chats hold it as asked
    assert asked_in(s, "c1") == "what-if"  # ... and the active one comes first
    assert target_chat(s, None, "c1", rerun="append").name == "what-if" and not target_chat(
        s, None, "c1", rerun="append").activate

    s = forked_store()
    s.reset(chat="default")  # only the fork's copy of c1 is left: no chat holds it as asked
    s.switch("default")
    assert asked_in(s, "c1") is None
    assert target_chat(s, None, "c1").name == "default" and s.base_for("c1", chat="default") == 0  # a new turn
    s.switch("what-if")
    assert target_chat(s, None, "c1").name == "what-if" and s.base_for("c1", chat="what-if") == 0  # replaces it


NOTEBOOK = [("c1", "%%ollama\nfirst question"), ("c2", "%%ollama\nsecond question"),
            ("fork", "%ollama fork what-if --at 1"), ("c3", "%%ollama\nthe other way")]


def chats(ip: Any) -> dict[str, Any]:
    store = magics_of(ip).store
    return {"active": store.active_name,
            "chats": {c.name: [(t.meta.cell_id, t.user["content"]) for t in c.turns] for c in store}}


def test_run_all_again_in_one_kernel_after_a_fork_rebuilds_the_notebook(shell, ollama_server):
    for cid, src in NOTEBOOK:
        assert run(shell, src, cid).success
    before = chats(shell)
    assert before["active"] == "what-if"
    # Re-running the first cell: it goes back to 'default' (not the fork's copy), which is active again.
    assert run(shell, NOTEBOOK[0][1], "c1").success
    assert chats(shell)["active"] == "default"
    assert chats(shell)["chats"]["what-if"] == before["chats"]["what-if"]
    assert [m["content"] for m in ollama_server.last_chat()["messages"]] == ["first question"]
    for cid, src in NOTEBOOK[1:]:  # the rest of Run All: the fork cell makes the fork again
        res = run(shell, src, cid)
        assert res.success, (cid, res.error_in_exec)
    assert chats(shell) == before
    assert [m["content"] for m in ollama_server.last_chat()["messages"] if m["role"] == "user"] == [
        "first question", "the other way"]


def test_a_fork_run_again_marks_copies_a_journal_from_before_the_mark_held_unmarked():
    s = ConversationStore()
    s.commit(turn("first", "c1"))
    s.commit(turn("second", "c2"))
    old_fork = [turn("first", "c1"), turn("the other way", "c3")]  # as restored: no `forked` in the meta
    s.absorb([Conversation("what-if", turns=old_fork)], undoable=False)
    assert asked_in(s, "c1") == "default" and s.get("what-if").find_cell("c1") == 0
    s.switch("what-if")
    assert asked_in(s, "c1") == "what-if"  # unmarked: it counts as asked there (the active chat first)
    s.switch("default")
    s.fork("what-if", at=1)  # Run All re-runs the fork cell
    assert [(t.user["content"], t.meta.forked) for t in s.get("what-if").turns] == [("first", True)]
    assert asked_in(s, "c1") == "default"  # now a copy: the cell goes back to default
    s.undo("what-if")
    assert s.get("what-if").turns[:] == old_fork  # one undo step brings the old fork back as it was
