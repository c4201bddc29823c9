"""Timing of the history panel: open a 1,000-turn chat, append turns to an open panel.

    .venv/bin/python benchmarks/panel_timing.py            # in this process (no frontend comm)
    .venv/bin/python benchmarks/panel_timing.py --kernel   # inside a real ipykernel (comm messages sent)

Turns are realistic in size (a 200-character question, a 2,000-character
reply). "append" is the wall time of `store.commit` with a panel open, i.e.
the store's own work (measured separately, without a panel) plus the panel's
event handling. In a kernel, every new widget also sends a comm_open message.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _turn(i: int):
    from ollama_magic.store import Turn, TurnMeta

    user = {"role": "user", "content": f"question {i} " + "q" * 200}
    reply = {"role": "assistant", "content": f"answer {i} " + ("lorem ipsum dolor sit amet " * 75)}
    return Turn((user, reply), TurnMeta(cell_id=f"{i:08x}-cell", model="llama3.2",
                                         prompt_eval_count=100 + i, eval_count=400))


def measure(turns: int = 1000, appends: int = 200, repeats: int = 7) -> dict[str, float]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from ollama_magic.store import ConversationStore
    from ollama_magic.widget import HistoryPanel

    def store_with(n: int) -> ConversationStore:
        store = ConversationStore(model="llama3.2")
        for i in range(n):
            store.commit(_turn(i))
        return store

    HistoryPanel(store_with(5)).close()  # warm imports
    store = store_with(turns)
    builds = []
    for _ in range(repeats):
        t = time.perf_counter()
        panel = HistoryPanel(store)
        builds.append(time.perf_counter() - t)
        panel.close()

    panel = HistoryPanel(store)
    t = time.perf_counter()
    panel.show_earlier()
    earlier = time.perf_counter() - t
    panel.close()

    panel = HistoryPanel(store)
    adds = []
    for i in range(turns, turns + appends):
        turn = _turn(i)
        t = time.perf_counter()
        store.commit(turn)
        adds.append(time.perf_counter() - t)
    t = time.perf_counter()
    panel.close()
    closing = time.perf_counter() - t

    bare = store_with(turns)  # the same commits with no panel open
    plain = []
    for i in range(turns, turns + appends):
        turn = _turn(i)
        t = time.perf_counter()
        bare.commit(turn)
        plain.append(time.perf_counter() - t)

    adds.sort()
    return {
        "build_median_ms": statistics.median(builds) * 1e3,
        "build_max_ms": max(builds) * 1e3,
        "show_earlier_page_ms": earlier * 1e3,
        "append_median_ms": statistics.median(adds) * 1e3,
        "append_p95_ms": adds[int(len(adds) * 0.95)] * 1e3,
        "append_max_ms": adds[-1] * 1e3,
        "commit_without_panel_median_ms": statistics.median(plain) * 1e3,
        "close_ms": closing * 1e3,
    }


def report(result: dict[str, float], where: str) -> None:
    print(f"history panel, 1,000 turns, page 50 ({where}):")
    for key, value in result.items():
        print(f"  {key:32s} {value:8.2f}")


def _in_kernel() -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = (f"import runpy; ns = runpy.run_path({str(Path(__file__).resolve())!r}, run_name='bench'); "
                "import sys; print(sys.executable); ns['report'](ns['measure'](), 'in an ipykernel')")
        out: list[str] = []

        def hook(msg):  # noqa: ANN001
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        try:
            kc.execute_interactive(code, output_hook=hook, timeout=180)
        except TimeoutError:
            out.append("the kernel did not finish within 180 s\n")
        print("".join(out), end="")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


if __name__ == "__main__":
    if "--kernel" in sys.argv:
        _in_kernel()
    else:
        report(measure(), "in process, no frontend")
