"""examples.ipynb runs top to bottom in a fresh kernel: against the test server, and with no server at all."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples.ipynb"

# Cells that fail on purpose, and the text their error must show.
EXPECTED_ERRORS = {"fail": "KeyError: 'banana'", "bad-model": "'no-such-model' is not installed"}
# Cells tagged raises-exception only because a real server may lack a model with the skill;
# the test server has them, so these must succeed here.
SKILL_CELLS = {"think", "tools", "image"}
KERNEL_CHECK = "kernel-check"


def source_tree() -> dict[str, int]:
    """Files of the checkout (not caches or venvs) and their sizes: the tour must add or change none."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "dist", "build"}
    found = {}
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and not skip.intersection(rel.parts) and not rel.parts[0].endswith(".egg-info"):
            found[str(rel)] = path.stat().st_size
    return found


def execute(host: str, workdir: Path) -> dict[str, Any]:
    """Run a copy of the notebook, in `workdir`, in a fresh `python3` kernel whose OLLAMA_HOST is `host`; cells by id."""
    copy = workdir / NOTEBOOK.name  # as the README says: run the tour on a copy
    shutil.copyfile(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)", id=KERNEL_CHECK))
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_MODEL", "OLLAMA_API_KEY", "MPLBACKEND")}
    env["OLLAMA_HOST"] = host
    env["IPYTHONDIR"] = str(workdir / "ipython")  # no user profile or startup files
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)  # raises on an error in any cell not tagged raises-exception
    return {cell.id: cell for cell in nb.cells}


def text(cell: Any) -> str:
    """Everything a cell showed, as text: streams, Markdown (else plain text) and errors."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
        else:
            data = out.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain") or "")
    return "".join(parts)


def problems(cell: Any) -> list[str]:
    """Error outputs, and error text on stderr (a UsageError is a stderr stream, not an error output)."""
    found = []
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            found.append(f"{out.ename}: {out.evalue}")
        elif out.output_type == "stream" and out.name == "stderr" and "Error" in out.text:
            found.append(out.text)
    return found


def check_common(cells: dict[str, Any]) -> None:
    """What must hold whichever server answered."""
    tagged = {cid for cid, c in cells.items() if "raises-exception" in c.metadata.get("tags", [])}
    assert tagged == set(EXPECTED_ERRORS) | SKILL_CELLS
    for cid, cell in cells.items():
        if cell.cell_type == "code" and cid not in EXPECTED_ERRORS:
            assert not problems(cell), (cid, problems(cell))
    for cid, message in EXPECTED_ERRORS.items():
        assert message in text(cells[cid]), (cid, text(cells[cid]))
    # The kernel is this environment's Python, not some other python3 kernelspec.
    assert text(cells[KERNEL_CHECK]).strip() == sys.prefix

    assert "I saw 1 messages" in text(cells["first"])
    assert "I saw 3 messages" in text(cells["follow-up"])  # question, answer, follow-up
    assert "I saw 5 messages" in text(cells["ask-again"])
    assert "I saw 2 messages. You said: Who are you?" in text(cells["pirate"])  # system prompt + question
    assert "Chat 'default' is active" in text(cells["switch"])
    assert "Forked into chat 'what-if' with 1 turns" in text(cells["fork"])
    assert "I saw 3 messages. You said: Explain the same idea" in text(cells["fork-ask"])  # turn 1 + question
    assert re.search(r"\* +what-if +\S+ +2 ", text(cells["fork-back"]))
    assert "Chat 'default' is active" in text(cells["fork-back"])
    assert "list comprehensions" in text(cells["interpolate"]) and "143" in text(cells["interpolate"])
    # The test extra has pandas: the frame arrives as shape, dtypes and a table, not pandas' printout.
    assert "pandas DataFrame: 3 rows × 2 columns" in text(cells["interpolate"])
    assert "| 2 | Mar | 143 |" in text(cells["interpolate"])
    assert re.search(r"turn \d+ \('In one sentence: what are list comprehensions\?.*\): \{sales\} changed since; (re-run|ask again)", text(cells["stale"]))
    assert "{topic}" not in text(cells["stale"])  # unchanged variables are not named
    assert text(cells["validate"]).startswith("City(name=")
    assert "def fib(n):" in text(cells["code"])
    assert "Thinking about: Is 1001 a prime number?" in text(cells["think"])
    assert "not stored (--once)" in text(cells["think"])
    assert "rectangle_area(width=3, height=4) → 12" in text(cells["tools"])
    assert "I see 1 image(s)" in text(cells["image"])
    assert "KeyError: 'banana'" in text(cells["fix"])
    assert "Saved 3 chats" in text(cells["save"])
    assert re.search(r"\* +default +llama3\.2:latest +0 ", text(cells["save"]))  # reset emptied it
    assert "Loaded default, pirate, what-if" in text(cells["load-chats"])
    export = text(cells["export"])
    assert "## 1. User\n\nExplain Python generators" in export  # the edit from the panel
    assert "You said: Explain Python decorators" in export
    assert text(cells["before-error"]) == text(cells["after-error"])  # the failed turn changed nothing
    assert "(from OLLAMA_HOST)" in text(cells["config"])
    assert "%ollama fork" in text(cells["help"])
    assert re.search(r"^\* .* \d+ turns +console:[0-9a-f]{8}$", text(cells["sessions"]), re.M)  # nbclient: no notebook path
    assert "you:   Explain Python decorators" in text(cells["log"])  # the question as first asked


def test_examples_against_the_test_server(ollama_server: Any, tmp_path: Path) -> None:
    before = source_tree()
    cells = execute(ollama_server.host, tmp_path)
    assert source_tree() == before  # the tour leaves the checkout clean (its files go to a temp folder)
    assert "This tour writes its files to" in text(cells["save"])
    assert "def fib(n):" in text(cells["code-block"])
    assert text(cells["find-server"]) == ""  # a server answered: no offline model
    check_common(cells)
    assert re.search(rf"host +{re.escape(ollama_server.host)} \(from OLLAMA_HOST\)", text(cells["config"]))
    chats = ollama_server.chat_requests()
    assert len(chats) == 14
    asked_again = next(c for c in chats if c["messages"][-1]["content"] == "What was my first question?")
    assert asked_again["messages"][0] == {"role": "user", "content": "Explain Python generators in two sentences."}
    pirate = next(c for c in chats if c["messages"][-1]["content"] == "Who are you?")
    assert pirate["messages"][0]["role"] == "system"
    branch = next(c for c in chats if c["messages"][-1]["content"].startswith("Explain the same idea"))
    assert [m["role"] for m in branch["messages"]] == ["user", "assistant", "user"]
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.md"))


def test_examples_without_any_server(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cells = execute(dead, tmp_path)
    notice = text(cells["find-server"])
    assert notice == f"No Ollama server answered at {dead}, so this tour uses the built-in offline model.\n"
    check_common(cells)
    assert dead not in text(cells["config"])  # the kernel talks to its own offline model


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        assert cell.get("id"), "every cell keeps an id"
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id
