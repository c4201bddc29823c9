#!/usr/bin/env python
"""Benchmark ollama_magic against the raw `ollama` client (and, optionally, jupyter-ai).

    python benchmarks/bench.py                 # full run (a few minutes)
    python benchmarks/bench.py --quick         # < 1 minute, fewer repetitions
    python benchmarks/bench.py --peer-python /work/benchvenv/bin/python   # + jupyter-ai rows

The project's Ollama-API test server (`ollama_magic.testing.OllamaTestServer`)
runs in its own process (so it does not compete with the measured code for the
GIL) on 127.0.0.1 with a fixed token rate. Every figure is the median of
several runs, with min and max. Results go to stdout (a Markdown table) and to
`results.json` / `results.md` in the output directory (default: this folder).

What is measured and how (see also the notes printed under the table):

1. Load: wall time of a fresh `python -c` that imports ollama and IPython,
   creates an InteractiveShell and runs `%load_ext ollama_magic`, against the
   same process without the `%load_ext`.
2. Turn: wall time of `shell.run_cell("%%ollama ...")` (in-process shell, a
   recording DisplayPublisher so the notebook display path is active) against a
   loop over `ollama.Client().chat(..., stream=True)` sending the identical
   message list (captured from what the magic sent). Each run starts from the
   same fixed history (the stored turns are truncated back between runs).
3. First token: cell start -> first `update_display` carrying reply text,
   against raw call start -> first chunk with content.
4. Display traffic: update_display messages for a 1,000-token reply.
5. History scale: main-thread CPU time (`time.thread_time`, i.e. everything
   but waiting on the socket) of a cell with N earlier turns, against the raw
   client sending the identical N-turn request; the difference minus the time
   to build the history from the store is the magic's own overhead.
6. Panel: `HistoryPanel(store)` over 1,000 turns, and `store.commit(turn)` with
   the panel open.
8. Journal: `store.commit(turn)` with the SQLite journal listening, at
   10,000 journaled turns, against the same commit without it; restoring a
   1,000-turn notebook; what the journal adds to `%load_ext` of a notebook
   that has no journal yet.
7. Peer: rows 1-3 for another magic (jupyter-ai's `%%ai ollama:NAME`) measured
   with its own interpreter (`--peer-python`).

Fairness: every measured run starts after `gc.collect()` (GC stays on);
measured runs alternate (A, B, B, A, ...) after warm-ups; child processes get a
fresh IPYTHONDIR (no user profile) and write bytecode to a temporary
PYTHONPYCACHEPREFIX, so with PYTHONDONTWRITEBYTECODE set the editable
ollama_magic is not recompiled on every start while site-packages load from
.pyc files.

This file imports only the standard library at module level so that the peer's
interpreter can run its child mode without ollama_magic's dependencies.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "llama3.2"
TOKEN_DELAY = 0.001  # seconds per streamed token
REPLY_TOKENS = 200
DISPLAY_TOKENS = 1000
HISTORY_SIZES = (10, 100, 1000)
FIXED_HISTORY = 2  # earlier turns in the chat for rows 2-3 (jupyter-ai keeps 2 exchanges)
PANEL_TURNS = 1000
PANEL_REPLY_WORDS = 300  # ~2,000-character answers: what the panel's text areas hold
QUESTION = "Explain Python decorators in two sentences."
# Every test-server prose reply starts "I saw N messages": its first token is "I".
# Our streaming Markdown is "I ▌"; the placeholder "*…*" and reprs like
# "<IPython.core.display.Markdown object>" do not match.
FIRST_TOKEN = re.compile(r"(?:^|\s)I(?:\s|▌|$)")

TARGETS = {
    "load_ratio": 1.15,
    "turn_ratio": 1.05,
    "first_token_added_ms": 5.0,
    "display_rate_per_s": 15.0,
    "history_own_overhead_ms_at_1000": 10.0,
    "panel_build_s": 1.0,
    "panel_append_ms": 20.0,
    "journal_turn_ms_at_10000": 5.0,
    "journal_restore_s_at_1000": 0.5,
    "journal_load_added_ms": 10.0,
}
JOURNAL_TURNS = 10_000
JOURNAL_RESTORE_TURNS = 1_000

BASE_CODE = (
    "import ollama, IPython\n"
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "ip = InteractiveShell.instance()\n"
)
LOAD_CODE = BASE_CODE + "ip.run_line_magic('load_ext', {ext!r})\n"
MODULES_CODE = (
    "import sys, time\n" + BASE_CODE + "before = set(sys.modules)\n"
    "t0 = time.perf_counter()\n"
    "ip.run_line_magic('load_ext', {ext!r})\n"
    "took = time.perf_counter() - t0\n"
    "import json; print(json.dumps([took, sorted(set(sys.modules) - before)]))\n"
)


# -- small helpers --------------------------------------------------------------
def summary(values: list[float]) -> dict[str, Any]:
    """median, min, max (and n) of a list of numbers."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms" if abs(value) < 10 else f"{value:.1f} ms"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "n":
        return f"{value:.3g}"
    return f"{value:.3g} {unit}"


