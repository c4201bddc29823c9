"""The benchmark must keep running: `benchmarks/bench.py --quick` produces every row.

Not a timing test: no thresholds are checked here (the machine is shared),
only that each row is measured against its floor, has a target and a `met`
verdict, and is written to results.json / results.md; and that `--readme`
copies the table into the README between its markers. The peer column is
skipped (it needs a separate venv with jupyter-ai); the browser row is a full
run only (it is exercised by `--only browser` in the browser test below).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"


def _stat(stat: dict) -> None:
    for k in ("median", "min", "max"):
        assert isinstance(stat[k], (int, float)) and math.isfinite(stat[k]), stat
    assert stat["min"] <= stat["median"] <= stat["max"] and stat["n"] >= 1, stat


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for var in ("OLLAMA_HOST", "OLLAMA_MODEL", "OLLAMA_API_KEY"):
        env.pop(var, None)
    return subprocess.run([sys.executable, str(BENCH), *args, "--no-profile", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_bench_quick_writes_every_row(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--quick", "--reps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    for key in ("nproc", "cpu", "python"):
        assert res["machine"][key], key
    assert res["config"]["quick"] is True and res["config"]["reps"] == 2

    rows = res["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["data"].get("section"), []).append(r)
        if r["ours"] == "not available":
            raise AssertionError(f"row {r['measure']} failed: {r['data'].get('error', r['result'])}")
    # every row says met / not met / no target, and every section has a verdict against its target
    for r in rows:
        assert r["met"] in (True, False, None), r
    for section in ("load", "turn", "kernel", "scale", "memory", "files", "panel", "panel_models",
                    "panel_browser", "journal", "context"):
        assert any(r["met"] is not None and r["target"] for r in by[section]), section

    load = by["load"][0]["data"]
    _stat(load["load_s"]), _stat(load["base_s"])
    assert "ollama" not in load["packages_added"] and "ipywidgets" not in load["packages_added"]

    turn = {r["id"]: r["data"] for r in by["turn"]}
    _stat(turn["2"]["cell_s"]), _stat(turn["2"]["raw_s"])
    _stat(turn["3"]["cell_s"]), _stat(turn["3"]["raw_s"])
    _stat(turn["4"]["updates"])

    kernel = [r["data"] for r in by["kernel"]]
    assert [k["tokens"] for k in kernel] == [200, 1000]
    for k in kernel:  # iopub figures from a real kernel, with the raw loop's beside them
        _stat(k["ours_bytes"]), _stat(k["raw_bytes"]), _stat(k["ours_messages"])
        assert k["ours_final_bytes"]["median"] > 0 and k["raw_messages"]["median"] >= 1
        assert k["ours_bytes"]["median"] >= k["ours_final_bytes"]["median"]

    scale = [r["data"] for r in by["scale"] if "own_s" in r["data"]]
    assert [s["turns"] for s in scale] == [1000, 10_000]
    for s in scale:
        _stat(s["own_s"]), _stat(s["raw_own_s"]), _stat(s["client_s"]), _stat(s["commit_s"])
        assert s["messages_sent"] == 2 * s["turns"] + 1

    memory = by["memory"][0]["data"]
    for key in ("tracemalloc-100", "tracemalloc-0", "rss-100", "rss-0"):
        assert memory[key]["turns_bytes"] > 0, key

    models = next(r["data"]["models"] for r in by["panel_models"])
    assert set(models) == {"10", "100", "1000", "1000+appends"} and len(set(models.values())) == 1, models
    drawn = next(r["data"] for r in by["panel_browser"])  # JupyterLab + Chromium (CI installs Chromium)
    _stat(drawn["drawn_s"]), _stat(drawn["floor_s"])

    files = by["files"][0]["data"]
    for key in ("save_s", "save_floor_s", "load_s", "load_floor_s"):
        _stat(files[key])
    assert files["bytes"] > 0

    journal = by["journal"][0]["data"]  # 11: the journal helper's row
    for key in ("commit_s", "commit_without_s", "restore_s", "load_missing_s", "load_off_s"):
        _stat(journal[key])
    assert journal["journaled_turns"] >= 10_000 and journal["load_created_file"] is False

    context = by["context"][0]["data"]  # 12: {df} of a 100,000-row DataFrame
    _stat(context["interpolate_s"]), _stat(context["str_s"])
    assert context["rows"] == 100_000 and 0 < context["chars"] <= 8_300

    panel = by["panel"][0]
    assert panel["ours"] != "not available", panel

    browser = by["browser"][0]
    assert browser["ours"] == "skipped" and "full run only" in browser["result"]

    assert res["peer"]["available"] is False and "--peer-python" in res["peer"]["reason"]

    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| # | measure | ollama_magic | floor (same run) |")
    for row_no in ("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 7 |", "| 8 |", "| 9 |", "| 10 |", "| 11 |", "| 12 |"):
        assert row_no in table, row_no
    assert "Machine:" in table and res["machine"]["cpu"] in table
    assert table.strip().splitlines()[0] in proc.stdout  # printed as well as saved


def test_readme_section_is_regenerated_from_results(tmp_path: Path) -> None:
    """`--readme` puts results.md between the README's markers, and nothing else changes."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert bench.README_START in text and bench.README_END in text, "README lost its bench markers"
    copy = tmp_path / "README.md"
    copy.write_text(text, encoding="utf-8")
    results = tmp_path / "results.md"
    results.write_text("| # | measure |\n|---|---|\n| 1 | new row |\n", encoding="utf-8")
    assert bench.update_readme(results, copy) is True
    new = copy.read_text(encoding="utf-8")
    head, tail = text.split(bench.README_START)[0], text.split(bench.README_END)[1]
    assert new.startswith(head) and new.endswith(tail) and "| 1 | new row |" in new
    assert bench.update_readme(results, copy) is False  # idempotent


@pytest.mark.browser
def test_bench_browser_row_runs(tmp_path: Path) -> None:
    """The JupyterLab + Chromium row, with a short reply (the full run uses 20,000 tokens)."""
    proc = _run(tmp_path, "--only", "browser", "--browser-tokens", "300", "--reps", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows[0]["ours"] != "not available", rows[0]["data"].get("error")
    data = rows[0]["data"]
    _stat(data["drawn_s"]), _stat(data["raw_drawn_s"]), _stat(data["long_tasks_s"])
    assert data["tokens"] == 300 and rows[0]["met"] in (True, False)
