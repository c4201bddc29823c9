"""The store on its own: no IPython, no server."""

from __future__ import annotations

import json

import pytest

from ollama_magic.store import ConversationStore, Event, StoreError, Turn, TurnMeta


def turn(q: str, a: str = "", cell: str | None = None, **meta) -> Turn:
    return Turn.of({"role": "user", "content": q}, {"role": "assistant", "content": a or f"re: {q}"},
                   TurnMeta(cell_id=cell, **meta))


def contents(store: ConversationStore) -> list[str]:
    return [m["content"] for m in store.active.history()]


def test_history_is_system_then_turns_and_strips_thinking():
    s = ConversationStore()
    s.set_system("be brief")
    s.commit(Turn.of({"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "thinking": "hmm"}))
    assert s.active.history() == [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert s.active.turns[0].reply["thinking"] == "hmm"  # kept for display


def test_prefix_property():
    s = ConversationStore()
    sent = []
    for i in range(5):
        req = s.active.history() + [{"role": "user", "content": f"q{i}"}]
        sent.append(json.dumps(req))
        s.commit(turn(f"q{i}"))
    for a, b in zip(sent, sent[1:]):
        assert b.startswith(a[:-1])


def test_rerun_last_replaces_in_place():
    s = ConversationStore()
    for c in "abc":
        s.commit(turn(c, cell=c))
    done = s.commit(turn("c2", cell="c"))
    assert done.kind == "replaced" and done.index == 2
    assert [t.user["content"] for t in s.active.turns] == ["a", "b", "c2"]


def test_rerun_earlier_rewinds_and_undo_restores():
    s = ConversationStore()
    for c in "abc":
        s.commit(turn(c, cell=c))
    old = list(s.active.turns)
    assert s.base_for("b") == 1
    done = s.commit(turn("b2", cell="b"))
    assert done.kind == "rewound" and done.dropped == 1
    assert [t.user["content"] for t in s.active.turns] == ["a", "b2"]
    assert s.undo()
    assert s.active.turns == old


def test_append_policy_never_replaces():
    s = ConversationStore()
    s.commit(turn("a", cell="x"), rerun="append")
    s.commit(turn("a again", cell="x"), rerun="append")
    assert len(s.active.turns) == 2
    assert s.base_for("x", rerun="append") == 2


def test_events_are_emitted_once_per_change():
    s = ConversationStore()
    seen: list[Event] = []
    unsub = s.subscribe(seen.append)
    s.commit(turn("a", cell="a"))
    s.commit(turn("b", cell="b"))
    s.commit(turn("a2", cell="a"))
    s.edit(0, "edited", part=0)
    s.set_system("sys")
    s.undo()
    s.reset()
    kinds = [e.kind for e in seen]
    assert kinds == ["turn_added", "turn_added", "truncated", "turn_replaced", "edited", "system", "restored", "reset"]
    unsub()
    s.commit(turn("z"))
    assert len(seen) == 8 and s.listener_count == 0


def test_broken_listener_does_not_break_the_store():
    s = ConversationStore()
    s.subscribe(lambda e: 1 / 0)
    s.commit(turn("a"))
    assert len(s.active.turns) == 1


def test_edit_delete_truncate_reset_undo():
    s = ConversationStore()
    for c in "abcd":
        s.commit(turn(c))
    s.edit(1, "B!", part=-1)
    assert s.active.turns[1].reply["content"] == "B!" and s.active.turns[1].meta.edited
    s.delete(0)
    assert [t.user["content"] for t in s.active.turns] == ["b", "c", "d"]
    assert s.truncate(1) == 2
    s.reset()
    assert s.active.turns == []
    assert s.undo() and [t.user["content"] for t in s.active.turns] == ["b"]
    assert s.undo() and [t.user["content"] for t in s.active.turns] == ["b", "c", "d"]
    assert s.undo() and [t.user["content"] for t in s.active.turns] == ["a", "b", "c", "d"]
    assert s.active.turns[1].reply["content"] == "B!"
    assert s.undo()
    assert s.active.turns[1].reply["content"] == "re: b"
    while s.undo():
        pass
    assert s.active.turns == []


def test_undo_is_bounded():
    s = ConversationStore(undo_depth=3)
    for i in range(10):
        s.commit(turn(str(i)))
    assert s.undo_depth() == 3


def test_chats_are_isolated_and_inherit_model_and_options():
    s = ConversationStore(model="m1", options={"seed": 1})
    s.set_system("sys")
    s.commit(turn("a"))
    s.create("other")
    assert s.active_name == "other"
    assert s.active.model == "m1" and s.active.options == {"seed": 1} and s.active.system is None
    assert s.active.history() == []
    with pytest.raises(StoreError):
        s.create("other")
    with pytest.raises(StoreError):
        s.create("two words")
    with pytest.raises(StoreError, match="no chat named"):
        s.switch("missing")


def test_fork_copies_and_shares_nothing():
    s = ConversationStore(model="m")
    s.commit(turn("a"))
    s.commit(turn("b"))
    s.fork("f", at=1)
    assert s.active_name == "f" and [t.user["content"] for t in s.active.turns] == ["a"]
    s.commit(turn("c"))
    s.edit(0, "changed", part=0)
    assert [t.user["content"] for t in s.get("default").turns] == ["a", "b"]
    with pytest.raises(StoreError, match="exists already"):
        s.fork("f")
    with pytest.raises(StoreError, match="--at"):
        s.fork("g", at=9)


def test_commit_with_model_system_and_fresh_is_one_undo_step():
    s = ConversationStore(model="m")
    s.commit(turn("a"))
    s.commit(turn("b"), model="m2", system="sys", fresh=True)
    assert s.active.model == "m2" and s.active.system == "sys" and len(s.active.turns) == 1
    s.undo()
    assert s.active.model == "m" and s.active.system is None and len(s.active.turns) == 1
    assert s.active.turns[0].user["content"] == "a"


def test_turn_shape_is_checked():
    with pytest.raises(StoreError):
        Turn(({"role": "assistant", "content": "x"},))
