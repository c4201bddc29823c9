"""The journal in one process: settings, sessions, replay rules, concurrency, broken files, secrets.

A "new kernel" here is a reload of the extension with a new `journal.KERNEL`
(what a new process gets); the real-kernel proofs are in test_journal_kernel.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import interrupt_main_after, magics_of, run
from journal_util import locked
from ollama_magic import journal as journal_mod
from ollama_magic.chat import ChatRequest
from ollama_magic.journal import Journal, request_key
from ollama_magic.store import ConversationStore, Turn, TurnMeta


def users(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "journal" / "j.db"  # the folder does not exist yet
    monkeypatch.setenv("OLLAMA_MAGIC_DB", str(path))
    return path


def new_kernel(ip: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, notebook: Path | None,
               *, model: bool = True) -> str:
    """What a kernel restart does to the journal: a new process id, a fresh %load_ext (then a model, a change)."""
    monkeypatch.setattr(journal_mod, "KERNEL", uuid.uuid4().hex)
    if notebook is None:
        monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    else:
        monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    capsys.readouterr()
    ip.run_line_magic("reload_ext", "ollama_magic")
    out = capsys.readouterr()
    if model:
        ip.run_line_magic("ollama", "model llama3.2")
    return out.out + out.err


def turns_of(ip: Any) -> list[str]:
    return [t.user["content"] for t in magics_of(ip).store.active.turns]


# -- settings and keys ---------------------------------------------------------------
def test_default_path_is_in_the_profile_and_env_overrides(shell, monkeypatch):
    monkeypatch.delenv("OLLAMA_MAGIC_DB")
    assert journal_mod.default_path(shell) == os.path.join(shell.profile_dir.location, "ollama_magic.db")
    monkeypatch.setenv("OLLAMA_MAGIC_DB", "/elsewhere/x.db")
    assert journal_mod.default_path(shell) == "/elsewhere/x.db"


def test_session_key_order_and_absolute(shell, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shell.user_ns.pop("__vsc_ipynb_file__", None)
    shell.user_ns["__session__"] = "c.ipynb"
    assert journal_mod.session_key(shell) == (str(tmp_path / "c.ipynb"), True)
    shell.user_ns["__vsc_ipynb_file__"] = "b.ipynb"
    assert journal_mod.session_key(shell) == (str(tmp_path / "b.ipynb"), True)
    monkeypatch.setenv("JPY_SESSION_NAME", "sub/../a.ipynb")
    assert journal_mod.session_key(shell) == (str(tmp_path / "a.ipynb"), True)
    del shell.user_ns["__session__"], shell.user_ns["__vsc_ipynb_file__"]
    monkeypatch.delenv("JPY_SESSION_NAME")
    key, notebook = journal_mod.session_key(shell)
    assert key.startswith("console:") and not notebook


def test_off_writes_nothing(shell, ollama_server, db, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_MAGIC_DB", "")
    shell.run_line_magic("reload_ext", "ollama_magic")
    shell.run_line_magic("ollama", "model llama3.2")
    run(shell, "%%ollama\nhello", "a")
    assert not magics_of(shell).journal.enabled and not db.parent.exists()
    with pytest.raises(UsageError, match="journal is off"):
        shell.run_line_magic("ollama", "sessions")
    shell.run_line_magic("config", f"OllamaMagics.db = {str(db)!r}")  # on again: from the next change
    run(shell, "%%ollama\nagain", "b")
    assert db.exists() and oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"


def test_console_is_journaled_but_not_restored_automatically(shell, ollama_server, db, monkeypatch, capsys):
    new_kernel(shell, monkeypatch, capsys, None)
    run(shell, "%%ollama\nin a console")
    shell.run_line_magic("reload_ext", "ollama_magic")  # same process: same console key
    assert turns_of(shell) == []
    capsys.readouterr()
    shell.run_line_magic("ollama", "restore")
    assert "restored 1 chat, 1 turn from" in capsys.readouterr().out
    assert turns_of(shell) == ["in a console"]


def test_a_new_console_brings_back_an_earlier_consoles_chats_by_its_listed_id(shell, ollama_server, db,
                                                                              monkeypatch, capsys):
    new_kernel(shell, monkeypatch, capsys, None)
    run(shell, "%%ollama\nin the first console")
    first = journal_mod.KERNEL
    new_kernel(shell, monkeypatch, capsys, None)  # a new terminal IPython: its own console, empty
    run(shell, "%%ollama\nin the second console")
    capsys.readouterr()
    shell.run_line_magic("ollama", "sessions")
    listed = capsys.readouterr().out
    assert f"console:{first[:8]}" in listed and first[8:] not in listed
    new_kernel(shell, monkeypatch, capsys, None)
    shell.run_line_magic("ollama", f"restore console:{first[:8]}")
    assert "restored 1 chat, 1 turn from" in capsys.readouterr().out
    assert turns_of(shell) == ["in the first console"]
    with pytest.raises(UsageError, match="no console session starting with 'console:zz'"):
        shell.run_line_magic("ollama", "restore console:zz")
    with pytest.raises(UsageError, match="3 console sessions starting with 'console:'"):
        shell.run_line_magic("ollama", "restore console:")  # the restore is journaled in this third one
    assert turns_of(shell) == ["in the first console"]


# -- restore --------------------------------------------------------------------------
def test_restore_off_and_restore_on_demand_after_a_rename(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    old, new = tmp_path / "old.ipynb", tmp_path / "new.ipynb"
    new_kernel(shell, monkeypatch, capsys, old)
    run(shell, "%%ollama\nasked in old", "a")
    shell.run_line_magic("config", "OllamaMagics.restore = 'off'")
    monkeypatch.setattr(journal_mod, "KERNEL", uuid.uuid4().hex)
    shell.run_line_magic("reload_ext", "ollama_magic")  # the %config stays in the shell's config
    assert turns_of(shell) == []
    shell.config.pop("OllamaMagics", None)
    assert "restored 1 chat, 1 turn" in new_kernel(shell, monkeypatch, capsys, old)
    assert "restored" not in new_kernel(shell, monkeypatch, capsys, new)  # renamed: nothing for it
    shell.run_line_magic("ollama", f"restore {old}")
    assert turns_of(shell) == ["asked in old"]
    # The rename's journal now holds the chats (and replays them, as the old one would).
    assert "restored 1 chat, 1 turn" in new_kernel(shell, monkeypatch, capsys, new)
    ollama_server.reset()
    run(shell, "%%ollama\nasked in old", "a")
    assert ollama_server.chat_requests() == []
    with pytest.raises(UsageError, match="holds nothing for"):
        shell.run_line_magic("ollama", f"restore {tmp_path / 'never.ipynb'}")


def test_restore_keeps_the_cell_index_and_undo(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    for cid in "abc":
        run(shell, f"%%ollama\nq {cid}", cid)
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama --fresh\nq b, better", "b")  # the restored cell id still rewinds
    assert turns_of(shell) == ["q a", "q b, better"]
    assert users(ollama_server.last_chat()) == ["q a", "q b, better"]
    shell.run_line_magic("ollama", "undo")
    assert turns_of(shell) == ["q a", "q b", "q c"]


# -- replay ---------------------------------------------------------------------------
def test_replay_rules(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "r.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama -o seed=1\nsecond", "b")
    ollama_server.token_delay, ollama_server.reply_tokens = 0.05, 200
    timer = interrupt_main_after(0.4)
    try:
        run(shell, "%%ollama\ncut short", "c")
    finally:
        timer.cancel()
    assert magics_of(shell).store.active.turns[-1].meta.status == "interrupted"
    ollama_server.reset()

    new_kernel(shell, monkeypatch, capsys, nb)
    ollama_server.reset()
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama -o seed=2\nsecond", "b")  # another option: another request
    run(shell, "%%ollama\ncut short", "c")  # interrupted turns are never replayed
    asked = [users(b)[-1] for b in ollama_server.chat_requests()]
    assert asked == ["second", "cut short"]
    # replay = False asks always.
    new_kernel(shell, monkeypatch, capsys, nb)
    shell.run_line_magic("config", "OllamaMagics.replay = False")
    ollama_server.reset()
    run(shell, "%%ollama\nfirst", "a")
    assert len(ollama_server.chat_requests()) == 1
    shell.config.pop("OllamaMagics", None)


def test_replayed_turn_renders_like_a_live_one(nb_shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "v.ipynb"
    new_kernel(nb_shell, monkeypatch, capsys, nb)
    run(nb_shell, "%%ollama -m qwen3 --think\nthink about *this*", "a")
    live = nb_shell.display_pub.last_html
    new_kernel(nb_shell, monkeypatch, capsys, nb)
    ollama_server.reset()
    run(nb_shell, "%%ollama -m qwen3 --think\nthink about *this*", "a")
    replayed = nb_shell.display_pub.last_html
    assert ollama_server.chat_requests() == []
    assert "replayed from " in replayed and "--fresh" in replayed
    assert replayed.split("<small>")[0] == live.split("<small>")[0]  # same body, through the same view
    turn = magics_of(nb_shell).store.active.turns[-1]
    assert turn.reply.get("thinking") and turn.meta.eval_count


def test_request_key_covers_the_whole_request():
    base = ChatRequest("m", [{"role": "user", "content": "hi"}])

    def tool_a(x: int) -> int:
        """Double x."""
        return 2 * x

    def tool_b(x: str) -> int:
        """Double x."""
        return 2

    variants = [
        base, ChatRequest("m2", base.messages), ChatRequest("m", [{"role": "user", "content": "hi!"}]),
        ChatRequest("m", base.messages, {"seed": 1}), ChatRequest("m", base.messages, format="json"),
        ChatRequest("m", base.messages, think=True), ChatRequest("m", base.messages, tools={"tool_a": tool_a}),
        ChatRequest("m", [{"role": "user", "content": "hi", "images": ["aGk="]}]),
    ]
    keys = [request_key(r) for r in variants]
    assert len(set(keys)) == len(keys)
    renamed = {"tool_a": tool_b}
    tool_b.__name__ = "tool_a"  # same name, another schema
    assert request_key(ChatRequest("m", base.messages, tools=renamed)) != keys[6]
    assert request_key(ChatRequest("m", list(base.messages), {}, stream=False)) == keys[0]


def _store_with(n: int, system: str | None = None) -> ConversationStore:
    store = ConversationStore(model="m")
    if system:
        store.active.system = system
    for i in range(n):
        store.commit(Turn(({"role": "user", "content": f"q{i}", "images": ["aGk="] if i == 1 else None},
                           {"role": "assistant", "content": f"a{i}"}), TurnMeta(cell_id=f"c{i}")))
    return store


@pytest.mark.parametrize("system", [None, "Be terse."])
def test_request_key_from_the_stores_chain_equals_the_whole_request_hashed(system):
    """The O(1) key (history digest from `Conversation.chain`) is the key of the whole request,
    at every prefix, and stays so through the store's edits, deletes and truncation."""
    store = _store_with(6, system)
    conv = store.active
    user = {"role": "user", "content": "next"}

    def both(base: int) -> tuple[str, str]:
        msgs = conv.history(base)
        req = ChatRequest("m", msgs + [user], {"seed": 1}, think=True)
        lead = 1 if system else 0
        return request_key(req), request_key(req, (lead, len(msgs) - lead, conv.chain(base)))

    keys = set()
    for base in (6, 0, 3, 6, 2):  # out of order: the cached digests must not depend on asking order
        whole, chained = both(base)
        assert whole == chained and whole.startswith(journal_mod.KEY_VERSION)
        keys.add(whole)
    assert len(keys) == 4
    before = both(6)[0]
    store.edit(3, "an edited answer")
    assert both(6)[0] == both(6)[1] != before
    assert both(3)[0] == both(3)[1]
    store.delete(1)
    assert both(5)[0] == both(5)[1]
    store.truncate(2)
    assert both(2)[0] == both(2)[1] == both(99)[0]


