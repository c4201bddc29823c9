"""--cells N and --file PATH: earlier cells and text files before the question."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conftest import magics_of, run
from ollama_magic.context import cells_block
from ollama_magic.errors import OllamaMagicError


def last_user(server: Any) -> str:
    return [m["content"] for m in server.last_chat()["messages"] if m["role"] == "user"][-1]


def test_cells_two_after_two_cells(shell, ollama_server):
    run(shell, "import pandas as pd\nrows = 3")       # In [1]: no result
    run(shell, "%%ollama\nignored: a question of the chat")  # skipped, it is in the chat already
    run(shell, "pd.DataFrame({'v': range(rows)})")   # In [3]: a DataFrame result
    run(shell, "rows * 7")                          # In [4]: 21
    assert run(shell, "%%ollama --cells 2\nWhat did these do?").success
    sent = last_user(ollama_server)
    n = shell.execution_count
    first, second = n - 3, n - 2  # the two cells before this one (counts start where the shell is)
    assert sent.startswith(f"In [{first}]:\n```python\npd.DataFrame({{'v': range(rows)}})\n```\n\nOut [{first}]:\n```text\npandas DataFrame: 3 rows × 1 columns")
    assert f"In [{second}]:\n```python\nrows * 7\n```\n\nOut [{second}]:\n```text\n21\n```" in sent
    assert sent.endswith("```\n\nWhat did these do?")
    assert "import pandas" not in sent and "ignored" not in sent and "--cells" not in sent


def test_cells_skips_ollama_cells_and_reaches_further_back(shell, ollama_server):
    run(shell, "a = 1")
    run(shell, "%ollama chats")
    assert run(shell, "%%ollama --cells 1\nq").success
    assert last_user(ollama_server).startswith("In [") and "a = 1" in last_user(ollama_server)


def test_cells_are_bounded_and_fenced_safely(shell, ollama_server):
    magics_of(shell).max_var_chars = 500
    run(shell, "s = '''```\\nnot the end\\n```'''\n" + "# pad\n" * 2000)
    assert run(shell, "%%ollama --cells 1\nq").success
    sent = last_user(ollama_server)
    assert sent.startswith("In [") and "\n````python\n" in sent  # a longer fence than any run inside
    assert "max_var_chars = 500" in sent and len(sent) < 1000


def test_cells_errors_change_nothing(shell, ollama_server):
    n = len(ollama_server.chat_requests())
    res = run(shell, "%%ollama --cells 0\nq")
    assert "--cells takes a number of cells" in str(res.error_in_exec)
    res = run(shell, "%%ollama --cells -2\nq")
    assert "not -2" in str(res.error_in_exec)
    assert len(ollama_server.chat_requests()) == n


def test_cells_none_before_is_an_error():
    # IPython's history: index 0 is empty, then one entry per execution count.
    with pytest.raises(OllamaMagicError, match="--cells 3: no code cell has run before this one"):
        cells_block(["", "%%ollama\nq", "%%ollama --cells 3\nq"], {}, 3,
                    current="%%ollama --cells 3\nq", render=str, limit=100)
    block = cells_block(["", "x = 1", "%%ollama --cells 3\nq"], {}, 3, current="%%ollama --cells 3\nq",
                        render=str, limit=100)
    assert block == "In [1]:\n```python\nx = 1\n```"


def test_file_text_with_name_and_language(shell, ollama_server, tmp_path):
    code = tmp_path / "tool.py"
    code.write_text("def f():\n    return '```'\n")
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n")
    assert run(shell, f"%%ollama --file {code} --file {notes}\nReview these.").success
    sent = last_user(ollama_server)
    assert sent == (f"File `{code}`:\n````python\ndef f():\n    return '```'\n\n````\n\n"
                    f"File `{notes}`:\n```markdown\n# Notes\n\n```\n\nReview these.")


def test_file_is_bounded(shell, ollama_server, tmp_path):
    big = tmp_path / "big.log"
    big.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert run(shell, f"%%ollama --file {big}\nq").success
    sent = last_user(ollama_server)
    assert sent.startswith(f"File `{big}`:\n```text\nline 0\n") and "line 99999" in sent
    assert "characters of this file cut here (OllamaMagics.max_var_chars = 8,000)" in sent
    assert len(sent) < 9000


@pytest.mark.parametrize("kind,message", [
    ("missing", "no such file"),
    ("binary", "not a text file (binary)"),
    ("latin1", "not UTF-8 text"),
    ("folder", "is a folder"),
    ("fifo", "not a regular file"),
])
def test_bad_file_is_one_line_and_sends_nothing(shell, ollama_server, tmp_path, kind, message):
    path = tmp_path / "x.dat"
    if kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    elif kind == "latin1":
        path.write_bytes("café".encode("latin-1"))
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    run(shell, "%%ollama\nfirst")
    n = len(ollama_server.chat_requests())
    res = run(shell, f"%%ollama --file {path}\nq")
    assert f"--file {path}: {message}" in str(res.error_in_exec)
    assert "\n" not in str(res.error_in_exec)
    assert len(ollama_server.chat_requests()) == n
    assert len(shell.magics_manager.registry["OllamaMagics"].store.active.turns) == 1
