"""The store on its own: no IPython, no server."""

from __future__ import annotations

import json

import pytest

from ollama_magic.store import Conversation, ConversationStore, Event, StoreError, Turn, TurnMeta


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
        s.fork("f")  # f starts with a changed copy of "a": another chat, kept
    with pytest.raises(StoreError, match="--at"):
        s.fork("g", at=9)


def test_the_same_fork_run_again_becomes_that_fork_again_undoably():
    s = ConversationStore(model="m")
    s.commit(turn("a"))
    s.commit(turn("b"))
    s.fork("f", at=1)
    s.commit(turn("c"))
    kept = s.get("f").turns[0]
    s.switch("default")
    again = s.fork("f", at=1)  # Run All re-runs the fork cell: f starts with exactly that turn
    assert again is s.get("f") and s.active_name == "f"
    assert [t.user["content"] for t in again.turns] == ["a"] and again.turns[0] is kept
    s.undo()
    assert [t.user["content"] for t in s.get("f").turns] == ["a", "c"]
    for name, at in (("default", 1), ("f", 0)):  # onto its own source, or an empty fork: no evidence
        with pytest.raises(StoreError, match="exists already"):
            s.fork(name, at=at, chat="default")
    s.switch("default")
    s.commit(turn("d"))
    with pytest.raises(StoreError, match="exists already"):
        s.fork("f", at=2)  # f does not start with a, b


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


def _many(n: int, prefix: str = "old") -> list[Turn]:
    return [Turn.of({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}", "thinking": "t"},
                    TurnMeta(cell_id=f"{prefix}-{i}", prompt_eval_count=i, eval_count=1)) for i in range(n)]


def test_turn_path_does_not_grow_with_the_chat():
    """commit, base_for and find_cell at 50,000 turns cost what they cost at 10 (no scans).

    Minimum of many runs on each size, with a wide margin: a scan of 50,000
    turns is ~1,000x the O(1) path, so this holds on a busy machine too.
    """
    import time

    def cost(n: int) -> float:
        s = ConversationStore(model="m")
        s.absorb([Conversation("big", "m", turns=_many(n))], "big")
        conv = s.active
        best = 1.0
        for k in range(200):
            turn = Turn.of({"role": "user", "content": "new"}, {"role": "assistant", "content": "r"},
                           TurnMeta(cell_id=f"new-{k}", prompt_eval_count=n + k))
            t0 = time.perf_counter()
            s.base_for(f"new-{k}")
            s.commit(turn)
            conv.find_cell(f"old-{n // 2}")
            _ = conv.max_prompt, conv.context_tokens, conv.edited
            best = min(best, time.perf_counter() - t0)
        assert conv.find_cell("new-199") == n + 199 and conv.max_prompt == n + 199
        # re-running a cell from the middle rewinds to it, and the index follows
        s.commit(Turn.of({"role": "user", "content": "again"}, {"role": "assistant", "content": "r"},
                         TurnMeta(cell_id=f"old-{n // 2}")))
        assert len(conv.turns) == n // 2 + 1 and conv.find_cell("new-0") is None
        assert s.undo() and len(conv.turns) == n + 200 and conv.find_cell("new-0") == n
        return best

    small, big = cost(10), cost(50_000)
    assert big < 20 * small + 0.0005, (small, big)


def test_history_is_the_cached_wire_list():
    """history(k) is the first k turns' wire messages (thinking left out), whatever k."""
    s = ConversationStore(model="m")
    s.absorb([Conversation("c", "m", "sys", turns=_many(5))], "c")
    conv = s.active
    full = conv.history()
    assert full[0] == {"role": "system", "content": "sys"} and len(full) == 11
    assert all("thinking" not in m for m in full)
    assert all("thinking" in t.reply for t in conv.turns)  # kept in the store for display
    for k in range(-6, 8):
        assert conv.history(k, system=None) == [m for t in list(conv.turns)[:k] for m in t.sent()]
    full.append({"role": "user", "content": "mutating the result"})
    assert len(conv.history()) == 11  # callers get their own list


def test_turns_are_read_only():
    s = ConversationStore()
    with pytest.raises((AttributeError, TypeError)):
        s.active.turns.append(_many(1)[0])  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        s.active.turns = []  # type: ignore[misc]


def test_meta_to_dict_and_meta_of_follow_the_dataclass_fields():
    """`TurnMeta.to_dict` is spelled out and `meta_of` is positional: both are held to `fields()`."""
    from dataclasses import fields

    from ollama_magic.store import meta_of

    names = [f.name for f in fields(TurnMeta)]
    meta = TurnMeta(*(f"value-{i}" for i in range(len(names))))  # every field a different value
    assert list(meta.to_dict()) == names
    assert meta.to_dict() == {name: getattr(meta, name) for name in names}
    again = meta_of(meta.to_dict().values())
    assert again == meta and type(again) is TurnMeta
    with pytest.raises(ValueError):
        meta_of(list(meta.to_dict().values())[:-1])  # a value short is an error, not a half-built meta
