"""The conversation outlives the kernel: real ipykernels of one notebook, as JupyterLab runs them.

Each kernel gets `JPY_SESSION_NAME` (the notebook's path) in its environment
and `cellId` in every execute_request, as Jupyter Server and JupyterLab send
them. The test server in this process sees every request the kernels make.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jupyter_client")

from kernel_util import Kernel, kernel  # noqa: E402

LOAD = "%load_ext ollama_magic"
DUMP = ("import json; from ollama_magic import persist; "
        "print(json.dumps(persist.dump(get_ipython().magics_manager.registry['OllamaMagics'].store), sort_keys=True))")


@pytest.fixture
def notebook(tmp_path: Path) -> tuple[Path, Path]:
    nb = tmp_path / "work" / "analysis.ipynb"
    nb.parent.mkdir()
    nb.write_text("{}")
    return nb, tmp_path / "journal.db"


@contextmanager
def nb_kernel(nb: Path, host: str, db: Path) -> Iterator[Kernel]:
    """A kernel of notebook `nb`, as Jupyter Server starts one (JPY_SESSION_NAME is its path)."""
    env = {"OLLAMA_HOST": host, "OLLAMA_MAGIC_DB": str(db), "JPY_SESSION_NAME": str(nb),
           "IPYTHONDIR": str(db.parent / "ipython")}
    with kernel(env) as k:
        yield k


def run(k: Kernel, code: str, cell_id: str) -> str:
    return k.execute(code, cell_id).shown


def users(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def reply_text(out: str) -> str:
    """The reply without its footer (the last paragraph)."""
    return out.rsplit("\n\n", 1)[0]


def test_restart_restores_and_kill9_loses_only_the_turn_in_flight(notebook, ollama_server):
    nb, db = notebook
    with nb_kernel(nb, ollama_server.host, db) as k:
        assert "restored" not in run(k, LOAD, "load")
        run(k, "%ollama model llama3.2", "model")
        for i in (1, 2, 3):
            assert f"You said: question {i}" in run(k, f"%%ollama\nquestion {i}", f"c{i}")
    assert oct(db.stat().st_mode & 0o777) == "0o600"

    with nb_kernel(nb, ollama_server.host, db) as k:
        out = run(k, LOAD, "load")
        assert "restored 1 chat, 3 turns from " in out and "%ollama reset to start afresh" in out
        ollama_server.reset()
        run(k, "%%ollama\nquestion 4", "c4")
        body = ollama_server.last_chat()
        assert users(body) == ["question 1", "question 2", "question 3", "question 4"]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 3 + ["user"]
        assert body["model"] == "llama3.2"
        # kill -9 the moment the finished reply shows (its footer): the turn is already on disk.
        k.wait_for_output(k.send("%%ollama\nquestion 5", "c5"), "tok/s")
        k.kill9()

    with nb_kernel(nb, ollama_server.host, db) as k:
        assert "restored 1 chat, 5 turns" in run(k, LOAD, "load")
        # kill -9 mid-stream: that turn is lost, nothing else, and the file stays readable.
        ollama_server.token_delay, ollama_server.reply_tokens = 0.2, 100
        msg_id = k.send("%%ollama\nquestion 6 (never finished)", "c6")
        deadline = time.monotonic() + 30
        updates = 0
        while updates < 2 and time.monotonic() < deadline:
            msg = k.kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "update_display_data":
                updates += 1
        assert updates >= 2  # the reply was streaming
        k.kill9()
    ollama_server.reset()

    with nb_kernel(nb, ollama_server.host, db) as k:
        assert "restored 1 chat, 5 turns" in run(k, LOAD, "load")
        run(k, "%%ollama\nquestion 7", "c7")
        assert users(ollama_server.last_chat()) == [f"question {i}" for i in (1, 2, 3, 4, 5, 7)]


def test_edits_deletes_rewinds_resets_and_chats_survive_a_restart(notebook, ollama_server):
    nb, db = notebook
    with nb_kernel(nb, ollama_server.host, db) as k:
        run(k, LOAD, "load")
        run(k, "%ollama model llama3.2", "model")
        for i in (1, 2, 3, 4, 5):
            run(k, f"%%ollama\nquestion {i}", f"c{i}")
        run(k, "s = get_ipython().magics_manager.registry['OllamaMagics'].store\n"
            "s.edit(0, 'an edited answer')\ns.edit(1, 'question 2, edited', part=0)\ns.delete(2)", "panel")
        assert "rewound 1 later turn" in run(k, "%%ollama\nquestion 4 again", "c4")  # c5 goes
        run(k, "%%ollama -c side -m qwen3 --system 'Be brief.'\nside one", "s1")
        run(k, "%ollama options num_ctx=8192 temperature=0.5", "opts")
        run(k, "%ollama reset", "reset")
        run(k, "%%ollama\nside after the reset", "s2")
        run(k, "%ollama fork branch --at 1", "fork")
        run(k, "%ollama chat side", "back")
        before = json.loads(run(k, DUMP, "dump"))
    assert [c["name"] for c in before["chats"]] == ["default", "side", "branch"] and before["active"] == "side"

    with nb_kernel(nb, ollama_server.host, db) as k:
        assert "restored 3 chats, 5 turns" in run(k, LOAD, "load")
        after = json.loads(run(k, DUMP, "dump"))
        assert after == before  # every chat, turn, meta (cell ids too), setting, and the active chat
        ollama_server.reset()
        run(k, "%%ollama\nside follow-up", "s3")
        body = ollama_server.last_chat()
        assert body["model"] == "qwen3" and body["options"] == {"num_ctx": 8192, "temperature": 0.5}
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert users(body) == ["side after the reset", "side follow-up"]
        run(k, "%ollama chat default", "home")
        run(k, "%%ollama\nhome follow-up", "h1")
        body = ollama_server.last_chat()
        assert users(body) == ["question 1", "question 2, edited", "question 4 again", "home follow-up"]
        assert body["messages"][1]["content"] == "an edited answer"


CELLS = [("c1", "%%ollama --system 'Be brief.'\nfirst question"), ("x", "x = 41 + 1"),
         ("c2", "%%ollama -t 0.3\nwhat is {x}?"), ("c3", "%%ollama\nand then?")]


def run_all(k: Kernel, cells: list[tuple[str, str]]) -> dict[str, str]:
    out = {"load": run(k, LOAD, "load")}
    run(k, "%ollama model llama3.2", "model")
    for cid, src in cells:
        out[cid] = run(k, src, cid)
    return out


def test_restart_and_run_all_replays_without_asking(notebook, ollama_server):
    nb, db = notebook
    with nb_kernel(nb, ollama_server.host, db) as k:
        first = run_all(k, CELLS)
    assert len(ollama_server.chat_requests()) == 3

    # Restart & Run All on the unchanged notebook: nothing asked, the same replies.
    ollama_server.reset()
    ollama_server.reply = "a different answer"  # what asking again would show
    with nb_kernel(nb, ollama_server.host, db) as k:
        second = run_all(k, CELLS)
        assert ollama_server.chat_requests() == []
        for cid in ("c1", "c2", "c3"):
            assert reply_text(second[cid]) == reply_text(first[cid])
            assert "replayed from " in second[cid] and "--fresh" in second[cid]
        # Within one kernel, re-running a cell asks again (that is how one regenerates).
        assert "a different answer" in run(k, CELLS[2][1], "c2")
        assert len(ollama_server.chat_requests()) == 1

    # Change the second prompt: it and the cells after it ask; the first replays.
    ollama_server.reset()
    changed = [CELLS[0], CELLS[1], ("c2", "%%ollama -t 0.3\nwhat is {x}, really?"), CELLS[3]]
    with nb_kernel(nb, ollama_server.host, db) as k:
        third = run_all(k, changed)
        asked = ollama_server.chat_requests()
        assert [users(b)[-1] for b in asked] == ["what is 42, really?", "and then?"]
        assert "replayed from " in third["c1"] and "replayed" not in third["c2"]

    # --fresh asks even when the journal has the answer; the rest replays.
    ollama_server.reset()
    with nb_kernel(nb, ollama_server.host, db) as k:
        fourth = run_all(k, [("c1", "%%ollama --fresh --system 'Be brief.'\nfirst question"), *changed[1:]])
        assert [users(b) for b in ollama_server.chat_requests()] == [["first question"]]
        assert "replayed" not in fourth["c1"] and "replayed from " in fourth["c3"]


def test_a_journal_locked_at_load_is_restored_later_beside_what_the_kernel_did(notebook, ollama_server):
    from journal_util import locked

    nb, db = notebook
    with nb_kernel(nb, ollama_server.host, db) as k:
        run(k, LOAD, "load")
        run(k, "%ollama model llama3.2", "model")
        run(k, "%%ollama\nquestion 1", "c1")
        run(k, "%%ollama\nquestion 2", "c2")

    with nb_kernel(nb, ollama_server.host, db) as k:
        with locked(db):  # another process holds the journal while the new kernel loads and works
            out = run(k, LOAD, "load")
            assert "is locked by another process" in out and "restored" not in out
            run(k, "%ollama model llama3.2", "model")
            run(k, "%%ollama\nasked while locked", "c3")
            assert users(ollama_server.last_chat()) == ["asked while locked"]
        out = run(k, "%ollama chats", "list")  # free again: this cell first brings the earlier chat back
        assert "restored 1 earlier chat, 2 turns from " in out and "default is now default-restored" in out
        listed = [line.split() for line in run(k, "%ollama chats", "list").splitlines()]
        assert [row[:3] for row in listed if row[0] == "*"] == [["*", "default", "llama3.2"]]
        assert ["default-restored", "llama3.2", "2"] in [row[:3] for row in listed]
        ollama_server.reset()
        run(k, "%%ollama\nfollow-up", "c4")  # this kernel's chat stays active
        assert users(ollama_server.last_chat()) == ["asked while locked", "follow-up"]

    with nb_kernel(nb, ollama_server.host, db) as k:
        assert "restored 2 chats, 4 turns" in run(k, LOAD, "load")
        chats = {c["name"]: [t["messages"][0]["content"] for t in c["turns"]]
                 for c in json.loads(run(k, DUMP, "dump"))["chats"]}
        assert chats == {"default": ["asked while locked", "follow-up"],
                         "default-restored": ["question 1", "question 2"]}


def test_restart_and_run_all_with_a_fork_cell_runs_through(notebook, ollama_server):
    # The restore brings back the chat the fork cell made; re-running that cell must not stop Run All.
    nb, db = notebook
    cells = [("c1", "%%ollama\nfirst question"), ("c2", "%%ollama\nsecond question"),
             ("fork", "%ollama fork what-if --at 1"), ("c3", "%%ollama\nthe other way"),
             ("back", "%ollama chat default")]  # as the tour does: the notebook ends where it began
    with nb_kernel(nb, ollama_server.host, db) as k:
        run_all(k, cells)
    ollama_server.reset()
    with nb_kernel(nb, ollama_server.host, db) as k:
        out = {"load": run(k, LOAD, "load")}
        run(k, "%ollama model llama3.2", "model")
        for cid, src in cells:
            done = k.execute(src, cid)
            assert done.status == "ok", (cid, done.shown)
            out[cid] = done.shown
        assert "restored 2 chats, 4 turns" in out["load"]
        assert "it was this fork already, its 1 later turn(s) went to the undo stack" in out["fork"]
        assert "replayed from " in out["c3"] and ollama_server.chat_requests() == []
        chats = {c["name"]: [t["messages"][0]["content"] for t in c["turns"]]
                 for c in json.loads(run(k, DUMP, "dump"))["chats"]}
        assert chats == {"default": ["first question", "second question"],
                         "what-if": ["first question", "the other way"]}


CHATS = ("import json; _s = get_ipython().magics_manager.registry['OllamaMagics'].store; "
         "print(json.dumps({'active': _s.active_name, 'chats': {c.name: [[t.meta.cell_id, t.meta.forked, list(t.messages)] "
         "for t in c.turns] for c in _s}}, sort_keys=True))")


def chats_of(k: Kernel) -> dict[str, Any]:
    """The active chat and every chat's turns (cell id, fork mark, messages: a replayed turn has its own timing)."""
    return json.loads(run(k, CHATS, "dump").strip().splitlines()[-1])


