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
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import magics_of, run
from ollama_magic import persist, testing
from ollama_magic.render import NotebookView, TerminalView, safe_markdown
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


def interrupt_main_after(delay: float) -> threading.Timer:
    """Deliver a real SIGINT to the main thread, as Ctrl-C / the stop button does."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


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


def _big_reply_seconds(ip: Any, srv: Any, size: int) -> float:
    # ~100-byte words: one streamed chunk each, like a model's long tokens.
    word = "x" * 99 + " "
    srv.reply = word * (size // len(word))
    t0 = time.perf_counter()
    assert run(ip, "%%ollama --once\nsay a lot").success
    elapsed = time.perf_counter() - t0
    assert magics_of(ip).last_reply == srv.reply
    return elapsed


@pytest.mark.parametrize("kind", ["terminal", "notebook"])
def test_2mb_reply_streams_in_linear_time(request, ollama_server, kind):
    ip = request.getfixturevalue("shell" if kind == "terminal" else "nb_shell")
    if kind == "terminal":
        capsys = request.getfixturevalue("capsys")
    _big_reply_seconds(ip, ollama_server, 20_000)  # warm up
    small = min(_big_reply_seconds(ip, ollama_server, 200_000) for _ in range(2))
    big = _big_reply_seconds(ip, ollama_server, 2_000_000)
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


@pytest.mark.xfail(reason="needs magics.py fix: the '…' placeholder is shown before the client is built, "
                          "and nothing replaces it when that step is interrupted", strict=True)
def test_interrupt_before_the_request_does_not_leave_a_placeholder(nb_shell, ollama_server, monkeypatch):
    magics = magics_of(nb_shell)

    def interrupted_client() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(magics, "client", interrupted_client)
    res = run(nb_shell, "%%ollama\nnever sent")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    shown = [m for m in nb_shell.display_pub.messages if "data" in m]
    # Either nothing was shown, or the placeholder was replaced by a final word.
    assert not shown or "interrupted" in nb_shell.display_pub.last_markdown


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
    final = nb_shell.display_pub.last_markdown
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


@pytest.mark.xfail(reason="needs store.py fix: commit emits events mid-change, so an interrupt raised by a "
                          "listener (the history panel redrawing) leaves the model changed without its turn",
                   strict=True)
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
