"""Terminal output is inert: escape sequences from a reply or the server are shown escaped.

OSC 52 clipboard writes, title changes, `\\r\\x1b[2K` line overwrites and
`\\x1b[8m` hidden text, in streaming, `%ollama history`, tool lines, listings
and error lines; `\\n` and `\\t` pass. Hostile model names (the server chooses
them) show as text in the notebook footer too.
"""

from __future__ import annotations

import pytest

from conftest import magics_of, run
from ollama_magic import safe
from hostile import ESCAPES, HOSTILE_MODEL_NAMES, PAYLOADS, violations

NASTY = PAYLOADS["terminal_escapes"] + "\n\tindented line"
EVIL_MODEL = "evil\x1b]0;owned\x07model"


def _raw(text: str) -> list[str]:
    return [e for e in ESCAPES if e in text]


def test_streamed_reply_thinking_and_history_are_escaped(shell, ollama_server, capsys):
    ollama_server.reply = NASTY
    assert run(shell, "%%ollama\nsay it").success
    out = capsys.readouterr().out
    assert not _raw(out), repr(out)
    assert "\\x1b]52;" in out and "\\x1b[8m" in out and "\\x0d\\x1b[2K" in out
    assert "\n\tindented line" in out  # newline and tab pass
    assert magics_of(shell).store.active.turns[-1].reply["content"] == NASTY  # stored as sent
    assert run(shell, f"%%ollama -m qwen3 --think\n{NASTY}").success  # thinking echoes the question
    assert not _raw(capsys.readouterr().out)
    shell.run_line_magic("ollama", "history")
    out = capsys.readouterr().out
    assert not _raw(out) and "\\x1b]52;" in out


def test_tool_lines_are_escaped(shell, ollama_server, capsys):
    run(shell, "def echo(text: str) -> str:\n    '''Echo.\n\n    Args:\n      text: what to echo\n    '''\n    return text")
    capsys.readouterr()
    assert run(shell, f"%%ollama --tools echo\n{NASTY}").success
    out = capsys.readouterr().out
    assert "[tool] echo(" in out and not _raw(out)


def test_server_model_names_are_escaped_in_listings_and_errors(shell, ollama_server, capsys):
    ollama_server.models[EVIL_MODEL] = {}
    shell.run_line_magic("ollama", "models")
    out = capsys.readouterr().out
    assert "evil\\x1b]0;owned\\x07model" in out and not _raw(out)
    res = run(shell, "%%ollama -m nope\nhi")  # "not installed ... Installed: <names>"
    err = str(res.error_in_exec)
    assert "Installed:" in err and "evil\\x1b]0;owned" in err and not _raw(err)


@pytest.mark.parametrize("name", [*HOSTILE_MODEL_NAMES, EVIL_MODEL])
def test_hostile_model_name_from_the_server_is_text_in_the_footer(nb_shell, ollama_server, name):
    # The only model on the server is picked automatically: its name comes from the server.
    ollama_server.models.clear()
    ollama_server.models[name] = {}
    magics = magics_of(nb_shell)
    magics.store.set_model(None)
    assert run(nb_shell, "%%ollama\nhi").success
    final = nb_shell.display_pub.messages[-1]["data"]
    assert violations(final["text/html"]) == [], final["text/html"]
    assert "<a " not in final["text/html"]  # not a link, not an image: text
    assert f"<small>{safe.text_html(name)} · " in final["text/html"]  # the server's name, shown as text
    assert not _raw(final["text/plain"])