def fmt_stat(stat: dict[str, Any] | None, unit: str, scale: float = 1.0) -> str:
    """'median (min–max)' in `unit`; `scale` converts from seconds (1000 for ms)."""
    if not stat or stat.get("median") is None:
        return "–"
    med, lo, hi = (stat[k] * scale for k in ("median", "min", "max"))
    if stat.get("n", 0) <= 1:
        return _fmt(med, unit)
    return f"{_fmt(med, unit)} ({_fmt(lo, unit).split(' ')[0]}–{_fmt(hi, unit)})"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def child_env(host: str, ipython_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["OLLAMA_HOST"] = host
    env["IPYTHONDIR"] = ipython_dir  # no user profile or config in the measurements
    for key in ("OLLAMA_MODEL", "OLLAMA_API_KEY", "PYTHONPROFILEIMPORTTIME", "PYTHONDEVMODE",
                "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    # Measure imports as a user has them, from bytecode: with PYTHONDONTWRITEBYTECODE
    # set (as on some CI machines) an editable install recompiles its sources on every
    # start while site-packages have .pyc files, which is unfair to the extension.
    # The bytecode goes to a temporary tree, not into the work tree.
    env["PYTHONPYCACHEPREFIX"] = os.path.join(ipython_dir, "pycache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(python: str, mode: str, params: dict[str, Any], env: dict[str, str],
              timeout: float) -> dict[str, Any]:
    """Run this file in a child mode; its last stdout line is a JSON result."""
    cmd = [python, str(Path(__file__).resolve()), "--_child", mode, "--_params", json.dumps(params)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"child {mode!r} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(lines[-1])


# -- the test server in its own process ----------------------------------------------
class ServerProcess:
    """`OllamaTestServer` in a child process; stops when its stdin closes."""

    def __init__(self, token_delay: float, reply_tokens: int) -> None:
        code = (
            "import sys\n"
            "from ollama_magic.testing import OllamaTestServer\n"
            f"s = OllamaTestServer(token_delay={token_delay!r}, reply_tokens={reply_tokens!r}).start()\n"
            "print(s.host, flush=True)\n"
            "sys.stdin.read()\n"
            "s.stop()\n"
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        self.host = self.proc.stdout.readline().strip()
        if not self.host.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the test server did not start (said {self.host!r})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()


# -- 1. load ----------------------------------------------------------------------
def measure_load(python: str, ext: str, reps: int, env: dict[str, str]) -> dict[str, Any]:
    """Fresh-process wall time, with and without `%load_ext ext`, alternating."""
    codes = {"base": BASE_CODE, "load": LOAD_CODE.format(ext=ext)}
    times: dict[str, list[float]] = {"base": [], "load": []}

    def once(kind: str) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run([python, "-c", codes[kind]], env=env, capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} process failed: {proc.stderr.strip().splitlines()[-1:]}")
        return elapsed

    once("base"), once("load")  # warm the page cache and write bytecode
    for i in range(reps):
        for kind in (("base", "load") if i % 2 == 0 else ("load", "base")):
            times[kind].append(once(kind))
    out: dict[str, Any] = {"load_s": summary(times["load"]), "base_s": summary(times["base"])}
    out["ratio"] = out["load_s"]["median"] / out["base_s"]["median"]
    out["ratio_of_minima"] = out["load_s"]["min"] / out["base_s"]["min"]  # less sensitive to a busy machine
    out["added_s"] = out["load_s"]["median"] - out["base_s"]["median"]
    inproc, added = [], []
    for _ in range(3):  # not timed from outside: what load_ext itself takes, and what it imports
        proc = subprocess.run([python, "-c", MODULES_CODE.format(ext=ext)], env=env, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode == 0:
            took, added = json.loads(proc.stdout.strip().splitlines()[-1])
            inproc.append(took)
    out["load_ext_inprocess_s"] = summary(inproc)
    out["modules_added"] = len(added)
    out["packages_added"] = sorted({m.split(".")[0] for m in added})
    out["ipywidgets_imported"] = any(m == "ipywidgets" or m.startswith("ipywidgets.") for m in added)
    return out


def import_profile(python: str, ext: str, env: dict[str, str], top: int = 12) -> list[dict[str, Any]]:
    """`-X importtime` of the load process: the costliest imports that the bare process does not do."""
    def parse(code: str) -> dict[str, tuple[int, int]]:
        proc = subprocess.run([python, "-X", "importtime", "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        rows = {}
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                rows[m.group(4)] = (int(m.group(1)), int(m.group(2)))
        return rows

    parse(LOAD_CODE.format(ext=ext))  # warm-up: bytecode written, files cached
    base = parse(BASE_CODE)
    load = parse(LOAD_CODE.format(ext=ext))
    extra = [(name, self_us, cum_us) for name, (self_us, cum_us) in load.items() if name not in base]
    extra.sort(key=lambda r: -r[2])
    return [{"module": n, "self_ms": s / 1000, "cumulative_ms": c / 1000} for n, s, c in extra[:top]]


# -- child: in-process measurements of ollama_magic ---------------------------------
def _recorder_class() -> Any:
    from IPython.core.displaypub import DisplayPublisher

    class Recorder(DisplayPublisher):
        """A frontend stand-in: counts and timestamps display messages, prints nothing."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.reset()

        def reset(self) -> None:
            self.displays = 0
            self.updates = 0
            self.first_text: float | None = None
            self.last_update: float | None = None
            self.update_times: list[float] = []

        def seen(self, data: Any) -> None:
            if self.first_text is None and isinstance(data, dict):
                if any(FIRST_TOKEN.search(str(data.get(k, ""))) for k in ("text/markdown", "text/plain")):
                    self.first_text = time.perf_counter()

        def publish(self, data: Any, metadata: Any = None, source: Any = None, *, transient: Any = None,
                    update: bool = False, **kwargs: Any) -> None:
            now = time.perf_counter()
            if update:
                self.updates += 1
                self.last_update = now
                self.update_times.append(now)
            else:
                self.displays += 1
            self.seen(data)

        def clear_output(self, wait: bool = False) -> None:
            pass

    return Recorder


def _shell_with_recorder() -> tuple[Any, Any]:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    rec = _recorder_class()(shell=shell)
    shell.display_pub = rec
    # A cell's result (what jupyter-ai returns) goes out as execute_result: record it too.
    hook = shell.displayhook

    def write_format_data(format_dict: Any, md_dict: Any = None) -> None:
        rec.seen(format_dict)

    hook.write_format_data = write_format_data
    hook.write_output_prompt = lambda: None
    return shell, rec


def _capture_chat(run: Any) -> list[dict[str, Any]]:
    """Run `run()` with `ollama.Client.chat` wrapped; return the last messages it sent."""
    import ollama

    sent: list[Any] = []
    original = ollama.Client.chat

    def chat(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs.get("messages") if "messages" in kwargs else (args[1] if len(args) > 1 else None))
        return original(self, *args, **kwargs)

    ollama.Client.chat = chat  # type: ignore[method-assign]
    try:
        run()
    finally:
        ollama.Client.chat = original  # type: ignore[method-assign]
    if not sent or sent[-1] is None:
        raise RuntimeError("the magic did not call ollama.Client.chat")
    return [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in sent[-1]]


def _raw_turn(client: Any, messages: list[dict[str, Any]]) -> tuple[float, float, float, str]:
    """The raw client loop: (wall s, main-thread CPU s, time to first content chunk s, text)."""
    parts = []
    first = None
    gc.collect()  # start every measured run from the same heap state (GC stays on)
    c0 = time.thread_time()
    t0 = time.perf_counter()
    for chunk in client.chat(model=MODEL, messages=messages, stream=True):
        if first is None and chunk.message.content:
            first = time.perf_counter()
        parts.append(chunk.message.content or "")
    t1 = time.perf_counter()
    c1 = time.thread_time()
    return t1 - t0, c1 - c0, (first or t1) - t0, "".join(parts)


def _cell(shell: Any, rec: Any, source: str, cell_id: str | None = None) -> tuple[float, float, float | None]:
    """Run a cell: (wall s, main-thread CPU s, time to first reply text s)."""
    rec.reset()
    gc.collect()  # start every measured run from the same heap state (GC stays on)
    c0 = time.thread_time()
    t0 = time.perf_counter()
    result = shell.run_cell(source, cell_id=cell_id)
    t1 = time.perf_counter()
    c1 = time.thread_time()
    if not result.success:
        err = result.error_in_exec or result.error_before_exec
        raise RuntimeError(f"cell failed: {type(err).__name__}: {err}")
    return t1 - t0, c1 - c0, (rec.first_text - t0) if rec.first_text is not None else None


def _prefill(store: Any, n: int, reply_words: int = 50) -> None:
    """n stored turns: a one-line question and a `reply_words`-word answer each."""
    from ollama_magic.store import Turn, TurnMeta

    words = " ".join(f"word{j}" for j in range(reply_words))
    for i in range(n):
        user = {"role": "user", "content": f"Question {i}: tell me about item {i}, briefly please."}
        reply = {"role": "assistant", "content": f"Item {i}: {words}."}
        meta = TurnMeta(cell_id=f"prefill-{i}", model=MODEL, status="ok", done_reason="stop",
                        prompt_eval_count=60 * i + 12, eval_count=52, eval_duration=52_000_000)
        store.commit(Turn((user, reply), meta))


def child_ours(p: dict[str, Any]) -> dict[str, Any]:
    import ollama

    reps = p["reps"]
    shell, rec = _shell_with_recorder()
    shell.run_line_magic("load_ext", "ollama_magic")
    shell.run_line_magic("ollama", f"model {MODEL}")
    magics = shell.magics_manager.registry["OllamaMagics"]
    store = magics.store
    if not getattr(magics, "_is_rich", lambda: True)():
        raise RuntimeError("the magic did not choose the notebook display path")
    client = ollama.Client(host=os.environ["OLLAMA_HOST"])
    cell = f"%%ollama\n{QUESTION}"
    counter = iter(range(10**9))
    out: dict[str, Any] = {}

    def fixed(k: int) -> None:
        store.truncate(k)

    # -- 2 + 3: one turn at a fixed history, against the raw client -------------
    _prefill(store, FIXED_HISTORY)
    fixed(FIXED_HISTORY)
    for _ in range(2):  # warm-up: client cache, context-window lookup, code paths
        _cell(shell, rec, cell, f"warm-{next(counter)}")
        fixed(FIXED_HISTORY)
    messages = _capture_chat(lambda: _cell(shell, rec, cell, f"warm-{next(counter)}"))
    fixed(FIXED_HISTORY)
    if messages != store.active.history() + [{"role": "user", "content": QUESTION}]:
        raise RuntimeError("the magic sent something other than the stored history plus the question")
    _raw_turn(client, messages)
    cell_wall, cell_ttft, raw_wall, raw_ttft, updates, empty = [], [], [], [], [], []
    for i in range(reps):
        order = ("cell", "raw") if i % 2 == 0 else ("raw", "cell")
        for kind in order:
            if kind == "cell":
                wall, _, ttft = _cell(shell, rec, cell, f"turn-{next(counter)}")
                cell_wall.append(wall)
                if ttft is not None:
                    cell_ttft.append(ttft)
                updates.append(rec.updates)
                fixed(FIXED_HISTORY)
            else:
                wall, _, ttft, text = _raw_turn(client, messages)
                raw_wall.append(wall)
                raw_ttft.append(ttft)
        empty.append(_cell(shell, rec, "pass")[0])
    out["turn"] = {
        "cell_s": summary(cell_wall), "raw_s": summary(raw_wall), "empty_cell_s": summary(empty),
        "updates_per_reply": summary(updates), "messages_sent": len(messages),
        "history_turns": FIXED_HISTORY, "reply_tokens": REPLY_TOKENS,
    }
    out["turn"]["ratio"] = out["turn"]["cell_s"]["median"] / out["turn"]["raw_s"]["median"]
    out["turn"]["added_ms"] = 1000 * (out["turn"]["cell_s"]["median"] - out["turn"]["raw_s"]["median"])
    out["first_token"] = {"cell_s": summary(cell_ttft), "raw_s": summary(raw_ttft)}
    if cell_ttft:
        out["first_token"]["added_ms"] = 1000 * (statistics.median(cell_ttft) - statistics.median(raw_ttft))

    # -- 4: display traffic for a 1,000-token reply -----------------------------
    os.environ["OLLAMA_HOST"] = p["host_long"]
    try:
        counts, stream_s, rates = [], [], []
        for i in range(max(1, p["display_reps"]) + 1):
            _cell(shell, rec, cell, f"long-{next(counter)}")
            fixed(FIXED_HISTORY)
            if i == 0:
                continue  # warm-up (new client for this host)
            seconds = (rec.last_update or 0) - (rec.first_text or 0)
            counts.append(rec.updates)
            stream_s.append(seconds)
            # Streaming updates: all but the final one (which replaces the stream with
            # the finished Markdown). Their rate: intervals between the first and last.
            times = [t for t in rec.update_times[:-1] if rec.first_text is not None and t >= rec.first_text]
            span = times[-1] - times[0] if len(times) > 1 else 0.0
            rates.append((len(times) - 1) / span if span > 0 else 0.0)
    finally:
        os.environ["OLLAMA_HOST"] = p["host"]
    rate = magics.display_rate
    out["display"] = {
        "tokens": DISPLAY_TOKENS, "updates": summary(counts), "stream_s": summary(stream_s),
        "updates_per_s": summary(rates), "display_rate": rate,
        "bound": math.ceil(rate * max(stream_s)) + 2 if stream_s else None,
        "initial_displays": rec.displays,
    }

    # -- 5: history scale ----------------------------------------------------------
    hist: dict[str, Any] = {}
    for n in p["history_sizes"]:
        store.reset()
        _prefill(store, n)
        fixed(n)
        messages = _capture_chat(lambda: _cell(shell, rec, cell, f"h-{next(counter)}"))
        fixed(n)
        _raw_turn(client, messages)
        cell_cpu, cell_w, raw_cpu, raw_w, build, own = [], [], [], [], [], []
        for i in range(p["history_reps"]):
            for kind in (("cell", "raw") if i % 2 == 0 else ("raw", "cell")):
                if kind == "cell":
                    wall, cpu, _ = _cell(shell, rec, cell, f"h-{next(counter)}")
                    cell_w.append(wall)
                    cell_cpu.append(cpu)
                    fixed(n)
                else:
                    wall, cpu, _, _ = _raw_turn(client, messages)
                    raw_w.append(wall)
                    raw_cpu.append(cpu)
            t0 = time.thread_time()
            store.active.history(n)
            build.append(time.thread_time() - t0)
            own.append(cell_cpu[-1] - raw_cpu[-1] - build[-1])  # paired: robust to drift
        row = {
            "turns": n, "messages_sent": len(messages),
            "cell_cpu_s": summary(cell_cpu), "raw_cpu_s": summary(raw_cpu),
            "cell_wall_s": summary(cell_w), "raw_wall_s": summary(raw_w),
            "history_build_s": summary(build), "own_overhead_s": summary(own),
        }
        c, r = (statistics.median(x) for x in (cell_cpu, raw_cpu))
        row["extra_cpu_ms"] = 1000 * (c - r)
        row["own_overhead_ms"] = 1000 * statistics.median(own)
        row["extra_wall_ms"] = 1000 * (statistics.median(cell_w) - statistics.median(raw_w))
        if p.get("profile") and n == max(p["history_sizes"]):
            row["profile"] = _profile_cell(shell, rec, cell, f"h-prof-{next(counter)}")
            fixed(n)
        hist[str(n)] = row
    out["history"] = hist
    return out


def _profile_cell(shell: Any, rec: Any, cell: str, cell_id: str, top: int = 15) -> list[dict[str, Any]]:
    """cProfile of one cell: the functions with most own time (the socket wait shows as recv_into)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    _cell(shell, rec, cell, cell_id)
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc,
                     "own_ms": tt * 1000, "cumulative_ms": ct * 1000})
    rows.sort(key=lambda r: -r["own_ms"])
    return rows[:top]


# -- child: the history panel ----------------------------------------------------------
def child_panel(p: dict[str, Any]) -> dict[str, Any]:
    from ollama_magic.store import ConversationStore, Turn, TurnMeta

    t0 = time.perf_counter()
    try:
        from ollama_magic.widget import HistoryPanel
    except Exception as exc:  # not written yet, or broken
        return {"available": False, "reason": f"import ollama_magic.widget failed: {type(exc).__name__}: {exc}"}
    import_s = time.perf_counter() - t0

    def new_turn(i: int) -> Any:
        return Turn(({"role": "user", "content": f"Appended question {i}"},
                     {"role": "assistant", "content": f"Appended answer {i} " + "word " * 50}),
                    TurnMeta(cell_id=f"append-{i}", model=MODEL, eval_count=52, prompt_eval_count=100))

    build, append, plain = [], [], []
    try:
        for rep in range(p["reps"] + 1):
            store = ConversationStore(model=MODEL)
            _prefill(store, p["turns"], reply_words=p["reply_words"])
            t0 = time.perf_counter()
            panel = HistoryPanel(store)
            elapsed = time.perf_counter() - t0
            if rep:  # the first build is a warm-up
                build.append(elapsed)
            for j in range(p["appends"]):
                turn = new_turn(j)
                t0 = time.perf_counter()
                store.commit(turn)
                if rep:
                    append.append(time.perf_counter() - t0)
            close = getattr(panel, "close", None)
            if callable(close):
                close()
            # the same commits without a panel, for comparison
            for j in range(p["appends"]):
                turn = new_turn(j + 10_000)
                t0 = time.perf_counter()
                store.commit(turn)
                if rep:
                    plain.append(time.perf_counter() - t0)
    except Exception as exc:
        import traceback

        tb = traceback.format_exc().strip().splitlines()
        return {"available": False, "reason": f"HistoryPanel failed: {type(exc).__name__}: {exc}",
                "traceback": tb[-6:]}
    return {"available": True, "turns": p["turns"], "import_s": import_s, "build_s": summary(build),
            "append_s": summary(append), "append_without_panel_s": summary(plain),
            "reply_chars": len(store.active.turns[0].reply["content"])}


# -- child: the journal ---------------------------------------------------------------------
def child_journal(p: dict[str, Any]) -> dict[str, Any]:
    """Row 8: journaling per turn at N journaled turns, restore, and %load_ext without a journal."""
    from IPython.core.interactiveshell import InteractiveShell

    from ollama_magic import journal as jm
    from ollama_magic.store import ConversationStore, Turn, TurnMeta

    reps = p["reps"]
    out: dict[str, Any] = {"turns": p["turns"], "restore_turns": p["restore_turns"]}
    with tempfile.TemporaryDirectory(prefix="ollama-magic-journal-") as tmp:
        # Journaling per turn: 10,000 turns in the database (ten notebooks), one chat of 1,000 growing.
        path = os.path.join(tmp, "j.db")
        for nb in range(p["turns"] // p["restore_turns"]):
            store = ConversationStore(model=MODEL)
            _prefill(store, p["restore_turns"])
            j = jm.Journal(path, f"/bench/nb{nb}.ipynb", notebook=True)
            j.attach(store)
            j.write()  # one transaction for the whole notebook
            j.close()
        store = ConversationStore(model=MODEL)
        j = jm.Journal(path, "/bench/nb0.ipynb", notebook=True)
        j.attach(store, restore=True)
        assert len(store.active.turns) == p["restore_turns"]
        with_j, without = [], []
        for i in range(3 + 20 * reps):
            user = {"role": "user", "content": f"Another question {i}"}
            turn = Turn((user, {"role": "assistant", "content": "An answer " + "word " * 50}),
                        TurnMeta(cell_id=f"j-{i}", model=MODEL, eval_count=52, prompt_eval_count=100))
            journaled = i % 2 == 0
            if not journaled:
                j.detach()
            gc.collect()
            t0 = time.perf_counter()
            store.commit(turn)
            took = time.perf_counter() - t0
            if not journaled:
                j.attach(store)
                j._dirty = True  # the unjournaled commit is caught up by the next one, untimed
                j.write()
            if i >= 3:
                (with_j if journaled else without).append(took)
        j.close()
        conn = sqlite3_connect(path)
        out["journaled_turns"] = conn.execute("SELECT count(*) FROM turns").fetchone()[0]
        conn.close()
        out["commit_s"], out["commit_without_s"] = summary(with_j), summary(without)
        out["turn_added_ms"] = 1000 * (statistics.median(with_j) - statistics.median(without))

        # Restore of a 1,000-turn notebook into a fresh store.
        restore = []
        for _ in range(reps + 1):
            store = ConversationStore(model=MODEL)
            gc.collect()
            t0 = time.perf_counter()
            j = jm.Journal(path, "/bench/nb1.ipynb", notebook=True)
            j.attach(store, restore=True)
            restore.append(time.perf_counter() - t0)
            j.close()
            assert len(store.active.turns) == p["restore_turns"]
        out["restore_s"] = summary(restore[1:])

        # %load_ext of a notebook without a journal, against the journal off.
        shell = InteractiveShell.instance()
        os.environ["JPY_SESSION_NAME"] = os.path.join(tmp, "new.ipynb")
        times: dict[str, list[float]] = {"missing": [], "off": []}
        for i in range(4 + 10 * reps):
            kind = ("missing", "off")[i % 2]
            os.environ["OLLAMA_MAGIC_DB"] = os.path.join(tmp, "none", "j.db") if kind == "missing" else ""
            gc.collect()
            t0 = time.perf_counter()
            shell.run_line_magic("load_ext", "ollama_magic")
            took = time.perf_counter() - t0
            shell.run_line_magic("unload_ext", "ollama_magic")
            if i >= 4:
                times[kind].append(took)
        out["load_missing_s"], out["load_off_s"] = summary(times["missing"]), summary(times["off"])
        out["load_added_ms"] = 1000 * (statistics.median(times["missing"]) - statistics.median(times["off"]))
        out["load_created_file"] = os.path.exists(os.path.join(tmp, "none"))
    return out


def sqlite3_connect(path: str) -> Any:
    import sqlite3

    return sqlite3.connect(path)


# -- child: a peer magic (run with the peer's interpreter) ---------------------------------
def child_peer(p: dict[str, Any]) -> dict[str, Any]:
    import ollama

    shell, rec = _shell_with_recorder()
    shell.run_line_magic("load_ext", p["ext"])
    cell = p["cell"].format(model=MODEL, question=QUESTION)
    client = ollama.Client(host=os.environ["OLLAMA_HOST"])
    for _ in range(3):  # warm-up; jupyter-ai's history grows to its window of 2 exchanges
        _cell(shell, rec, cell)
    messages = _capture_chat(lambda: _cell(shell, rec, cell))
    _raw_turn(client, messages)
    cell_wall, cell_ttft, raw_wall, raw_ttft, streamed = [], [], [], [], []
    for i in range(p["reps"]):
        for kind in (("cell", "raw") if i % 2 == 0 else ("raw", "cell")):
            if kind == "cell":
                wall, _, ttft = _cell(shell, rec, cell)
                cell_wall.append(wall)
                if ttft is not None:
                    cell_ttft.append(ttft)
                    streamed.append(ttft < wall * 0.8)  # text visible well before the cell ends
            else:
                wall, _, ttft, _ = _raw_turn(client, messages)
                raw_wall.append(wall)
                raw_ttft.append(ttft)
    out: dict[str, Any] = {
        "turn": {"cell_s": summary(cell_wall), "raw_s": summary(raw_wall), "messages_sent": len(messages)},
        "first_token": {"cell_s": summary(cell_ttft), "raw_s": summary(raw_ttft),
                        "streams": bool(streamed) and all(streamed)},
    }
    out["turn"]["ratio"] = out["turn"]["cell_s"]["median"] / out["turn"]["raw_s"]["median"]
    if cell_ttft:
        out["first_token"]["added_ms"] = 1000 * (statistics.median(cell_ttft) - statistics.median(raw_ttft))
    return out


PEERS = {
    # name: (distribution, extension, cell template)
    "jupyter-ai": ("jupyter-ai-magics", "jupyter_ai_magics", "%%ai ollama:{model}\n{question}"),
}


def peer_version(python: str, dist: str, env: dict[str, str]) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


# -- the table ---------------------------------------------------------------------------
def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


def evaluate(res: dict[str, Any]) -> None:
    """Add `met` flags against TARGETS."""
    t = TARGETS
    if "ratio" in res.get("load", {}):
        res["load"]["met"] = res["load"]["ratio"] <= t["load_ratio"] and not res["load"]["ipywidgets_imported"]
    if "ratio" in res.get("turn", {}):
        res["turn"]["met"] = res["turn"]["ratio"] <= t["turn_ratio"]
    if "added_ms" in res.get("first_token", {}):
        res["first_token"]["met"] = res["first_token"]["added_ms"] <= t["first_token_added_ms"]
    d = res.get("display", {})
    if d.get("updates", {}).get("max") is not None:
        d["met"] = d["updates"]["max"] <= d["bound"] and d["updates"]["max"] < DISPLAY_TOKENS / 10
    h = res.get("history", {})
    if str(max(HISTORY_SIZES)) in h:
        h["met"] = h[str(max(HISTORY_SIZES))]["own_overhead_ms"] <= t["history_own_overhead_ms_at_1000"]
    jr = res.get("journal", {})
    if "turn_added_ms" in jr:
        jr["turn_met"] = jr["turn_added_ms"] <= t["journal_turn_ms_at_10000"]
        jr["restore_met"] = jr["restore_s"]["median"] <= t["journal_restore_s_at_1000"]
        jr["load_met"] = jr["load_added_ms"] <= t["journal_load_added_ms"] and not jr["load_created_file"]
    pnl = res.get("panel", {})
    if pnl.get("available"):
        pnl["build_met"] = pnl["build_s"]["median"] < t["panel_build_s"]
        pnl["append_met"] = pnl["append_s"]["median"] * 1000 < t["panel_append_ms"]


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    peer = res.get("peer") or {}
    peer_name = f"{peer.get('name')} {peer.get('version') or ''}".strip() if peer.get("available") else None
    head = ["#", "measure", "ollama_magic", "baseline", "result", "target", "met"]
    if peer_name:
        head.append(f"peer: {peer_name}")
    rows: list[list[str]] = []

    def row(*cells: str, peer_cell: str = "") -> None:
        cells_l = list(cells)
        if peer_name:
            cells_l.append(peer_cell or "–")
        rows.append(cells_l)

    ld = res.get("load", {})
    if ld.get("ratio") is not None:
        pl = peer.get("load", {})
        row("1", "load: `python -c` + shell + `%load_ext`", fmt_stat(ld["load_s"], "s"),
            f"bare `import ollama, IPython` + shell: {fmt_stat(ld['base_s'], 's')}",
            f"{ld['ratio']:.2f}× (min/min {ld['ratio_of_minima']:.2f}×; +{ld['added_s'] * 1000:.0f} ms; `%load_ext` itself "
            f"{fmt_stat(ld.get('load_ext_inprocess_s'), 'ms', 1000)}); ipywidgets imported: {'yes' if ld['ipywidgets_imported'] else 'no'}",
            f"≤ {TARGETS['load_ratio']}×, no ipywidgets", _met(ld.get("met")),
            peer_cell=f"{pl['ratio']:.2f}× ({fmt_stat(pl['load_s'], 's')})" if pl.get("ratio") else "")
    elif ld.get("error"):
        row("1", "load", "not available", "", ld["error"], "", "–")
    tu = res.get("turn", {})
    if tu.get("ratio") is not None:
        pt = peer.get("turn", {})
        row("2", f"turn: {cfg['reply_tokens']}-token streamed reply, {tu['history_turns']} earlier turns",
            fmt_stat(tu["cell_s"], "s"), f"raw `Client().chat(stream=True)` loop: {fmt_stat(tu['raw_s'], 's')}",
            f"{tu['ratio']:.3f}× ({tu['added_ms']:+.1f} ms)", f"≤ {TARGETS['turn_ratio']}×", _met(tu.get("met")),
            peer_cell=f"{pt['ratio']:.2f}× ({fmt_stat(pt['cell_s'], 's')} vs {fmt_stat(pt['raw_s'], 's')})" if pt.get("ratio") else "")
    elif tu.get("error"):
        row("2", "turn", "not available", "", tu["error"], "", "–")
    ft = res.get("first_token", {})
    if ft.get("added_ms") is not None:
        pf = peer.get("first_token", {})
        pcell = ""
        if pf.get("added_ms") is not None:
            pcell = f"{fmt_stat(pf['cell_s'], 'ms', 1000)}, {pf['added_ms']:+.1f} ms" + (
                "" if pf.get("streams") else " (shown only when the reply is complete)")
        row("3", "first token visible (cell start → first update with reply text)",
            fmt_stat(ft["cell_s"], "ms", 1000), f"raw first chunk: {fmt_stat(ft['raw_s'], 'ms', 1000)}",
            f"{ft['added_ms']:+.2f} ms", f"≤ +{TARGETS['first_token_added_ms']:g} ms", _met(ft.get("met")),
            peer_cell=pcell)
    ds = res.get("display", {})
    if ds.get("updates", {}).get("median") is not None:
        row("4", f"display traffic: `update_display` per {ds['tokens']}-token reply",
            f"{fmt_stat(ds['updates'], 'n')} updates over {fmt_stat(ds['stream_s'], 's')}",
            f"{ds['tokens']} chunks", f"{fmt_stat(ds['updates_per_s'], 'n')} updates/s while streaming",
            f"≤ ~{TARGETS['display_rate_per_s']:g}/s (≤ {ds['bound']}), never per token", _met(ds.get("met")))
    hs = res.get("history", {})
    for n in HISTORY_SIZES:
        h = hs.get(str(n))
        if not h:
            continue
        target = f"≤ {TARGETS['history_own_overhead_ms_at_1000']:g} ms own" if n == max(HISTORY_SIZES) else "flat"
        row("5", f"history: {n} earlier turns ({h['messages_sent']} messages sent), Python CPU per turn",
            f"{fmt_stat(h['cell_cpu_s'], 'ms', 1000)}",
            f"raw client, same request: {fmt_stat(h['raw_cpu_s'], 'ms', 1000)}; history build {fmt_stat(h['history_build_s'], 'ms', 1000)}",
            f"own overhead {fmt_stat(h['own_overhead_s'], 'ms', 1000)}", target,
            _met(hs.get("met")) if n == max(HISTORY_SIZES) else "–")
    pn = res.get("panel", {})
    if pn.get("available"):
        row("6", f"panel: build `HistoryPanel` over {pn['turns']} turns", fmt_stat(pn["build_s"], "s"),
            f"first import of the widget module: {pn['import_s']:.3f} s", "", f"< {TARGETS['panel_build_s']:g} s",
            _met(pn.get("build_met")))
        row("6", "panel: `store.commit(turn)` with the panel open", fmt_stat(pn["append_s"], "ms", 1000),
            f"without a panel: {fmt_stat(pn['append_without_panel_s'], 'ms', 1000)}", "",
            f"< {TARGETS['panel_append_ms']:g} ms", _met(pn.get("append_met")))
    elif pn:
        row("6", "panel", "not available", "", pn.get("reason", ""), f"< {TARGETS['panel_build_s']:g} s / < {TARGETS['panel_append_ms']:g} ms", "–")
    jr = res.get("journal", {})
    if "turn_added_ms" in jr:
        row("8", f"journal: `store.commit(turn)` at {jr['journaled_turns']} journaled turns",
            fmt_stat(jr["commit_s"], "ms", 1000), f"without the journal: {fmt_stat(jr['commit_without_s'], 'ms', 1000)}",
            f"{jr['turn_added_ms']:+.2f} ms", f"≤ {TARGETS['journal_turn_ms_at_10000']:g} ms", _met(jr.get("turn_met")))
        row("8", f"journal: restore a {jr['restore_turns']}-turn notebook", fmt_stat(jr["restore_s"], "s"), "", "",
            f"< {TARGETS['journal_restore_s_at_1000']:g} s", _met(jr.get("restore_met")))
        row("8", "journal: `%load_ext` of a notebook with no journal", fmt_stat(jr["load_missing_s"], "ms", 1000),
            f"journal off: {fmt_stat(jr['load_off_s'], 'ms', 1000)}", f"{jr['load_added_ms']:+.2f} ms",
            f"< {TARGETS['journal_load_added_ms']:g} ms", _met(jr.get("load_met")))
    elif jr.get("error"):
        row("8", "journal", "not available", "", jr["error"], "", "–")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines.append("")
    lines.append(
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']} ({m['platform']}); "
        f"IPython {res['versions'].get('ipython')}, ollama {res['versions'].get('ollama')}. "
        f"Test server in its own process on 127.0.0.1: {cfg['token_delay'] * 1000:g} ms/token, "
        f"{cfg['reply_tokens']}-token replies. Figures: median (min–max) of {cfg['reps']} runs for rows 1–3"
        f" and 7, {cfg['display_reps']} replies for row 4, {cfg['history_reps']} runs per size for row 5, "
        f"{cfg['panel_reps']} builds ({cfg['panel_appends']} appends each) for row 6"
        f"{' (quick mode)' if cfg['quick'] else ''}. Load average at start/end: "
        f"{_la(m.get('loadavg_at_start'))} / {_la(m.get('loadavg_at_end'))}."
    )
    if not peer.get("available"):
        lines.append("")
        lines.append(f"Peer rows: {peer.get('reason', 'skipped')}.")
    return "\n".join(lines)


def _la(values: list[float] | None) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "?"


def notes_text(res: dict[str, Any]) -> str:
    out = [
        "",
        "Notes:",
        "- Turn/first token: each run starts from the same stored history "
        f"({FIXED_HISTORY} earlier turns); the raw loop sends the identical message list, captured from what the "
        "magic sent. Cell = `shell.run_cell` wall time, so IPython's own cell cost "
        f"(empty cell: {fmt_stat(res.get('turn', {}).get('empty_cell_s'), 'ms', 1000)}) is counted against the magic.",
        "- History: CPU = `time.thread_time()` of the main thread (everything but waiting on the socket); own overhead = "
        "cell CPU − raw-client CPU for the identical request − building the history from the store, per run "
        "(paired), so the wait for the server and the client's own encoding of the request cancel out.",
        "- Display traffic: `update_display` messages the recording DisplayPublisher received (in a kernel each is one "
        "iopub message); the rate counts intervals between streaming updates, the final Markdown excluded.",
        f"- Panel: `HistoryPanel(store)` over {PANEL_TURNS} stored turns (~{res.get('panel', {}).get('reply_chars', '?')}"
        "-character replies) outside a kernel, so ipywidgets talks to no frontend; append = `store.commit(Turn(...))` "
        "with that panel open (it re-renders through its store listener).",
        f"- Journal: SQLite (WAL, synchronous=NORMAL) holding {JOURNAL_TURNS} turns of ten notebooks; a commit with the "
        "journal listening (its transaction included) against the same commit with it detached, alternating; restore = "
        "a new kernel's `Journal.attach(store, restore=True)`; load = in-process `%load_ext` of a notebook whose journal "
        "file does not exist, against `OllamaMagics.db = ''`.",
    ]
    peer = res.get("peer") or {}
    if peer.get("available"):
        out.append(
            f"- Peer: {peer['name']} {peer.get('version')} measured with {peer.get('python')} in its own process; "
            f"load uses `%load_ext {PEERS[peer['name']][1]}`; its turn sends "
            f"{peer.get('turn', {}).get('messages_sent', '?')} messages (its own window of earlier exchanges), and "
            "the raw loop sends the same list.")
    diag = res.get("diagnostics") or {}
    for name, text in diag.items():
        out.append(f"- Diagnostic ({name}):")
        out.extend("    " + line for line in text.splitlines())
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 minute)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 15, quick 3)")
    ap.add_argument("--peer-python", metavar="PATH", help="interpreter with jupyter-ai-magics + langchain-ollama "
                    "(e.g. a venv made with `pip install -e .[bench]`); without it the peer rows are skipped")
    ap.add_argument("--peer", choices=sorted(PEERS), default="jupyter-ai", help="which peer magic to measure")
    ap.add_argument("--out", metavar="DIR", default=str(HERE), help="where results.json/results.md go")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="profile missed targets (-X importtime, cProfile); default on unless --quick")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_params", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        fn = {"ours": child_ours, "panel": child_panel, "peer": child_peer, "journal": child_journal}[args._child]
        print(json.dumps(fn(json.loads(args._params or "{}"))), flush=True)
        return 0

    reps = args.reps or (3 if args.quick else 15)
    profile = (not args.quick) if args.profile is None else args.profile
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    res: dict[str, Any] = {
        "machine": machine_info(),
        "config": {"quick": args.quick, "reps": reps, "token_delay": TOKEN_DELAY, "reply_tokens": REPLY_TOKENS,
                   "display_tokens": DISPLAY_TOKENS, "history_sizes": list(HISTORY_SIZES),
                   "fixed_history_turns": FIXED_HISTORY, "panel_turns": PANEL_TURNS, "model": MODEL,
                   "display_reps": 1 if args.quick else 3, "history_reps": max(2, reps if not args.quick else 2),
                   "panel_reps": 1 if args.quick else 5, "panel_appends": 5 if args.quick else 20,
                   "python_executable": py},
        "targets": TARGETS,
        "versions": {},
    }
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    servers = []
    with tempfile.TemporaryDirectory(prefix="ollama-magic-bench-") as ipdir:
        try:
            servers.append(ServerProcess(TOKEN_DELAY, REPLY_TOKENS))
            servers.append(ServerProcess(TOKEN_DELAY, DISPLAY_TOKENS))
            host, host_long = servers[0].host, servers[1].host
            env = child_env(host, ipdir)
            for dist in ("ipython", "ollama", "ipywidgets"):
                res["versions"][dist] = peer_version(py, dist, env)

            log(f"1. load ({reps} runs each)")
            try:
                res["load"] = measure_load(py, "ollama_magic", reps, env)
            except Exception as exc:
                res["load"] = {"error": str(exc)}

            log("2-5. turn, first token, display traffic, history scale")
            params = {"reps": reps, "host": host, "host_long": host_long,
                      "display_reps": res["config"]["display_reps"], "history_sizes": list(HISTORY_SIZES),
                      "history_reps": res["config"]["history_reps"], "profile": profile}
            try:
                res.update(run_child(py, "ours", params, env, timeout=900))
            except Exception as exc:
                res["turn"] = {"error": str(exc)}

            log("6. history panel")
            try:
                res["panel"] = run_child(py, "panel", {"reps": res["config"]["panel_reps"], "turns": PANEL_TURNS,
                                                       "appends": res["config"]["panel_appends"],
                                                       "reply_words": PANEL_REPLY_WORDS}, env, timeout=600)
            except Exception as exc:
                res["panel"] = {"available": False, "reason": str(exc).splitlines()[-1]}

            log("8. journal")
            try:
                res["journal"] = run_child(py, "journal", {"reps": max(1, reps // 3), "turns": JOURNAL_TURNS,
                                                           "restore_turns": JOURNAL_RESTORE_TURNS}, env, timeout=600)
            except Exception as exc:
                res["journal"] = {"error": str(exc).splitlines()[-1]}

            res["peer"] = measure_peer(args, reps, env, log)
            evaluate(res)
            if profile:
                res["diagnostics"] = diagnose(res, py, env, log)
        finally:
            for s in servers:
                s.stop()

    res["elapsed_s"] = time.perf_counter() - started
    res["machine"]["loadavg_at_end"] = _loadavg()
    table = markdown(res)
    notes = notes_text(res)
    print(table)
    print(notes)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(table + "\n" + notes + "\n")
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


def measure_peer(args: argparse.Namespace, reps: int, env: dict[str, str], log: Any) -> dict[str, Any]:
    dist, ext, cell = PEERS[args.peer]
    if not args.peer_python:
        msg = (f"skipped; to measure {args.peer}, make a separate venv "
               "(`python3 -m venv /work/benchvenv && /work/benchvenv/bin/pip install -e '.[bench]'`) and run "
               "`python benchmarks/bench.py --peer-python /work/benchvenv/bin/python`")
        log("7. peer: " + msg)
        return {"available": False, "reason": msg}
    py = args.peer_python
    version = peer_version(py, dist, env)
    if version is None:
        return {"available": False, "name": args.peer,
                "reason": f"{dist} is not installed for {py}"}
    log(f"7. peer {args.peer} {version}: load, turn, first token")
    out: dict[str, Any] = {"available": True, "name": args.peer, "version": version, "python": py}
    try:
        out["load"] = measure_load(py, ext, reps, env)
        out.update(run_child(py, "peer", {"reps": reps, "ext": ext, "cell": cell}, env, timeout=900))
    except Exception as exc:
        return {"available": False, "name": args.peer, "version": version, "reason": f"failed: {exc}"}
    return out


def diagnose(res: dict[str, Any], py: str, env: dict[str, str], log: Any) -> dict[str, str]:
    """For each missed target, the profile that says why."""
    diag: dict[str, str] = {}
    if res.get("load", {}).get("met") is False:
        log("profiling the load (-X importtime)")
        rows = import_profile(py, "ollama_magic", env)
        diag["load: imports %load_ext adds, by cumulative time"] = "\n".join(
            f"{r['cumulative_ms']:8.1f} ms cum {r['self_ms']:7.1f} ms self  {r['module']}" for r in rows)
    h = res.get("history", {}).get(str(max(HISTORY_SIZES)), {})
    if res.get("history", {}).get("met") is False or res.get("turn", {}).get("met") is False:
        if h.get("profile"):
            diag[f"cell at {max(HISTORY_SIZES)} turns: cProfile, top own time"] = "\n".join(
                f"{r['own_ms']:8.2f} ms own {r['cumulative_ms']:8.2f} ms cum {r['calls']:7d}×  {r['function']}"
                for r in h["profile"])
    return diag


if __name__ == "__main__":
    sys.exit(main())
