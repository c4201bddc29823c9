"""Issue #14: the fifteen places where a careless or hostile user broke a guarantee.

Each test names its point; each failed on the code before its fix.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from IPython.core.error import UsageError

from conftest import magics_of, run
from ollama_magic import commands, persist
from ollama_magic.store import ConversationStore


def store_of(ip: Any) -> ConversationStore:
    return magics_of(ip).store


def state(store: ConversationStore) -> str:
    depths = {name: store.undo_depth(name) for name in store.names}
    return json.dumps([persist.dump(store), store.active_name, depths], ensure_ascii=False)


def one_line_usage_error(result: Any) -> str:
    err = result.error_in_exec or result.error_before_exec
    assert type(err) is UsageError, repr(err)
    msg = str(err)
    assert msg and "\n" not in msg, msg
    return msg


# -- 9. every subcommand parses its arguments ------------------------------------
EXTRA_WORDS = ["reset please", "undo extra", "chats all", "history now", "last one", "config please",
               "models big", "save a b", "load a b", "export a b", "fork x y", "model a b",
               "chat a b", "help me please", "options --frobnicate", "system --clear now"]


@pytest.mark.parametrize("line", EXTRA_WORDS)
def test_9_subcommands_refuse_what_they_do_not_take(shell, ollama_server, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(shell, "%%ollama\nkept")
    run(shell, "%ollama chat other")
    run(shell, "%%ollama\nkept too")
    before = state(store_of(shell))
    requests = len(ollama_server.requests)
    msg = one_line_usage_error(run(shell, f"%ollama {line}"))
    assert f"%ollama {line.split()[0]}" in msg and ("unrecognized" in msg or "takes no" in msg), msg
    assert state(store_of(shell)) == before
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert len(ollama_server.requests) == requests  # nothing asked


def test_9_help_lists_the_registry_and_one_subcommand(shell, capsys):
    run(shell, "%ollama help")
    out = capsys.readouterr().out
    for name, spec in commands.REGISTRY.items():
        assert spec.usage in out and spec.summary in out, name
    run(shell, "%ollama help fork")
    out = capsys.readouterr().out
    assert "%ollama fork [--at N] NEW" in out and "--at" in out
    assert "did you mean 'reset'" in one_line_usage_error(run(shell, "%ollama help rest"))
    assert "did you mean 'reset'" in one_line_usage_error(run(shell, "%ollama rest"))
    assert "did you mean '--clear'" in one_line_usage_error(run(shell, "%ollama options --cleer"))


def test_9_a_new_subcommand_is_one_decorated_method(shell, capsys):
    seen: list[argparse.Namespace] = []

    @commands.subcommand("probe", "a subcommand added by a test")
    @commands.argument("name", metavar="NAME")
    @commands.argument("--twice", action="store_true")
    def probe(magics: Any, args: argparse.Namespace) -> None:
        seen.append(args)

    try:
        run(shell, "%ollama probe x --twice")
        assert seen and seen[0].name == "x" and seen[0].twice
        assert "%ollama probe [--twice] NAME" in one_line_usage_error(run(shell, "%ollama probe"))
        run(shell, "%ollama help")
        assert "a subcommand added by a test" in capsys.readouterr().out
    finally:
        commands.REGISTRY.pop("probe")


def test_9_free_text_is_kept_as_typed(shell):
    text = """Don't be "terse"; use  two  spaces."""
    run(shell, f"%ollama system {text}")
    assert store_of(shell).active.system == text
    run(shell, "%ollama system --clear")
    assert store_of(shell).active.system is None
