"""The fake Ollama server, driven by the real ollama client."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Generator, Iterator
from typing import Any, Literal, cast

import httpx
import ollama
import pytest
from pydantic import BaseModel

from ollama_magic.testing import (
    MID_STREAM_ERROR,
    OllamaTestServer,
    start_server,
)

ROOT = Path(__file__).resolve().parents[1]
USER = [{"role": "user", "content": "hello there"}]


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: The first number.
      b: The second number.

    Returns:
      int: The sum.
    """
    return a + b


@pytest.fixture
def client(ollama_server: OllamaTestServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=ollama_server.host) as c:
        yield c


def collect(stream: Any) -> list[ollama.ChatResponse]:
    return list(stream)


def close(stream: Iterator[Any]) -> None:
    """Close a stream early, as the extension does on interrupt."""
    cast(Generator[Any, None, None], stream).close()


# -- chat -------------------------------------------------------------------


def test_stream_echoes_and_ends_with_stats(client: ollama.Client) -> None:
    chunks = collect(client.chat("llama3.2", USER, stream=True))
    *tokens, done = chunks
    assert "".join(c.message.content or "" for c in tokens) == "I saw 1 messages. You said: hello there"
    assert [c.message.content for c in tokens][:3] == ["I ", "saw ", "1 "]
    assert all(not c.done and c.model == "llama3.2" and c.created_at for c in tokens)
    assert done.done and done.done_reason == "stop" and done.message.content == ""
    assert done.eval_count == len(tokens)
    assert done.prompt_eval_count == 3  # "hello there" + 1 for the message
    ns = {k: getattr(done, k) for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")}
    assert all(isinstance(v, int) and v > 0 for v in ns.values())
    assert ns["total_duration"] >= ns["load_duration"] + ns["prompt_eval_duration"] + ns["eval_duration"]


def test_wire_format(ollama_server: OllamaTestServer) -> None:
    body = {"model": "llama3.2", "messages": USER}
    with httpx.Client(base_url=ollama_server.host) as http:
        r = http.post("/api/chat", json=body)
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text.endswith("\n") and "\n\n" not in r.text
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert all({"model", "created_at", "message", "done"} <= set(x) for x in lines)
        r = http.post("/api/chat", json={**body, "stream": False})
        assert r.headers["content-length"] == str(len(r.content))
        assert r.json()["message"]["content"] == "I saw 1 messages. You said: hello there"
    peers = {rec.peer for rec in ollama_server.requests}
    assert len(peers) == 1  # keep-alive: both requests on one connection


def test_non_stream(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    r = client.chat("qwen3", USER)
    assert r.message.role == "assistant"
    assert r.message.content == "I saw 1 messages. You said: hello there"
    assert r.done and r.done_reason == "stop" and r.eval_count == 8 and r.prompt_eval_count == 3
    assert ollama_server.last_chat()["stream"] is False


def test_history_is_counted_and_recorded(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    assert client.chat("llama3.2", history).message.content == "I saw 4 messages. You said: three"
    client.chat("llama3.2", USER)
    assert [len(c["messages"]) for c in ollama_server.chat_requests()] == [4, 1]
    assert ollama_server.last_chat()["messages"] == USER
    ollama_server.reset()
    assert ollama_server.requests == []
    with pytest.raises(LookupError):
        ollama_server.last_chat()


def test_latest_tag_resolves(client: ollama.Client) -> None:
    assert client.chat("llama3.2:latest", USER).model == "llama3.2:latest"


def test_fixture_sets_ollama_host(ollama_server: OllamaTestServer) -> None:
    assert os.environ["OLLAMA_HOST"] == ollama_server.host
    with ollama.Client() as c:
        assert c.chat("llama3.2", USER).done


def test_reply_and_reply_tokens(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.reply_tokens = 20
    *tokens, done = collect(client.chat("llama3.2", USER, stream=True))
    text = "".join(c.message.content or "" for c in tokens)
    assert text == "I saw 1 messages. You said: hello there" + "".join(f" w{i}" for i in range(1, 13))
    assert len(tokens) == done.eval_count == 20
    ollama_server.reply = "fixed  reply here"
    ollama_server.reply_tokens = 2
    *tokens, done = collect(client.chat("llama3.2", USER, stream=True))
    assert [c.message.content for c in tokens] == ["fixed  ", "reply "]
    assert done.done_reason == "length"
    ollama_server.reset()
    assert ollama_server.reply is None and ollama_server.reply_tokens is None


def test_think_streams_thinking_first(client: ollama.Client) -> None:
    chunks = collect(client.chat("qwen3", USER, stream=True, think=True))
    thinking = [c for c in chunks if c.message.thinking]
    assert "".join(c.message.thinking or "" for c in thinking) == "Thinking about: hello there"
    assert all(c.message.content == "" for c in thinking)
    assert chunks[: len(thinking)] == thinking
    assert "".join(c.message.content or "" for c in chunks).startswith("I saw 1 messages")
    r = client.chat("qwen3", USER, think=True)
    assert r.message.thinking == "Thinking about: hello there"


def test_format_json(client: ollama.Client) -> None:
    r = client.chat("llama3.2", USER, format="json")
    assert json.loads(r.message.content or "") == {"messages": 1, "echo": "hello there"}
    streamed = "".join(c.message.content or "" for c in client.chat("llama3.2", USER, format="json", stream=True))
    assert streamed == r.message.content


class Pet(BaseModel):
    name: str
    legs: int


class Answer(BaseModel):
    title: str
    score: float
    ok: bool
    count: int
    tags: list[str]
    kind: Literal["cat", "dog"]
    pet: Pet
    nickname: str | None = None


def test_format_schema(client: ollama.Client) -> None:
    r = client.chat("llama3.2", USER, format=Answer.model_json_schema())
    answer = Answer.model_validate_json(r.message.content or "")
    assert answer.count == 1 and answer.kind == "cat" and answer.pet.legs == 1 and answer.tags == ["text"]


# -- tools ------------------------------------------------------------------


def test_tool_call_round_trip(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "what is 3 plus 4?"}]
    chunks = collect(client.chat("llama3.2", messages, tools=[add], stream=True))
    calls = [call for c in chunks for call in c.message.tool_calls or []]
    assert len(calls) == 1 and chunks[-1].done and chunks[-1].done_reason == "stop"
    assert calls[0].function.name == "add" and dict(calls[0].function.arguments) == {"a": 3, "b": 4}
    sent = ollama_server.last_chat()["tools"][0]["function"]
    assert sent["name"] == "add" and set(sent["parameters"]["properties"]) == {"a", "b"}
    result = add(**calls[0].function.arguments)
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [calls[0]]},
        {"role": "tool", "content": str(result), "tool_name": "add"},
    ]
    r = client.chat("llama3.2", messages, tools=[add])
    assert r.message.content == "The tool add returned: 7" and not r.message.tool_calls


def test_tool_defaults_and_modes(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    r = client.chat("llama3.2", [{"role": "user", "content": "add some"}], tools=[add])
    assert r.message.tool_calls and dict(r.message.tool_calls[0].function.arguments) == {"a": 1, "b": 2}
    tool_reply = [*USER, {"role": "tool", "content": "3", "tool_name": "add"}]

    ollama_server.tool_mode = "never"
    r = client.chat("llama3.2", USER, tools=[add])
    assert not r.message.tool_calls and (r.message.content or "").startswith("I saw")

    ollama_server.tool_mode = "always"
    r = client.chat("llama3.2", tool_reply, tools=[add])
    assert r.message.tool_calls and r.message.tool_calls[0].function.name == "add"

    ollama_server.tool_mode = "unknown"
    r = client.chat("llama3.2", USER, tools=[add])
    assert r.message.tool_calls and r.message.tool_calls[0].function.name not in {"add"}

    ollama_server.tool_mode = "badargs"
    r = client.chat("llama3.2", USER, tools=[add])
    assert r.message.tool_calls
    with pytest.raises(TypeError):
        add(**r.message.tool_calls[0].function.arguments)


# -- faults -----------------------------------------------------------------


def test_status_fault(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.status = 500
    with pytest.raises(ollama.ResponseError) as e:
        collect(client.chat("llama3.2", USER, stream=True))
    assert e.value.status_code == 500
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("llama3.2", USER)
    assert e.value.status_code == 500


def test_unknown_model(client: ollama.Client) -> None:
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as e:
            collect(client.chat("nope", USER, stream=True)) if stream else client.chat("nope", USER)
        assert e.value.status_code == 404
        assert e.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert e.value.status_code == 404


def test_error_after(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.error_after = 3
    got = []
    with pytest.raises(ollama.ResponseError) as e:
        for chunk in client.chat("llama3.2", USER, stream=True):
            got.append(chunk.message.content)
    assert e.value.error == MID_STREAM_ERROR and e.value.status_code == -1
    assert got == ["I ", "saw ", "1 "]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("llama3.2", USER)
    assert e.value.status_code == 500
    # The stream ended cleanly, so the next request works on the same client.
    ollama_server.error_after = None
    assert client.chat("llama3.2", USER).done


def test_drop_after(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.drop_after = 2
    got = []
    with pytest.raises(httpx.TransportError):
        for chunk in client.chat("llama3.2", USER, stream=True):
            got.append(chunk.message.content)
    assert got == ["I ", "saw "]
    with pytest.raises(httpx.TransportError):
        client.chat("llama3.2", USER)
    ollama_server.drop_after = None
    assert client.chat("llama3.2", USER).done


def test_garbage_line(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.garbage_line = True
    stream = client.chat("llama3.2", USER, stream=True)
    assert next(stream).message.content == "I "
    with pytest.raises(json.JSONDecodeError):
        next(stream)
    close(stream)


def test_no_done(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.no_done = True
    chunks = collect(client.chat("llama3.2", USER, stream=True))
    assert chunks and not any(c.done for c in chunks)
    assert "".join(c.message.content or "" for c in chunks) == "I saw 1 messages. You said: hello there"


def test_empty_body(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.empty_body = True
    assert collect(client.chat("llama3.2", USER, stream=True)) == []
    with pytest.raises(json.JSONDecodeError):
        client.chat("llama3.2", USER)


def test_bad_requests(ollama_server: OllamaTestServer) -> None:
    with httpx.Client(base_url=ollama_server.host) as http:
        r = http.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()
        bad_image = [{"role": "user", "content": "look", "images": ["not base64!"]}]
        r = http.post("/api/chat", json={"model": "llama3.2", "messages": bad_image})
        assert r.status_code == 400 and r.json() == {"error": "invalid image"}
        assert http.get("/api/nothing").status_code == 404
        assert http.get("/api/chat").status_code == 404


def test_images_are_counted(client: ollama.Client) -> None:
    image = base64.b64encode(b"\x89PNG fake").decode()
    r = client.chat("llama3.2", [{"role": "user", "content": "see", "images": [image, image]}])
    assert r.message.content == "I saw 1 messages. You said: see I see 2 image(s)."


def test_num_ctx_truncates_oldest(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    history = [{"role": "system", "content": "sys"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"} for i in range(9)
    ]  # system costs 2, each other message 4: 38 in all
    r = client.chat("llama3.2", history)
    assert r.prompt_eval_count == 38 and (r.message.content or "").startswith("I saw 10 messages")
    ollama_server.num_ctx = 15
    r = client.chat("llama3.2", history)
    assert r.message.content == "I saw 4 messages. You said: message number 8"
    assert r.prompt_eval_count == 14
    assert "num_ctx 15" in (client.show("llama3.2").parameters or "")
    # A request's own num_ctx wins, as in Ollama.
    r = client.chat("llama3.2", history, options={"num_ctx": 100})
    assert (r.message.content or "").startswith("I saw 10 messages")


# -- timing, disconnects, lifecycle -----------------------------------------


def test_token_and_first_token_delay(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.token_delay = 0.02
    start = time.monotonic()
    chunks = collect(client.chat("llama3.2", USER, stream=True))
    elapsed = time.monotonic() - start
    assert 0.02 * (len(chunks) - 2) <= elapsed < 2
    ollama_server.token_delay = 0.0
    ollama_server.first_token_delay = 0.3
    with httpx.Client(base_url=ollama_server.host) as http:
        start = time.monotonic()
        with http.stream("POST", "/api/chat", json={"model": "llama3.2", "messages": USER}) as r:
            headers_at = time.monotonic() - start
            first = next(r.iter_lines())
            first_at = time.monotonic() - start
    assert headers_at < 0.2 <= first_at < 2
    assert json.loads(first)["message"]["content"] == "I "


def test_client_disconnect_is_detected(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.token_delay = 0.01
    ollama_server.reply_tokens = 200
    stream = client.chat("llama3.2", USER, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    close(stream)
    deadline = time.monotonic() + 2
    while ollama_server.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ollama_server.disconnects == 1 and ollama_server.completed == 0
    collect(client.chat("llama3.2", USER, stream=True, options={"num_predict": 2}))
    assert ollama_server.completed == 1


def test_stop_interrupts_a_stall() -> None:
    server = OllamaTestServer(reply_tokens=10).start()
    server.stall_after = 2
    errors: list[BaseException] = []
    got: list[str] = []
    two = threading.Event()

    def consume() -> None:
        try:
            with ollama.Client(host=server.host) as c:
                for chunk in c.chat("llama3.2", USER, stream=True):
                    got.append(chunk.message.content or "")
                    if len(got) == 2:
                        two.set()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert two.wait(2)
    time.sleep(0.1)
    assert len(got) == 2  # stalled
    start = time.monotonic()
    server.stop()
    thread.join(2)
    assert time.monotonic() - start < 1
    assert not thread.is_alive() and errors and isinstance(errors[0], httpx.TransportError)


def test_reset_releases_a_stall(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.stall_after = 1
    stream = client.chat("llama3.2", USER, stream=True)
    next(stream)
    ollama_server.reset()
    with pytest.raises(httpx.TransportError):
        next(stream)
    assert ollama_server.stall_after is None and ollama_server.disconnects == 0


def test_concurrent_streams(ollama_server: OllamaTestServer) -> None:
    ollama_server.token_delay = 0.05
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(ollama.Client(host=ollama_server.host)) for _ in range(4)]
    results: dict[int, str] = {}
    finished: list[float] = []

    def run(i: int) -> None:
        chunks = clients[i].chat("llama3.2", [{"role": "user", "content": f"n{i}"}], stream=True)
        results[i] = "".join(c.message.content or "" for c in chunks)
        finished.append(time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    stack.close()
    assert results == {i: f"I saw 1 messages. You said: n{i}" for i in range(4)}
    # In parallel: every request arrived before the first stream finished.
    assert max(r.time for r in ollama_server.requests) < min(finished)


def test_start_stop_and_context_manager() -> None:
    start = time.monotonic()
    with OllamaTestServer(models=["tiny"]) as server:
        assert server.host == f"http://127.0.0.1:{server.port}"
        with ollama.Client(host=server.host) as c:
            assert c.chat("tiny", USER).done
    assert time.monotonic() - start < 1
    server2 = start_server(token_delay=0.0)
    try:
        assert httpx.get(server2.host).text == "Ollama is running"
    finally:
        server2.stop()


# -- other endpoints --------------------------------------------------------


def test_tags(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["llama3.2:latest", "qwen3:latest"]
    assert all(m.size and m.digest and m.details and m.details.family for m in models)
    ollama_server.models = {"custom:7b": {"size": 123}}
    assert [(m.model, m.size) for m in client.list().models] == [("custom:7b", 123)]
    with pytest.raises(ollama.ResponseError):
        client.chat("llama3.2", USER)
    assert client.chat("custom:7b", USER).done


def test_show(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    qwen = client.show("qwen3")
    assert qwen.capabilities and {"completion", "tools", "thinking"} <= set(qwen.capabilities)
    assert "num_ctx" not in (qwen.parameters or "")
    llama = client.show("llama3.2")
    assert llama.capabilities and "thinking" not in llama.capabilities
    assert llama.modelinfo and llama.modelinfo["llama.context_length"] == 131072
    assert llama.details and llama.details.format == "gguf"
    ollama_server.num_ctx = 2048
    assert (client.show("llama3.2").parameters or "").splitlines()[0] == "num_ctx 2048"


def test_ps(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    assert client.ps().models == []
    client.chat("qwen3", USER)
    (loaded,) = client.ps().models
    assert loaded.model == "qwen3:latest" and loaded.context_length == 4096 and loaded.expires_at
    ollama_server.num_ctx = 1024
    client.chat("qwen3", USER)
    assert client.ps().models[0].context_length == 1024
    # An empty chat just loads; keep_alive=0 unloads, as in Ollama.
    r = client.chat("llama3.2", [])
    assert r.done and r.done_reason == "load" and len(client.ps().models) == 2
    client.chat("qwen3", [], keep_alive=0)
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]


def test_version_and_root(ollama_server: OllamaTestServer) -> None:
    with httpx.Client(base_url=ollama_server.host) as http:
        assert http.get("/api/version").json() == {"version": "0.12.0"}
        assert http.head("/").status_code == 200
        assert http.get("/").text == "Ollama is running"


def test_command_line() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "ollama_magic.testing", "--port", "0", "--models", "a,b"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("Ollama test server on http://127.0.0.1:")
            host = first.split(" on ")[1].strip()
            assert proc.stdout.readline().strip() == f"export OLLAMA_HOST={host}"
            with ollama.Client(host=host) as c:
                assert [m.model for m in c.list().models] == ["a:latest", "b:latest"]
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
