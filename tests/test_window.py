"""Automatic window sizing against the test server's small windows (it truncates like Ollama)."""

from __future__ import annotations

import html
from typing import Any

import pytest

from conftest import magics_of, run
from ollama_magic import window


def words(n: int, tag: str) -> str:
    return " ".join(["word"] * n) + f" {tag}"


def chat_num_ctx(server: Any) -> list[int | None]:
    return [(body.get("options") or {}).get("num_ctx") for body in server.chat_requests()]


def seen_all(shell: Any, server: Any) -> bool:
    """The model read every message sent (its reply says how many it saw)."""
    body = server.last_chat()
    reply = magics_of(shell).store.active.turns[-1].reply["content"]
    return int(reply.split()[2]) == len(body["messages"])


def footer(shell: Any) -> str:
    """The last reply's footer line, as text."""
    return html.unescape(shell.display_pub.last_html.rsplit("\n", 1)[-1])


def grow(shell: Any, server: Any, turns: int, size: int = 40) -> list[str]:
    """Run `turns` cells of `size` words; the footer text of each."""
    footers = []
    for i in range(turns):
        assert run(shell, "%%ollama\n" + words(size, f"turn {i}")).success
        footers.append(footer(shell))
    return footers


def test_window_grows_in_powers_of_two_and_nothing_is_dropped(nb_shell, ollama_server):
    ollama_server.num_ctx = 256  # the model's own window (a Modelfile PARAMETER num_ctx)
    footers = grow(nb_shell, ollama_server, 14)
    sent = chat_num_ctx(ollama_server)
    assert sent[0] is None  # far from full: the request is as before
    values = [v for v in sent if v is not None]
    assert values and all(v & (v - 1) == 0 for v in values)  # powers of two
    assert values == sorted(values) and values[0] > 256 and len(set(values)) >= 2  # grew, never shrank
    assert sent[sent.index(values[0]):] == values  # once raised, every request carries it
    assert seen_all(nb_shell, ollama_server)
    raised = [f for f in footers if "window raised" in f]
    assert len(raised) == len(set(values))  # said once per change
    assert f"window raised to {values[-1]:,} tokens; the model reloads once" in raised[-1]
    assert not any("⚠" in f for f in footers)
    nb_shell.run_line_magic("ollama", "options")  # shown as automatic, not as the user's
    assert magics_of(nb_shell).store.active.options == {}


def test_capped_by_max_num_ctx_then_the_warning_names_the_ways_out(nb_shell, ollama_server):
    ollama_server.num_ctx = 256
    magics_of(nb_shell).max_num_ctx = 512
    footers = grow(nb_shell, ollama_server, 12)
    values = [v for v in chat_num_ctx(ollama_server) if v is not None]
    assert max(values) == 512 and set(values) == {512}
    warned = [f for f in footers if "cannot grow" in f]
    assert warned and "OllamaMagics.max_num_ctx is 512" in warned[0]
    assert "%ollama reset" in warned[0] and "%ollama history" in warned[0] and "%ollama fork NEW --from N" in warned[0]


def test_capped_by_the_trained_length(nb_shell, ollama_server):
    ollama_server.num_ctx = 256
    ollama_server.models["llama3.2"]["context_length"] = 1024  # trained on 1,024 tokens
    footers = grow(nb_shell, ollama_server, 24)
    values = [v for v in chat_num_ctx(ollama_server) if v is not None]
    assert max(values) == 1024 and 512 in values
    assert any("the model's trained length is 1,024" in f for f in footers)


def test_explicit_num_ctx_is_never_overridden(nb_shell, ollama_server):
    ollama_server.num_ctx = 4096
    nb_shell.run_line_magic("ollama", "options num_ctx=256")
    footers = grow(nb_shell, ollama_server, 8)
    assert set(chat_num_ctx(ollama_server)) == {256}
    assert not any("window raised" in f for f in footers)
    assert any("raise it with %ollama options num_ctx=" in f for f in footers)
    run(nb_shell, "%%ollama -o num_ctx=128\n" + words(40, "once more"))
    assert chat_num_ctx(ollama_server)[-1] == 128


def test_automatic_value_is_not_inherited_and_not_the_users(nb_shell, ollama_server, capsys):
    ollama_server.num_ctx = 256
    grow(nb_shell, ollama_server, 8)
    grown = chat_num_ctx(ollama_server)[-1]
    assert grown and grown > 256
    capsys.readouterr()
    nb_shell.run_line_magic("ollama", "options")
    assert f"num_ctx={grown} (auto)" in capsys.readouterr().out
    run(nb_shell, "%%ollama -c other\nhello")
    assert chat_num_ctx(ollama_server)[-1] is None  # a new chat starts without it
    nb_shell.run_line_magic("ollama", "chat default")
    run(nb_shell, "%%ollama\n" + words(10, "back"))
    assert chat_num_ctx(ollama_server)[-1] == grown  # the first chat keeps it


