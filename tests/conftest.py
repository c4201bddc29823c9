"""Shared fixtures: the project's Ollama-API test server and in-process IPython shells."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

pytest_plugins = ["ollama_magic.testing"]  # the ollama_server fixture


@pytest.fixture(autouse=True, scope="session")
def _private_journal() -> Iterator[str]:
    """No test writes the real ~/.ipython: the journal (and any profile) lives in a temp dir.

    Set in os.environ, so kernels started as subprocesses inherit it too; a
    JPY_SESSION_NAME of the shell running pytest must not make tests a notebook.
    """
    saved = {k: os.environ.get(k) for k in ("OLLAMA_MAGIC_DB", "JPY_SESSION_NAME")}
    with tempfile.TemporaryDirectory(prefix="ollama-magic-journal-") as tmp:
        os.environ["OLLAMA_MAGIC_DB"] = os.path.join(tmp, "journal.db")
        os.environ.pop("JPY_SESSION_NAME", None)
        yield tmp
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_report_header() -> str:
    import ollama_magic

    return f"ollama_magic from {os.path.dirname(ollama_magic.__file__)}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/run tests the installed wheel: the checkout must not shadow it.
    import ollama_magic

    if os.environ.get("OLLAMA_MAGIC_TEST_INSTALLED") and "site-packages" not in ollama_magic.__file__:
        raise pytest.UsageError(f"testing {ollama_magic.__file__}, not the installed wheel")


class RecordingPublisher(DisplayPublisher):
    """A frontend stand-in: records every display message instead of printing reprs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.messages: list[dict[str, Any]] = []

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):  # type: ignore[override]
        self.messages.append({"data": data, "transient": transient or {}, "update": update})

    def clear_output(self, wait: bool = False) -> None:
        self.messages.append({"clear": True})

    @property
    def updates(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("update")]

    @property
    def last_html(self) -> str:
        """The last rich output (the final reply: sanitised HTML)."""
        for m in reversed(self.messages):
            if "data" in m and "text/html" in m["data"]:
                return m["data"]["text/html"]
        raise AssertionError("no HTML was displayed")


    @property
    def last_plain(self) -> str:
        """The last output's text/plain (the final reply, footer and tool lines included)."""
        for m in reversed(self.messages):
            if "data" in m and "text/plain" in m["data"]:
                return m["data"]["text/plain"]
        raise AssertionError("nothing was displayed")


def _fresh_shell(server: Any, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("OLLAMA_HOST", server.host)
    monkeypatch.delenv("OLLAMA_MODEL", raising=False)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    ip = InteractiveShell.instance()
    ip.run_line_magic("unload_ext", "ollama_magic") if "ollama" in ip.magics_manager.magics["line"] else None
    ip.config.pop("OllamaMagics", None)  # %config from an earlier test must not leak
    ip.run_line_magic("load_ext", "ollama_magic")
    ip.run_line_magic("ollama", "model llama3.2")
    return ip


@pytest.fixture
def shell(ollama_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[InteractiveShell]:
    """A terminal-like shell (no rich frontend) with the extension loaded fresh."""
    ip = _fresh_shell(ollama_server, monkeypatch)
    saved = ip.display_pub
    ip.display_pub = DisplayPublisher(shell=ip)
    capsys.readouterr()
    yield ip
    ip.display_pub = saved
    ip.run_line_magic("unload_ext", "ollama_magic")


@pytest.fixture
def nb_shell(ollama_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A shell whose display messages are recorded, as a notebook frontend gets them."""
    ip = _fresh_shell(ollama_server, monkeypatch)
    saved = ip.display_pub
    ip.display_pub = RecordingPublisher(shell=ip)
    yield ip
    ip.display_pub = saved
    ip.run_line_magic("unload_ext", "ollama_magic")


def magics_of(ip: InteractiveShell) -> Any:
    return ip.magics_manager.registry["OllamaMagics"]


def run(ip: InteractiveShell, source: str, cell_id: str | None = None) -> Any:
    """Run a cell like a kernel does (with a cell id when given)."""
    return ip.run_cell(source, store_history=True, cell_id=cell_id)


def interrupt_main_after(delay: float) -> threading.Timer:
    """Deliver a real SIGINT to the main thread, as Ctrl-C / the stop button does."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer
