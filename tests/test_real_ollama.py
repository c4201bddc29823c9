"""The extension against a server with real Ollama's rules (issue #13): capabilities,
thinking, options, windows, lifecycle, footers and errors. All through the real client."""

from __future__ import annotations

import time

import pytest

from conftest import magics_of, run
from ollama_magic.models import Facts, ModelInfo, PromptShape
from ollama_magic.options import check_options


def error_of(res) -> str:
    assert res.error_in_exec is not None, "expected the cell to fail"
    return str(res.error_in_exec)


# -- point 2: thinking under control ---------------------------------------------------
def test_thinking_model_thinks_by_default_and_is_stored(nb_shell, ollama_server):
    assert run(nb_shell, "%%ollama -m qwen3\nwhy").success
    assert "think" not in ollama_server.last_chat()  # nothing sent: Ollama's default is to think
    turn = magics_of(nb_shell).store.active.turns[-1]
    assert turn.reply["thinking"] == "Thinking about: why"  # stored like requested thinking
    html = nb_shell.display_pub.messages[-1]["data"]["text/html"]
    assert "<details><summary>Thinking</summary>" in html  # shown collapsed
    assert all("thinking" not in m for m in ollama_server.last_chat()["messages"])


@pytest.mark.parametrize("flag", ["--think false", "--no-think"])
def test_thinking_off(shell, ollama_server, flag):
    assert run(shell, f"%%ollama -m qwen3 {flag}\nquick").success
    assert ollama_server.last_chat()["think"] is False
    assert "thinking" not in magics_of(shell).store.active.turns[-1].reply


def test_think_true_and_levels(shell, ollama_server):
    assert run(shell, "%%ollama -m qwen3 --think true\na").success
    assert ollama_server.last_chat()["think"] is True
    assert run(shell, "%%ollama --think low\nb").success
    assert ollama_server.last_chat()["think"] == "low"


# -- point 3: capabilities checked before sending ----------------------------------------
@pytest.mark.parametrize("cell, capability, who", [
    ("%%ollama --think\nhi", "thinking", "qwen3"),
    ("%%ollama -m gemma3 --tools add\nhi", "tools", "llama3.2, qwen3"),
    ("%%ollama --image png\nhi", "vision", "gemma3"),
])
def test_missing_capability_is_one_line_and_sends_nothing(shell, ollama_server, cell, capability, who):
    shell.user_ns["png"] = b"\x89PNG\r\n\x1a\n fake"
    shell.user_ns["add"] = lambda a, b: a + b
    run(shell, "%%ollama\nfirst")  # a turn to keep
    before = len(magics_of(shell).store.active.turns)
    msg = error_of(run(shell, cell))
    model = "gemma3" if "gemma3" in cell else "llama3.2"
    assert f"{model} cannot" in msg and repr(capability) in msg and f"Installed models that can: {who}." in msg
    assert "\n" not in msg and len(ollama_server.chat_requests()) == 1  # nothing sent
    assert len(magics_of(shell).store.active.turns) == before  # nothing stored


def test_server_400_is_translated_to_the_same_line(shell, ollama_server):
    # A cached /api/show answer that is out of date: the server itself refuses, and says the same.
    magics = magics_of(shell)
    magics.models._facts[(ollama_server.host, "gemma3")] = (time.monotonic(), Facts("gemma3", capabilities=("completion", "tools")))
    shell.user_ns["add"] = lambda a, b: a + b
    msg = error_of(run(shell, "%%ollama -m gemma3 --tools add\nhi"))
    assert ollama_server.chat_requests()  # it was sent, and refused by the server (400)
    assert "gemma3 cannot call tools" in msg and "Installed models that can: llama3.2, qwen3." in msg


