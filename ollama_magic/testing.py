"""A deterministic stand-in for an Ollama server, for tests and offline demos.

It speaks enough of the Ollama HTTP API for the real ``ollama.Client``:
``/api/chat`` (NDJSON stream and non-stream, ``think``, ``format``, tools),
``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/pull``, ``/api/delete``,
``/api/version`` and ``/``. Its "model" answers from what it received
(``I saw 3 messages. You said: ...``) so a test can prove what the client
sent, and it can be told to misbehave in the ways a real server does (see
the attributes of :class:`OllamaTestServer`).

It follows real Ollama's rules, not friendlier ones; each rule cites the file
(and function) of ollama/ollama it comes from:

- capabilities per model (``/api/show`` ``capabilities``; ``types/model/capability.go``);
  a model with ``thinking`` thinks when ``think`` is omitted, ``think`` for
  one without is HTTP 400 ``"m" does not support thinking``, ``tools`` for
  one without is HTTP 400 ``<full name> does not support tools``
  (``server/routes.go`` ChatHandler, ``server/images.go`` CheckCapabilities);
- errors before any content are a real HTTP status with a JSON body: the
  headers go out with the first chunk (``server/routes.go`` streamResponse);
- the window: a request's ``num_ctx``, else the Modelfile's, else the
  server default (``OLLAMA_CONTEXT_LENGTH``, else 4k/32k/256k by VRAM;
  ``envconfig/config.go``, ``server/routes.go`` modelOptions), at least 4
  (2048 for vision models), clamped to the trained length
  (``server/sched.go`` getRunner, effectiveContext); ``/api/ps`` reports it
  as ``context_length`` (``server/routes.go`` PsHandler); library models have
  no ``num_ctx`` in ``/api/show`` ``parameters``;
- truncation drops whole messages from the front, keeps system messages and
  the last message, and counts 768 tokens per image for vision models
  (``server/prompt.go`` chatPrompt); a last message that still does not fit
  is HTTP 400 when context shift is off (``llm/llama_server.go``);
- option values of the wrong type are HTTP 500 ``option "x" must be of type
  ...``; unknown names are ignored (``api/types.go`` FromMap, via
  ``ollama_magic.options``);
- ``done_reason`` ``stop``, ``length`` (num_predict), ``load`` (no messages),
  ``unload`` (no messages and ``keep_alive`` 0) (``server/routes.go``
  ChatHandler); tool calls carry an ``id`` (``server/routes.go`` toolCallId);
- ``keep_alive``: seconds or a Go duration, negative = forever, default 5 m
  (``api/types.go`` Duration, ``envconfig/config.go`` KeepAlive);
- ``/api/pull`` streams progress (``server/images.go`` PullModel,
  ``server/download.go``); an unknown name fails after "pulling manifest";
  ``/api/delete`` (``server/routes.go`` DeleteHandler).

Token model: a token is a whitespace-separated word. A prompt costs
``len(content.split()) + 1`` tokens per message (the +1 stands for the role
and template overhead, so an empty message still costs something), plus 768
per image for a vision model.

Run ``python -m ollama_magic.testing`` to serve in the foreground.
Only the standard library is needed; pytest fixtures are defined when pytest
is importable.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from .options import option_error

__all__ = [
    "DEFAULT_MODELS",
    "LIBRARY",
    "MID_STREAM_ERROR",
    "OllamaTestServer",
    "Recorded",
    "default_model_info",
    "main",
    "start_server",
]

VERSION = "0.12.0"
MID_STREAM_ERROR = "simulated error mid-stream"
GARBAGE_LINE = b"this is not json"
UNKNOWN_TOOL_NAME = "no_such_tool"
TOOL_MODES = ("auto", "never", "always", "unknown", "badargs")
# The server default window without OLLAMA_CONTEXT_LENGTH on a machine with
# under 23 GiB of VRAM (server/routes.go Serve: 4096/32768/262144 by VRAM).
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_KEEP_ALIVE = 300.0  # seconds (envconfig/config.go KeepAlive: 5 minutes)
IMAGE_TOKENS = 768  # server/prompt.go chatPrompt: "Clip images are represented as 768 tokens"
PROMPT_TOO_LONG = (  # llm/llama_server.go, when context shift is off
    "the prompt is longer than the context length currently available to the model; shorten the "
    "prompt, adjust the context length in settings, or use a model with a longer context length"
)
THINK_LEVELS = ("high", "medium", "low", "max")  # api/types.go ThinkValue.UnmarshalJSON
# How often a sleeping stream re-checks reset(): stop() wakes it at once by
# shutting the socket, reset() does not touch sockets.
_WAKE_INTERVAL = 0.05

# name prefix -> (architecture, size in bytes, parameter size, trained context
# length, capabilities), after the real library tags. Capabilities as
# /api/show reports them (types/model/capability.go).
_CATALOGUE: tuple[tuple[str, str, int, str, int, tuple[str, ...]], ...] = (
    ("qwen3", "qwen3", 5_225_388_164, "8.2B", 40_960, ("completion", "tools", "thinking")),
    ("deepseek-r1", "qwen3", 5_225_388_164, "8.2B", 131_072, ("completion", "thinking")),
    ("gemma3", "gemma3", 3_338_801_804, "4.3B", 131_072, ("completion", "vision")),
    ("llava", "llama", 4_733_363_377, "7B", 32_768, ("completion", "vision")),
    ("tinyllama", "llama", 637_700_138, "1B", 2_048, ("completion",)),
    ("mistral", "llama", 4_372_824_384, "7.2B", 32_768, ("completion", "tools")),
    ("llama3.2", "llama", 2_019_393_189, "3.2B", 131_072, ("completion", "tools")),
)
# Installed at start: a plain chat model with tools (llama3.2), a thinking
# model (qwen3), a vision model without tools (gemma3), a small-window model
# without tools (tinyllama: trained on 2048 tokens).
DEFAULT_MODELS = ("llama3.2", "qwen3", "gemma3", "tinyllama")
# What /api/pull can fetch ("the registry"); anything else is not found.
LIBRARY = tuple(entry[0] for entry in _CATALOGUE)


@dataclass(frozen=True)
class Recorded:
    """One HTTP request as the server received it."""

    method: str
    path: str  # without the query string
    headers: dict[str, str]
    body: bytes
    json: Any  # the parsed body, or None when empty or not JSON
    time: float  # time.monotonic() at receipt
    peer: tuple[str, int]  # client address: the same port means a reused connection


def default_model_info(name: str) -> dict[str, Any]:
    """Plausible metadata for a model name, modelled on the real tags.

    Keys: size, modified_at, digest, details, capabilities, architecture,
    context_length (the trained length), num_ctx (a Modelfile PARAMETER;
    None for library models).
    """
    base = name.split(":", 1)[0].lower().rsplit("/", 1)[-1]
    arch, size, params, context, capabilities = "llama", 2_019_393_189, "3.2B", 131_072, ("completion", "tools")
    for prefix, *entry in _CATALOGUE:
        if base.startswith(prefix):
            arch, size, params, context, capabilities = entry  # type: ignore[assignment]
            break
    return {
        "size": size,
        "modified_at": "2025-01-01T00:00:00Z",
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": arch,
            "families": [arch],
            "parameter_size": params,
            "quantization_level": "Q4_K_M",
        },
        "capabilities": list(capabilities),
        "architecture": arch,
        "context_length": context,
        "num_ctx": None,
    }


def full_name(name: str) -> str:
    """model.ParseName(name).String(): what CheckCapabilities errors name."""
    model, _, tag = name.partition(":")
    parts = model.split("/")
    if len(parts) == 1:
        parts = ["library", *parts]
    if len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(parts) + ":" + (tag or "latest")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds (inf = forever), None when absent (api/types.go Duration.UnmarshalJSON)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if not isinstance(value, str):
        return float("inf") if value < 0 else float(value)
    seconds = _go_duration(value)
    return float("inf") if seconds < 0 else seconds


_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def _go_duration(text: str) -> float:
    """time.ParseDuration: "30m", "1h30m", "-1m", "0"; a bare number other than 0 is an error."""
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    if _NUMBER.fullmatch(body):
        raise ValueError(f'time: missing unit in duration "{text}"')
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION.match(body, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def split_tokens(text: str) -> list[str]:
    """Split into word-plus-following-whitespace pieces that join back to text."""
    tokens = re.findall(r"\s*\S+\s*", text)
    if text and not tokens:  # whitespace only
        return [text]
    return tokens


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _prompt_tokens(message: dict[str, Any]) -> int:
    content = message.get("content")
    return len(content.split()) + 1 if isinstance(content, str) else 1


def _schema_instance(schema: Any, root: Any, n: int, depth: int = 0) -> Any:
    """A minimal value that satisfies a (simple) JSON schema."""
    if depth > 10 or not isinstance(schema, dict):
        return "text"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _schema_instance(target, root, n, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _schema_instance((usable or options)[0], root, n, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {k: _schema_instance(v, root, n, depth + 1) for k, v in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_schema_instance(schema.get("items", {}), root, n, depth + 1) for _ in range(count)]
    return {"integer": n, "number": 1.5, "boolean": True, "null": None}.get(kind, "text")


def _tool_arguments(parameters: Any, user_text: str) -> dict[str, Any]:
    """Arguments for a tool call: numbers come from the user's text, in order."""
    numbers = iter(int(m) for m in re.findall(r"-?\d+", user_text))
    fallback = iter(range(1, 1_000_000))
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    arguments: dict[str, Any] = {}
    for name, spec in (properties or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            arguments[name] = spec["enum"][0]
        elif kind in ("integer", "number"):
            arguments[name] = next(numbers, None) or next(fallback)
        elif kind == "boolean":
            arguments[name] = True
        elif kind == "array":
            arguments[name] = []
        elif kind == "object":
            arguments[name] = {}
        else:
            arguments[name] = user_text
    return arguments


@dataclass
class _Reply:
    """Everything the fake model will say for one chat request."""

    kept: int  # messages left after num_ctx truncation
    prompt_eval_count: int
    chunks: list[dict[str, Any]]  # the `message` of each streamed chunk
    counted: list[bool]  # whether each chunk is a content token (faults count these)
    done_reason: str
    too_long: bool  # even the last message alone does not fit the window


@dataclass
class _Loaded:
    """A runner in memory: its window and when keep_alive lets it go (time.time())."""

    context_length: int
    expires_at: float


class _Cancelled(Exception):
    """The server is stopping or was reset: abandon this response silently."""


class _ClientGone(Exception):
    """The client closed its end while we were streaming."""


class _StreamOver(Exception):
    """A fault ended the stream early; nothing more to write."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a handler stuck in a write
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: OllamaTestServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that can take seconds on an offline machine; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up is routine here; anything else is a real bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client reuses connections
    disable_nagle_algorithm = True  # otherwise each first chunk waits ~40 ms
    server_version = "ollama-magic-test"
    _headers_sent = False

    @property
    def owner(self) -> OllamaTestServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # tests should not print access logs

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._track(self.connection, add=False)

    def end_headers(self) -> None:
        self._headers_sent = True
        super().end_headers()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing -----------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self._send_bytes(status, body, "application/json; charset=utf-8")

    def _send_error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    @staticmethod
    def _encode_chunk(data: bytes) -> bytes:
        return b"%X\r\n%s\r\n" % (len(data), data)

    @staticmethod
    def _encode_line(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode() + b"\n"

    def _write_chunk(self, data: bytes) -> None:
        # One write per chunk: with Nagle off it leaves at once.
        self.wfile.write(self._encode_chunk(data))

    def _write_line(self, obj: Any) -> None:
        self._write_chunk(self._encode_line(obj))

    def _finish_stream(self, cancel: threading.Event, last_line: Any) -> None:
        """Write the last line and the end of the stream in one go."""
        tail = b"" if last_line is None else self._encode_chunk(self._encode_line(last_line))
        # Count before writing: once the client has read the end of the
        # stream, `completed` must already include it.
        self.owner._bump("completed", cancel)
        try:
            self.wfile.write(tail + b"0\r\n\r\n")
        except OSError:
            self.owner._bump("completed", cancel, -1)
            raise

    def _abort(self) -> None:
        """Cut the connection in the middle of a response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _pause(self, seconds: float, cancel: threading.Event) -> None:
        """Sleep, but wake for stop()/reset() and notice a client hanging up."""
        if cancel.is_set():
            raise _Cancelled
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                readable, _, _ = select.select([self.connection], [], [], min(remaining, _WAKE_INTERVAL))
            except (OSError, ValueError):
                readable = [self.connection]
            if cancel.is_set():
                raise _Cancelled
            if readable:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    raise _ClientGone from None
                if not peek:
                    raise _ClientGone
                # The client sent more (a pipelined request); just wait.
                cancel.wait(min(remaining, _WAKE_INTERVAL))
                if cancel.is_set():
                    raise _Cancelled

    def _dispatch(self) -> None:
        owner = self.owner
        cancel = owner._cancel
        started = time.monotonic()
        self._headers_sent = False
        path = urlsplit(self.path).path
        body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        parsed: Any = None
        bad_json: str | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as e:
                bad_json = f"invalid JSON: {e}"
        owner._record(
            Recorded(
                self.command,
                path,
                dict(self.headers.items()),
                body,
                parsed,
                started,
                (str(self.client_address[0]), int(self.client_address[1])),
            )
        )
        try:
            route = (self.command, path)
            if route in (("GET", "/"), ("HEAD", "/")):
                self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
            elif route in (("GET", "/api/version"), ("HEAD", "/api/version")):
                self._send_json(200, {"version": VERSION})
            elif route in (("GET", "/api/tags"), ("HEAD", "/api/tags")):
                self._send_json(200, {"models": [owner._tag_entry(n) for n in owner.models]})
            elif route in (("GET", "/api/ps"), ("HEAD", "/api/ps")):
                self._pause(owner.show_delay, cancel)
                self._send_json(200, {"models": owner._ps_entries()})
            elif route == ("POST", "/api/show"):
                self._pause(owner.show_delay, cancel)
                self._show(parsed, bad_json)
            elif route == ("POST", "/api/chat"):
                self._chat(parsed, bad_json, cancel, started)
            elif route == ("POST", "/api/pull"):
                self._pull(parsed, bad_json, cancel)
            elif route == ("DELETE", "/api/delete"):
                self._delete(parsed, bad_json)
            else:
                self._send_bytes(404, b"404 page not found", "text/plain")
        except _StreamOver:
            pass  # the fault already wrote (or cut) what it wanted
        except (_Cancelled, _ClientGone):  # (_ClientGone: hung up during show_delay)
            self.close_connection = True
        except OSError:  # the client went away outside a stream
            self.close_connection = True
        except Exception as e:  # a bug here: say so instead of hanging up
            traceback.print_exc()
            if self._headers_sent:
                self._abort()
            else:
                self.close_connection = True
                self._send_error(500, f"ollama_magic.testing failed: {e!r}")

    # -- endpoints ----------------------------------------------------------

    def _model_of(self, request: Any, bad_json: str | None) -> str | None:
        """The request's model name, or None after answering 400 (ShouldBindJSON, "model is required")."""
        if bad_json or not isinstance(request, dict):
            self._send_error(400, bad_json or "missing request body")
            return None
        name = request.get("model") or request.get("name")
        if not name or not isinstance(name, str):
            self._send_error(400, "model is required")
            return None
        return name

    def _show(self, request: Any, bad_json: str | None) -> None:
        owner = self.owner
        name = self._model_of(request, bad_json)
        if name is None:
            return
        resolved = owner._resolve(name)
        if resolved is None:  # server/routes.go ShowHandler: os.IsNotExist
            self._send_error(404, f"model '{name}' not found")
            return
        info = owner._info(resolved)
        arch = info["architecture"]
        stop = '"<|im_end|>"' if arch == "qwen3" else '"<|eot_id|>"'
        # Library models carry no num_ctx; only a Modelfile PARAMETER puts one here.
        num_ctx = owner._modelfile_num_ctx(resolved)
        parameters = [f"num_ctx {num_ctx}"] if num_ctx is not None else []
        parameters.append(f"stop {stop}")
        self._send_json(
            200,
            {
                "license": "",
                "modelfile": f"# Modelfile generated by ollama_magic.testing\nFROM {resolved}\n",
                "parameters": "\n".join(parameters),
                "template": "{{ .Prompt }}",
                "details": info["details"],
                "model_info": {
                    "general.architecture": arch,
                    "general.parameter_count": int(float(info["details"]["parameter_size"].rstrip("BM") or 0) * 1e9),
                    f"{arch}.context_length": info["context_length"],
                },
                "capabilities": list(info["capabilities"]),
                "modified_at": info["modified_at"],
            },
        )

    def _send_status(self) -> None:
        """The `status` fault: a proxy's or the cloud's answer instead of Ollama's."""
        owner = self.owner
        body = owner.status_body
        status = cast(int, owner.status)
        if isinstance(body, (str, bytes)):  # e.g. b"": a proxy's bare 503
            self._send_bytes(status, body.encode() if isinstance(body, str) else body, "text/plain; charset=utf-8")
        else:
            self._send_json(status, body if body is not None else {"error": f"simulated server error (HTTP {status})"})

    def _chat(self, request: Any, bad_json: str | None, cancel: threading.Event, started: float) -> None:
        owner = self.owner
        if owner.status is not None:
            self._send_status()
            return
        if owner.wrong_shape and isinstance(request, dict):  # 200 and JSON, but not a chat response
            body = b'{"message": 5, "done": "soon"}\n'
            self._send_bytes(200, body, "application/x-ndjson" if request.get("stream", True) is not False
                             else "application/json; charset=utf-8")
            return
        model = self._model_of(request, bad_json)
        if model is None:
            return
        messages = request.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._send_error(400, "messages must be a list of objects")
            return
        for message in messages:
            for image in message.get("images") or []:
                try:
                    base64.b64decode(image, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    self._send_error(400, "invalid image")
                    return
        think = request.get("think")
        # api/types.go ThinkValue.UnmarshalJSON (a bad value fails the body's binding: 400)
        if not (think is None or isinstance(think, bool) or think in THINK_LEVELS):
            self._send_error(400, f'invalid think value: {json.dumps(think)} (must be "high", "medium", "low", "max", true, or false)')
            return
        try:
            keep_alive = parse_keep_alive(request.get("keep_alive"))
        except ValueError as e:
            self._send_error(400, str(e))
            return
        resolved = owner._resolve(model)
        if resolved is None:  # server/routes.go ChatHandler: getModel, os.IsNotExist
            self._send_error(404, f"model '{model}' not found")
            return
        # ChatHandler: no messages and keep_alive 0 expires the runner.
        if not messages and keep_alive == 0:
            owner._unload(resolved)
            self._send_json(200, self._final(model, "unload"))
            return
        info = owner._info(resolved)
        capabilities = info["capabilities"]
        # ChatHandler: a thinking model thinks unless told not to; think for
        # a model without the capability is a 400.
        if "thinking" in capabilities:
            if think is None:
                think = True
        elif think:
            self._send_error(400, f"{json.dumps(model)} does not support thinking")
            return
        tools = request.get("tools")
        # scheduleRunner -> CheckCapabilities(completion, tools): "<name> does not support tools"
        if tools and "tools" not in capabilities:
            self._send_error(400, f"{full_name(resolved)} does not support tools")
            return
        options: dict[str, Any] = request["options"] if isinstance(request.get("options"), dict) else {}
        # scheduleRunner -> modelOptions -> Options.FromMap: a wrong type is a 500
        # (handleScheduleError), an unknown name is skipped.
        for key, value in options.items():
            if (problem := option_error(key, value)) is not None:
                self._send_error(500, problem)
                return
        window = owner._window(resolved, options)
        loaded = owner._load(resolved, window, keep_alive)
        if not messages:  # ChatHandler: an empty chat only loads the model
            self._send_json(200, self._final(model, "load", loaded))
            return
        reply = owner._compose({**request, "think": think}, messages, window)
        if reply.too_long and not owner.context_shift:
            self._send_error(400, PROMPT_TOO_LONG)
            return
        stream = request.get("stream", True) is not False
        content_type = "application/x-ndjson" if stream else "application/json; charset=utf-8"
        if owner.empty_body:
            self._send_bytes(200, b"", content_type)
            return
        stats = _Stats(started, loaded, reply)
        if stream:
            self._stream(model, reply, stats, cancel)
        else:
            self._single(model, reply, stats, cancel)

    def _final(self, model: str, reason: str, loaded: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": _now_iso(), "message": {"role": "assistant", "content": ""},
                               "done_reason": reason, "done": True}
        if reason == "load":
            out.update(total_duration=1_600_000 if loaded else 90_000, load_duration=1_500_000 if loaded else 80_000)
        return out

    def _headers(self, content_type: str = "application/x-ndjson") -> None:
        """Headers go out with the first chunk (gin's c.Stream writes them on the first Write)."""
        if not self._headers_sent:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

    def _stream(self, model: str, reply: _Reply, stats: _Stats, cancel: threading.Event) -> None:
        owner = self.owner
        count = 0  # content tokens sent so far
        stalled = False

        def faults() -> None:
            nonlocal stalled
            if owner.stall_after is not None and count >= owner.stall_after and not stalled:
                stalled = True
                self._pause(owner.stall_seconds, cancel)
            if owner.error_after is not None and count >= owner.error_after:
                if not self._headers_sent:
                    # streamResponse: an error before anything was written is a
                    # real status with a JSON body, not an error line.
                    self._send_error(500, MID_STREAM_ERROR)
                    raise _StreamOver
                self._finish_stream(cancel, {"error": MID_STREAM_ERROR})
                raise _StreamOver
            if owner.drop_after is not None and count >= owner.drop_after:
                self._headers()
                line = json.dumps(self._chunk(model, {"role": "assistant", "content": "dropped"})).encode()
                # Promise the whole chunk, deliver half of it, hang up.
                self.wfile.write(b"%X\r\n%s" % (len(line) + 1, line[: len(line) // 2]))
                self._abort()
                raise _StreamOver

        chunks = list(zip(reply.chunks, reply.counted))
        carried: dict[str, Any] | None = None
        if owner.content_in_done and chunks and chunks[-1][1] and "content" in chunks[-1][0] and not owner.no_done:
            carried = chunks.pop()[0]  # the last piece rides in the final chunk, as Ollama may send it
        try:
            self._pause(owner.first_token_delay, cancel)
            for i, (message, counted) in enumerate(chunks):
                if i:
                    self._pause(owner.token_delay, cancel)
                if counted:
                    faults()
                self._headers()
                self._write_line(self._chunk(model, message))
                if counted:
                    count += 1
                if i == 0 and owner.garbage_line:
                    self._write_chunk(GARBAGE_LINE + b"\n")
            faults()
            self._headers()
            last = None if owner.no_done else self._done(model, reply, stats)
            if last is not None and carried is not None:
                last["message"]["content"] = carried["content"]
            self._finish_stream(cancel, last)
        except (_ClientGone, ConnectionError):
            owner._bump("disconnects", cancel)
            self._abort()
        except _Cancelled:
            self._abort()

    def _single(self, model: str, reply: _Reply, stats: _Stats, cancel: threading.Event) -> None:
        owner = self.owner
        count = sum(reply.counted)
        try:
            self._pause(owner.first_token_delay + owner.token_delay * max(0, len(reply.chunks) - 1), cancel)
            if owner.stall_after is not None and owner.stall_after <= count:
                self._pause(owner.stall_seconds, cancel)
        except _ClientGone:
            self._abort()
            return
        if owner.error_after is not None and owner.error_after <= count:
            self._send_error(500, MID_STREAM_ERROR)
            return
        message: dict[str, Any] = {"role": "assistant", "content": "".join(c.get("content", "") for c in reply.chunks)}
        thinking = "".join(c.get("thinking", "") for c in reply.chunks)
        if thinking:
            message["thinking"] = thinking
        tool_calls = [t for c in reply.chunks for t in c.get("tool_calls", [])]
        if tool_calls:
            message["tool_calls"] = tool_calls
        if owner.no_done:
            obj = self._chunk(model, message)
        else:
            obj = self._done(model, reply, stats)
            obj["message"] = message
        body = json.dumps(obj, ensure_ascii=False).encode()
        if owner.garbage_line:
            body = GARBAGE_LINE
        if owner.drop_after is not None and owner.drop_after <= count:
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self._abort()
            return
        self._send_bytes(200, body, "application/json; charset=utf-8")

    def _pull(self, request: Any, bad_json: str | None, cancel: threading.Event) -> None:
        """server/routes.go PullHandler -> server/images.go PullModel: progress lines, then success."""
        owner = self.owner
        name = self._model_of(request, bad_json)
        if name is None:
            return
        stream = request.get("stream", True) is not False
        base = name.removesuffix(":latest")
        known = base.split(":", 1)[0] in owner.library or base in owner.library
        info = default_model_info(base)
        digest = info["digest"]
        events: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if known:
            layers = [(digest, int(info["size"])), (hashlib.sha256(b"template" + digest.encode()).hexdigest(), 1_429)]
            for layer, total in layers:
                for step in range(owner.pull_steps + 1):
                    events.append({"status": f"pulling {layer[:12]}", "digest": f"sha256:{layer}",
                                   "total": total, "completed": total * step // owner.pull_steps})
            events += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        error = None if known else "pull model manifest: file does not exist"
        try:
            for i, event in enumerate(events):
                if i:
                    self._pause(owner.pull_delay, cancel)
                if event["status"] == "success":
                    owner._install(base)
                if stream:
                    self._headers()
                    self._write_line(event)
            if error is not None:
                if not stream:  # waitForStream: the error with status 500
                    self._send_error(500, error)
                    return
                self._finish_stream(cancel, {"error": error})
                return
            if stream:
                self._finish_stream(cancel, None)
            else:
                self._send_json(200, events[-1])
        except (_ClientGone, ConnectionError):
            owner._bump("disconnects", cancel)  # an interrupted pull installs nothing
            self._abort()
        except _Cancelled:
            self._abort()

    def _delete(self, request: Any, bad_json: str | None) -> None:
        """server/routes.go DeleteHandler: 404 "model 'x' not found", else 200 with no body."""
        owner = self.owner
        name = self._model_of(request, bad_json)
        if name is None:
            return
        resolved = owner._resolve(name)
        if resolved is None:
            self._send_error(404, f"model '{name}' not found")
            return
        owner._uninstall(resolved)
        self._send_bytes(200, b"", "text/plain")

    @staticmethod
    def _chunk(model: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "created_at": _now_iso(), "message": message, "done": False}

    @staticmethod
    def _done(model: str, reply: _Reply, stats: _Stats) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": _now_iso(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reply.done_reason,
            **stats.finish(),
        }


class _Stats:
    """Durations in ns: measured, but never zero so rates can be computed."""

    def __init__(self, started: float, loaded: bool, reply: _Reply) -> None:
        self.started = started
        self.load = 1_500_000 if loaded else 80_000
        self.prompt_eval_count = reply.prompt_eval_count
        self.prompt_eval = max(1, reply.prompt_eval_count) * 40_000
        self.eval_count = len(reply.chunks)
        self.generating_since = time.monotonic()

    def finish(self) -> dict[str, int]:
        now = time.monotonic()
        eval_ns = max(int((now - self.generating_since) * 1e9), max(1, self.eval_count) * 10_000)
        total = max(int((now - self.started) * 1e9), self.load + self.prompt_eval + eval_ns)
        return {
            "total_duration": total,
            "load_duration": self.load,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval,
            "eval_count": self.eval_count,
            "eval_duration": eval_ns,
        }


class OllamaTestServer:
    """A local fake Ollama on 127.0.0.1.

    Behaviour switches are plain attributes that persist until :meth:`reset`;
    a response reads them as it goes:

    - ``models``: name -> info (see :func:`default_model_info`; partial info
      is filled in). "x" and "x:latest" name the same model.
    - ``library``: names ``/api/pull`` can fetch (default :data:`LIBRARY`);
      ``pull_steps`` progress lines per layer, ``pull_delay`` seconds apart.
    - ``context_length``: the server's default window, as
      ``OLLAMA_CONTEXT_LENGTH`` sets it (default 4096, the small-VRAM tier).
    - ``num_ctx``: a Modelfile ``PARAMETER num_ctx`` for every model (shown
      in ``/api/show`` parameters; a model's own ``num_ctx`` info wins; a
      request's ``options.num_ctx`` wins over both, as in Ollama).
    - ``context_shift``: when False, a prompt whose last message alone does
      not fit is HTTP 400 (as llama-server without context shift).
    - ``token_delay`` / ``first_token_delay``: seconds between streamed
      chunks / before the first one (the headers go out with it).
    - ``reply_tokens``: pad prose replies with " w1 w2 ..." (or cut them,
      done_reason "length") to exactly this many content tokens.
    - ``reply``: fixed content instead of the echo.
    - ``content_in_done``: the last content piece rides in the final
      ``done`` chunk (real Ollama may do this).
    - ``status`` / ``status_body``: answer every /api/chat with this HTTP
      status and body (a dict is sent as JSON, str or bytes as text, None gives
      ``{"error": ...}``): a proxy, Ollama's cloud, a broken server.
    - ``wrong_shape``: /api/chat answers 200 with JSON that is not a chat response.
    - ``show_delay``: seconds before /api/show and /api/ps answer.
    - ``error_after`` / ``drop_after`` / ``stall_after``: after N content
      tokens (thinking chunks do not count, a tool call does), send an error
      (a real HTTP 500 when nothing was written yet, else an error line) /
      cut the connection mid-line / sleep ``stall_seconds``.
    - ``garbage_line``, ``empty_body``, ``no_done``: malformed streams.
    - ``tool_mode``: "auto", "never", "always", "unknown", "badargs" or
      "rogue" (asks for a tool named ``secret`` even when no tools are offered).
    - ``tool_arguments``: arguments for the tool call instead of the made-up
      ones; ``tool_calls``: how many calls the model asks for in one round
      (a flood, all in one chunk as Ollama sends them).

    ``disconnects`` and ``completed`` count streams the client abandoned and
    streams written to the end.
    """

    host: str
    port: int
    requests: list[Recorded]
    models: dict[str, dict[str, Any]]
    library: set[str]
    pull_steps: int
    pull_delay: float
    context_length: int
    context_shift: bool
    token_delay: float
    first_token_delay: float
    reply_tokens: int | None
    reply: str | None
    content_in_done: bool
    status: int | None
    status_body: Any
    wrong_shape: bool
    show_delay: float
    error_after: int | None
    drop_after: int | None
    stall_after: int | None
    stall_seconds: float
    garbage_line: bool
    empty_body: bool
    no_done: bool
    num_ctx: int | None
    tool_mode: str
    tool_arguments: Any
    tool_calls: int
    disconnects: int
    completed: int

    def __init__(
        self,
        models: Sequence[str] = DEFAULT_MODELS,
        *,
        token_delay: float = 0.0,
        reply_tokens: int | None = None,
        port: int = 0,
    ) -> None:
        self._default_models = tuple(models)
        self._default_token_delay = token_delay
        self._default_reply_tokens = reply_tokens
        self._wanted_port = port
        self.host = ""
        self.port = 0
        self.requests = []
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._cancel = threading.Event()  # replaced by reset()/start(); set = abandon
        self._loaded: dict[str, _Loaded] = {}  # model -> runner, in load order
        self._calls = 0
        self._default_context_length = DEFAULT_CONTEXT_LENGTH
        self._apply_defaults()

    def _apply_defaults(self) -> None:
        self.models = {name: default_model_info(name) for name in self._default_models}
        self.library = set(LIBRARY)
        self.pull_steps = 4
        self.pull_delay = 0.0
        self.context_length = self._default_context_length
        self.context_shift = True
        self.token_delay = self._default_token_delay
        self.first_token_delay = 0.0
        self.reply_tokens = self._default_reply_tokens
        self.reply = None
        self.content_in_done = False
        self.status = None
        self.status_body = None
        self.wrong_shape = False
        self.show_delay = 0.0
        self.error_after = None
        self.drop_after = None
        self.stall_after = None
        self.stall_seconds = 30.0
        self.garbage_line = False
        self.empty_body = False
        self.no_done = False
        self.num_ctx = None
        self.tool_mode = "auto"
        self.tool_arguments = None
        self.tool_calls = 1
        self.disconnects = 0
        self.completed = 0
        self._loaded.clear()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> OllamaTestServer:
        if self._httpd is not None:
            return self
        self._cancel = threading.Event()
        httpd = _HTTPServer(("127.0.0.1", self._wanted_port), self)
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        self.host = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ollama-test-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._cancel.set()  # wakes sleeping and stalled streams
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # also idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def __enter__(self) -> OllamaTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget requests and stats, restore every setting, and abandon
        responses still in flight (so they cannot bleed into the next test)."""
        with self._lock:
            old, self._cancel = self._cancel, threading.Event()
            old.set()
            self.requests.clear()
            self._apply_defaults()

    # -- inspection -----------------------------------------------------------

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                r.json
                for r in self.requests
                if r.method == "POST" and r.path == "/api/chat" and isinstance(r.json, dict)
            ]

    def last_chat(self) -> dict[str, Any]:
        chats = self.chat_requests()
        if not chats:
            raise LookupError("the test server has received no /api/chat request")
        return chats[-1]

    # -- internals used by the handler ----------------------------------------

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _bump(self, counter: str, cancel: threading.Event, by: int = 1) -> None:
        with self._lock:
            if cancel is self._cancel:  # not from before a reset()
                setattr(self, counter, getattr(self, counter) + by)

    def _resolve(self, name: str) -> str | None:
        """Map a requested name to a key of `models`; "x" and "x:latest" are one."""
        models = self.models
        if name in models:
            return name
        if name.endswith(":latest") and name[: -len(":latest")] in models:
            return name[: -len(":latest")]
        if ":" not in name and f"{name}:latest" in models:
            return f"{name}:latest"
        return None

    def _info(self, name: str) -> dict[str, Any]:
        """`models[name]` over the defaults, so partial info is enough."""
        info = default_model_info(name)
        given = self.models.get(name) or {}
        details = {**info["details"], **(given.get("details") or {})}
        return {**info, **given, "details": details}

    @staticmethod
    def _tag_name(name: str) -> str:
        return name if ":" in name else f"{name}:latest"  # as Ollama lists them

    def _tag_entry(self, name: str) -> dict[str, Any]:
        info = self._info(name)
        return {
            "name": self._tag_name(name),
            "model": self._tag_name(name),
            "modified_at": info["modified_at"],
            "size": info["size"],
            "digest": info["digest"],
            "details": info["details"],
        }

    def _modelfile_num_ctx(self, name: str) -> int | None:
        info = self.models.get(name) or {}
        return info.get("num_ctx") if info.get("num_ctx") is not None else self.num_ctx

    def _window(self, name: str, options: dict[str, Any]) -> int:
        """The window a runner gets (server/routes.go modelOptions, server/sched.go getRunner)."""
        info = self._info(name)
        wanted = options.get("num_ctx")
        if isinstance(wanted, bool) or not isinstance(wanted, (int, float)):
            wanted = self._modelfile_num_ctx(name) or self.context_length
        window = max(int(wanted), 4)  # getRunner: opts.NumCtx < 4 -> 4
        if "vision" in info["capabilities"]:
            window = max(window, 2048)  # getRunner: "multimodal models require at least 2048 context"
        trained = int(info.get("context_length") or 0)
        return min(window, trained) if trained > 0 else window  # sched.go effectiveContext

    def _load(self, name: str, window: int, keep_alive: float | None) -> bool:
        """Load (or reuse) the runner; True when this request loaded it (sched.go needsReload)."""
        seconds = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
        expires = time.time() + min(seconds, 9_223_372_036.0)  # Go's MaxInt64 ns: "forever"
        with self._lock:
            old = self._loaded.pop(name, None)
            self._loaded[name] = _Loaded(window, expires)
            return old is None or old.context_length != window or old.expires_at <= time.time()

    def _unload(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def _install(self, name: str) -> None:
        with self._lock:
            if self._resolve(name) is None:
                self.models[name] = default_model_info(name)

    def _uninstall(self, name: str) -> None:
        with self._lock:
            self.models.pop(name, None)
            self._loaded.pop(name, None)

    def _ps_entries(self) -> list[dict[str, Any]]:
        """server/routes.go PsHandler: loaded runners, the longest to live first."""
        now = time.time()
        with self._lock:
            for name in [n for n, r in self._loaded.items() if r.expires_at <= now]:
                del self._loaded[name]  # expired (keep_alive 0 expires at the end of its request)
            loaded = list(self._loaded.items())
        entries = []
        for name, runner in sorted(loaded, key=lambda item: -item[1].expires_at):
            if name not in self.models:
                continue
            entry = self._tag_entry(name)
            entry.pop("modified_at")
            entry.update(
                expires_at=datetime.fromtimestamp(runner.expires_at, timezone.utc).isoformat().replace("+00:00", "Z"),
                size_vram=entry["size"],
                context_length=runner.context_length,
            )
            entries.append(entry)
        return entries

    def _tool_call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tool call as ChatHandler sends it: with an id (routes.go toolCallId) and an index."""
        with self._lock:
            self._calls += 1
            n = self._calls
        letters = hashlib.sha256(f"call{n}".encode()).hexdigest()[:8]
        return {"id": f"call_{letters}", "function": {"index": 0, "name": name, "arguments": arguments}}

    def _compose(self, request: dict[str, Any], messages: list[dict[str, Any]], window: int) -> _Reply:
        """Decide the whole reply up front; streaming just paces it."""
        options: dict[str, Any] = request["options"] if isinstance(request.get("options"), dict) else {}
        vision = "vision" in self._info(self._resolve(str(request.get("model"))) or "")["capabilities"]

        def cost(message: dict[str, Any]) -> int:
            # server/prompt.go chatPrompt: images count 768 tokens each, for a model with a projector.
            return _prompt_tokens(message) + (IMAGE_TOKENS * len(message.get("images") or []) if vision else 0)

        kept = messages
        if messages:
            # chatPrompt: drop whole messages from the front until the prompt
            # fits; system messages from the dropped part and the last
            # message always stay. (Running sums: a 20,000-message prompt is cut in linear time.)
            costs = [cost(m) for m in messages]
            rest, systems, cut = sum(costs), 0, len(messages) - 1
            for i, (m, c) in enumerate(zip(messages, costs)):
                if systems + rest <= window:
                    cut = i
                    break
                rest -= c
                systems += c if m.get("role") == "system" else 0
            kept = [m for m in messages[:cut] if m.get("role") == "system"] + messages[cut:]
        too_long = sum(map(cost, kept)) > window
        n = len(kept)
        prompt_eval_count = sum(map(cost, kept))
        user_text = next(
            (str(m.get("content") or "") for m in reversed(kept) if m.get("role") == "user"), ""
        )
        last = kept[-1] if kept else {}

        chunks: list[dict[str, Any]] = []
        counted: list[bool] = []
        if request.get("think"):
            for token in split_tokens(f"Thinking about: {user_text}"):
                chunks.append({"role": "assistant", "content": "", "thinking": token})
                counted.append(False)

        tools = [t for t in request.get("tools") or [] if isinstance(t, dict)]
        call = None
        if tools and (
            self.tool_mode == "always"
            or (self.tool_mode in ("auto", "unknown", "badargs") and last.get("role") == "user")
        ):
            function = tools[0].get("function") or {}
            name = str(function.get("name") or "")
            arguments = _tool_arguments(function.get("parameters"), user_text)
            if self.tool_mode == "unknown":
                name, arguments = UNKNOWN_TOOL_NAME, {}
            elif self.tool_mode == "badargs":
                arguments = {"unexpected_argument": "?"}  # missing the real ones too
            if self.tool_arguments is not None:
                arguments = self.tool_arguments
            call = self._tool_call(name, arguments)
        elif self.tool_mode == "rogue" and last.get("role") == "user":
            # A confused model asking for a tool nobody offered: must never run.
            call = self._tool_call("secret", {})

        done_reason = "stop"
        if call is not None:
            calls = [call] + [{**call, "id": self._tool_call("", {})["id"]} for _ in range(max(1, self.tool_calls) - 1)]
            chunks.append({"role": "assistant", "content": "", "tool_calls": calls})
            counted.append(True)
        elif not kept:
            done_reason = "load"  # Ollama answers an empty chat by loading the model
        else:
            fmt = request.get("format")
            if self.reply is not None:
                text = self.reply
            elif last.get("role") == "tool":
                tool_name = last.get("tool_name") or last.get("name") or _last_called(kept) or "unknown"
                text = f"The tool {tool_name} returned: {last.get('content') or ''}"
            elif fmt == "json":
                text = json.dumps({"messages": n, "echo": user_text}, ensure_ascii=False)
            elif isinstance(fmt, dict):
                text = json.dumps(_schema_instance(fmt, fmt, n), ensure_ascii=False)
            else:
                text = f"I saw {n} messages. You said: {user_text}"
                images = [m for m in reversed(kept) if m.get("role") == "user"][:1]
                k = len(images[0].get("images") or []) if images else 0
                if k and vision:  # a model without a projector does not see them
                    text += f" I see {k} image(s)."
            tokens = split_tokens(text)
            # Padding would break JSON output, so it only applies to prose.
            if self.reply_tokens is not None and not fmt:
                if len(tokens) < self.reply_tokens:
                    extra = self.reply_tokens - len(tokens)
                    tokens = split_tokens(text + "".join(f" w{i}" for i in range(1, extra + 1)))
                elif len(tokens) > self.reply_tokens:
                    tokens, done_reason = tokens[: self.reply_tokens], "length"
            num_predict = options.get("num_predict")
            if isinstance(num_predict, int) and 0 <= num_predict < len(tokens):
                tokens, done_reason = tokens[:num_predict], "length"
            for token in tokens:
                chunks.append({"role": "assistant", "content": token})
                counted.append(True)
        return _Reply(n, prompt_eval_count, chunks, counted, done_reason, too_long)


def _last_called(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        for call in message.get("tool_calls") or []:
            name = (call.get("function") or {}).get("name") if isinstance(call, dict) else None
            if name:
                return str(name)
    return None


def start_server(**kwargs: Any) -> OllamaTestServer:
    """Start a server on a background daemon thread, e.g. for a notebook:
    ``os.environ["OLLAMA_HOST"] = start_server().host``."""
    return OllamaTestServer(**kwargs).start()


try:
    import pytest
except ImportError:  # fixtures are optional; the server itself needs only stdlib
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def _ollama_server_session() -> Iterator[OllamaTestServer]:
        server = OllamaTestServer().start()
        yield server
        server.stop()

    @pytest.fixture
    def ollama_server(
        _ollama_server_session: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[OllamaTestServer]:
        """The shared test server, reset, with OLLAMA_HOST pointing at it."""
        server = _ollama_server_session
        server.reset()
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server
        server.reset()  # abandon anything this test left streaming


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_magic.testing",
        description="Serve a deterministic fake Ollama API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names installed at start")
    parser.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH,
                        help="the server's default window, like OLLAMA_CONTEXT_LENGTH (default: %(default)s)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    server = OllamaTestServer(models, token_delay=args.token_delay, port=args.port)
    server.context_length = args.context_length
    server._default_context_length = args.context_length
    server.start()
    print(f"Ollama test server on {server.host}\nexport OLLAMA_HOST={server.host}", flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