def test_request_key_hashes_only_what_is_new(shell, ollama_server, db, monkeypatch, tmp_path):
    """Issue #17 point 3: a turn at 400 stored turns serialises as many messages for its key as at 4."""
    from ollama_magic import digest

    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "k.ipynb"))
    shell.run_line_magic("reload_ext", "ollama_magic")
    shell.run_line_magic("ollama", "model llama3.2")
    calls = []
    real = digest.canonical

    def counting(value: Any) -> bytes:
        calls.append(1)
        return real(value)

    monkeypatch.setattr(digest, "canonical", counting)
    monkeypatch.setattr(journal_mod, "canonical", counting)

    def per_turn(cell: str) -> int:
        calls.clear()
        assert run(shell, f"%%ollama\n{cell}", cell).success
        return len(calls)

    conv = magics_of(shell).store.active
    for i in range(4):
        run(shell, f"%%ollama\nwarm {i}", f"w{i}")
    small = per_turn("at four")
    for i in range(400):  # the history grows without cells: commits as a restore or load would add them
        conv_store = magics_of(shell).store
        conv_store.commit(Turn(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}),
                               TurnMeta(cell_id=f"bulk{i}")))
    assert len(conv.turns) > 400
    per_turn("catch up")  # the first key after the bulk chains those turns once
    assert per_turn("at four hundred") == small <= 6


