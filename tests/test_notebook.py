"""The notebook is the conversation: re-runs, chats, cell options, undo, save/load, overflow."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import magics_of, run

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def users(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def store_of(ip):
    return magics_of(ip).store


# -- re-running cells ---------------------------------------------------------
def test_rerun_earlier_cell_rewinds_and_undo_restores(shell, ollama_server, capsys):
    for cid in "abc":
        run(shell, f"%%ollama\nquestion {cid}", cell_id=cid)
    store = store_of(shell)
    before = list(store.active.turns)
    capsys.readouterr()
    run(shell, "%%ollama\nquestion b, asked better", cell_id="b")
    assert users(ollama_server.last_chat()) == ["question a", "question b, asked better"]
    assert [t.user["content"] for t in store.active.turns] == ["question a", "question b, asked better"]
    assert "rewound 1 later turn (undo with %ollama undo)" in capsys.readouterr().out
    shell.run_line_magic("ollama", "undo")
    assert store.active.turns == before


def test_rerun_last_cell_replaces_in_place(shell, ollama_server):
    for cid in "abc":
        run(shell, f"%%ollama\nquestion {cid}", cell_id=cid)
    run(shell, "%%ollama\nquestion c again", cell_id="c")
    store = store_of(shell)
    assert len(store.active.turns) == 3
    assert users(ollama_server.last_chat()) == ["question a", "question b", "question c again"]


def test_failed_rerun_changes_nothing(shell, ollama_server):
    for cid in "abc":
        run(shell, f"%%ollama\nquestion {cid}", cell_id=cid)
    before = list(store_of(shell).active.turns)
    ollama_server.status = 500
    res = run(shell, "%%ollama\nquestion b v2", cell_id="b")
    assert isinstance(res.error_in_exec, UsageError)
    assert store_of(shell).active.turns == before


def test_rerun_policy_append(shell, ollama_server):
    shell.run_line_magic("config", "OllamaMagics.rerun = 'append'")
    run(shell, "%%ollama\none", cell_id="a")
    run(shell, "%%ollama\none again", cell_id="a")
    assert len(store_of(shell).active.turns) == 2


def test_without_cell_ids_every_run_appends(shell, ollama_server):
    run(shell, "%%ollama\none")
    run(shell, "%%ollama\none")
    assert len(store_of(shell).active.turns) == 2


def test_restart_and_run_all_rebuilds_the_same_dialogue(shell, ollama_server):
    cells = [("c1", "%%ollama --system 'Be brief.'\nhello"), ("c2", "x = 41 + 1"),
             ("c3", "%%ollama\nwhat is {x}?"), ("c4", "%%ollama -c side\nother thread"),
             ("c5", "%ollama chat default"), ("c6", "%%ollama -t 0.3\nand then?")]
    for cid, src in cells:
        assert run(shell, src, cell_id=cid).success
    first = [json.dumps(b, sort_keys=True) for b in ollama_server.chat_requests()]
    # "Restart": a fresh extension (new store), then run every cell again.
    shell.run_line_magic("reload_ext", "ollama_magic")
    shell.run_line_magic("ollama", "model llama3.2")
    ollama_server.reset()
    for cid, src in cells:
        assert run(shell, src, cell_id=cid).success
    second = [json.dumps(b, sort_keys=True) for b in ollama_server.chat_requests()]
    assert first == second and len(first) == 4


# -- named chats -----------------------------------------------------------------
def test_named_chats_are_isolated(shell, ollama_server, capsys):
    run(shell, "%%ollama\nin default")
    run(shell, "%%ollama -c poet -m qwen3 --system 'You rhyme.'\nin poet")
    body = ollama_server.last_chat()
    assert body["model"] == "qwen3"
    assert body["messages"] == [{"role": "system", "content": "You rhyme."}, {"role": "user", "content": "in poet"}]
    run(shell, "%%ollama\nstill poet")  # -c made it active
    assert users(ollama_server.last_chat()) == ["in poet", "still poet"]
    shell.run_line_magic("ollama", "chat default")
    run(shell, "%%ollama\nback home")
    body = ollama_server.last_chat()
    assert body["model"] == "llama3.2" and users(body) == ["in default", "back home"]
    capsys.readouterr()
    shell.run_line_magic("ollama", "chats")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["chat", "model", "turns", "tokens", "stale"]
    assert out[1].split()[:4] == ["*", "default", "llama3.2", "2"]
    assert out[2].split()[:3] == ["poet", "qwen3", "2"]


def test_chat_switch_near_miss(shell, ollama_server):
    with pytest.raises(UsageError, match="did you mean 'default'"):
        shell.run_line_magic("ollama", "chat defualt")


# -- cell options ----------------------------------------------------------------
def test_new_starts_afresh_and_is_undoable(shell, ollama_server):
    run(shell, "%%ollama\nold")
    run(shell, "%%ollama --new\nfresh")
    assert users(ollama_server.last_chat()) == ["fresh"]
    assert len(store_of(shell).active.turns) == 1
    shell.run_line_magic("ollama", "undo")
    assert [t.user["content"] for t in store_of(shell).active.turns] == ["old"]


def test_once_uses_history_but_stores_nothing(shell, ollama_server):
    run(shell, "%%ollama\nkept")
    run(shell, "%%ollama --once\nside question")
    assert users(ollama_server.last_chat()) == ["kept", "side question"]
    assert len(store_of(shell).active.turns) == 1
    assert shell.run_line_magic("ollama", "last") == "I saw 3 messages. You said: side question"


def test_out_and_last(shell, ollama_server):
    run(shell, "%%ollama --out answer\nhello")
    assert shell.user_ns["answer"] == "I saw 1 messages. You said: hello"
    run(shell, "x = %ollama last")
    assert shell.user_ns["x"] == shell.user_ns["answer"]


def test_format_schema_dict_and_pydantic(shell, ollama_server):
    shell.user_ns["schema"] = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                               "required": ["name", "age"]}
    run(shell, "%%ollama --format schema --out person\nDescribe a person")
    assert ollama_server.last_chat()["format"] == shell.user_ns["schema"]
    assert isinstance(shell.user_ns["person"], dict) and set(shell.user_ns["person"]) == {"name", "age"}
    run(shell, "from pydantic import BaseModel\nclass City(BaseModel):\n    name: str\n    population: int")
    run(shell, "%%ollama --format City --out city\nA city")
    assert ollama_server.last_chat()["format"]["properties"].keys() == {"name", "population"}
    assert set(shell.user_ns["city"]) == {"name", "population"}
    run(shell, "%%ollama --format json --out j\nJSON please")
    assert ollama_server.last_chat()["format"] == "json" and isinstance(shell.user_ns["j"], dict)


def test_format_missing_variable(shell, ollama_server):
    res = run(shell, "%%ollama --format shema\nhi")
    assert "'shema' is not defined" in str(res.error_in_exec)
    assert ollama_server.chat_requests() == []


def test_think_is_shown_collapsed_stored_and_not_resent(nb_shell, ollama_server):
    run(nb_shell, "%%ollama -m qwen3 --think\nwhy is the sky blue")
    body = ollama_server.last_chat()
    assert body["think"] is True
    md = nb_shell.display_pub.last_html
    assert "<details><summary>Thinking</summary>" in md and "Thinking about: why is the sky blue" in md
    turn = store_of(nb_shell).active.turns[-1]
    assert turn.reply["thinking"].startswith("Thinking about")
    run(nb_shell, "%%ollama --think high\nand?")
    assert ollama_server.last_chat()["think"] == "high"
    assert all("thinking" not in m for m in ollama_server.last_chat()["messages"])


def test_code_puts_first_block_in_next_cell(shell, ollama_server):
    ollama_server.reply = "Here:\n```python\nprint('hi')\n```\nand\n```\nsecond\n```"
    got = []
    shell.set_next_input = lambda text, replace=False: got.append(text)  # type: ignore[method-assign]
    try:
        run(shell, "%%ollama --code\ncode please")
    finally:
        del shell.set_next_input
    assert got == ["print('hi')"]


def test_image_file_and_missing_file(shell, ollama_server, tmp_path):
    img = tmp_path / "dot.png"
    img.write_bytes(PNG)
    run(shell, f"%%ollama -m gemma3 --image {img}\nwhat is this")
    msg = ollama_server.last_chat()["messages"][-1]
    assert base64.b64decode(msg["images"][0]) == PNG
    n = len(ollama_server.chat_requests())
    res = run(shell, f"%%ollama --image {tmp_path / 'nope.png'}\nwhat is this")
    assert "no such file or variable" in str(res.error_in_exec)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    res = run(shell, f"%%ollama --image {text}\nwhat is this")
    assert "not a PNG" in str(res.error_in_exec)
    assert len(ollama_server.chat_requests()) == n


# -- interpolation in cells -------------------------------------------------------
def test_cell_interpolation(shell, ollama_server):
    run(shell, "name = 'Ada'; data = {'k': [1, 2]}")
    run(shell, '%%ollama\nHi {name}, {data["k"][1]}; JSON {"a": {"b": 1}}; keep {{name}}; unknown {nope}')
    assert users(ollama_server.last_chat())[-1] == 'Hi Ada, 2; JSON {"a": {"b": 1}}; keep {name}; unknown {nope}'


# -- line magic ----------------------------------------------------------------------
def test_save_load_roundtrip_gives_identical_next_request(shell, ollama_server, tmp_path):
    run(shell, "%%ollama --system S -o seed=3\none", cell_id="a")
    run(shell, "%%ollama -m qwen3 --think\ntwo", cell_id="b")
    run(shell, "%%ollama -c side\nthree")
    shell.run_line_magic("ollama", "chat default")
    path = tmp_path / "chats.json"
    shell.run_line_magic("ollama", f"save {path}")
    run(shell, "%%ollama\nnext")
    expected = json.dumps(ollama_server.last_chat(), sort_keys=True)
    shell.run_line_magic("reload_ext", "ollama_magic")
    shell.run_line_magic("ollama", f"load {path}")
    assert store_of(shell).names == ["default", "side"]
    run(shell, "%%ollama\nnext")
    assert json.dumps(ollama_server.last_chat(), sort_keys=True) == expected
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    (json.dumps({"format": "ollama_magic", "version": 99, "active": "default", "chats": []}), "version 99"),
    (json.dumps({"hello": 1}), "not an ollama_magic chat file"),
    (json.dumps({"format": "ollama_magic", "version": 1, "active": "x", "chats": [{"name": "x", "turns": [{"messages": [{"role": "user", "content": "q"}]}]}]}), "not a valid chat file"),
    (json.dumps({"format": "ollama_magic", "version": 1, "active": "x", "chats": [{"name": "x", "turns": [{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}]}]}), "not a valid chat file"),
])
def test_bad_load_changes_nothing(shell, ollama_server, tmp_path, content, message):
    run(shell, "%%ollama\nkept")
    before = list(store_of(shell).active.turns)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("ollama", f"load {bad}")
    assert store_of(shell).active.turns == before and store_of(shell).names == ["default"]


def test_load_missing_file_and_directory(shell, ollama_server, tmp_path):
    with pytest.raises(UsageError, match="no file"):
        shell.run_line_magic("ollama", f"load {tmp_path / 'missing.json'}")
    with pytest.raises(UsageError, match="is a directory"):
        shell.run_line_magic("ollama", f"load {tmp_path}")


def test_save_failure_leaves_old_file(shell, ollama_server, tmp_path, monkeypatch):
    path = tmp_path / "chats.json"
    run(shell, "%%ollama\none")
    shell.run_line_magic("ollama", f"save {path}")
    old = path.read_bytes()
    run(shell, "%%ollama\ntwo")

    def boom(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", boom, raising=False)  # the sync before the rename
    with pytest.raises(UsageError, match="No space left"):
        shell.run_line_magic("ollama", f"save {path}")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["chats.json"]


def test_load_replaces_same_named_chat_undoably(shell, ollama_server, tmp_path):
    run(shell, "%%ollama\none")
    path = tmp_path / "c.json"
    shell.run_line_magic("ollama", f"save {path}")
    run(shell, "%%ollama\ntwo")
    shell.run_line_magic("ollama", f"load {path}")
    assert len(store_of(shell).active.turns) == 1
    shell.run_line_magic("ollama", "undo")
    assert len(store_of(shell).active.turns) == 2


def test_export_markdown(shell, ollama_server, tmp_path):
    run(shell, "%%ollama --system 'Be kind.'\nhello")
    out = tmp_path / "chat.md"
    shell.run_line_magic("ollama", f"export {out}")
    text = out.read_text()
    assert text.startswith("# default") and "## System" in text and "## 1. User\n\nhello" in text
    assert "I saw 2 messages" in text


def test_reset_undo_system_options_model(shell, ollama_server, capsys):
    run(shell, "%%ollama\none")
    shell.run_line_magic("ollama", "reset")
    assert store_of(shell).active.turns == []
    shell.run_line_magic("ollama", "undo")
    assert len(store_of(shell).active.turns) == 1
    shell.run_line_magic("ollama", "system You are a pirate.")
    shell.run_line_magic("ollama", "options num_ctx=8192 stop=[\"x\"]")
    run(shell, "%%ollama\ntwo")
    body = ollama_server.last_chat()
    assert body["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert body["options"] == {"num_ctx": 8192, "stop": ["x"]}
    shell.run_line_magic("ollama", "options stop=null")
    shell.run_line_magic("ollama", "system --clear")
    run(shell, "%%ollama\nthree")
    body = ollama_server.last_chat()
    assert body["messages"][0]["role"] == "user" and body["options"] == {"num_ctx": 8192}
    with pytest.raises(UsageError, match="not installed"):
        shell.run_line_magic("ollama", "model llama9")
    with pytest.raises(UsageError, match="unrecognized arguments: words"):
        shell.run_line_magic("ollama", "model   two words")


def test_unknown_subcommand_and_option_suggest(shell, ollama_server):
    with pytest.raises(UsageError, match="did you mean 'history'"):
        shell.run_line_magic("ollama", "histroy")
    res = run(shell, "%%ollama --modle x\nhi")
    assert "did you mean '--model'" in str(res.error_in_exec)


def test_help_lists_every_option_and_subcommand(shell, capsys):
    shell.run_line_magic("ollama", "help")
    out = capsys.readouterr().out
    for word in ["--model", "--chat", "--system", "--new", "--once", "-o KEY=VALUE", "--temperature", "--format",
                 "--think", "--image", "--tools", "--error", "--out", "--no-stream", "--code", "models", "model [NAME]",
                 "system", "options", "chats", "history", "reset", "undo", "save", "load", "export", "fix", "fork", "last",
                 "config"]:
        assert word in out, word


def test_history_in_a_terminal_is_a_transcript(shell, ollama_server, capsys):
    run(shell, "%%ollama\nhello")
    capsys.readouterr()
    assert shell.run_line_magic("ollama", "history") is None
    out = capsys.readouterr().out
    assert "## 1. User" in out and "hello" in out


def test_history_in_a_terminal_takes_last_and_chat(shell, ollama_server, capsys):
    for q in ("one", "two", "three"):
        run(shell, f"%%ollama\n{q}")
    run(shell, "%%ollama -c side\nelsewhere")
    run(shell, "%ollama chat default")
    capsys.readouterr()
    shell.run_line_magic("ollama", "history --last 1")
    out = capsys.readouterr().out
    assert "## 3. User" in out and "three" in out and "## 2. User" not in out
    assert "(2 earlier turns not shown)" in out
    shell.run_line_magic("ollama", "history --chat side")
    out = capsys.readouterr().out
    assert out.startswith("# side") and "elsewhere" in out and "three" not in out
    ollama_server.reply = "ok\x1b]0;pwned\x07 \x1b[8mhidden"
    run(shell, "%%ollama\nescape me")
    capsys.readouterr()
    shell.run_line_magic("ollama", "history --last 1")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned" in out  # escapes shown, not obeyed
    res = run(shell, "%ollama history --last 0")
    assert isinstance(res.error_in_exec, UsageError) and "--last" in str(res.error_in_exec)
    res = run(shell, "%ollama history --chat nope")
    assert isinstance(res.error_in_exec, UsageError) and "no chat named 'nope'" in str(res.error_in_exec)
    res = run(shell, "%ollama history --bogus")
    assert isinstance(res.error_in_exec, UsageError)


def test_rerunning_history_retires_the_old_panel(nb_shell, ollama_server):
    run(nb_shell, "%%ollama\nhello", cell_id="ask")
    magics = magics_of(nb_shell)
    store = magics.store
    base = store.listener_count  # the journal may listen too
    made = []
    for _ in range(7):
        run(nb_shell, "%ollama history", cell_id="hist")
        made.append(nb_shell.user_ns["_"])
    assert all(type(p).__name__ == "HistoryPanel" for p in made)
    assert store.listener_count == base + 1 and store.stream_listener_count == 1  # seven re-runs cost one panel
    assert [p.closed for p in made] == [True] * 6 + [False]
    assert made[-1].comm is not None and all(p.comm is None for p in made[:-1])  # old widgets closed
    run(nb_shell, "other = %ollama history", cell_id="hist2")  # another cell's panel lives beside it
    other = nb_shell.user_ns["other"]
    assert store.listener_count == base + 2 and not made[-1].closed
    run(nb_shell, "%%ollama\nagain", cell_id="ask2")
    assert made[-1].total == other.total == 2
    other.receive({"do": "gone"})  # its output was cleared in the browser
    assert store.listener_count == base + 1


def test_an_open_panel_shows_the_reply_growing_throttled(nb_shell, ollama_server):
    run(nb_shell, "%%ollama\nfirst")
    panel = nb_shell.run_line_magic("ollama", "history")
    nb_shell.run_line_magic("config", "OllamaMagics.display_rate = 10")
    ollama_server.token_delay = 0.02
    words = " ".join(f"w{i}" for i in range(30))
    assert run(nb_shell, f"%%ollama\n{words}").success
    live = [m for m in panel.sent if m.get("kind") == "live"]
    assert live[0]["start"] and live[0]["index"] == 1 and words in live[0]["user"]
    assert live[-1] == {"kind": "live", "end": True}
    streamed = "".join(m.get("text", "") for m in live)
    reply = magics_of(nb_shell).store.active.turns[-1].reply["content"]
    assert streamed and reply.startswith(streamed)  # each piece once, in order
    # ~36 chunks over ~0.7 s at 10 updates a second: a handful of messages, not one per token
    assert 3 <= len(live) <= 14, len(live)
    kinds = [m.get("kind") for m in panel.sent]
    assert kinds.index("append") > max(i for i, k in enumerate(kinds) if k == "live")
    assert panel.total == 2


def test_models_lists_the_server(shell, ollama_server, capsys):
    shell.run_line_magic("ollama", "models")
    out = capsys.readouterr().out
    assert "llama3.2" in out and "qwen3" in out


# -- context overflow ------------------------------------------------------------------
def test_overflow_warning_by_the_time_the_server_drops_messages(nb_shell, ollama_server):
    """With automatic sizing off (it is on by default: tests/test_window.py), today's warning."""
    magics_of(nb_shell).auto_num_ctx = False
    ollama_server.num_ctx = 256
    warned_at = dropped_at = None
    for i in range(30):
        run(nb_shell, "%%ollama\n" + " ".join(["word"] * 20) + f" turn {i}")
        body_len = len(ollama_server.last_chat()["messages"])
        md = nb_shell.display_pub.last_html
        if warned_at is None and "⚠ context" in md:
            warned_at = i
        reply = magics_of(nb_shell).store.active.turns[-1].reply["content"]
        seen = int(reply.split()[2])
        if dropped_at is None and seen < body_len:
            dropped_at = i
        if dropped_at is not None:
            break
    assert dropped_at is not None and warned_at is not None and warned_at <= dropped_at
    assert "num_ctx=" in nb_shell.display_pub.last_html


