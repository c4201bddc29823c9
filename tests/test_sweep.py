"""Issue #14: the fifteen places where a careless or hostile user broke a guarantee.

Each test names its point; each failed on the code before its fix.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import magics_of, run
from ollama_magic import commands, persist
from ollama_magic.store import ConversationStore


def store_of(ip: Any) -> ConversationStore:
    return magics_of(ip).store


def state(store: ConversationStore) -> str:
    depths = {name: store.undo_depth(name) for name in store.names}
    return json.dumps([persist.dump(store), store.active_name, depths], ensure_ascii=False)


def one_line_usage_error(result: Any) -> str:
    err = result.error_in_exec or result.error_before_exec
    assert type(err) is UsageError, repr(err)
    msg = str(err)
    assert msg and "\n" not in msg, msg
    return msg


# -- 9. every subcommand parses its arguments ------------------------------------
EXTRA_WORDS = ["reset please", "undo extra", "chats all", "history now", "last one", "config please",
               "models big", "save a b", "load a b", "export a b", "fork x y", "model a b",
               "chat a b", "help me please", "options --frobnicate", "system --clear now"]


@pytest.mark.parametrize("line", EXTRA_WORDS)
def test_9_subcommands_refuse_what_they_do_not_take(shell, ollama_server, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(shell, "%%ollama\nkept")
    run(shell, "%ollama chat other")
    run(shell, "%%ollama\nkept too")
    before = state(store_of(shell))
    requests = len(ollama_server.requests)
    msg = one_line_usage_error(run(shell, f"%ollama {line}"))
    assert f"%ollama {line.split()[0]}" in msg and ("unrecognized" in msg or "takes no" in msg), msg
    assert state(store_of(shell)) == before
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert len(ollama_server.requests) == requests  # nothing asked


def test_9_help_lists_the_registry_and_one_subcommand(shell, capsys):
    run(shell, "%ollama help")
    out = capsys.readouterr().out
    for name, spec in commands.REGISTRY.items():
        assert spec.usage in out and spec.summary in out, name
    run(shell, "%ollama help fork")
    out = capsys.readouterr().out
    assert "%ollama fork [--at N] [--from N] NEW" in out and "--at" in out and "--from" in out
    assert "did you mean 'reset'" in one_line_usage_error(run(shell, "%ollama help rest"))
    assert "did you mean 'reset'" in one_line_usage_error(run(shell, "%ollama rest"))
    assert "did you mean '--clear'" in one_line_usage_error(run(shell, "%ollama options --cleer"))


def test_9_a_new_subcommand_is_one_decorated_method(shell, capsys):
    seen: list[argparse.Namespace] = []

    @commands.subcommand("probe", "a subcommand added by a test")
    @commands.argument("name", metavar="NAME")
    @commands.argument("--twice", action="store_true")
    def probe(magics: Any, args: argparse.Namespace) -> None:
        seen.append(args)

    try:
        run(shell, "%ollama probe x --twice")
        assert seen and seen[0].name == "x" and seen[0].twice
        assert "%ollama probe [--twice] NAME" in one_line_usage_error(run(shell, "%ollama probe"))
        run(shell, "%ollama help")
        assert "a subcommand added by a test" in capsys.readouterr().out
    finally:
        commands.REGISTRY.pop("probe")


def test_9_free_text_is_kept_as_typed(shell):
    text = """Don't be "terse"; use  two  spaces."""
    run(shell, f"%ollama system {text}")
    assert store_of(shell).active.system == text
    run(shell, "%ollama system --clear")
    assert store_of(shell).active.system is None


# -- 1. -c NEW with a failing turn creates nothing --------------------------------
@pytest.mark.parametrize("fault", ["unknown_model", "http_500", "server_down", "bad_host"])
def test_1_failed_first_turn_in_a_new_chat_leaves_no_chat(shell, ollama_server, fault, monkeypatch):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    line = "%%ollama -c fresh"
    if fault == "unknown_model":
        line += " -m llama9"
    elif fault == "http_500":
        ollama_server.status = 500
    elif fault == "server_down":
        monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    else:
        monkeypatch.setenv("OLLAMA_HOST", "http://[::1")
    one_line_usage_error(run(shell, f"{line}\nhello"))
    assert state(store_of(shell)) == before
    assert "fresh" not in store_of(shell) and store_of(shell).active_name == "default"


def test_1_new_chat_and_its_turn_are_one_undo_step(shell, ollama_server):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    run(shell, "%%ollama -c fresh --system 'Be brief.'\nhello")
    store = store_of(shell)
    assert store.active_name == "fresh" and len(store.get("fresh").turns) == 1
    assert store.get("fresh").system == "Be brief."
    run(shell, "%ollama undo")
    assert "fresh" not in store and state(store) == before


