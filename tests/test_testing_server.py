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


@contextlib.contextmanager
def open_client(host: str | None = None) -> Iterator[ollama.Client]:
    """A client closed afterwards (Clients are context managers only from ollama 0.6.3; the floor is older)."""
    c = ollama.Client(host=host)
    try:
        yield c
    finally:
        c._client.close()


@pytest.fixture
def client(ollama_server: OllamaTestServer) -> Iterator[ollama.Client]:
    with open_client(host=ollama_server.host) as c:
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
    r = client.chat("qwen3", USER, think=False)  # qwen3 would think otherwise
    assert r.message.role == "assistant" and r.message.thinking is None
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
    with open_client() as c:
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
        assert e.value.error == "model 'nope' not found"  # routes.go ChatHandler
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


def test_images_are_counted(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    image = base64.b64encode(b"\x89PNG fake").decode()
    r = client.chat("gemma3", [{"role": "user", "content": "see", "images": [image, image]}])
    assert r.message.content == "I saw 1 messages. You said: see I see 2 image(s)."
    # prompt.go chatPrompt: 768 tokens an image, for a model with a projector only.
    assert r.prompt_eval_count == 2 + 2 * 768
    r = client.chat("llama3.2", [{"role": "user", "content": "see", "images": [image]}])
    assert r.message.content == "I saw 1 messages. You said: see" and r.prompt_eval_count == 2
    # gemma3's window is at least 2048 (sched.go getRunner): three images and a question
    # do not fit, so the older message with images is dropped.
    history = [{"role": "user", "content": "a", "images": [image] * 2}, {"role": "assistant", "content": "b"},
               {"role": "user", "content": "c", "images": [image]}]
    ollama_server.context_length = 100
    r = client.chat("gemma3", history)
    assert r.message.content == "I saw 2 messages. You said: c I see 1 image(s)." and r.prompt_eval_count == 2 + 2 + 768


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
    # routes.go streamResponse (gin's c.Stream): the headers go out with the first chunk.
    assert 0.3 <= headers_at < 3
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
            with open_client(host=server.host) as c:
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
    clients = [stack.enter_context(open_client(host=ollama_server.host)) for _ in range(4)]
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
        with open_client(host=server.host) as c:
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
    assert [m.model for m in models] == ["llama3.2:latest", "qwen3:latest", "gemma3:latest", "tinyllama:latest"]
    assert all(m.size and m.digest and m.details and m.details.family for m in models)
    assert [m.details.families for m in models if m.details] == [["llama"], ["qwen3"], ["gemma3"], ["llama"]]
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
            with open_client(host=host) as c:
                assert [m.model for m in c.list().models] == ["a:latest", "b:latest"]
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# -- real Ollama's rules (each cites its source in ollama/ollama) -------------


def test_capabilities_per_model(client: ollama.Client) -> None:
    caps = {name: set(client.show(name).capabilities or []) for name in ("llama3.2", "qwen3", "gemma3", "tinyllama")}
    assert caps == {
        "llama3.2": {"completion", "tools"},
        "qwen3": {"completion", "tools", "thinking"},
        "gemma3": {"completion", "vision"},
        "tinyllama": {"completion"},
    }
    tiny = client.show("tinyllama")
    assert tiny.modelinfo and tiny.modelinfo["llama.context_length"] == 2048
    # Library models carry no num_ctx in their parameters.
    assert all("num_ctx" not in (client.show(n).parameters or "") for n in caps)


def test_a_thinking_model_thinks_unless_told_not_to(client: ollama.Client) -> None:
    # routes.go ChatHandler: `if req.Think == nil { req.Think = true }` for a thinking model.
    assert client.chat("qwen3", USER).message.thinking == "Thinking about: hello there"
    assert client.chat("qwen3", USER, think=False).message.thinking is None
    assert client.chat("qwen3", USER, think="low").message.thinking
    # think:false to a model without the capability is fine; true is a 400.
    assert client.chat("llama3.2", USER, think=False).message.thinking is None
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as e:
            collect(client.chat("llama3.2", USER, think=True, stream=stream))
        assert e.value.status_code == 400 and e.value.error == '"llama3.2" does not support thinking'


def test_tools_to_a_model_without_them_is_a_400(client: ollama.Client) -> None:
    # routes.go scheduleRunner -> images.go CheckCapabilities, with the full model name.
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("gemma3", USER, tools=[add])
    assert e.value.status_code == 400
    assert e.value.error == "registry.ollama.ai/library/gemma3:latest does not support tools"


def test_bad_think_and_keep_alive_values(ollama_server: OllamaTestServer) -> None:
    with httpx.Client(base_url=ollama_server.host) as http:
        r = http.post("/api/chat", json={"model": "qwen3", "messages": USER, "think": "extreme"})
        assert r.status_code == 400 and r.json()["error"].startswith('invalid think value: "extreme"')
        r = http.post("/api/chat", json={"model": "qwen3", "messages": USER, "keep_alive": "-1"})
        assert r.status_code == 400 and r.json()["error"] == 'time: missing unit in duration "-1"'


def test_errors_before_content_are_real_statuses(ollama_server: OllamaTestServer, client: ollama.Client) -> None:
    ollama_server.error_after = 0
    with httpx.Client(base_url=ollama_server.host) as http:
        r = http.post("/api/chat", json={"model": "llama3.2", "messages": USER})
        assert r.status_code == 500 and r.json() == {"error": MID_STREAM_ERROR}
    with pytest.raises(ollama.ResponseError) as e:
        collect(client.chat("llama3.2", USER, stream=True))
    assert e.value.status_code == 500
    # A prompt that cannot fit without context shift (llm/llama_server.go): 400.
    ollama_server.error_after = None
    ollama_server.context_shift = False
    long = [{"role": "user", "content": "word " * 10}]
    with pytest.raises(ollama.ResponseError) as e:
        collect(client.chat("llama3.2", long, stream=True, options={"num_ctx": 5}))
    assert e.value.status_code == 400 and "prompt is longer than the context length" in e.value.error


def test_window_default_clamp_and_ps(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    client.chat("llama3.2", USER)
    (ps,) = client.ps().models
    # The server default (OLLAMA_CONTEXT_LENGTH-like), size_vram and an expiry ~5 minutes out.
    assert ps.context_length == 4096 and ps.size_vram == ps.size and ps.expires_at
    assert 250 < (ps.expires_at.timestamp() - time.time()) <= 300
    ollama_server.context_length = 8192
    client.chat("llama3.2", USER)
    assert client.ps().models[0].context_length == 8192
    # sched.go effectiveContext: an explicit num_ctx is clamped to the trained length.
    client.chat("tinyllama", USER, options={"num_ctx": 65536})
    assert {m.model: m.context_length for m in client.ps().models}["tinyllama:latest"] == 2048
    # getRunner: at least 4, and at least 2048 for a vision model.
    client.chat("gemma3", USER, options={"num_ctx": 512})
    client.chat("llama3.2", USER, options={"num_ctx": 1})
    windows = {m.model: m.context_length for m in client.ps().models}
    assert windows["gemma3:latest"] == 2048 and windows["llama3.2:latest"] == 4
    # A Modelfile num_ctx shows in the parameters and sets the window.
    ollama_server.models["llama3.2"]["num_ctx"] = 1024
    assert "num_ctx 1024" in (client.show("llama3.2").parameters or "")
    client.chat("llama3.2", USER)
    assert {m.model: m.context_length for m in client.ps().models}["llama3.2:latest"] == 1024


def test_reload_shows_in_load_duration(client: ollama.Client) -> None:
    first = client.chat("llama3.2", USER)
    again = client.chat("llama3.2", USER)
    resized = client.chat("llama3.2", USER, options={"num_ctx": 8192})  # sched.go needsReload
    assert first.load_duration == resized.load_duration > again.load_duration


def test_option_types_are_checked_and_unknown_names_ignored(client: ollama.Client) -> None:
    # api/types.go Options.FromMap, via scheduleRunner -> handleScheduleError: 500.
    cases = {"temperature": ("hot", 'option "temperature" must be of type float32'),
             "num_ctx": ("big", 'option "num_ctx" must be of type integer'),
             "seed": (True, 'option "seed" must be of type integer'),
             "use_mmap": (1, 'option "use_mmap" must be of type boolean'),
             "stop": ("x", 'option "stop" must be of type array'),
             "num_gpu": ([1], 'option "num_gpu" must be of type integer')}
    for name, (value, message) in cases.items():
        with pytest.raises(ollama.ResponseError) as e:
            client.chat("llama3.2", USER, options={name: value})
        assert e.value.status_code == 500 and e.value.error == message
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("llama3.2", USER, options={"stop": ["a", 1]})
    assert e.value.error == 'option "stop" must be of an array of strings'
    assert client.ps().models == []  # a refused request loads nothing
    # Numbers are float64 in Go: 2 is a fine temperature, 2.0 a fine seed; unknown names do nothing.
    r = client.chat("llama3.2", USER, options={"temperature": 1, "seed": 2.0, "temprature": "x", "stop": None})
    assert r.done and r.done_reason == "stop"


def test_done_reasons_load_unload_and_keep_alive(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    assert client.chat("llama3.2", USER, options={"num_predict": 2}).done_reason == "length"
    r = client.chat("qwen3", [])  # no messages: load (routes.go ChatHandler)
    assert r.done and r.done_reason == "load" and r.message.content == ""
    assert {m.model for m in client.ps().models} == {"llama3.2:latest", "qwen3:latest"}
    r = client.chat("qwen3", [], keep_alive=0)  # no messages and keep_alive 0: unload
    assert r.done_reason == "unload"
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    # keep_alive: negative is forever, listed first (PsHandler sorts by expiry); 0 unloads after the reply.
    client.chat("tinyllama", USER, keep_alive=-1)
    client.chat("gemma3", USER, keep_alive="30m")
    ps = client.ps().models
    assert [m.model for m in ps] == ["tinyllama:latest", "gemma3:latest", "llama3.2:latest"]
    assert ps[0].expires_at and ps[0].expires_at.year > 2200
    assert client.chat("llama3.2", USER, keep_alive=0).done
    assert "llama3.2:latest" not in {m.model for m in client.ps().models}


def test_final_chunk_can_carry_content(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.content_in_done = True
    *tokens, done = collect(client.chat("llama3.2", USER, stream=True))
    assert done.done and done.message.content == "there"
    assert "".join(c.message.content or "" for c in [*tokens, done]) == "I saw 1 messages. You said: hello there"


def test_tool_calls_carry_an_id(ollama_server: OllamaTestServer) -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    with httpx.Client(base_url=ollama_server.host) as http:
        r = http.post("/api/chat", json={"model": "llama3.2", "messages": USER, "tools": [tool], "stream": False})
    (call,) = r.json()["message"]["tool_calls"]
    assert call["id"].startswith("call_") and len(call["id"]) == 13  # routes.go toolCallId
    assert call["function"] == {"index": 0, "name": "add", "arguments": {"a": 1}}


def test_pull_streams_progress_and_installs(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    progress = list(client.pull("mistral", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [p for p in progress if p.digest]
    assert layer[0].completed == 0 and layer[-1].completed == layer[-1].total and layer[0].status.startswith("pulling ")
    assert "mistral:latest" in [m.model for m in client.list().models]
    assert client.pull("llava").status == "success"  # not streamed: the last progress (waitForStream)
    # images.go PullModel: an unknown name fails after "pulling manifest".
    with pytest.raises(ollama.ResponseError) as e:
        list(client.pull("no-such-model", stream=True))
    assert e.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("no-such-model")
    assert e.value.status_code == 500


def test_an_interrupted_pull_installs_nothing(client: ollama.Client, ollama_server: OllamaTestServer) -> None:
    ollama_server.pull_delay = 0.05
    stream = client.pull("mistral", stream=True)
    next(stream)
    close(stream)
    deadline = time.monotonic() + 3
    while ollama_server.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ollama_server.disconnects == 1
    assert "mistral:latest" not in [m.model for m in client.list().models]


def test_delete(client: ollama.Client) -> None:
    client.chat("tinyllama", USER)
    assert client.delete("tinyllama").status == "success"
    assert "tinyllama:latest" not in [m.model for m in client.list().models] and client.ps().models == []
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tinyllama")
    assert e.value.status_code == 404 and e.value.error == "model 'tinyllama' not found"
