"""Streaming costs O(reply): display bytes counted on a real ipykernel's iopub (issue #17 point 1).

For replies of 200 to 20,000 tokens, every display message of the cell is
serialised as the kernel sends it, and the bytes are added up: all of them
together stay within 3x the final message (the sanitised reply), the first
frame goes out with the first token, and the text visibly grows frame by frame.
Bytes and counts are asserted, never seconds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from kernel_util import kernel

SIZES = [200, 1000, 5000, 20000]
_SHOWN = re.compile(r"the last ([\d,]+) of ([\d,]+) characters")


def _display_messages(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in outputs if m["msg_type"] in ("display_data", "update_display_data")]


def _wire_bytes(session: Any, msg: dict[str, Any]) -> int:
    """The message as the kernel put it on the wire (all frames, signature included)."""
    return sum(len(frame) for frame in session.serialize(msg))


def _data_bytes(msg: dict[str, Any]) -> int:
    return len(json.dumps(msg["content"]["data"], ensure_ascii=False).encode())


def _received(frame: str) -> int:
    """How many characters of the reply a live frame says it has seen."""
    m = _SHOWN.search(frame)
    return int(m.group(2).replace(",", "")) if m else len(frame)


@pytest.fixture(scope="module")
def measured(ollama_server_module: Any) -> dict[int, dict[str, Any]]:
    srv = ollama_server_module
    results: dict[int, dict[str, Any]] = {}
    with kernel({"OLLAMA_HOST": srv.host}) as k:
        setup = k.execute("%load_ext ollama_magic\n%ollama model llama3.2")
        assert setup.status == "ok", setup.text
        for n in SIZES:
            srv.reply_tokens = n
            srv.token_delay = 0.001 if n <= 1000 else 0.0005 if n <= 5000 else 0.0002
            ex = k.execute("%%ollama\nwrite", cell_id=f"size-{n}", timeout=120)
            assert ex.status == "ok", ex.text
            msgs = _display_messages(ex.outputs)
            shown = k.execute("_r = %ollama last\nprint(len(_r.encode()), len(_r.split()))")
            reply_bytes, tokens = map(int, [m for m in shown.outputs if m["msg_type"] == "stream"][0]["content"]["text"].split())
            results[n] = {
                "messages": msgs,
                "wire": [_wire_bytes(k.kc.session, m) for m in msgs],
                "data": [_data_bytes(m) for m in msgs],
                "reply_bytes": reply_bytes,
                "tokens": tokens,
            }
    return results


@pytest.fixture(scope="module")
def ollama_server_module() -> Any:
    from ollama_magic.testing import OllamaTestServer

    srv = OllamaTestServer().start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("n", SIZES)
def test_display_bytes_stay_within_3x_the_final_reply(measured, n):
    r = measured[n]
    assert r["tokens"] == n
    total, final = sum(r["wire"]), r["wire"][-1]
    assert total <= 3 * final, (n, total, final)
    assert sum(r["data"]) <= 3 * r["data"][-1]
    print(f"\n[{n} tokens] {len(r['wire'])} display messages, {total:,} bytes on iopub; final {final:,} "
          f"({total / final:.2f}x); reply text {r['reply_bytes']:,} bytes ({total / r['reply_bytes']:.2f}x)")


@pytest.mark.parametrize("n", SIZES)
def test_text_visibly_grows_and_streams_plain(measured, n):
    msgs = measured[n]["messages"]
    live = [m["content"]["data"] for m in msgs[1:-1]]  # between the placeholder and the final reply
    assert len(live) >= 2, len(live)
    assert all(set(d) == {"text/plain"} for d in live)  # no markup while streaming
    seen = [_received(d["text/plain"]) for d in live]
    assert seen == sorted(seen) and seen[-1] > seen[0]
    # The first frame carries the first token: a frame goes out as soon as text arrives.
    assert seen[0] < 100, seen[:3]
    assert set(msgs[-1]["content"]["data"]) == {"text/html", "text/plain"}


def test_tool_events_go_through_the_same_throttle(nb_shell):
    """A burst of tool calls does not send one display message each (issue #14 point 10, display part)."""
    from ollama_magic.chat import Reply
    from ollama_magic.render import NotebookView

    view = NotebookView("m", rate=15.0)
    view.begin(Reply(parts=["start"]))
    view.update(view.reply)
    for i in range(200):
        view.tool("echo", {"text": str(i)}, "x" * 50, True)
    assert view.updates <= 3, view.updates  # the placeholder is not counted; one frame, maybe two
    assert len(view.tools) == 200
    view.finish("m · 1 tokens")
    final = nb_shell.display_pub.messages[-1]["data"]
    assert "200 tool calls" in final["text/html"]
