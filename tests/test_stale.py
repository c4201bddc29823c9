"""Stale answers: a turn that used a variable which has changed since is flagged, until re-run."""

from __future__ import annotations

from conftest import magics_of, run
from ollama_magic.context import fingerprint, stale_turns
from ollama_magic.store import Turn, TurnMeta


def stale_of(shell) -> dict[int, list[str]]:
    m = magics_of(shell)
    return stale_turns(m.store.active, shell.user_ns, m.max_var_chars)


def test_changed_variable_marks_the_turn_until_its_cell_is_rerun(shell, ollama_server, capsys):
    run(shell, "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\nlimit = 5")
    run(shell, "%%ollama\nWhat is the mean of {df}? Stay under {limit}.", cell_id="ask")
    count = shell.execution_count - 1  # the cell's In [n]
    run(shell, "%%ollama\nAnd the median?", cell_id="next")
    assert "stale" not in capsys.readouterr().out
    assert stale_of(shell) == {}

    run(shell, "df.loc[0, 'x'] = 100")  # changed in place: same object, new content
    assert stale_of(shell) == {0: ["df"]}
    run(shell, "%%ollama\nThanks.", cell_id="third")
    out = capsys.readouterr().out
    assert f"⚠ stale: turn 1 used {{df}}, changed since; re-run In [{count}] to refresh it" in out

    run(shell, "%ollama chats")
    chats = capsys.readouterr().out.splitlines()
    assert chats[0].split() == ["chat", "model", "turns", "tokens", "stale"]
    assert chats[1].split()[-1] == "1"
    run(shell, "%ollama stale")
    listing = capsys.readouterr().out
    assert "chat default:" in listing and "turn 1 ('What is the mean of pandas DataFrame" in listing
    assert f"{{df}} changed since; re-run In [{count}] to refresh it" in listing

    # Told once: the next footer does not repeat it, though the turn stays stale.
    run(shell, "%%ollama\nOne more.", cell_id="fourth")
    assert "stale" not in capsys.readouterr().out
    assert stale_of(shell) == {0: ["df"]}

    # Re-running the cell replaces the turn (rewinding the later ones) with fresh fingerprints.
    run(shell, "%%ollama\nWhat is the mean of {df}? Stay under {limit}.", cell_id="ask")
    assert stale_of(shell) == {}
    assert "stale" not in capsys.readouterr().out
    run(shell, "%ollama stale")
    assert capsys.readouterr().out.startswith("No stale turns")


def test_each_changed_variable_is_named_and_moving_names_are_not_tracked(shell, ollama_server, capsys):
    run(shell, "a = 1\nb = [1]\nc = 'same'")
    run(shell, "1 + 1")
    run(shell, "%%ollama\n{a} {b!r} {c} {_}")
    turn = magics_of(shell).store.active.turns[-1]
    assert set(turn.meta.variables) == {"a", "b!r", "c"}  # `_` changes with every cell
    assert turn.meta.variables["c"] == fingerprint("same")
    run(shell, "a = 2\nb.append(2)")
    assert stale_of(shell) == {0: ["a", "b!r"]}
    run(shell, "%%ollama\nnext")
    assert "⚠ stale: turn 1 used {a}, {b!r}, changed since; ask again to refresh it" in capsys.readouterr().out


def test_deleted_variable_cannot_be_compared_and_is_not_stale(shell, ollama_server):
    run(shell, "gone = 1")
    run(shell, "%%ollama\n{gone}")
    run(shell, "del gone")
    assert stale_of(shell) == {}


def test_staleness_survives_save_and_load(shell, ollama_server, tmp_path):
    run(shell, "v = 'first'")
    run(shell, "%%ollama\nabout {v}")
    path = tmp_path / "chats.json"
    run(shell, f"%ollama save {path}")
    run(shell, "v = 'second'")
    run(shell, "%ollama reset")
    run(shell, f"%ollama load {path}")
    assert magics_of(shell).store.active.turns[0].meta.variables == {"v": fingerprint("first")}
    assert stale_of(shell) == {0: ["v"]}


def test_nothing_is_rendered_for_staleness_until_asked(shell, ollama_server):
    run(shell, "class Counted:\n    n = 0\n    def __str__(self):\n        Counted.n += 1\n        return 'counted'\nobj = Counted()")
    run(shell, "%%ollama\n{obj}")
    assert shell.user_ns["Counted"].n == 1
    for i in range(5):
        run(shell, f"x{i} = {i}")
    assert shell.user_ns["Counted"].n == 1  # ordinary cells never render anything
    run(shell, "%ollama stale")
    run(shell, "%ollama chats")
    assert shell.user_ns["Counted"].n == 3  # once per question asked