def test_1_existing_chat_is_not_switched_to_by_a_failed_turn(shell, ollama_server):
    run(shell, "%ollama chat other")
    run(shell, "%ollama chat default")
    ollama_server.status = 500
    one_line_usage_error(run(shell, "%%ollama -c other\nhello"))
    assert store_of(shell).active_name == "default"
    ollama_server.status = None
    assert run(shell, "%%ollama -c other\nhello").success
    assert store_of(shell).active_name == "other"


# -- 7. -c near miss is refused like %ollama chat -----------------------------------
def test_7_near_miss_chat_name_is_refused_in_the_cell_too(shell, ollama_server):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    sent = len(ollama_server.requests)
    msg = one_line_usage_error(run(shell, "%%ollama -c defualt\nhello"))
    assert "did you mean 'default'" in msg and "--new" in msg
    msg = one_line_usage_error(run(shell, "%ollama chat defualt"))
    assert "did you mean 'default'" in msg and "%ollama chat defualt --new" in msg
    assert state(store_of(shell)) == before and len(ollama_server.requests) == sent
    assert run(shell, "%%ollama -c defualt --new\nhello").success
    assert store_of(shell).active_name == "defualt" and len(store_of(shell).active.turns) == 1
    run(shell, "%ollama chat default")
    run(shell, "%ollama chat defaulx --new")
    assert store_of(shell).active_name == "defaulx"
    assert run(shell, "%%ollama -c pirate\nahoy").success  # no near miss: created as before


# -- 8. a re-run goes back to the chat that holds its turn, active again (real kernel) --
def _kernel_state(k: Any) -> dict[str, Any]:
    ex = k.execute("import json as _j; _m = get_ipython().magics_manager.registry['OllamaMagics']\n"
                   "print(_j.dumps({'active': _m.store.active_name, 'chats': {c.name: [t.user['content'] "
                   "for t in c.turns] for c in _m.store}}))")
    assert ex.status == "ok", ex.text
    return json.loads(ex.text.strip().splitlines()[-1])


def test_8_rerun_replaces_its_turn_in_the_chat_that_holds_it(ollama_server):
    from kernel_util import kernel

    with kernel({"OLLAMA_HOST": ollama_server.host}) as k:
        assert k.execute("%load_ext ollama_magic\n%ollama model llama3.2").status == "ok"
        assert k.execute("%%ollama\nfirst", cell_id="cell-a").status == "ok"
        assert k.execute("%ollama chat other", cell_id="cell-b").status == "ok"
        assert k.execute("%%ollama\nsecond", cell_id="cell-c").status == "ok"
        ex = k.execute("%%ollama\nfirst again", cell_id="cell-a")
        assert ex.status == "ok", ex.text
        assert "in chat 'default', active again (was 'other')" in ex.text
        # Its chat is active again, as when the cell first ran: the cells after it run where they ran.
        assert _kernel_state(k) == {"active": "default", "chats": {"default": ["first again"], "other": ["second"]}}
        # The request carried the history of 'default', not of 'other'.
        assert [m["content"] for m in ollama_server.last_chat()["messages"]] == ["first again"]
        # A cell that names a chat with -c goes there, as it says.
        ex = k.execute("%%ollama -c other\nfirst once more", cell_id="cell-a")
        assert ex.status == "ok", ex.text
        assert _kernel_state(k) == {"active": "other",
                                    "chats": {"default": ["first again"], "other": ["second", "first once more"]}}


# -- 2. load refuses NaN / Infinity ----------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_2_load_refuses_non_finite_numbers(shell, ollama_server, tmp_path, value):
    run(shell, "%%ollama\nkept")
    path = tmp_path / "chats.json"
    run(shell, f"%ollama save {path}")
    data = json.loads(path.read_text())
    data["chats"][0]["options"] = {"temperature": 0.5}
    path.write_text(json.dumps(data).replace("0.5", value))
    before = state(store_of(shell))
    msg = one_line_usage_error(run(shell, f"%ollama load {path}"))
    assert "not a number Ollama accepts" in msg, msg
    assert state(store_of(shell)) == before
    assert run(shell, "%%ollama\nstill works").success


# -- 4. deeply nested tool arguments: stored bounded; save, load and fork work -----------
def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