# -- point 4: the real window --------------------------------------------------------------
def test_window_resolution_order(ollama_server):
    import ollama

    client = ollama.Client(host=ollama_server.host)
    info = ModelInfo(lambda: client, lambda: ollama_server.host)
    w = info.window("tinyllama", {"num_ctx": 65536}, 4096)
    assert (w.size, w.source) == (2048, "option") and "trained" in (w.note or "")  # clamped, with a note
    assert info.window("llama3.2", {}, 4096).source == "default"  # library model, not loaded
    ollama_server.models["llama3.2"]["num_ctx"] = 1024
    info.forget()
    assert (info.window("llama3.2", {}, 4096).size, info.window("llama3.2", {}, 4096).source) == (1024, "parameters")
    ollama_server.context_length = 8192
    client.chat("qwen3", [{"role": "user", "content": "x"}])
    info.forget()
    assert (info.window("qwen3", {}, 4096).size, info.window("qwen3", {}, 4096).source) == (8192, "loaded")
    assert info.having("vision", ["llama3.2", "gemma3", "tinyllama"]) == ["gemma3"]


def test_lookups_never_fail_or_block_a_turn(shell, ollama_server):
    ollama_server.show_delay = 10  # /api/show and /api/ps hang
    start = time.monotonic()
    assert run(shell, "%%ollama -m qwen3 --think\nstill works").success
    assert time.monotonic() - start < 9  # the lookups gave up on their own short timeout


def test_prompt_shape_explains_a_shrink():
    a = PromptShape("m", 100, frozenset({"f", "g"}))
    assert not a.explains_shrink(a)
    assert PromptShape("m", 10, frozenset({"f", "g"})).explains_shrink(a)  # shorter system prompt
    assert PromptShape("m", 100, frozenset({"f"})).explains_shrink(a)  # fewer tools
    assert PromptShape("other", 100, frozenset({"f", "g"})).explains_shrink(a)  # another model


def test_no_shrank_warning_when_the_request_shrank(nb_shell, ollama_server):
    long_system = " ".join(["rule"] * 200)
    assert run(nb_shell, f"%%ollama --system '{long_system}'\nfirst").success
    assert run(nb_shell, "%%ollama --system short\nsecond").success  # the prompt shrank by itself
    assert "prompt shrank" not in nb_shell.display_pub.last_html


# -- point 5: options checked ------------------------------------------------------------
def test_unknown_option_did_you_mean_and_nothing_sent(shell, ollama_server):
    msg = error_of(run(shell, "%%ollama -o temprature=0.2\nhi"))
    assert "'temprature' is not an Ollama option" in msg and "did you mean 'temperature'?" in msg
    msg = error_of(run(shell, "%%ollama -o num_ctx=big\nhi"))
    assert "num_ctx must be an integer" in msg
    msg = error_of(run(shell, "%%ollama -o stop=1\nhi"))
    assert "stop must be an array of strings" in msg
    assert ollama_server.chat_requests() == []


def test_options_subcommand_and_trait_are_checked(shell, ollama_server):
    res = run(shell, "%ollama options temprature=0.5")
    assert "did you mean 'temperature'" in error_of(res)
    assert magics_of(shell).store.active.options == {}
    res = run(shell, "%config OllamaMagics.options = {'seed': 'x'}")
    assert magics_of(shell).options == {}
    run(shell, "%ollama options temperature=0.5 seed=1")
    assert magics_of(shell).store.active.options == {"temperature": 0.5, "seed": 1}


def test_option_table_matches_the_servers_type_errors():
    assert check_options({"temperature": 1, "num_ctx": 2048.0, "use_mmap": True, "stop": ["x"]}) is None
    assert "boolean" in (check_options({"use_mmap": 1}) or "")


