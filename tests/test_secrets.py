"""Secrets stay secret (issue #11 point 4): host passwords in every form, and what `fix` sends.

Passwords with `/`, `@`, `:` and %-escapes, `//user:pw@host`, leading spaces
and hosts without a scheme are hidden in `%config OllamaMagics`, `%ollama
config` and error lines; header values, OLLAMA_API_KEY and host passwords that
appear in a failing cell or its traceback are replaced by `***` before
`%ollama fix` / `--error` send them, so neither the server, the store, saved
files, exports nor the panel ever hold them.
"""

from __future__ import annotations

import json

import pytest

from conftest import magics_of, run
from ollama_magic import persist
from ollama_magic.errors import host_secrets, redact_host, scrub

API_KEY = "sk-apikey-" + "3" * 20
HEADER = "hdr-token-" + "9" * 20
PASSWORD = "pa:ss%2Fw%40rd-Q7"  # as written in the URL
PASSWORD_PLAIN = "pa:ss/w@rd-Q7"  # as the server decodes it

HOSTS = {  # written form -> what may be shown
    "slash_at_colon": ("http://bob:p/ss@w:rd@10.1.2.3:11434", "http://***@10.1.2.3:11434"),
    "percent_escapes": (f"https://bob:{PASSWORD}@ollama.example:443/", "https://***@ollama.example:443/"),
    "no_scheme": ("bob:hunter2-long@10.1.2.3:11434", "***@10.1.2.3:11434"),
    "double_slash": ("//bob:hunter2-long@10.1.2.3", "//***@10.1.2.3"),
    "leading_spaces": ("   http://bob:hunter2-long@10.1.2.3", "   http://***@10.1.2.3"),
    "user_only": ("http://bob-the-user@10.1.2.3", "http://***@10.1.2.3"),
    "none": ("http://10.1.2.3:11434/api", "http://10.1.2.3:11434/api"),
}
HIDDEN = ["p/ss@w:rd", PASSWORD, PASSWORD_PLAIN, "hunter2-long", "bob-the-user", "bob:"]


def _leaks(text: str) -> list[str]:
    return [s for s in (*HIDDEN, API_KEY, HEADER) if s in text]


@pytest.mark.parametrize("name", list(HOSTS))
def test_redact_host(name):
    written, shown = HOSTS[name]
    assert redact_host(written) == shown
    assert not _leaks(redact_host(written))


def test_host_secrets_cover_escaped_and_decoded_forms():
    found = host_secrets(f"http://bob:{PASSWORD}@h")
    assert PASSWORD in found and PASSWORD_PLAIN in found
    assert scrub(f"x {PASSWORD_PLAIN} y {PASSWORD}", found) == "x *** y ***"


@pytest.mark.parametrize("name", list(HOSTS))
@pytest.mark.parametrize("via", ["config", "env"])
def test_host_password_hidden_in_config_and_errors(shell, monkeypatch, capsys, name, via):
    written, shown = HOSTS[name]
    if via == "config":
        shell.run_line_magic("config", f"OllamaMagics.host = {written!r}")
    else:
        monkeypatch.setenv("OLLAMA_HOST", written)
    capsys.readouterr()
    shell.run_line_magic("config", "OllamaMagics")
    shell.run_line_magic("ollama", "config")
    if via == "config":
        print(repr(magics_of(shell).host))  # what a notebook's Out shows for the trait
    out = capsys.readouterr().out
    assert shown.strip() in out
    assert not _leaks(out), out
    shell.run_line_magic("config", "OllamaMagics.timeout = 0.5")
    res = run(shell, "%%ollama\nhi")  # nothing listens there: a one-line error naming the host
    err = res.error_in_exec or res.error_before_exec
    assert err is not None and not _leaks(str(err)), str(err)


@pytest.fixture
def secret_shell(shell, ollama_server, monkeypatch):
    """A working shell whose host carries a password, with a header and an API key set."""
    monkeypatch.setenv("OLLAMA_API_KEY", API_KEY)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host.replace("http://", f"http://bob:{PASSWORD}@"))
    shell.run_line_magic("config", f"OllamaMagics.headers = {{'X-Auth': 'Bearer {HEADER}'}}")
    return shell


_FAILING = (f"key = {API_KEY!r}\nauth = 'Bearer {HEADER}'\nurl = 'http://bob:{PASSWORD}@h'\n"
            f"pw = {PASSWORD_PLAIN!r}\nraise ValueError(key + ' ' + pw + ' ' + auth)")


@pytest.mark.parametrize("how", ["fix", "error"])
def test_fix_and_error_never_send_or_store_secrets(secret_shell, ollama_server, tmp_path, capsys, how):
    shell = secret_shell
    assert not run(shell, _FAILING).success
    capsys.readouterr()  # the user's own traceback, printed by IPython, is not ours to hide
    if how == "fix":
        assert run(shell, "%ollama fix").success
    else:
        assert run(shell, "%%ollama --error\nwhat went wrong?").success
    sent = ollama_server.last_chat()
    text = str(sent["messages"])
    assert "ValueError" in text and "***" in text  # the traceback went, its secrets did not
    assert not _leaks(text), text
    store = magics_of(shell).store
    assert not _leaks(repr(persist.dump(store)))
    shell.run_line_magic("ollama", f"save {tmp_path / 'chats.json'}")
    shell.run_line_magic("ollama", f"export {tmp_path / 'chat.md'}")
    shell.run_line_magic("ollama", "history")
    out = capsys.readouterr()
    assert not _leaks(out.out + out.err)
    for path in tmp_path.iterdir():
        assert not _leaks(path.read_text())


def test_the_panel_holds_no_secret(secret_shell, ollama_server):
    from ollama_magic.widget import HistoryPanel

    shell = secret_shell
    assert not run(shell, _FAILING).success
    assert run(shell, "%ollama fix").success
    panel = HistoryPanel(magics_of(shell).store)
    try:
        # Everything the panel holds or would send: its synced state, its rows, its fallback output.
        seen = [json.dumps(panel.get_state()), json.dumps(panel.rows(), default=str),
                json.dumps(panel._repr_mimebundle_()[0])]
        assert any("ValueError" in v for v in seen)
        assert not _leaks("\n".join(seen))
    finally:
        panel.close()
