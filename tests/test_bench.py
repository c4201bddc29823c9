"""The benchmark must keep running: `benchmarks/bench.py --quick` produces every figure.

Not a timing test: no thresholds are checked here, only that each row of the
benchmark (load, turn, first token, display traffic, history scale, panel) is
measured and written to results.json / results.md. The peer rows are skipped
(they need a separate venv with jupyter-ai).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"


def _stat(section: dict, key: str) -> None:
    stat = section[key]
    for k in ("median", "min", "max"):
        assert isinstance(stat[k], (int, float)) and math.isfinite(stat[k]), (key, stat)
    assert stat["min"] <= stat["median"] <= stat["max"], (key, stat)
    assert stat["n"] >= 1


def test_bench_quick_writes_every_figure(tmp_path: Path) -> None:
    env = dict(os.environ)
    for var in ("OLLAMA_HOST", "OLLAMA_MODEL", "OLLAMA_API_KEY"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--reps", "2", "--no-profile", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())

    for key in ("nproc", "cpu", "python"):
        assert res["machine"][key], key
    assert res["config"]["quick"] is True and res["config"]["reps"] == 2

    # 1. load
    load = res["load"]
    assert "error" not in load, load
    _stat(load, "load_s")
    _stat(load, "base_s")
    assert load["ratio"] > 0
    assert isinstance(load["ipywidgets_imported"], bool)

    # 2. turn overhead
    turn = res["turn"]
    assert "error" not in turn, turn
    _stat(turn, "cell_s")
    _stat(turn, "raw_s")
    assert turn["ratio"] > 0

    # 3. time to first token
    first = res["first_token"]
    _stat(first, "cell_s")
    _stat(first, "raw_s")
    assert isinstance(first["added_ms"], (int, float))

    # 4. display traffic
    display = res["display"]
    _stat(display, "updates")
    _stat(display, "stream_s")
    _stat(display, "updates_per_s")
    assert display["tokens"] == 1000 and display["updates"]["median"] >= 1

    # 5. history scale
    for n in ("10", "100", "1000"):
        row = res["history"][n]
        for key in ("cell_cpu_s", "raw_cpu_s", "history_build_s", "own_overhead_s"):
            _stat(row, key)
        assert isinstance(row["own_overhead_ms"], (int, float))
        assert row["messages_sent"] == 2 * int(n) + 1

    # 6. panel: measured, or "not available" with the reason
    panel = res["panel"]
    if panel["available"]:
        _stat(panel, "build_s")
        _stat(panel, "append_s")
    else:
        assert panel["reason"]

    # 8. journal
    journal = res["journal"]
    assert "error" not in journal, journal
    for key in ("commit_s", "commit_without_s", "restore_s", "load_missing_s", "load_off_s"):
        _stat(journal, key)
    assert journal["journaled_turns"] >= 10_000 and journal["load_created_file"] is False

    # 7. peer: skipped without --peer-python, saying how to enable it
    assert res["peer"]["available"] is False and "--peer-python" in res["peer"]["reason"]

    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| # | measure |")
    for row_no in ("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |", "| 8 |"):
        assert row_no in table, row_no
    assert "Machine:" in table and res["machine"]["cpu"] in table
    assert table.strip().splitlines()[0] in proc.stdout  # printed as well as saved
