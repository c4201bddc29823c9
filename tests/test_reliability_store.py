"""Store invariants under any sequence of operations (hypothesis state machines).

`StoreMachine` drives a `ConversationStore` directly: commits (append,
replace by cell id, rewind, fresh, tool exchanges, interrupted replies),
deletes, edits, truncates, resets, chats created, switched, forked and
removed, settings, undo, and save/load through real files. After every step:

* each chat's messages are: an optional system message, then turns of
  user, any tool exchange (assistant tool_calls + tool answers), reply;
* what is sent (`history()`) is exactly what is stored, minus thinking;
* every change emits an event and no-op emits none;
* undo restores the state before the last change exactly (bounded stack);
* save -> load round-trips byte for byte;
* the cell-id index and the cached figures (`find_cell`, `cell_ids`,
  `max_prompt`, `context_tokens`, `edited`, `generated_tokens`) equal a
  fresh scan of the turns, whatever happened before (`check_index`).

`MagicsMachine` does a smaller version through `%%ollama` / `%ollama` and the
test server, with failed and interrupted requests in between.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import deque
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from IPython.core.error import UsageError

from conftest import magics_of, run
from ollama_magic import digest, persist, window
from ollama_magic.routing import target_chat
from ollama_magic.store import Conversation, ConversationStore, Event, StoreError, Turn, TurnMeta

UNDO_DEPTH = 4  # small, so that the bound is reached
NAMES = ["default", "a", "b", "two words", ""]
CELLS = [None, "c1", "c2", "c3"]


def chat_state(conv: Conversation) -> str:
    turns = [[list(t.messages), asdict(t.meta)] for t in conv.turns]
    return json.dumps([conv.model, conv.system, conv.options, turns], sort_keys=False)


def roles(messages: list[dict[str, Any]]) -> str:
    code = {"system": "s", "user": "u", "tool": "t"}
    return "".join(code.get(m["role"]) or ("c" if m.get("tool_calls") else "a") for m in messages)


_SHAPE = re.compile(r"s?(u(ct+)*a)*")


def check_invariants(store: ConversationStore) -> None:
    assert store.active_name in store.names
    for conv in store:
        sent = conv.history()
        assert _SHAPE.fullmatch(roles(sent)), roles(sent)
        assert (sent[:1] == [{"role": "system", "content": conv.system}]) == bool(conv.system)
        expected = ([{"role": "system", "content": conv.system}] if conv.system else []) + [
            {k: v for k, v in m.items() if k != "thinking"} for t in conv.turns for m in t.messages]
        assert json.dumps(sent) == json.dumps(expected)
        for i in range(len(conv.turns) + 1):  # what turn i+1 sends starts with what turn i sent
            assert conv.history(i) == sent[:len(conv.history(i))]
        check_index(conv)


def check_index(conv: Conversation) -> None:
    """The store's index and cached figures are what a scan of the turns gives."""
    fresh: dict[str, list[int]] = {}
    for i, t in enumerate(conv.turns):
        if t.meta.cell_id:
            fresh.setdefault(t.meta.cell_id, []).append(i)
    assert conv.cell_ids() == fresh
    for cid in [*CELLS, "c-none", ""]:
        assert conv.find_cell(cid) == (fresh[cid][-1] if cid in fresh else None), cid
    assert conv.max_prompt == max((t.meta.prompt_eval_count or 0 for t in conv.turns), default=0)
    assert conv.context_tokens == next((t.meta.prompt_eval_count + (t.meta.eval_count or 0)
                                        for t in reversed(conv.turns) if t.meta.prompt_eval_count is not None), 0)
    assert conv.edited == any(t.meta.edited for t in conv.turns)
    assert conv.generated_tokens == sum(t.meta.eval_count or 0 for t in conv.turns)
    assert conv.turns_with_variables() == [i for i, t in enumerate(conv.turns) if t.meta.variables]
    for k in range(len(conv.turns) + 1):
        assert conv.turns_with_variables(k) == [i for i, t in enumerate(conv.turns[:k]) if t.meta.variables]
    # The cached history digests (journal request keys) are those of the history as it is now.
    n = len(conv.turns)
    for k in sorted({n // 2, n, max(n - 1, 0)}):
        assert conv.chain(k) == digest.chain(digest.SEED, conv.history(k, system=None)), k
        # The request view and the O(1) size figures are those of the history too.
        for system in (None, "sys prompt"):
            hist = conv.history(k, system=system)
            assert conv.wire(k, system=system) == hist and list(conv.wire(k, system=system)) == hist, k
            assert window.estimate_history(conv, k, system) == window.estimate(hist), k


class StoreMachine(RuleBasedStateMachine):
    """The store alone, with a model of its undo stacks."""

    def __init__(self) -> None:
        super().__init__()
        self.store = ConversationStore(model="m1", undo_depth=UNDO_DEPTH)
        self.events: list[Event] = []
        self.store.subscribe(self.events.append)
        # The undo model: per chat, the states before each change (None: "did not exist").
        self.undo: dict[str, deque[str | None]] = {}
        self.counter = 0
        self.dir = Path(tempfile.mkdtemp(prefix="ollama-magic-sm-"))
        self.files: list[tuple[Path, str]] = []  # saved files and their dump
        # Requests in flight: a view of a chat's history and the history it was made from.
        self.views: deque[tuple[Any, list[dict[str, Any]]]] = deque(maxlen=4)

    def teardown(self) -> None:
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()

    # -- helpers ---------------------------------------------------------------
    def states(self) -> dict[str, str]:
        return {conv.name: chat_state(conv) for conv in self.store}

    def push(self, name: str, state: str | None) -> None:
        self.undo.setdefault(name, deque(maxlen=UNDO_DEPTH)).append(state)

    def mutate(self, fn: Any, *, pushes: bool = True, step: bool = False) -> Any:
        """Run one store operation; a StoreError must change nothing at all.

        `step`: the operation is an undo step even when it changes nothing (a load).
        """
        before, active, names = self.states(), self.store.active_name, self.store.names
        self.events.clear()
        try:
            result = fn()
        except StoreError as exc:
            assert "\n" not in str(exc)
            assert (self.states(), self.store.active_name, self.store.names) == (before, active, names)
            assert self.events == []
            return exc
        after = self.states()
        changed = [n for n in before if n in after and after[n] != before[n]]
        if pushes:
            for name in changed:
                self.push(name, before[name])
        if changed or after.keys() != before.keys():
            assert self.events, "a change without an event"
        elif self.store.active_name == active and not step:
            assert self.events == [], f"events without a change: {self.events}"
        return result

    def turn(self, *, cell: str | None, tools: int, thinking: bool, status: str, empty: bool) -> Turn:
        self.counter += 1
        n = self.counter
        msgs: list[dict[str, Any]] = [{"role": "user", "content": f"q{n} 漢字"}]
        for k in range(tools):
            ask: dict[str, Any] = {"role": "assistant", "content": ""}
            if thinking:  # thinking before a tool call is stored too, and never resent either
                ask["thinking"] = f"need add {k}"
            ask["tool_calls"] = [{"function": {"name": "add", "arguments": {"a": n, "b": k}}}]
            msgs.append(ask)
            msgs.append({"role": "tool", "tool_name": "add", "content": str(n + k)})
        reply: dict[str, Any] = {"role": "assistant", "content": "" if empty else f"a{n} 😀"}
        if thinking:
            reply["thinking"] = f"hmm {n}"
        msgs.append(reply)
        # An interrupted reply has no final chunk, so no prompt count (context_tokens looks past it).
        prompt = None if status == "interrupted" else n
        return Turn(tuple(msgs), TurnMeta(cell_id=cell, model="m1", created=float(n), status=status,  # type: ignore[arg-type]
                                          prompt_eval_count=prompt, eval_count=2 if prompt else None,
                                          variables={"x": f"v{n % 2}"} if n % 3 == 0 else None))

    def chat(self, data: st.DataObject) -> str:
        # Mostly the active chat, where the turns pile up.
        return data.draw(st.sampled_from([self.store.active_name] * 3 + self.store.names))

    def index(self, data: st.DataObject, conv: Conversation) -> int:
        n = len(conv.turns)
        return data.draw(st.integers(0, n - 1) if n and data.draw(st.integers(0, 4)) else st.integers(-1, n + 1))

    # -- rules -----------------------------------------------------------------
    _COMMIT = dict(data=st.data(), cell=st.sampled_from(CELLS), rerun=st.sampled_from(["rewind", "rewind", "append"]),
                   model=st.sampled_from([None, None, "m1", "m2"]),
                   system=st.sampled_from(["KEEP", "KEEP", "KEEP", None, "", "be brief"]),
                   fresh=st.sampled_from([False] * 5 + [True]), tools=st.sampled_from([0, 0, 1, 2]),
                   thinking=st.booleans(),
                   outcome=st.sampled_from(["ok", "ok", "ok", "interrupted", "interrupted_empty", "failed"]))

    @rule(**_COMMIT)
    def commit(self, **kwargs: Any) -> None:
        self._commit(**kwargs)

    @rule(**_COMMIT)
    def commit_more(self, **kwargs: Any) -> None:  # turns are what everything else works on
        self._commit(**kwargs)

    def _commit(self, data: st.DataObject, cell: str | None, rerun: str, model: str | None, system: str | None,
                fresh: bool, tools: int, thinking: bool, outcome: str) -> None:
        from ollama_magic.store import KEEP

        name = self.chat(data)
        conv = self.store.get(name)
        if outcome == "failed":  # a failed request never reaches the store
            return
        t = self.turn(cell=cell, tools=0 if outcome != "ok" else tools, thinking=thinking,
                      status="ok" if outcome == "ok" else "interrupted", empty=outcome == "interrupted_empty")
        old = list(conv.turns)
        idx = None if fresh or rerun == "append" else conv.find_cell(cell)
        before = chat_state(conv)
        done = self.mutate(lambda: self.store.commit(t, chat=name, rerun=rerun, model=model,  # type: ignore[arg-type]
                                                     system=KEEP if system == "KEEP" else system, fresh=fresh),
                           pushes=False)
        self.push(name, before)  # a commit is always one undo step
        expect = [t] if fresh else old + [t] if idx is None else old[:idx] + [t]
        assert conv.turns == expect
        assert done.index == len(expect) - 1 and done.dropped == (0 if idx is None else len(old) - idx - 1)
        if model:
            assert conv.model == model
        if system != "KEEP":
            assert conv.system == (system or None)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        conv = self.store.get(self.chat(data))
        index = self.index(data, conv)
        old = list(conv.turns)
        if not isinstance(self.mutate(lambda: self.store.delete(index, chat=conv.name)), StoreError):
            assert conv.turns == old[:index] + old[index + 1:]

    @rule(data=st.data(), part=st.sampled_from([0, -1, -1, 1, 2, 9]),
          content=st.sampled_from(["edited", "", "a1 😀", "<b>x</b>"]))
    def edit(self, data: st.DataObject, part: int, content: str) -> None:
        conv = self.store.get(self.chat(data))
        index = self.index(data, conv)
        old = list(conv.turns)
        if not isinstance(self.mutate(lambda: self.store.edit(index, content, part=part, chat=conv.name)), StoreError):
            new = conv.turns[index]
            assert new.messages[part]["content"] == content
            assert {k: v for k, v in new.messages[part].items() if k != "content"} == {
                k: v for k, v in old[index].messages[part].items() if k != "content"}

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        conv = self.store.get(self.chat(data))
        keep = self.index(data, conv)
        old = list(conv.turns)
        if not isinstance(self.mutate(lambda: self.store.truncate(keep, chat=conv.name)), StoreError):
            assert conv.turns == old[:keep]

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        conv = self.store.get(self.chat(data))
        self.mutate(lambda: self.store.reset(chat=conv.name))
        assert conv.turns == []

    @rule(data=st.data(), text=st.sampled_from([None, "", "sys", "other"]))
    def set_system(self, data: st.DataObject, text: str | None) -> None:
        name = self.chat(data)
        self.mutate(lambda: self.store.set_system(text, chat=name))

    @rule(data=st.data(), model=st.sampled_from([None, "m1", "m2"]))
    def set_model(self, data: st.DataObject, model: str | None) -> None:
        name = self.chat(data)
        self.mutate(lambda: self.store.set_model(model, chat=name))

    @rule(data=st.data(), options=st.sampled_from([{}, {"num_ctx": 8192}, {"stop": ["x"], "seed": 1}]))
    def set_options(self, data: st.DataObject, options: dict[str, Any]) -> None:
        name = self.chat(data)
        self.mutate(lambda: self.store.set_options(options, chat=name))

    @rule(name=st.sampled_from(NAMES), switch=st.booleans())
    def create(self, name: str, switch: bool) -> None:
        base = self.store.active
        if not isinstance(self.mutate(lambda: self.store.create(name, switch=switch)), StoreError):
            new = self.store.get(name)
            assert (new.model, new.options, new.system, new.turns) == (base.model, base.options, None, [])
            assert self.store.active_name == (name if switch else base.name)
            assert not self.store.can_undo(name)

    @rule(name=st.sampled_from(NAMES))
    def switch(self, name: str) -> None:
        if not isinstance(self.mutate(lambda: self.store.switch(name)), StoreError):
            assert self.store.active_name == name

    @rule(data=st.data(), new=st.sampled_from(NAMES), at=st.sampled_from([None, 0, 1, 2, 7]))
    def fork(self, data: st.DataObject, new: str, at: int | None) -> None:
        src = self.store.get(self.chat(data))
        existed = new in self.store
        if not isinstance(self.mutate(lambda: self.store.fork(new, at=at, chat=src.name)), StoreError):
            copy = self.store.get(new)
            # The same turns, marked as a fork's copies (a chat forked again keeps its own marks).
            assert [replace(t.meta, forked=False) for t in copy.turns] == [replace(t.meta, forked=False) for t in src.turns[:at]]
            assert [t.messages for t in copy.turns] == [t.messages for t in src.turns[:at]]
            assert existed or all(t.meta.forked for t in copy.turns)
            assert copy.system == src.system and copy.model == src.model
            assert self.store.active_name == new and not self.store.can_undo(new)
            if copy.turns:  # independent: editing the copy leaves the source alone
                before = chat_state(src)
                self.mutate(lambda: self.store.edit(0, "only in the fork", chat=new))
                assert chat_state(src) == before

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        name = self.chat(data)
        if not isinstance(self.mutate(lambda: self.store.remove(name), pushes=False), StoreError):
            assert name not in self.store
            self.undo.pop(name, None)

    @rule(data=st.data())
    def undo_change(self, data: st.DataObject) -> None:
        name = self.chat(data)
        stack = self.undo.get(name)
        before_names = self.store.names
        if stack and stack[-1] is None and len(before_names) == 1:
            # Undoing the load that created the only chat would leave no chat at all:
            # refused, quietly (False) or loudly (StoreError), and nothing changes.
            before = self.states()
            try:
                assert self.store.undo(name) is False
            except StoreError:
                pass
            assert self.states() == before and self.store.names == before_names
            if self.store.undo_depth(name) < len(stack):  # the refused step may be dropped
                stack.pop()
            return
        self.events.clear()
        done = self.store.undo(name)
        assert done == bool(stack)
        if not stack:
            assert self.events == []
            return
        expected = stack.pop()
        if expected is None:  # the chat came from a load: undo removes it again
            assert name not in self.store
            assert self.store.names == [n for n in before_names if n != name]
            del self.undo[name]
        else:
            assert chat_state(self.store.get(name)) == expected
        assert self.events

    @rule()
    def save_and_load_back(self) -> None:
        path = self.dir / f"s{len(self.files)}.json"
        dumped = json.dumps(persist.dump(self.store), ensure_ascii=False)
        history = {c.name: json.dumps(c.history()) for c in self.store}
        persist.save(self.store, path)
        self.files.append((path, dumped))
        # Into a fresh store: the same chats, byte for byte.
        fresh = ConversationStore()
        persist.load(fresh, path)
        if "default" not in self.store:  # a fresh store always has it; it is not in the file
            fresh.remove("default")
        assert {c.name: json.dumps(c.history()) for c in fresh} == history
        if fresh.names == self.store.names:  # (a fresh store lists "default" first)
            assert json.dumps(persist.dump(fresh), ensure_ascii=False) == dumped
            again = self.dir / "again.json"
            persist.save(fresh, again)
            assert again.read_bytes() == path.read_bytes()
        else:
            assert sorted(map(json.dumps, persist.dump(fresh)["chats"])) == sorted(
                map(json.dumps, json.loads(dumped)["chats"]))
        # Into this store: nothing changes, but each chat gets an undo step.
        before = self.states()
        self.mutate(lambda: persist.load(self.store, path), pushes=False, step=True)
        assert self.states() == before
        for name in before:
            self.push(name, before[name])

    @rule(name=st.sampled_from(["default", "a", "b", "loaded"]), turns=st.integers(0, 2), active=st.booleans())
    def load_file_with_one_chat(self, name: str, turns: int, active: bool) -> None:
        other = ConversationStore(model="m3", undo_depth=UNDO_DEPTH)
        if name != "default":
            other.create(name)
        for _ in range(turns):
            other.commit(self.turn(cell=None, tools=1, thinking=True, status="ok", empty=False), chat=name)
        other.set_system("from a file", chat=name)
        data = persist.dump(other)
        data["chats"] = [c for c in data["chats"] if c["name"] == name]
        data["active"] = name if active else self.store.active_name
        path = self.dir / "one.json"
        path.write_text(json.dumps(data))
        before, was_active = self.states(), self.store.active_name
        self.mutate(lambda: persist.load(self.store, path), pushes=False, step=True)
        self.push(name, before.get(name))
        assert chat_state(self.store.get(name)) == chat_state(other.get(name))
        assert self.store.active_name == (name if active else was_active)

    @rule(data=st.data(), turns=st.integers(0, 3), cell=st.sampled_from(CELLS))
    def restore_without_undo(self, data: st.DataObject, turns: int, cell: str | None) -> None:
        """A journal restore: the chat is replaced through the store, no undo step (older ones go)."""
        name = self.chat(data)
        conv = Conversation(name, "m2", "restored", {"seed": 3},
                            [self.turn(cell=cell, tools=0, thinking=False, status="ok", empty=False)
                             for _ in range(turns)])
        expect = chat_state(conv)
        self.mutate(lambda: self.store.absorb([conv], undoable=False), pushes=False, step=True)
        assert chat_state(self.store.get(name)) == expect
        assert not self.store.can_undo(name)
        self.undo.pop(name, None)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def load_earlier_file(self, data: st.DataObject) -> None:
        path, dumped = data.draw(st.sampled_from(self.files))
        saved = json.loads(dumped)
        before = self.states()
        self.mutate(lambda: persist.load(self.store, path), pushes=False, step=True)
        now = {c["name"]: c for c in persist.dump(self.store)["chats"]}
        for chat in saved["chats"]:
            self.push(chat["name"], before.get(chat["name"]))
            assert json.dumps(now[chat["name"]], ensure_ascii=False) == json.dumps(chat, ensure_ascii=False)
        assert self.store.active_name == saved["active"]
        for name in set(before) - {c["name"] for c in saved["chats"]}:
            assert self.states()[name] == before[name]

    @rule(data=st.data(), extra=st.booleans())
    def make_request(self, data: st.DataObject, extra: bool) -> None:
        """A request's view of the history, kept while other rules change the chat."""
        conv = self.store.get(self.chat(data))
        k = data.draw(st.integers(0, len(conv.turns)))
        view = conv.wire(k)
        hist = conv.history(k)
        if extra:  # the tool loop's `base + exchange`
            view = view + [{"role": "tool", "content": "t"}]
            hist = [*hist, {"role": "tool", "content": "t"}]
        self.views.append((view, hist))

    # -- invariants ------------------------------------------------------------
    @invariant()
    def consistent(self) -> None:
        check_invariants(self.store)
        for view, hist in self.views:  # a request reads what it was made with, whatever happened since
            assert list(view) == hist and len(view) == len(hist)
            assert [view[i] for i in range(-len(hist), len(hist))] == hist + hist
            assert view[1:-1] == hist[1:-1] and view[::2] == hist[::2]
        for name in self.store.names:
            assert self.store.undo_depth(name) == len(self.undo.get(name, ())), name


def test_store_state_machine() -> None:
    run_state_machine_as_test(StoreMachine, settings=settings(
        max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))


def test_undo_never_removes_the_last_chat() -> None:
    store = ConversationStore()
    store.absorb([Conversation("x")])  # what %ollama load does
    store.remove("default")
    try:
        assert store.undo("x") is False
    except StoreError:  # refusing loudly is as good
        pass
    assert store.names == ["x"] and store.active_name == "x"
    check_invariants(store)


# -- through the magics ------------------------------------------------------------------
def _wire(msg: dict[str, Any]) -> dict[str, Any]:
    """A message as the ollama client puts it on the wire: empty values are dropped."""
    return {k: v for k, v in msg.items() if v}


FAULTS = {"http_500": {"status": 500}, "error_line": {"error_after": 2}, "cut": {"drop_after": 2},
          "garbage": {"garbage_line": True}, "no_done": {"no_done": True}, "empty": {"empty_body": True}}


def test_magics_state_machine(shell, ollama_server, tmp_path, capsys, monkeypatch):
    from ollama_magic.render import TerminalView

    magics = magics_of(shell)
    ollama_server.reply_tokens = 6

    class MagicsMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            magics.store = ConversationStore(model="llama3.2", undo_depth=UNDO_DEPTH)
            ollama_server.reset()
            ollama_server.reply_tokens = 6
            self.n = 0

        @property
        def store(self) -> ConversationStore:
            return magics.store

        def snapshot(self) -> str:
            return json.dumps([persist.dump(self.store), {n: self.store.undo_depth(n) for n in self.store.names}])

        @rule(cell=st.sampled_from(CELLS), new=st.sampled_from([False, False, False, True]),
              once=st.sampled_from([False, False, False, True]),
              chat=st.sampled_from([None, None, "side", "default"]),
              system=st.sampled_from([None, None, "'Be brief.'", "''"]), think=st.booleans())
        def ask(self, cell: str | None, new: bool, once: bool, chat: str | None, system: str | None,
                think: bool) -> None:
            self.n += 1
            flags = ("--new " if new else "") + ("--once " if once else "") + (f"-c {chat} " if chat else "") + (
                f"--system {system} " if system is not None else "") + ("-m qwen3 --think" if think else "")  # llama3.2 cannot think
            before = self.snapshot()
            # The chat the turn goes to (routing.py: -c, else the chat holding a re-run cell, else the active one).
            target = target_chat(self.store, chat, None if once else cell, confirmed=new)
            res = run(shell, f"%%ollama {flags}\nquestion {self.n}", cell_id=cell)
            assert res.success, res.error_in_exec
            conv = target.conv if once else self.store.get(target.name)
            sent = ollama_server.last_chat()["messages"]
            assert sent[-1] == {"role": "user", "content": f"question {self.n}"}
            if once:  # asked with the whole history, stored nothing
                assert self.snapshot() == before or chat  # (-c may have created the chat)
                prompt = conv.system if system is None else (system.strip("'") or None)
                upto = 0 if new else len(conv.turns)  # --new: as if the chat were empty
                assert sent[:-1] == [_wire(m) for m in conv.history(upto, system=prompt)]
                return
            idx = next(i for i, t in enumerate(conv.turns) if t.user["content"] == f"question {self.n}")
            assert idx == len(conv.turns) - 1  # the new turn is the last one
            assert sent[:-1] == [_wire(m) for m in conv.history(idx)]
            assert conv.turns[idx].meta.cell_id == cell

        @rule(fault=st.sampled_from(sorted(FAULTS)), cell=st.sampled_from(CELLS))
        def ask_and_fail(self, fault: str, cell: str | None) -> None:
            before = self.snapshot()
            for key, value in FAULTS[fault].items():
                setattr(ollama_server, key, value)
            try:
                res = run(shell, "%%ollama\nthis one fails", cell_id=cell)
            finally:
                ollama_server.reset()
                ollama_server.reply_tokens = 6
            assert type(res.error_in_exec) is UsageError
            assert self.snapshot() == before

        @rule(after=st.integers(0, 4), cell=st.sampled_from(CELLS))
        def ask_and_interrupt(self, after: int, cell: str | None) -> None:
            # Ctrl-C once `after` chunks have arrived (a deterministic stand-in for the signal).
            before = self.snapshot()
            target = target_chat(self.store, None, cell)  # a re-run goes back to the chat holding its turn
            n_turns = len(target.conv.turns)
            update = TerminalView.update

            def interrupted(view: Any, reply: Any) -> None:
                if reply.chunks >= after:
                    raise KeyboardInterrupt
                update(view, reply)

            def interrupted_at_begin(view: Any, reply: Any) -> None:
                raise KeyboardInterrupt

            with monkeypatch.context() as patch:
                if after:
                    patch.setattr(TerminalView, "update", interrupted)
                else:
                    patch.setattr(TerminalView, "begin", interrupted_at_begin)
                res = run(shell, "%%ollama\nthis one is interrupted", cell_id=cell)
            assert isinstance(res.error_in_exec, KeyboardInterrupt)
            conv = self.store.get(target.name)
            if after == 0:  # nothing had arrived: nothing stored
                assert self.snapshot() == before
            else:
                turn = conv.turns[-1]
                assert turn.user["content"] == "this one is interrupted"
                assert turn.meta.status == "interrupted" and turn.meta.cell_id == cell
                # a thinking model (qwen3 after --think) thinks first: those chunks count too
                assert len((turn.reply.get("thinking", "") + " " + turn.reply["content"]).split()) == after
                assert len(conv.turns) <= n_turns + 1

        @rule(line=st.sampled_from(["reset", "undo", "undo", "chat side", "chat default", "fork f{n}",
                                    "fork g{n} --at 1", "chats", "history"]))
        def line_magic(self, line: str) -> None:
            self.n += 1
            res = run(shell, "%ollama " + line.format(n=self.n))
            err = res.error_in_exec
            assert err is None or type(err) is UsageError  # (fork --at 1 of an empty chat)

        @rule()
        def save_and_load(self) -> None:
            path = tmp_path / "chats.json"
            history = {c.name: json.dumps(c.history()) for c in self.store}
            dumped = json.dumps(persist.dump(self.store))
            assert run(shell, f"%ollama save {path}").success
            assert run(shell, f"%ollama load {path}").success
            assert {c.name: json.dumps(c.history()) for c in self.store} == history
            assert json.dumps(persist.dump(self.store)) == dumped

        @rule()
        def delete_last_turn_from_the_panel(self) -> None:
            conv = self.store.active
            if conv.turns:
                self.store.delete(len(conv.turns) - 1)

        @invariant()
        def consistent(self) -> None:
            check_invariants(self.store)
            capsys.readouterr()

    run_state_machine_as_test(MagicsMachine, settings=settings(
        max_examples=15, stateful_step_count=12, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