def test_stale_turns_for_the_panel():
    used = Turn.of({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   TurnMeta(variables={"x": fingerprint("1"), "y": fingerprint("2")}))
    plain = Turn.of({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    assert stale_turns([plain, used], {"x": 1, "y": 2}) == {}
    assert stale_turns([plain, used], {"x": 1, "y": 3}) == {1: ["y"]}
    assert stale_turns([plain, used], {"x": 0, "y": 3}, upto=1) == {}


def test_staleness_survives_the_journal(shell, ollama_server, tmp_path, monkeypatch, capsys):
    """A new kernel restores the turn with its fingerprints: the data cell run again with new data flags it."""
    import uuid

    from ollama_magic import journal

    monkeypatch.setenv("OLLAMA_MAGIC_DB", str(tmp_path / "j.db"))
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "n.ipynb"))

    def new_kernel() -> None:
        monkeypatch.setattr(journal, "KERNEL", uuid.uuid4().hex)
        shell.run_line_magic("reload_ext", "ollama_magic")
        shell.run_line_magic("ollama", "model llama3.2")

    new_kernel()
    run(shell, "v = 'first'")
    run(shell, "%%ollama\nabout {v}", cell_id="ask")
    new_kernel()
    assert magics_of(shell).store.active.turns[0].meta.variables == {"v": fingerprint("first")}
    assert stale_of(shell) == {}
    run(shell, "v = 'second'")
    assert stale_of(shell) == {0: ["v"]}


def test_stale_in_a_real_kernel_names_the_cell_and_clears_on_rerun(ollama_server, tmp_path):
    """As JupyterLab runs it: cellId metadata, the footer names In [n], re-running that cell clears it."""
    from kernel_util import kernel

    env = {"OLLAMA_HOST": ollama_server.host, "OLLAMA_MAGIC_DB": str(tmp_path / "j.db")}
    with kernel(env) as k:
        assert k.execute("%load_ext ollama_magic\n%ollama model llama3.2", cell_id="load").status == "ok"
        assert k.execute("import pandas as pd\ndf = pd.DataFrame({'x': [1, 2]})", cell_id="data").status == "ok"
        ask = k.execute("%%ollama\nSum of {df}?", cell_id="ask")
        assert ask.status == "ok" and "pandas DataFrame: 2 rows × 1 columns" in ask.text
        count = ask.reply["content"]["execution_count"]
        assert k.execute("df = pd.DataFrame({'x': [5, 6]})", cell_id="data").status == "ok"
        nxt = k.execute("%%ollama\nAnd now?", cell_id="next")
        assert f"turn 1 used {{df}}, changed since; re-run In [{count}] to refresh it" in nxt.text
        assert "{df} changed since" in k.execute("%ollama stale", cell_id="stale").text
        assert k.execute("%%ollama\nSum of {df}?", cell_id="ask").status == "ok"  # rewinds "next" too
        assert k.execute("%ollama stale", cell_id="stale").text.startswith("No stale turns")


def test_the_open_panel_marks_the_stale_turn_and_clears_it_on_rerun(nb_shell, ollama_server):
    """Through the magics: the panel they open checks their namespace with their max_var_chars."""
    run(nb_shell, "data = [1, 2, 3]")
    assert run(nb_shell, "%%ollama\nsum of {data}?", cell_id="ask").success
    panel = nb_shell.run_line_magic("ollama", "history")
    assert type(panel).__name__ == "HistoryPanel"
    assert "stale" not in panel.rows()[0]
    run(nb_shell, "data.append(4)")  # changed in place
    assert panel.rows()[0]["stale"] == ["data"]  # the rows the panel sends carry the mark
    assert run(nb_shell, "%%ollama\nanother question", cell_id="other").success
    sent = [m for m in panel.sent if m.get("kind") == "stale"]
    assert sent and list(sent[-1]["marks"].values()) == [["data"]]  # the store event told the front end
    assert run(nb_shell, "%%ollama\nsum of {data}?", cell_id="ask").success  # re-run the cell
    assert all("stale" not in r for r in panel.rows())
    assert [m for m in panel.sent if m.get("kind") == "stale"][-1]["marks"] == {}
    panel.close()