def test_4_deep_tool_arguments_are_bounded_and_round_trip(shell, ollama_server, tmp_path):
    seen: list[Any] = []
    shell.user_ns["seen"] = seen
    run(shell, 'def probe(a: dict = None, nan: str = None) -> str:\n    """Look."""\n    seen.append(a)\n    return "ok"')
    ollama_server.tool_arguments = {"a": nested(300)}
    ollama_server.tool_arguments["nan"] = float("nan")
    assert run(shell, "%%ollama --tools probe\ngo deep").success
    ollama_server.tool_arguments = None
    store = store_of(shell)
    assert len(store.active.turns) == 1 and seen
    path = tmp_path / "deep.json"
    assert run(shell, f"%ollama save {path}").success
    assert run(shell, "%ollama reset").success
    res = run(shell, f"%ollama load {path}")
    assert res.success, res.error_in_exec
    assert len(store.active.turns) == 1
    assert run(shell, "%ollama fork copy").success
    assert len(store.get("copy").turns) == 1
    assert run(shell, "%%ollama\nand on").success  # the next request carries it fine


def test_4_files_nested_too_deeply_are_refused(shell, ollama_server, tmp_path):
    run(shell, "%%ollama\nkept")
    path = tmp_path / "deep.json"
    run(shell, f"%ollama save {path}")
    data = json.loads(path.read_text())
    data["chats"][0]["options"] = {"x": nested(400)}
    path.write_text(json.dumps(data))
    before = state(store_of(shell))
    assert "nested too deeply" in one_line_usage_error(run(shell, f"%ollama load {path}"))
    assert state(store_of(shell)) == before


# -- 13. files behave like files -----------------------------------------------------
@pytest.mark.parametrize("verb,name", [("save", "chats.json"), ("export", "chat.md")])
def test_13_file_modes_and_symlinks(shell, ollama_server, tmp_path, verb, name):
    import os
    import stat as st

    run(shell, "%%ollama\nkept")
    old = os.umask(0o022)
    try:
        new = tmp_path / name
        assert run(shell, f"%ollama {verb} {new}").success
        assert st.S_IMODE(new.stat().st_mode) == 0o644  # what open() gives with this umask
        os.umask(0o077)
        assert run(shell, f"%ollama {verb} {tmp_path / ('private-' + name)}").success
        assert st.S_IMODE((tmp_path / ("private-" + name)).stat().st_mode) == 0o600
        new.chmod(0o640)
        assert run(shell, f"%ollama {verb} {new}").success
        assert st.S_IMODE(new.stat().st_mode) == 0o640  # an existing file keeps its mode
        real_dir = tmp_path / "real"
        real_dir.mkdir()
        real = real_dir / name
        real.write_text("old")
        real.chmod(0o664)
        link = tmp_path / ("link-" + name)
        link.symlink_to(real)
        assert run(shell, f"%ollama {verb} {link}").success
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert real.read_text() != "old" and st.S_IMODE(real.stat().st_mode) == 0o664
        assert sorted(p.name for p in real_dir.iterdir()) == [name]  # no temp file left
    finally:
        os.umask(old)


# -- 3. Ctrl-C while a tool runs stores nothing, whatever the timing --------------------
def test_3_interrupt_during_the_first_tool_stores_nothing(shell, ollama_server, capsys):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    # The tool itself is where Ctrl-C lands: deterministic, no timer. The round
    # has thinking before its tool call (the "Let me check." preamble).
    run(shell, 'def slow(x: int) -> int:\n    """Take a while."""\n    raise KeyboardInterrupt')
    res = run(shell, "%%ollama -m qwen3 --think --tools slow\nlook up 3")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert state(store_of(shell)) == before
    assert "nothing stored" in capsys.readouterr().out


# -- 6. an interrupt is one line, and still a KeyboardInterrupt (real kernel) ----------------
def test_6_interrupt_is_one_line_and_a_keyboard_interrupt(ollama_server):
    from kernel_util import kernel

    ollama_server.token_delay = 0.02
    ollama_server.reply_tokens = 2000
    with kernel({"OLLAMA_HOST": ollama_server.host}) as k:
        assert k.execute("%load_ext ollama_magic\n%ollama model llama3.2").status == "ok"
        msg_id = k.send("%%ollama\ntell me a long story", cell_id="story")
        k.wait_for_output(msg_id, "I saw")
        k.km.interrupt_kernel()
        ex = k.collect(msg_id)
        content = ex.reply["content"]
        assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"
        errors = [m["content"] for m in ex.outputs if m["msg_type"] == "error"]
        assert len(errors) == 1 and errors[0]["ename"] == "KeyboardInterrupt"
        tb = "\n".join(errors[0]["traceback"])
        assert len(errors[0]["traceback"]) == 1 and "partial reply kept" in tb, tb
        assert "httpx" not in tb and "Traceback" not in tb
        assert "interrupted" in ex.text  # the footer
        # Run All stops: the next cell of the same request batch is not run by Jupyter,
        # and the kernel is fine for the next one.
        state_ex = k.execute("_m = get_ipython().magics_manager.registry['OllamaMagics']\n"
                             "print(_m.store.active.turns[-1].meta.status)")
        assert state_ex.text.strip() == "interrupted"