def test_replies_journaled_with_old_keys_still_replay(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    """Rows written before KEY_VERSION hold the old whole-request hash: still found, and the
    replayed turn is journaled under the new key."""
    nb = tmp_path / "old.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama\nsecond", "b")
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, messages FROM turns ORDER BY id").fetchall()
    history: list[dict[str, Any]] = []
    for rowid, messages in rows:  # rewrite as an old kernel keyed them
        msgs = json.loads(messages)
        req = ChatRequest("llama3.2", history + [msgs[0]])
        conn.execute("UPDATE turns SET request = ? WHERE id = ?", (journal_mod.legacy_request_key(req), rowid))
        history += msgs
    conn.commit()
    conn.close()
    new_kernel(shell, monkeypatch, capsys, nb)
    ollama_server.reset()
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama\nsecond", "b")
    assert ollama_server.chat_requests() == []  # both replayed from the old keys
    conn = sqlite3.connect(db)
    newest = conn.execute("SELECT request FROM turns ORDER BY id DESC LIMIT 1").fetchone()[0]
    conn.close()
    assert newest.startswith(journal_mod.KEY_VERSION)


# -- several notebooks, several writers -------------------------------------------------
def test_two_notebooks_in_one_journal_stay_apart(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    new_kernel(shell, monkeypatch, capsys, a)
    run(shell, "%%ollama\nonly in a", "x")
    new_kernel(shell, monkeypatch, capsys, b)
    assert turns_of(shell) == []
    ollama_server.reset()
    run(shell, "%%ollama\nonly in a", "x")  # same request, other notebook: asked, not replayed
    run(shell, "%%ollama\nonly in b", "y")
    assert len(ollama_server.chat_requests()) == 2
    new_kernel(shell, monkeypatch, capsys, a)
    assert turns_of(shell) == ["only in a"]
    capsys.readouterr()
    shell.run_line_magic("ollama", "sessions")
    out = capsys.readouterr().out
    assert f"{a}" in out and f"{b}" in out and "2 sessions" in out
    assert any(line.startswith("*") and line.endswith(str(a)) for line in out.splitlines())


def test_two_kernels_of_one_notebook_last_change_wins(tmp_path):
    path = tmp_path / "j.db"
    said: list[str] = []
    one, two = ConversationStore(), ConversationStore()
    j1 = Journal(path, "/nb.ipynb", notebook=True, say=said.append)
    j1.attach(one, restore=True)
    one.commit(Turn.of({"role": "user", "content": "from one"}, {"role": "assistant", "content": "a"}))
    j2 = Journal(path, "/nb.ipynb", notebook=True, say=said.append)
    assert j2.attach(two, restore=True) is not None and len(two.active.turns) == 1
    two.commit(Turn.of({"role": "user", "content": "from two"}, {"role": "assistant", "content": "b"}))
    assert said == []
    one.set_system("one's system")  # one is told, and its state becomes the journal's
    assert len(said) == 1 and "another kernel changed this notebook's journal" in said[0]
    three = ConversationStore()
    Journal(path, "/nb.ipynb", notebook=True).attach(three, restore=True)
    assert [t.user["content"] for t in three.active.turns] == ["from one"]
    assert three.active.system == "one's system"


WRITER = textwrap.dedent("""
    import sys
    from ollama_magic.journal import Journal
    from ollama_magic.store import ConversationStore, Turn
    path, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    said = []
    store = ConversationStore()
    journal = Journal(path, key, notebook=True, say=said.append)
    journal.attach(store)
    for i in range(n):
        store.commit(Turn.of({"role": "user", "content": f"{key} {i}"}, {"role": "assistant", "content": "ok"}))
    journal.write()  # anything a busy moment left out
    print(len(said))
""")


def test_two_processes_writing_at_once(tmp_path):
    path = tmp_path / "j.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"/nb{i}.ipynb", "150"],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for i in range(2):
        store = ConversationStore()
        Journal(path, f"/nb{i}.ipynb", notebook=True).attach(store, restore=True)
        assert [t.user["content"] for t in store.active.turns] == [f"/nb{i}.ipynb {n}" for n in range(150)]


# -- broken journals ----------------------------------------------------------------------
def _write_session(path: Path, key: str = "/nb.ipynb", text: str = "kept") -> None:
    store = ConversationStore()
    journal = Journal(path, key, notebook=True)
    journal.attach(store)
    store.commit(Turn.of({"role": "user", "content": text}, {"role": "assistant", "content": "yes"}))
    journal.close()  # as the kernel that wrote it has ended (and its open file with it)


def _chat_in_memory(ip: Any, server: Any, n: int = 2, before: tuple[str, ...] = ()) -> None:
    for i in range(n):
        run(ip, f"%%ollama\nturn {i}", f"t{i}")
    assert turns_of(ip) == [*before, *(f"turn {i}" for i in range(n))]  # the kernel goes on


def test_corrupt_journal_says_so_once_and_is_left_alone(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    db.parent.mkdir()
    db.write_bytes(b"this is not a database " * 100)
    out = new_kernel(shell, monkeypatch, capsys, tmp_path / "n.ipynb")
    _chat_in_memory(shell, ollama_server)
    err = out + capsys.readouterr().err
    assert err.count("is not a readable database") == 1
    assert db.read_bytes() == b"this is not a database " * 100


def test_newer_schema_is_not_touched(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    _write_session(db, str(tmp_path / "n.ipynb"))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = db.read_bytes()
    out = new_kernel(shell, monkeypatch, capsys, tmp_path / "n.ipynb")
    _chat_in_memory(shell, ollama_server)
    err = out + capsys.readouterr().err
    assert err.count("from a newer ollama_magic (schema 99") == 1 and "restored" not in err
    assert db.read_bytes() == before


def test_locked_journal_goes_on_in_memory_and_catches_up(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nbefore the lock", "a")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        capsys.readouterr()
        run(shell, "%%ollama\nwhile locked", "b")
        run(shell, "%%ollama\nstill locked", "c")
        assert capsys.readouterr().err.count("is locked by another process") == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    run(shell, "%%ollama\nafter the lock", "d")
    assert "locked" not in capsys.readouterr().err
    new_kernel(shell, monkeypatch, capsys, nb)
    assert turns_of(shell) == ["before the lock", "while locked", "still locked", "after the lock"]


def test_a_restore_that_failed_on_load_happens_before_the_next_cell(shell, ollama_server, db, monkeypatch,
                                                                     capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama\nsecond", "b")
    shell.run_line_magic("unload_ext", "ollama_magic")  # the old kernel ends
    with locked(db):  # another process holds the file at %load_ext: even reading it fails
        out = new_kernel(shell, monkeypatch, capsys, nb, model=False)
        assert out.count("is locked by another process") == 1 and "restored" not in out
        run(shell, "x = 1", "x")  # still locked: the retry fails, silently (said once)
        assert capsys.readouterr().err == ""
    assert turns_of(shell) == []
    ollama_server.reset()
    run(shell, "%%ollama\nthird", "c")  # this cell restores first, then asks with the whole dialogue
    out = capsys.readouterr().out
    assert out.count("restored 1 chat, 2 turns from ") == 1
    assert users(ollama_server.last_chat()) == ["first", "second", "third"]
    run(shell, "y = 2", "y")
    assert "restored" not in capsys.readouterr().out  # once
    new_kernel(shell, monkeypatch, capsys, nb)
    assert turns_of(shell) == ["first", "second", "third"]


def test_a_failed_restore_never_lets_this_kernels_changes_replace_the_journal(shell, ollama_server, db,
                                                                              monkeypatch, capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nfirst", "a")
    run(shell, "%%ollama\nsecond", "b")
    run(shell, "%%ollama -c side\naside", "s")
    run(shell, "%ollama chat default", "home")
    shell.run_line_magic("unload_ext", "ollama_magic")
    with locked(db):
        assert "is locked by another process" in new_kernel(shell, monkeypatch, capsys, nb)
        run(shell, "%%ollama\nnew in this kernel", "n")  # asked without the history it could not read
        assert users(ollama_server.last_chat()) == ["new in this kernel"]
    capsys.readouterr()
    # Free again; the next change comes from outside a cell (as a history-panel edit does),
    # so it is the write itself that reads the earlier chats before writing anything.
    store = magics_of(shell).store
    store.edit(0, "an edited reply")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be read when this kernel started" in err
    assert "restored 2 earlier chats, 3 turns from " in err and "default is now default-restored" in err
    assert store.names == ["default", "default-restored", "side"] and store.active_name == "default"
    assert turns_of(shell) == ["new in this kernel"]
    assert [t.user["content"] for t in store.get("default-restored").turns] == ["first", "second"]
    assert store.get("default").turns[0].reply["content"] == "an edited reply"

    # Both are in the journal: the next kernel restores all of it.
    out = new_kernel(shell, monkeypatch, capsys, nb)
    assert "restored 3 chats, 4 turns" in out
    store = magics_of(shell).store
    assert {c.name: [t.user["content"] for t in c.turns] for c in store} == {
        "default": ["new in this kernel"], "default-restored": ["first", "second"], "side": ["aside"]}
    assert store.get("default").turns[0].reply["content"] == "an edited reply"
    # The earlier turns keep their request keys: re-running them in a later kernel replays.
    ollama_server.reset()
    run(shell, "%ollama chat default-restored", "go")
    run(shell, "%%ollama\nthird", "c")
    assert users(ollama_server.last_chat()) == ["first", "second", "third"]


def test_full_disk_goes_on_in_memory(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    new_kernel(shell, monkeypatch, capsys, tmp_path / "n.ipynb")
    run(shell, "%%ollama\nsmall", "a")
    conn = magics_of(shell).journal._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
    capsys.readouterr()
    for i in range(3):
        run(shell, "%%ollama\n" + "big " * 4000, f"b{i}")
    assert capsys.readouterr().err.count("is on a full disk") == 1
    assert len(magics_of(shell).store.active.turns) == 4


def _make_read_only(path: Path) -> None:
    os.chmod(path, 0o400)
    if os.geteuid() == 0:  # root writes through file modes; an immutable file it cannot
        subprocess.run(["chattr", "+i", str(path)], check=True)


def _undo_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o600)


def test_read_only_journal_restores_and_goes_on_in_memory(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    db.parent.mkdir()
    _write_session(db, str(nb))
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
    before = db.read_bytes()
    _make_read_only(db)
    try:
        out = new_kernel(shell, monkeypatch, capsys, nb)
        assert "restored 1 chat, 1 turn" in out  # reading needs no write
        _chat_in_memory(shell, ollama_server, before=("kept",))
        err = capsys.readouterr().err
        assert err.count("ollama_magic: the journal") == 1 and "read-only" in err
        assert db.read_bytes() == before
    finally:
        _undo_read_only(db)


# -- secrets, forget, log ----------------------------------------------------------------------
def test_the_journal_holds_no_secret(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-APIKEY-0123456789")
    user_host = ollama_server.host.replace("http://", "http://alice:PASSWORD-s3cret@")
    new_kernel(shell, monkeypatch, capsys, tmp_path / "n.ipynb")
    shell.run_line_magic("config", f"OllamaMagics.host = {user_host!r}")
    shell.run_line_magic("config", "OllamaMagics.headers = {'Authorization': 'Bearer HEADER-VALUE-42'}")
    run(shell, "%%ollama\nhello", "a")
    shell.config.pop("OllamaMagics", None)
    assert ollama_server.chat_requests()  # it did talk to the server with them
    blob = b"".join(p.read_bytes() for p in db.parent.glob("j.db*"))
    assert b"hello" in blob
    for secret in (b"sk-APIKEY-0123456789", b"PASSWORD-s3cret", b"HEADER-VALUE-42", b"alice"):
        assert secret not in blob


def test_forget_and_undo(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "n.ipynb"
    new_kernel(shell, monkeypatch, capsys, nb)
    run(shell, "%%ollama\nsomething private", "a")
    new_kernel(shell, monkeypatch, capsys, tmp_path / "other.ipynb")
    run(shell, "%%ollama\nanother notebook, kept", "x")  # the file holds more than the forgotten one
    new_kernel(shell, monkeypatch, capsys, nb)
    capsys.readouterr()
    shell.run_line_magic("ollama", "forget")
    assert "Forgot this notebook's journal (1 turn)" in capsys.readouterr().out
    run(shell, "%%ollama\nnot journaled either", "b")
    blob = b"".join(p.read_bytes() for p in db.parent.glob("j.db*"))
    assert b"private" not in blob and b"journaled either" not in blob  # the words, from the search index too
    assert turns_of(shell) == ["something private", "not journaled either"]  # memory keeps them
    assert b"another notebook, kept" in blob
    shell.run_line_magic("ollama", "forget --undo")
    new_kernel(shell, monkeypatch, capsys, nb)
    assert turns_of(shell) == ["something private", "not journaled either"]
    with pytest.raises(UsageError, match="nothing to bring back"):
        shell.run_line_magic("ollama", "forget --undo")
    shell.run_line_magic("ollama", "forget")
    new_kernel(shell, monkeypatch, capsys, nb)
    assert turns_of(shell) == []


@pytest.mark.parametrize("fts", [True, False])
def test_log_searches_every_notebook(shell, ollama_server, db, monkeypatch, capsys, tmp_path, fts):
    new_kernel(shell, monkeypatch, capsys, tmp_path / "a.ipynb")
    run(shell, "%%ollama\nTell me about zebras", "a")
    new_kernel(shell, monkeypatch, capsys, tmp_path / "b.ipynb")
    run(shell, "%%ollama -c wild\nAnd zebras \x1b[31min red\x1b[0m?", "b")
    run(shell, "%%ollama\nsomething else 100%_", "c")
    magics_of(shell).journal._fts = fts and magics_of(shell).journal._fts
    capsys.readouterr()
    shell.run_line_magic("ollama", "log zebras")
    out = capsys.readouterr().out
    assert str(tmp_path / "a.ipynb") in out and str(tmp_path / "b.ipynb") in out and "chat wild" in out
    assert "\x1b" not in out and "\\x1b[31m" in out
    assert "something else" not in out
    shell.run_line_magic("ollama", "log 100%_")
    assert "something else" in capsys.readouterr().out
    shell.run_line_magic("ollama", "log no-such-words-anywhere")
    assert "No journaled turn contains" in capsys.readouterr().out


def test_journal_rows_are_append_only_per_turn(tmp_path):
    """A new turn is one INSERT, whatever the length of the chat (no rewrite)."""
    path = tmp_path / "j.db"
    store = ConversationStore()
    journal = Journal(path, "/nb.ipynb", notebook=True)
    journal.attach(store)
    for i in range(50):
        store.commit(Turn((({"role": "user", "content": f"q{i}"}), {"role": "assistant", "content": "a"}),
                          TurnMeta(cell_id=f"c{i}")))
    conn = journal._conn
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.commit(Turn.of({"role": "user", "content": "one more"}, {"role": "assistant", "content": "b"}))
    writes = [s for s in statements if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert len([s for s in writes if s.startswith("INSERT INTO turns")]) == 1
    assert all(not s.startswith("UPDATE turns") for s in writes)
    assert not [s for s in writes if "turn_text" in s]  # the search index is filled when searched
    rows = json.loads(conn.execute("SELECT messages FROM turns ORDER BY id DESC LIMIT 1").fetchone()[0])
    assert rows[0]["content"] == "one more"
    # A search indexes what is new since the last one, and finds it.
    assert [m[0]["content"] for *_, m in journal.search("more")] == ["one more"]
    store.commit(Turn.of({"role": "user", "content": "and more still"}, {"role": "assistant", "content": "c"}))
    assert [m[0]["content"] for *_, m in journal.search("more")] == ["and more still", "one more"]
    assert conn.execute("SELECT count(*) FROM turn_text").fetchone()[0] == 52


def test_log_finds_turns_brought_back_by_forget_undo(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    """forget indexes every turn before it deletes, so --undo brings their words back to the search
    even when another notebook's search moved the index past their row ids meanwhile."""
    new_kernel(shell, monkeypatch, capsys, tmp_path / "n.ipynb")
    run(shell, "%%ollama\nTell me about okapis", "a")  # not searched yet: not in the index
    assert magics_of(shell).journal._fts
    shell.run_line_magic("ollama", "forget")
    other = Journal(db, str(tmp_path / "other.ipynb"), notebook=True)
    other_store = ConversationStore()
    other.attach(other_store)
    other_store.commit(Turn.of({"role": "user", "content": "unrelated"}, {"role": "assistant", "content": "b"}))
    assert len(other.search("unrelated")) == 1 and not other.search("okapis")
    shell.run_line_magic("ollama", "forget --undo")
    capsys.readouterr()
    shell.run_line_magic("ollama", "log okapis")
    out = capsys.readouterr().out
    assert "okapis" in out and str(tmp_path / "n.ipynb") in out
    other.close()


def test_a_replayed_tool_turn_runs_no_tool(shell, ollama_server, db, monkeypatch, capsys, tmp_path):
    nb = tmp_path / "t.ipynb"
    calls: list[tuple[float, float]] = []

    def rectangle_area(width: float, height: float) -> float:
        """Area of a rectangle.

        Args:
            width: the width in metres
            height: the height in metres
        """
        calls.append((width, height))
        return width * height

    cell = "%%ollama --tools rectangle_area\nWhat is the area of a room 3 by 4 metres?"
    new_kernel(shell, monkeypatch, capsys, nb)
    shell.user_ns["rectangle_area"] = rectangle_area
    run(shell, cell, "a")
    assert len(calls) == 1
    first = magics_of(shell).store.active.turns[-1]
    new_kernel(shell, monkeypatch, capsys, nb)
    shell.user_ns["rectangle_area"] = rectangle_area
    ollama_server.reset()
    run(shell, cell, "a")
    out = capsys.readouterr().out
    assert ollama_server.chat_requests() == [] and len(calls) == 1  # answered from the journal, nothing run
    assert "[tool] rectangle_area(width=3, height=4) → 12" in out and "replayed from " in out
    assert magics_of(shell).store.active.turns[-1].messages == first.messages