def test_off_is_todays_behaviour_and_a_cut_under_90_percent_is_noticed(nb_shell, ollama_server):
    magics_of(nb_shell).auto_num_ctx = False
    ollama_server.num_ctx = 256
    run(nb_shell, "%%ollama\n" + words(100, "first"))
    assert "⚠" not in footer(nb_shell)
    # The second prompt (both questions and the echoed answer) is over 256 tokens: Ollama
    # drops the first exchange and reads ~100 tokens, well under 90% of the window.
    run(nb_shell, "%%ollama\n" + words(100, "second"))
    assert set(chat_num_ctx(ollama_server)) == {None}
    body = ollama_server.last_chat()
    assert not seen_all(nb_shell, ollama_server) and len(body["messages"]) == 3
    pec = magics_of(nb_shell).store.active.turns[-1].meta.prompt_eval_count
    assert pec < 0.9 * 256
    text = footer(nb_shell)
    assert "⚠ old messages were dropped" in text and "256-token window" in text
    assert "%ollama options num_ctx=8192" in text


def test_auto_grows_before_the_same_cut(nb_shell, ollama_server):
    ollama_server.num_ctx = 256
    run(nb_shell, "%%ollama\n" + words(100, "first"))
    run(nb_shell, "%%ollama\n" + words(100, "second"))
    assert chat_num_ctx(ollama_server)[-1] == 512
    assert seen_all(nb_shell, ollama_server)
    assert "window raised to 512 tokens" in footer(nb_shell)


# -- the planning rules alone ---------------------------------------------------------
@pytest.mark.parametrize("prompt,window,auto,trained,cap,expected", [
    (100, 4096, None, None, 32768, None),      # far from full: nothing sent
    (3700, 4096, None, None, 32768, 8192),     # past 90%: the next power of two with headroom
    (7000, 4096, None, None, 32768, 16384),    # a big jump goes straight to what fits
    (3700, 4096, 8192, None, 32768, 8192),     # an automatic value is kept, never lowered
    (3700, 4096, None, 6000, 32768, 6000),     # not above the trained length
    (30000, 4096, None, None, 16384, 16384),   # nor above max_num_ctx
    (30000, 16384, 16384, None, 16384, 16384),  # cannot grow: stays
])
def test_plan(prompt, window, auto, trained, cap, expected):
    out = plan_for(prompt, window, auto, trained, cap)
    assert out.num_ctx == expected
    assert out.window == (expected or window)
    assert out.raised == (expected is not None and expected != auto)


def plan_for(prompt: int, win: int, auto: int | None, trained: int | None, cap: int) -> window.Plan:
    return window.plan(prompt=prompt, window=win, explicit=None, auto=auto, trained=trained, max_num_ctx=cap)


def test_estimate_counts_images_at_768_tokens():
    with_image = window.estimate([{"role": "user", "content": "look", "images": ["x", "y"]}])
    assert with_image == pytest.approx(1 + window.MESSAGE_TOKENS + 2 * 768)


def test_fork_from_a_later_turn_is_a_way_out(shell, ollama_server, capsys):
    for q in ("one", "two", "three"):
        run(shell, f"%%ollama\n{q}")
    shell.run_line_magic("ollama", "fork short --from 3")
    assert "Forked into chat 'short' with 1 turns" in capsys.readouterr().out
    run(shell, "%%ollama\nfour")
    users = [m["content"] for m in ollama_server.last_chat()["messages"] if m["role"] == "user"]
    assert users == ["three", "four"]
    res = run(shell, "%ollama fork other --from 9")
    assert "--from must be between" in str(res.error_in_exec)


def test_the_estimate_of_a_long_chat_reads_no_message():
    """Sizing a 100,000-turn chat costs what a 1-turn chat does: the store keeps prefix sums."""
    from ollama_magic.store import Conversation, Turn, TurnMeta

    calls = [{"function": {"name": "f", "arguments": {"x": 1}}}]
    turns = [Turn(({"role": "user", "content": "x" * 400, "images": ["aGk="]},
                   {"role": "assistant", "content": "", "tool_calls": calls},
                   {"role": "tool", "content": "1"},
                   {"role": "assistant", "content": "done", "thinking": "not sent, not counted"}),
                  TurnMeta(cell_id=f"c{i}")) for i in range(100_000)]
    conv = Conversation("c", turns=turns)
    small = Conversation("s", turns=turns[:3])
    assert window.estimate_history(small, 3, "be brief") == pytest.approx(
        window.estimate(small.history(3, system="be brief")))
    assert window.estimate_history(conv, 60_000, None) == pytest.approx(window.estimate(conv.history(60_000)))
    one = window.estimate(turns[0].sent())
    assert one == pytest.approx(100 + 4 * window.MESSAGE_TOKENS + 768 + (len('[{"function": {"name": "f", '
                                                                            '"arguments": {"x": 1}}}]') + 5) / 4)
    # O(1): timed against the 3-turn chat in the same run, with a wide margin (no message is read).
    import timeit

    big = min(timeit.repeat(lambda: window.estimate_history(conv, 100_000, "s"), number=200, repeat=5))
    tiny = min(timeit.repeat(lambda: window.estimate_history(small, 3, "s"), number=200, repeat=5))
    assert big < 20 * tiny + 1e-3


