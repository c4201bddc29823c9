"""The notebook as context: tools from the namespace, errors, images from variables, forks."""

from __future__ import annotations

import base64

import pytest
from IPython.core.error import UsageError

from conftest import magics_of, run

ADD = '''
calls = []
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: the first number
      b: the second number
    """
    calls.append((a, b))
    return a + b

def explode(a: int) -> int:
    """Always fails.

    Args:
      a: anything
    """
    raise RuntimeError("kaboom")

def secret() -> str:
    """Must never be called."""
    raise AssertionError("secret was called")
'''


def test_tool_call_round_trip(shell, ollama_server, capsys):
    run(shell, ADD)
    assert run(shell, "%%ollama --tools add\nWhat is 2 plus 3?").success
    assert shell.user_ns["calls"] == [(2, 3)]
    first, second = ollama_server.chat_requests()
    assert first["tools"][0]["function"]["name"] == "add"
    assert set(first["tools"][0]["function"]["parameters"]["properties"]) == {"a", "b"}
    assert second["messages"][-2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert second["messages"][-1] == {"role": "tool", "content": "5", "tool_name": "add"}
    turn = magics_of(shell).store.active.turns[-1]
    assert [m["role"] for m in turn.messages] == ["user", "assistant", "tool", "assistant"]
    assert turn.reply["content"] == "The tool add returned: 5"
    out = capsys.readouterr().out
    assert "add(a=2, b=3) → 5" in out
    run(shell, "%%ollama\nthanks")
    roles = [m["role"] for m in ollama_server.last_chat()["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


def test_unlisted_tool_is_refused(shell, ollama_server):
    run(shell, ADD)
    ollama_server.tool_mode = "unknown"
    assert run(shell, "%%ollama --tools add\n1 and 2").success
    assert shell.user_ns["calls"] == []
    tool_msg = ollama_server.last_chat()["messages"][-1]
    assert tool_msg["role"] == "tool" and tool_msg["content"].startswith("Error: there is no tool named 'no_such_tool'")


def test_bad_arguments_are_refused(shell, ollama_server):
    run(shell, ADD)
    ollama_server.tool_mode = "badargs"
    assert run(shell, "%%ollama --tools add\n1 and 2").success
    assert shell.user_ns["calls"] == []
    assert "bad arguments for add" in ollama_server.last_chat()["messages"][-1]["content"]


def test_tool_exception_goes_back_to_the_model(shell, ollama_server):
    run(shell, ADD)
    assert run(shell, "%%ollama --tools explode\nboom 1").success
    assert ollama_server.last_chat()["messages"][-1]["content"] == "Error: explode raised RuntimeError: kaboom"


def test_endless_tool_calls_stop_and_store_nothing(shell, ollama_server):
    run(shell, ADD)
    shell.run_line_magic("config", "OllamaMagics.max_tool_rounds = 3")
    ollama_server.tool_mode = "always"
    res = run(shell, "%%ollama --tools add\n1 2")
    assert isinstance(res.error_in_exec, UsageError)
    assert "after 3 rounds" in str(res.error_in_exec)
    assert len(shell.user_ns["calls"]) == 3
    assert magics_of(shell).store.active.turns == []


def test_tool_calls_without_tools_are_never_run(nb_shell, ollama_server):
    run(nb_shell, ADD)
    ollama_server.tool_mode = "rogue"
    assert run(nb_shell, "%%ollama\nhi").success  # `secret` raises if called
    body = ollama_server.last_chat()
    assert not body.get("tools") and len(ollama_server.chat_requests()) == 1
    assert "secret({}) (not run: no --tools)" in nb_shell.display_pub.last_html
    turn = magics_of(nb_shell).store.active.turns[-1]
    assert "tool_calls" not in turn.reply  # the stored history stays valid
    ollama_server.tool_mode = "rogue"
    assert run(nb_shell, "%%ollama --tools add\nhi 1 2").success  # offered add, asked for secret
    assert "there is no tool named 'secret'" in ollama_server.last_chat()["messages"][-1]["content"]


def test_tools_must_name_functions(shell, ollama_server):
    run(shell, "value = 3")
    res = run(shell, "%%ollama --tools value\nhi")
    assert "'value' is not a function" in str(res.error_in_exec)
    assert ollama_server.chat_requests() == []


def test_fix_sends_failing_code_and_traceback(shell, ollama_server, capsys):
    shell.run_line_magic("ollama", "fix")
    assert "No cell has failed" in capsys.readouterr().out
    assert ollama_server.chat_requests() == []
    run(shell, "def f(x):\n    return 1 / x\nf(0)")
    shell.InteractiveTB.color_toggle() if hasattr(shell.InteractiveTB, "color_toggle") else None
    run(shell, "%ollama fix")
    content = ollama_server.last_chat()["messages"][-1]["content"]
    assert "return 1 / x" in content and "ZeroDivisionError" in content
    assert "\x1b[" not in content
    assert len(magics_of(shell).store.active.turns) == 1


def test_error_option_adds_the_question(shell, ollama_server):
    run(shell, "undefined_name + 1")
    run(shell, "%%ollama --error\nIs it a typo?")
    content = ollama_server.last_chat()["messages"][-1]["content"]
    assert "NameError" in content and content.rstrip().endswith("Is it a typo?")


def test_ollama_cells_are_not_the_last_error(shell, ollama_server):
    run(shell, "1/0")
    run(shell, "%%ollama --format nope\nx")  # fails, but is ours
    run(shell, "%ollama fix")
    assert "ZeroDivisionError" in ollama_server.last_chat()["messages"][-1]["content"]


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_image_from_bytes_variable(shell, ollama_server):
    shell.user_ns["png"] = PNG
    run(shell, "%%ollama -m gemma3 --image png\nwhat is it")  # a vision model
    img = ollama_server.last_chat()["messages"][-1]["images"][0]
    assert base64.b64decode(img) == PNG
    assert "I see 1 image" in magics_of(shell).store.active.turns[-1].reply["content"]


@pytest.mark.parametrize("setup", [
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
    "img, ax = plt.subplots(figsize=(1, 1))\nax.plot([1, 2])",
    "from PIL import Image\nimg = Image.new('RGB', (4, 4), 'red')",
], ids=["matplotlib", "PIL"])
def test_image_from_figure_or_pil_image(shell, ollama_server, setup):
    assert run(shell, setup).success
    run(shell, "%%ollama -m gemma3 --image img\ndescribe it")
    data = base64.b64decode(ollama_server.last_chat()["messages"][-1]["images"][0])
    assert data.startswith(b"\x89PNG")


def test_image_variable_of_wrong_type(shell, ollama_server):
    run(shell, "thing = 42")
    res = run(shell, "%%ollama --image thing\nwhat")
    assert "expected image bytes" in str(res.error_in_exec)
    assert ollama_server.chat_requests() == []


def test_fork_at(shell, ollama_server, capsys):
    run(shell, "%%ollama --system 'Be brief.' -m qwen3\none")
    run(shell, "%%ollama\ntwo")
    shell.run_line_magic("ollama", "fork b --at 1")
    store = magics_of(shell).store
    assert store.active_name == "b" and len(store.active.turns) == 1
    run(shell, "%%ollama\nbranch question")
    body = ollama_server.last_chat()
    assert body["model"] == "qwen3" and body["messages"][0]["content"] == "Be brief."
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["one", "branch question"]
    assert len(store.get("default").turns) == 2
    with pytest.raises(UsageError, match="exists already"):
        shell.run_line_magic("ollama", "fork b")
    with pytest.raises(UsageError, match="--at"):
        shell.run_line_magic("ollama", "fork c --at x")


def test_fix_traceback_has_no_ipython_frames(shell, ollama_server):
    run(shell, "def g():\n    raise KeyError('banana')\ng()")
    run(shell, "%ollama fix")
    content = ollama_server.last_chat()["messages"][-1]["content"]
    assert "KeyError: 'banana'" in content and "raise KeyError" in content
    assert "interactiveshell.py" not in content and "run_code" not in content


def test_failed_request_leaves_no_placeholder(nb_shell, ollama_server):
    res = run(nb_shell, "%%ollama -m nope\nhi")
    assert isinstance(res.error_in_exec, UsageError)
    pub = nb_shell.display_pub
    assert pub.messages[-1]["update"] and pub.messages[-1]["data"] == {"text/plain": ""}


def test_a_tool_that_resets_the_chat_mid_turn_leaves_the_request_as_it_was(shell, ollama_server):
    """The request reads the chat's stored messages in place (store.WireMessages): a change to
    the chat while the turn runs (here a tool resets it) must not change what the next round sends."""
    run(shell, "%%ollama\none")
    run(shell, "%%ollama\ntwo")
    run(shell, '''
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: the first number
      b: the second number
    """
    get_ipython().run_line_magic("ollama", "reset")
    return a + b
''')
    assert run(shell, "%%ollama --tools add\nWhat is 2 plus 3?").success
    first, second = ollama_server.chat_requests()[-2:]
    assert [m["content"] for m in first["messages"] if m["role"] == "user"] == ["one", "two", "What is 2 plus 3?"]
    assert second["messages"][:len(first["messages"])] == first["messages"]
    assert [m["role"] for m in second["messages"][len(first["messages"]):]] == ["assistant", "tool"]