# -- 12. one clear line for each of these ----------------------------------------------
def test_12_wrong_json_shape_is_one_line(shell, ollama_server):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    ollama_server.wrong_shape = True
    for flags in ("", " --no-stream"):
        msg = one_line_usage_error(run(shell, f"%%ollama{flags}\nhello"))
        assert "not what the Ollama API sends" in msg and "pydantic" not in msg and "validation error" not in msg, msg
    assert state(store_of(shell)) == before


def test_12_empty_503_says_so(shell, ollama_server):
    ollama_server.status, ollama_server.status_body = 503, b""
    msg = one_line_usage_error(run(shell, "%%ollama\nhello"))
    assert "HTTP 503 with an empty body" in msg and ": ." not in msg, msg


def test_12_models_with_a_bad_host_has_no_class_prefix(shell, ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://[::1")
    msg = one_line_usage_error(run(shell, "%ollama models"))
    assert "OllamaMagicError" not in msg and "not a valid URL" in msg, msg


def test_12_tools_that_are_not_functions(shell, ollama_server):
    run(shell, "import functools\ndef area(w: int, h: int) -> int:\n    'Area.'\n    return w * h\n"
               "class Klass:\n    def __call__(self, x: int) -> int:\n        'x'\n        return x\n"
               "part = functools.partial(area, 2)\nobj = Klass()\nklass = Klass")
    sent = len(ollama_server.requests)
    msg = one_line_usage_error(run(shell, "%%ollama --tools part\nhi"))
    assert "functools.partial" in msg and "wrap it in a def" in msg, msg
    msg = one_line_usage_error(run(shell, "%%ollama --tools obj\nhi"))
    assert "Klass object" in msg and "__name__" not in msg, msg
    msg = one_line_usage_error(run(shell, "%%ollama --tools klass\nhi"))
    assert "it is a class" in msg and "did you mean 'klass'" not in msg, msg
    assert "did you mean 'area'" in one_line_usage_error(run(shell, "%%ollama --tools aera\nhi"))
    assert len(ollama_server.requests) == sent


def test_12_format_suggests_only_schemas(shell, ollama_server):
    run(shell, "Person = {'type': 'object'}")
    msg = one_line_usage_error(run(shell, "%%ollama --format Nope\nhi"))
    assert "did you mean" not in msg, msg  # not the builtin `open`
    msg = one_line_usage_error(run(shell, "%%ollama --format Persn\nhi"))
    assert "did you mean 'Person'" in msg


@pytest.mark.parametrize("name", ["get_ipython", "In", "Out", "exit", "quit", "_ih", "_oh", "_dh", "_",
                                  "__builtins__", "_i3", "_5", "class"])
def test_12_out_refuses_names_ipython_needs(shell, ollama_server, name):
    sent = len(ollama_server.requests)
    msg = one_line_usage_error(run(shell, f"%%ollama --out {name}\nhi"))
    assert name in msg
    assert len(ollama_server.requests) == sent
    assert run(shell, "%ollama chats").success  # every later magic still works
    assert run(shell, "%%ollama --out reply\nhi").success and shell.user_ns["reply"]


# -- 10. a tool-call flood is capped: bounded display, bounded history ------------------
def test_10_tool_call_flood_is_capped(nb_shell, ollama_server):
    calls: list[int] = []
    nb_shell.user_ns["calls"] = calls
    run(nb_shell, 'def add(a: int, b: int) -> int:\n    """Add."""\n    calls.append(1)\n    return a + b')
    ollama_server.tool_calls = 3000
    ollama_server.tool_mode = "auto"  # one round of 3,000 calls, then the answer
    pub = nb_shell.display_pub
    pub.messages.clear()
    res = run(nb_shell, "%%ollama --tools add\nadd 1 and 2")
    assert res.success, res.error_in_exec
    cap = magics_of(nb_shell).max_tool_calls
    assert len(calls) == cap
    size = len(json.dumps(pub.messages, default=str))
    assert len(pub.messages) < 100 and size < 500_000, (len(pub.messages), size)
    turn = store_of(nb_shell).active.turns[-1]
    tool_msgs = [m for m in turn.messages if m["role"] == "tool"]
    assert len(tool_msgs) == cap + 1 and "were not run" in tool_msgs[-1]["content"]
    asked = [m for m in turn.messages if m.get("tool_calls")]
    assert len(asked) == 1 and len(asked[0]["tool_calls"]) == cap
    # The model heard about the rest.
    assert "were not run" in ollama_server.last_chat()["messages"][-1]["content"]


# -- 11. settings take effect when changed ------------------------------------------------
def test_11_undo_depth_changed_after_load_takes_effect(shell, ollama_server):
    for i in range(4):
        run(shell, f"%%ollama\nturn {i}")
    assert store_of(shell).undo_depth() >= 4  # (the fixture's model choice is a step too)
    assert run(shell, "%config OllamaMagics.undo_depth = 2").success
    assert store_of(shell).undo_depth() == 2  # the newest two are kept
    for i in range(3):
        run(shell, f"%%ollama\nmore {i}")
    store = store_of(shell)
    assert store.undo_depth() == 2
    assert store.undo() and store.undo() and not store.undo()
    assert len(store.active.turns) == 5


def test_11_other_settings_are_read_when_used(shell, ollama_server, capsys):
    run(shell, "%config OllamaMagics.max_tool_calls = 3")
    run(shell, "%config OllamaMagics.rerun = 'append'")
    run(shell, "%ollama config")
    out = capsys.readouterr().out
    assert "max_tool_calls  3" in out and "rerun           append" in out
    run(shell, "%%ollama\none", cell_id="c1")
    run(shell, "%%ollama\none again", cell_id="c1")
    assert len(store_of(shell).active.turns) == 2  # append, as just configured


# -- 5. a slow model lookup after the reply never holds the cell ---------------------------
def test_5_slow_context_lookup_has_its_own_short_timeout(shell, ollama_server):
    import time

    assert run(shell, "%%ollama\nfirst").success
    magics_of(shell).models.forget()  # the next lookup goes to the server
    ollama_server.show_delay = 30.0  # /api/show and /api/ps hang
    started = time.monotonic()
    res = run(shell, "%%ollama --out answer\nsecond")
    elapsed = time.monotonic() - started
    assert res.success, res.error_in_exec
    assert shell.user_ns["answer"].endswith("You said: second")
    assert len(store_of(shell).active.turns) == 2
    assert elapsed < 20, elapsed  # the lookup's own timeout (3 s), not the 300 s of a turn


def test_5_interrupt_during_the_lookup_keeps_a_finished_turn(shell, ollama_server, capsys):
    from conftest import interrupt_main_after

    assert run(shell, "%%ollama\nfirst").success
    magics_of(shell).models.forget()
    ollama_server.show_delay = 30.0
    capsys.readouterr()
    timer = interrupt_main_after(1.0)
    try:
        res = run(shell, "%%ollama --out answer\nsecond")
    finally:
        timer.cancel()
    out = capsys.readouterr()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert "context-window check was skipped" in out.out + out.err
    assert "Traceback" not in out.out + out.err
    assert shell.user_ns["answer"].endswith("You said: second")  # --out was set
    assert "[llama3.2 ·" in out.out  # the footer: the output was finished
    assert len(store_of(shell).active.turns) == 2


# -- 14. the panel's Export without a path does not write into the notebook's folder --------
def test_14_panel_export_default_is_not_the_working_folder(tmp_path, monkeypatch):
    import tempfile

    from ollama_magic.store import Turn
    from ollama_magic.widget import HistoryPanel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    store = ConversationStore()
    store.commit(Turn.of({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}))
    panel = HistoryPanel(store)
    try:
        panel.receive({"do": "export"})
        target = tmp_path / "tmp" / "ollama_magic-exports" / "default.md"
        assert target.is_file() and str(target) in panel.status_text
        assert not (tmp_path / "default.md").exists()
    finally:
        panel.close()


def test_panel_without_its_dependency_is_one_line(nb_shell, monkeypatch):
    """A venv from before the panel needed anywidget: one line that says what to do, not a traceback."""
    import sys

    monkeypatch.delitem(sys.modules, "ollama_magic.widget", raising=False)
    monkeypatch.setitem(sys.modules, "anywidget", None)  # what an uninstalled package looks like to import
    before = state(store_of(nb_shell))
    msg = one_line_usage_error(run(nb_shell, "%ollama history"))
    assert "anywidget" in msg and "reinstall" in msg, msg
    assert state(store_of(nb_shell)) == before