def test_the_test_server_cuts_long_prompts_like_ollama_in_linear_time(ollama_server, monkeypatch):
    """The server's cut (what these tests rely on) keeps systems and the newest messages that fit,
    and a 20,000-message prompt no longer takes minutes (it ran the benchmark into its timeout)."""
    import ollama

    ollama_server.num_ctx = 50
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(10_000):
        msgs += [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}]
    msgs.append({"role": "user", "content": "last one"})
    reply = ollama.Client(host=ollama_server.host, timeout=60).chat("llama3.2", messages=msgs)
    # system (3) + the newest 15 messages of 3 tokens, then "last one" (3): 3 + 15*3 + ... <= 50
    assert reply.prompt_eval_count <= 50
    assert reply.message.content.startswith(f"I saw {(50 - 3) // 3 + 1} messages")


def _paths_of_turn(ip: Any, server: Any, source: str, cell_id: str) -> tuple[list[str], list[str]]:
    """(paths asked before the /api/chat, paths asked after it) for one cell."""
    n = len(server.requests)
    result = run(ip, source, cell_id=cell_id)
    assert result.success, result.error_in_exec
    paths = [r.path for r in server.requests[n:]]
    assert paths.count("/api/chat") == 1, paths
    at = paths.index("/api/chat")
    return paths[:at], paths[at + 1:]


def test_a_turn_asks_nothing_before_its_request_while_far_from_the_window(nb_shell, ollama_server, monkeypatch):
    """First-token latency: no /api/show or /api/ps round trip before the chat request.

    The first turn of a new chat (no token count yet) and every later turn on the
    same model, even once the cached /api/ps answer is stale, send only /api/chat
    first; the capability check for --think still asks /api/show, once (cached).
    """
    from ollama_magic import models

    before, _ = _paths_of_turn(nb_shell, ollama_server, "%%ollama\nhello", "c1")
    assert before == []
    before, after = _paths_of_turn(nb_shell, ollama_server, "%%ollama\nand again", "c2")
    assert (before, after) == ([], [])  # the window read after turn 1 is cached
    monkeypatch.setattr(models, "_PS_TTL", 0.0)  # /api/ps answers always stale now
    before, _ = _paths_of_turn(nb_shell, ollama_server, "%%ollama\nthird", "c3")
    assert before == []
    before, _ = _paths_of_turn(nb_shell, ollama_server, "%%ollama -m qwen3 --think\nthink", "c4")
    assert before == ["/api/show"]
    before, _ = _paths_of_turn(nb_shell, ollama_server, "%%ollama -m qwen3 --think\nthink more", "c5")
    assert before == []


def test_a_large_first_prompt_still_looks_the_window_up(nb_shell, ollama_server):
    """The shortcut is only for prompts far below any window: a big first prompt is sized as before."""
    before, _ = _paths_of_turn(nb_shell, ollama_server, "%%ollama\n" + words(1200, "big"), "big")
    assert "/api/ps" in before and "/api/show" in before


def sent_requests(server: Any) -> list[tuple[str, int | None, int | None]]:
    """(path, messages in an /api/chat, its num_ctx) for every request the server received."""
    out = []
    for r in list(server.requests):
        body = r.json if isinstance(r.json, dict) else {}
        chat = r.path == "/api/chat"
        out.append((r.path, len(body.get("messages") or []) if chat else None,
                    (body.get("options") or {}).get("num_ctx") if chat else None))
    return out


def test_an_unknown_window_is_learned_before_a_big_first_prompt_never_shrinking_it(nb_shell, ollama_server):
    # OLLAMA_CONTEXT_LENGTH=32768 (or 32k by VRAM); the model is not loaded and has no Modelfile num_ctx,
    # so nothing says the window until it loads. 4,000 words estimate ~5,000 tokens: past 90% of 4,096.
    ollama_server.context_length = 32768
    assert run(nb_shell, "%%ollama\n" + words(4000, "big")).success
    reqs = sent_requests(ollama_server)
    chats = [r for r in reqs if r[0] == "/api/chat"]
    assert chats == [("/api/chat", 0, None), ("/api/chat", 1, None)]  # Ollama's load request, then the turn
    assert chat_num_ctx(ollama_server) == [None, None]  # no num_ctx below the server's 32,768
    assert "window raised" not in footer(nb_shell) and seen_all(nb_shell, ollama_server)
    assert [m["context_length"] for m in ollama_server._ps_entries()] == [32768]  # loaded once, never reloaded smaller
    # Cached: a second big prompt in a new chat asks no second load.
    assert run(nb_shell, "%%ollama -c other --new\n" + words(4000, "again")).success
    assert [r for r in sent_requests(ollama_server)[len(reqs):] if r[0] == "/api/chat"] == [("/api/chat", 1, None)]