@pytest.mark.parametrize("ending", ["in the fork", "in a chat switched to outside the cells"])
def test_restart_and_run_all_of_a_notebook_ending_in_another_chat_replays_it_as_written(
        notebook, ollama_server, ending):
    # The restore makes the last active chat active; the notebook's first cells use `default`.
    # Run All must re-run each cell in the chat it was asked in (not a fork's copy of its
    # turn), so every request is the one asked before: all replayed, and the chats as they were.
    nb, db = notebook
    if ending == "in the fork":
        cells = [("c1", "%%ollama\nfirst question"), ("c2", "%%ollama\nsecond question"),
                 ("fork", "%ollama fork what-if --at 1"), ("c3", "%%ollama\nthe other way")]
    else:  # the user switched in the panel (no cell does it), then asked on
        cells = [("c1", "%%ollama\nfirst question"), ("c2", "%%ollama\nsecond question"),
                 ("c3", "%%ollama\nin the other chat")]
    with nb_kernel(nb, ollama_server.host, db) as k:
        run(k, LOAD, "load")
        run(k, "%ollama model llama3.2", "model")
        for cid, src in cells:
            if cid == "c3" and ending != "in the fork":
                run(k, "get_ipython().magics_manager.registry['OllamaMagics'].store.switch('other', create=True)",
                    "scratch")  # a cell deleted since
            assert k.execute(src, cid).status == "ok"
        before = chats_of(k)
    assert before["active"] == ("what-if" if ending == "in the fork" else "other")
    assert len(ollama_server.chat_requests()) == 3
    ollama_server.reset()
    ollama_server.reply = "a different answer"  # what asking again would show
    with nb_kernel(nb, ollama_server.host, db) as k:
        assert f"restored 2 chats, {4 if ending == 'in the fork' else 3} turns" in run(k, LOAD, "load")
        run(k, "%ollama model llama3.2", "model")
        for cid, src in cells:
            done = k.execute(src, cid)
            assert done.status == "ok", (cid, done.shown)
            assert cid == "fork" or "replayed from " in done.shown, (cid, done.shown)
        assert ollama_server.chat_requests() == []
        assert chats_of(k) == before
