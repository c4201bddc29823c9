"""The core loop: cells continue one conversation through the real client and the test server."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import interrupt_main_after, magics_of, run


def chat_bodies(server: Any) -> list[dict[str, Any]]:
    return server.chat_requests()


def test_three_cells_send_the_growing_history(shell, ollama_server):
    for q in ("first question", "second question", "third question"):
        assert run(shell, f"%%ollama\n{q}").success
    bodies = chat_bodies(ollama_server)
    assert [len(b["messages"]) for b in bodies] == [1, 3, 5]
    # Every request starts byte-for-byte with the previous one plus its reply.
    for prev, nxt in zip(bodies, bodies[1:]):
        prefix = nxt["messages"][: len(prev["messages"])]
        assert json.dumps(prefix) == json.dumps(prev["messages"])
        assert nxt["messages"][len(prev["messages"])]["role"] == "assistant"
    assert [m["content"] for m in bodies[-1]["messages"] if m["role"] == "user"] == [
        "first question", "second question", "third question"]
    assert bodies[-1]["messages"][1]["content"] == "I saw 1 messages. You said: first question"
    assert all(b["model"] == "llama3.2" for b in bodies)
    assert all(b["stream"] is True for b in bodies)


def test_system_prompt_is_first_in_every_request(shell, ollama_server):
    run(shell, "%%ollama --system 'You are terse.'\nhi")
    run(shell, "%%ollama\nagain")
    for body in chat_bodies(ollama_server):
        assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert [len(b["messages"]) for b in chat_bodies(ollama_server)] == [2, 4]


def test_model_switch_sticks_and_options_reach_the_server(shell, ollama_server):
    run(shell, "%%ollama -m qwen3 -o num_ctx=8192 -o seed=1 -t 0.2\nhello")
    run(shell, "%%ollama\nand again")
    first, second = chat_bodies(ollama_server)
    assert first["model"] == "qwen3" and second["model"] == "qwen3"
    assert first["options"] == {"num_ctx": 8192, "seed": 1, "temperature": 0.2}
    assert "options" not in second or not second["options"]  # -o is for one turn only
    assert magics_of(shell).store.active.model == "qwen3"


def test_chat_options_and_turn_overrides(shell, ollama_server):
    shell.run_line_magic("ollama", "options num_ctx=2048 temperature=0.5")
    run(shell, "%%ollama -t 0.1 -o stop='[\"x\"]'\nhello")
    assert chat_bodies(ollama_server)[-1]["options"] == {"num_ctx": 2048, "temperature": 0.1, "stop": ["x"]}


def test_bad_json_option_is_a_clear_error(shell, ollama_server, capsys):
    res = run(shell, "%%ollama -o stop=[oops\nhello")
    assert isinstance(res.error_in_exec, UsageError)
    assert "looks like JSON" in str(res.error_in_exec)
    assert chat_bodies(ollama_server) == []


def test_no_stream(shell, ollama_server, capsys):
    run(shell, "%%ollama --no-stream\nhello")
    assert chat_bodies(ollama_server)[-1]["stream"] is False
    assert "You said: hello" in capsys.readouterr().out


FAULTS = [
    ("status", 500, "answered HTTP 500"),
    ("error_after", 3, "error mid-reply"),
    ("drop_after", 3, "dropped mid-reply"),
    ("garbage_line", True, "not JSON"),
    ("no_done", True, "ended before it was complete"),
    ("empty_body", True, "ended before it was complete"),
]


@pytest.mark.parametrize("attr,value,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_failures_leave_no_trace(shell, ollama_server, attr, value, message):
    run(shell, "%%ollama\nkept question")
    store = magics_of(shell).store
    before = list(store.active.turns)
    setattr(ollama_server, attr, value)
    res = run(shell, "%%ollama\nfailing question")
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    assert message in str(res.error_in_exec)
    assert "\n" not in str(res.error_in_exec)
    assert store.active.turns == before
    setattr(ollama_server, attr, None if not isinstance(value, bool) else False)
    run(shell, "%%ollama\nnext question")
    last = chat_bodies(ollama_server)[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == ["kept question", "next question"]
    assert not any("failing" in m["content"] for m in last)


def test_unknown_model_lists_installed_and_says_pull(shell, ollama_server):
    res = run(shell, "%%ollama -m llama3.3\nhello")
    msg = str(res.error_in_exec)
    assert "not installed" in msg and "ollama pull llama3.3" in msg
    assert "llama3.2" in msg and "did you mean 'llama3.2'" in msg
    assert magics_of(shell).store.active.model == "llama3.2"  # unchanged
    assert magics_of(shell).store.active.turns == []


@pytest.mark.parametrize("stream", [True, False])
def test_server_down(shell, ollama_server, monkeypatch, stream):
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # discard port: nothing listens
    res = run(shell, "%%ollama" + ("" if stream else " --no-stream") + "\nhello")
    msg = str(res.error_in_exec)
    assert isinstance(res.error_in_exec, UsageError)
    assert "Cannot reach Ollama at http://127.0.0.1:9 (from OLLAMA_HOST)" in msg
    assert "ollama serve" in msg
    assert magics_of(shell).store.active.turns == []


def test_timeout_before_first_token(shell, ollama_server):
    shell.run_line_magic("config", "OllamaMagics.timeout = 0.3")
    ollama_server.first_token_delay = 2.0
    t0 = time.monotonic()
    res = run(shell, "%%ollama\nhello")
    assert time.monotonic() - t0 < 1.5
    assert "did not answer within 0.3 s" in str(res.error_in_exec)
    assert magics_of(shell).store.active.turns == []


def test_interrupt_keeps_partial_reply_marked(shell, ollama_server, capsys):
    ollama_server.token_delay = 0.01
    ollama_server.reply_tokens = 400
    run(shell, "%%ollama\nfirst")
    ollama_server.reset()
    ollama_server.token_delay = 0.02
    ollama_server.reply_tokens = 400
    timer = interrupt_main_after(0.4)
    res = run(shell, "%%ollama\nlong answer please")
    timer.join()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    turns = magics_of(shell).store.active.turns
    assert len(turns) == 2
    partial = turns[-1]
    assert partial.meta.status == "interrupted"
    assert 0 < len(partial.reply["content"].split()) < 400
    assert "interrupted" in capsys.readouterr().out
    deadline = time.monotonic() + 3
    while ollama_server.disconnects < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ollama_server.disconnects == 1  # the socket was closed: Ollama stops generating
    ollama_server.reset()
    assert run(shell, "%%ollama\nafter the interrupt").success
    msgs = chat_bodies(ollama_server)[-1]["messages"]
    assert len(msgs) == 5 and msgs[3]["content"] == partial.reply["content"]


def test_display_is_throttled_and_ends_as_html(nb_shell, ollama_server):
    ollama_server.token_delay = 0.001
    ollama_server.reply_tokens = 300
    t0 = time.monotonic()
    run(nb_shell, "%%ollama\ncount to three hundred")
    elapsed = time.monotonic() - t0
    pub = nb_shell.display_pub
    updates = pub.updates
    assert len(pub.messages) - len(updates) == 1  # one display handle per reply
    assert len(updates) <= 15 * elapsed + 3, (len(updates), elapsed)
    assert len(updates) < 300 / 4  # never one message per token
    ids = {m["transient"].get("display_id") for m in pub.messages}
    assert len(ids) == 1
    final = pub.last_plain
    reply = magics_of(nb_shell).store.active.turns[-1].reply["content"]
    assert len(reply.split()) == 300 and final.startswith(reply)
    assert f"<p>{reply}</p>" in pub.last_html
    assert "llama3.2 · 300 tokens ·" in final and " tok/s · " in final


def test_reply_html_is_not_live(nb_shell, ollama_server):
    ollama_server.reply = "Look: <script>alert(1)</script> and <img src=x onerror=alert(2)> `<b>code</b>`"
    run(nb_shell, "%%ollama\nhi")
    out = nb_shell.display_pub.last_html
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<code>&lt;b&gt;code&lt;/b&gt;</code>" in out  # code spans are code


def test_terminal_prints_plain_text(shell, ollama_server, capsys):
    ollama_server.reply = "Plain **text** reply"
    run(shell, "%%ollama\nhi")
    out = capsys.readouterr().out
    assert "Plain **text** reply" in out
    assert "<IPython" not in out and "object at 0x" not in out


def test_unload_then_load_leaves_no_duplicate_callbacks(shell, ollama_server):
    def ours(event: str) -> int:
        return sum(1 for cb in shell.events.callbacks[event] if type(getattr(cb, "__self__", None)).__name__ == "OllamaMagics")

    shell.run_line_magic("load_ext", "ollama_magic")  # twice is harmless
    assert ours("pre_run_cell") == 1 and ours("post_run_cell") == 1
    shell.run_line_magic("unload_ext", "ollama_magic")
    assert ours("pre_run_cell") == 0 and "ollama" not in shell.magics_manager.magics["cell"]
    assert not any(type(c).__name__ == "OllamaMagics" for c in shell.configurables)
    shell.run_line_magic("load_ext", "ollama_magic")
    assert ours("pre_run_cell") == 1 and ours("post_run_cell") == 1
    shell.run_line_magic("ollama", "model llama3.2")
    assert run(shell, "%%ollama\nstill works").success


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, ollama_magic; print('ipywidgets' in sys.modules, 'ollama' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_load_ext_imports_neither_the_client_nor_widgets(ollama_server):
    """`%load_ext` in a kernel that has only IPython: `ollama` (300 ms of pydantic
    models) and its httpx wait for the first request, ipywidgets for a panel."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'ollama_magic')\n"
        # markdown-it and nh3 render a finished reply: they can wait for the first one
        "heavy = ('ollama', 'httpx', 'pydantic', 'ipywidgets', 'markdown_it', 'nh3')\n"
        "print(*[m in sys.modules for m in heavy], *[m for m in heavy if m in sys.modules])\n"
        "from ollama_magic.errors import translate\n"  # a friendly error needs no client either
        "err = translate(ConnectionError('refused'), host='h', host_source='s', model='m')\n"
        "print('Cannot reach' in str(err), 'ollama' in sys.modules)\n"
        "r = ip.run_cell('%%ollama -m llama3.2\\nhello')\n"  # the first request brings the client
        "print(r.success, 'ollama' in sys.modules)\n"
    )
    env = {**os.environ, "OLLAMA_HOST": ollama_server.host}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["False"] * 6 and lines[1].split() == ["True", "False"], out.stdout
    assert lines[-1].split() == ["True", "True"], out.stdout