@pytest.mark.parametrize("server_window", [2048, 4096])
def test_a_learned_window_smaller_than_the_prompt_still_grows(nb_shell, ollama_server, server_window):
    ollama_server.context_length = server_window
    assert run(nb_shell, "%%ollama\n" + words(4000, "big")).success
    sent = chat_num_ctx(ollama_server)
    assert [len(b.get("messages") or []) for b in ollama_server.chat_requests()] == [0, 1]  # learned, then sized
    assert sent == [None, 8192] and sent[1] > server_window  # ~5,000 tokens at most 75% full
    assert "window raised to 8,192 tokens" in footer(nb_shell) and seen_all(nb_shell, ollama_server)


def test_an_ordinary_short_turn_makes_no_extra_request(nb_shell, ollama_server):
    ollama_server.context_length = 32768
    assert run(nb_shell, "%%ollama\nhello there").success
    assert run(nb_shell, "%%ollama\nand again").success
    chats = [r for r in sent_requests(ollama_server) if r[0] == "/api/chat"]
    assert chats == [("/api/chat", 1, None), ("/api/chat", 3, None)]  # no load request, no num_ctx
    paths = [r[0] for r in sent_requests(ollama_server)]
    # The model chosen at setup (/api/tags), the two turns and the window read after the first: nothing more.
    assert paths == ["/api/tags", "/api/chat", "/api/ps", "/api/chat"], paths


def test_a_failed_load_falls_back_to_the_assumed_default_and_never_fails_the_turn(nb_shell, ollama_server):
    from ollama_magic import chat

    # A real client to a port nothing listens on: the load cannot be made.
    magics_of(nb_shell).models._load_client = lambda: chat.client_for("http://127.0.0.1:9", {}, 1.0)
    assert run(nb_shell, "%%ollama\n" + words(4000, "big")).success
    assert chat_num_ctx(ollama_server) == [8192]  # sized from default_num_ctx, as before


def test_ctrl_c_while_learning_the_window_is_one_line_and_sends_nothing(nb_shell, ollama_server):
    from ollama_magic.errors import Interrupted

    def stopped(model: str) -> int | None:
        raise KeyboardInterrupt

    magics = magics_of(nb_shell)
    magics.sizer._learn = stopped  # Ctrl-C arrives during the load request
    with pytest.raises(Interrupted, match="nothing was sent or stored"):
        nb_shell.run_cell_magic("ollama", "", words(4000, "big"))
    assert ollama_server.chat_requests() == [] and not magics.store.active.turns


def test_one_order_for_the_servers_window_sizing_panel_and_show_agree(shell, ollama_server, capsys):
    # models.ModelInfo.server_window: /api/ps once loaded (or as learned by loading), else a Modelfile
    # num_ctx clamped to the trained length (Ollama clamps it, sched.go), else unknown.
    m = magics_of(shell)
    models = m.models
    assert models.server_window("tinyllama") is None and m.context_window("tinyllama") is None
    assert models.window("tinyllama", {}, 4096) == window_of(2048, "default")  # the default, clamped too
    ollama_server.num_ctx = 8192  # PARAMETER num_ctx 8192 on a model trained on 2,048
    models.forget()
    assert models.server_window("tinyllama") == window_of(2048, "parameters")
    assert m.context_window("tinyllama") == 2048  # what the sizer and the panel read: the same number
    assert models.window("tinyllama", {}, 4096) == window_of(2048, "parameters")
    assert models.server_window("llama3.2") == window_of(8192, "parameters")
    assert models.learn_window("llama3.2") == 8192  # loaded now: /api/ps says it, first
    assert models.server_window("llama3.2") == window_of(8192, "loaded") == models.window("llama3.2", {}, 4096)
    assert models.window("llama3.2", {"num_ctx": 16384}, 4096) == window_of(16384, "option")  # yours wins
    capsys.readouterr()
    assert run(shell, "%ollama show tinyllama").success
    assert "window now     2048 (the model's num_ctx parameter)" in capsys.readouterr().out


def window_of(size: int, source: str) -> Any:
    from ollama_magic.models import Window

    return Window(size, source)