def test_history_panel_in_a_notebook_and_unload_closes_it(nb_shell, ollama_server):
    run(nb_shell, "%%ollama\nhello")
    magics = magics_of(nb_shell)
    before = magics.store.listener_count  # the journal listens too
    panel = nb_shell.run_line_magic("ollama", "history")
    assert type(panel).__name__ == "HistoryPanel"
    assert magics.store.listener_count == before + 1
    run(nb_shell, "%%ollama\nagain")
    assert len(panel.rows()) == 2 and panel.total == 2  # the open panel followed the new turn
    # a cell that commits 300 turns in a loop: the panel goes quiet, then catches up at the cell's end
    nb_shell.user_ns.update(_store=magics.store, _panel=panel)
    run(nb_shell, "from ollama_magic.store import Turn, TurnMeta\n"
                  "for i in range(300):\n"
                  "    _store.commit(Turn(({'role': 'user', 'content': f'q{i}'},"
                  " {'role': 'assistant', 'content': f'a{i}'}), TurnMeta()))\n"
                  "_behind = (_panel.dirty, _panel.total)\n")
    assert nb_shell.user_ns["_behind"][0] and nb_shell.user_ns["_behind"][1] < 302  # quiet during the loop
    assert not panel.dirty and panel.total == 302 and panel.header.startswith("302 turns")
    assert panel.flush in nb_shell.events.callbacks["post_execute"]
    nb_shell.run_line_magic("unload_ext", "ollama_magic")
    assert magics.store.listener_count == 0
    assert panel.flush not in nb_shell.events.callbacks["post_execute"]  # nothing left registered
    nb_shell.run_line_magic("load_ext", "ollama_magic")
