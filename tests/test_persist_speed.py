"""Save/load at speed without changing what a file means.

`persist.read` takes a fast path (`_fast_chats`: plain type tests) for a file
whose values already have exactly the schema's types, and hands anything else
to the pydantic schema (`_validated_chats`). These tests hold the two paths to
the same answer, and `save` to writing only what `load` reads.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_magic import persist
from ollama_magic.store import Conversation, ConversationStore, Turn, TurnMeta

_CALL = [{"function": {"name": "add", "arguments": {"a": 1, "b": None}}, "id": "c1"}]


def sample_store() -> ConversationStore:
    """Every kind of turn a store holds: thinking, images, tools, interrupted, edited, no cell."""
    store = ConversationStore(model="m", options={"seed": 1})
    store.set_system("be brief")
    store.commit(Turn.of({"role": "user", "content": "q 漢字"}, {"role": "assistant", "content": "a 😀", "thinking": "t"},
                         TurnMeta(cell_id="c1", model="m", prompt_eval_count=10, eval_count=3, eval_duration=9,
                                  num_ctx=4096, done_reason="stop", variables={"df": "0123abcd", "x!r": "ffee"})))
    store.commit(Turn(({"role": "user", "content": "look", "images": ["aGk="]},
                       {"role": "assistant", "content": "", "thinking": "hm", "tool_calls": _CALL},
                       {"role": "tool", "tool_name": "add", "content": "1"},
                       {"role": "assistant", "content": "one"}), TurnMeta(cell_id="c2", status="interrupted")))
    store.commit(Turn.of({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}))
    store.edit(2, "edited")
    store.create("side")
    store.commit(Turn.of({"role": "user", "content": "s"}, {"role": "assistant", "content": "t"},
                         TurnMeta(cell_id="c1", created=1.5)))
    return store


def state(chats: list[Conversation]) -> str:
    """Chats as JSON with dict keys in their own order (order is what is sent)."""
    return json.dumps([[c.name, c.model, c.system, c.options,
                        [[list(t.messages), t.meta.to_dict()] for t in c.turns]] for c in chats], ensure_ascii=False)


def test_what_save_writes_takes_the_fast_path_and_means_the_same(tmp_path):
    store = sample_store()
    path = persist.save(store, tmp_path / "s.json")
    data = json.loads(path.read_bytes())
    fast = persist._fast_chats(copy.deepcopy(data))
    assert fast is not None, "a file as save writes it must not need the slow path"
    slow, active = persist._validated_chats(copy.deepcopy(data), path)
    assert state(fast) == state(slow) == state(list(store))
    assert active == "side"
    assert persist.read(path)[0] and state(persist.read(path)[0]) == state(list(store))


def test_fast_path_types_are_the_schema_fields():
    assert set(persist._META_TYPES) == set(persist._Meta.model_fields) == set(TurnMeta.__dataclass_fields__)
    assert tuple(persist._META_DEFAULTS) == tuple(TurnMeta.__dataclass_fields__)  # meta_of is positional
    assert persist._TEXT_KEYS | {"images", "tool_calls"} == set(persist._Message.model_fields)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.5, 2.0])
                     | st.sampled_from(["", "x", "ok", "user", "assistant", "tool", "two words"]),
                     lambda inner: st.lists(inner, max_size=2) | st.dictionaries(
                         st.sampled_from(["role", "content", "name", "x"]), inner, max_size=2), max_leaves=4)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fast_path_accepts_only_what_the_schema_accepts_and_builds_the_same(data, tmp_path_factory):
    """Change one value of a saved file (or drop or add a key): whenever the fast
    path accepts the result, the pydantic path accepts it too and builds the same chats."""
    base = persist.dump(sample_store())
    doc = json.loads(json.dumps(base))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["set", "set", "drop", "add"]))
        if action == "set":
            parent[path[-1]] = data.draw(_JSON)
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "role", "content", "meta", "images", "thinking"]))] = data.draw(_JSON)
    if not isinstance(doc.get("chats"), list):
        return
    fast = persist._fast_chats(copy.deepcopy(doc))
    try:
        slow, _ = persist._validated_chats(copy.deepcopy(doc), tmp_path_factory.getbasetemp() / "f.json")
    except persist.FileError:
        assert fast is None, "the fast path accepted a file the schema refuses"
        return
    except Exception:  # (the slow path's own limits are not this test's subject)
        assert fast is None
        return
    if fast is not None:
        assert state(fast) == state(slow)


def test_save_refuses_what_load_would_refuse_and_writes_nothing(tmp_path, monkeypatch):
    store = sample_store()
    path = persist.save(store, tmp_path / "s.json")
    size = path.stat().st_size
    before = path.read_bytes()
    store.commit(Turn.of({"role": "user", "content": "more"}, {"role": "assistant", "content": "x" * 500}))
    monkeypatch.setattr(persist, "MAX_LOAD_BYTES", size + 100)
    with pytest.raises(persist.FileError) as err:
        persist.save(store, path)
    msg = str(err.value)
    assert "\n" not in msg and "limit" in msg and "nothing was written" in msg
    assert path.read_bytes() == before  # the old file stays
    # right at the limit: saved, and read back
    monkeypatch.setattr(persist, "MAX_LOAD_BYTES", len(json.dumps(persist.dump(store), separators=(",", ":")).encode()))
    persist.save(store, path)
    assert state(persist.read(path)[0]) == state(list(store))


def test_save_is_one_line_of_compact_json(tmp_path):
    """The C encoder writes the file (no indent): a 10k-turn chat saves in ~1x json.dumps."""
    path = persist.save(sample_store(), tmp_path / "s.json")
    text = path.read_text(encoding="utf-8")
    assert "\n" not in text and json.loads(text)["format"] == "ollama_magic"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize("where", ["options", "tool arguments"])
def test_fast_path_keeps_the_file_wide_nesting_bound(where):
    """The fast path checks depth only where free-form JSON sits: right at the bound it
    agrees with the walk over the whole file that the schema path does."""
    from ollama_magic.bounds import depth_exceeds

    outcomes = set()
    for depth in range(30, 60):
        data = persist.dump(sample_store())
        if where == "options":
            data["chats"][0]["options"] = {"deep": _nested(depth)}
        else:
            data["chats"][0]["turns"][1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"a": _nested(depth)}
        data = json.loads(json.dumps(data))
        too_deep = depth_exceeds(data)
        fast = persist._fast_chats(copy.deepcopy(data))
        assert (fast is not None) == (not too_deep), depth
        outcomes.add(too_deep)
    assert outcomes == {True, False}  # the bound was crossed within the range


def test_a_value_that_contains_itself_is_refused_and_the_old_file_kept(tmp_path):
    """save encodes without json's circular check (it costs ~10%): a cycle, which only code can
    put into a chat, must still end in one clear line, with nothing written."""
    path = tmp_path / "chat.json"
    store = sample_store()
    persist.save(store, path)
    before = path.read_bytes()
    args: dict[str, Any] = {"x": 1}
    args["again"] = args
    store.commit(Turn(({"role": "user", "content": "q"},
                       {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": args}}]},
                       {"role": "tool", "content": "1"}, {"role": "assistant", "content": "a"})))
    with pytest.raises(persist.FileError, match="contains itself or nests too deeply; nothing was written"):
        persist.save(store, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temp file left