def test_config_traitlets(shell, ollama_server, capsys):
    shell.run_line_magic("config", "OllamaMagics.model = 'qwen3'")
    magics = magics_of(shell)
    magics.store.set_model(None)
    run(shell, "%%ollama\nhi")
    assert chat_bodies(ollama_server)[-1]["model"] == "qwen3"
    shell.run_line_magic("config", "OllamaMagics.options = {'seed': 7}")
    run(shell, "%%ollama\nhi")
    assert chat_bodies(ollama_server)[-1]["options"] == {"seed": 7}


def test_single_installed_model_is_used_and_announced(shell, ollama_server, capsys):
    magics = magics_of(shell)
    magics.store.set_model(None)
    ollama_server.models = {"only-one": ollama_server.models["llama3.2"]}
    run(shell, "%%ollama\nhi")
    assert chat_bodies(ollama_server)[-1]["model"] == "only-one"
    assert "the only model on the server" in capsys.readouterr().out


def test_no_model_chosen_lists_installed(shell, ollama_server):
    magics_of(shell).store.set_model(None)
    res = run(shell, "%%ollama\nhi")
    assert "No model chosen. Installed: llama3.2, qwen3" in str(res.error_in_exec)


def test_client_is_reused(shell, ollama_server):
    m = magics_of(shell)
    assert m.client() is m.client()


def test_api_key_and_headers_pass_through(shell, ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-secret-123")
    shell.run_line_magic("config", "OllamaMagics.headers = {'X-Team': 'nlp'}")
    run(shell, "%%ollama\nhi")
    rec = [r for r in ollama_server.requests if r.path == "/api/chat"][-1]
    headers = {k.lower(): v for k, v in rec.headers.items()}
    assert headers["authorization"] == "Bearer sk-secret-123"
    assert headers["x-team"] == "nlp"