# -- point 6: lifecycle ------------------------------------------------------------------
def test_keep_alive_setting_and_per_cell(shell, ollama_server, capsys):
    run(shell, "%%ollama\nhi")
    assert ollama_server.last_chat().get("keep_alive") is None  # the server's default unless set
    shell.run_line_magic("config", "OllamaMagics.keep_alive = '30m'")
    run(shell, "%%ollama\nhi")
    assert ollama_server.last_chat()["keep_alive"] == "30m"
    capsys.readouterr()
    shell.run_line_magic("ollama", "config")
    assert "keep_alive      30m" in capsys.readouterr().out
    run(shell, "%%ollama --keep-alive -1\nhi")
    assert ollama_server.last_chat()["keep_alive"] == -1.0
    assert "duration" in error_of(run(shell, "%%ollama --keep-alive forever\nhi"))


def test_pull_ps_show_unload(shell, ollama_server, capsys):
    shell.run_line_magic("ollama", "pull mistral")
    out = capsys.readouterr().out
    assert "mistral: installed" in out and "pulling manifest" in out
    assert "mistral" in magics_of(shell).installed()
    run(shell, "%%ollama -m mistral\nhello")
    shell.run_line_magic("ollama", "ps")
    out = capsys.readouterr().out
    assert "mistral:latest" in out and "4096" in out and "min" in out
    shell.run_line_magic("ollama", "show tinyllama")
    out = capsys.readouterr().out
    assert "capabilities   completion" in out and "trained window 2048" in out and "window now     2048 (the server default" in out
    shell.run_line_magic("ollama", "unload mistral")
    assert "mistral unloaded." in capsys.readouterr().out
    assert ollama_server.last_chat()["keep_alive"] == 0
    res = run(shell, "%ollama pull no-such-model")
    assert "not in the Ollama library" in error_of(res)


def test_pull_in_a_notebook_shows_a_progress_bar(nb_shell, ollama_server):
    nb_shell.run_line_magic("ollama", "pull llava")
    shown = [m for m in nb_shell.display_pub.messages if "data" in m]
    assert any("application/vnd.jupyter.widget-view+json" in m["data"] for m in shown)


def test_pull_is_interruptible(shell, ollama_server):
    from conftest import interrupt_main_after

    ollama_server.pull_delay = 0.2
    timer = interrupt_main_after(0.5)
    res = run(shell, "%ollama pull mistral")
    timer.cancel()
    assert "interrupted" in error_of(res)
    assert "mistral" not in magics_of(shell).installed()


def test_unknown_model_error_offers_pull(shell, ollama_server):
    msg = error_of(run(shell, "%%ollama -m mistral\nhi"))
    assert "%ollama pull mistral" in msg


# -- point 7: footer truth -----------------------------------------------------------------
def test_length_done_reason_says_cut(nb_shell, ollama_server):
    assert run(nb_shell, "%%ollama -o num_predict=2\nsay a lot").success
    md = nb_shell.display_pub.last_html
    assert "cut at num_predict / context (num_predict is 2)" in md and "num_predict=N" in md


def test_final_chunk_content_is_kept(shell, ollama_server):
    ollama_server.content_in_done = True
    assert run(shell, "%%ollama\nhello there").success
    assert magics_of(shell).store.active.turns[-1].reply["content"] == "I saw 1 messages. You said: hello there"


# -- point 8: errors that name the real cause ---------------------------------------------
def test_404_not_about_a_model(shell, ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host + "/v1")
    msg = error_of(run(shell, "%%ollama\nhi"))
    assert "not installed" not in msg and "does not serve the Ollama API" in msg and "/v1" in msg


def test_401_says_api_key_and_signin_url(shell, ollama_server):
    ollama_server.status = 401
    ollama_server.status_body = {"error": "unauthorized", "signin_url": "https://ollama.com/connect?name=x&key=abc"}
    msg = error_of(run(shell, "%%ollama\nhi"))
    assert "OLLAMA_API_KEY" in msg and "headers" in msg and "https://ollama.com/connect?name=x&key=abc" in msg
    ollama_server.status = 403
    ollama_server.status_body = {"error": "forbidden"}
    msg = error_of(run(shell, "%%ollama\nhi"))
    assert "HTTP 403" in msg and "OLLAMA_API_KEY" in msg and "sign in" not in msg
