"""A real ipykernel, driven as JupyterLab drives it: execute requests carry `cellId` metadata."""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])

    @property
    def text(self) -> str:
        """Everything the cell showed, as text (streams, plain and markdown data, errors)."""
        parts = []
        for msg in self.outputs:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                parts.append(content["text"])
            elif msg["msg_type"] in ("display_data", "update_display_data", "execute_result"):
                data = content.get("data", {})
                parts.append(data.get("text/markdown") or data.get("text/plain", ""))
            elif msg["msg_type"] == "error":
                parts.append("\n".join(content["traceback"]))
        return "\n".join(parts)

    @property
    def shown(self) -> str:
        """What the cell finally shows, as text: each display as its last update, plain text."""
        shown: dict[str, str] = {}
        for i, msg in enumerate(self.outputs):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                shown[f"stream{i}"] = content["text"]
            elif kind in ("display_data", "update_display_data", "execute_result"):
                key = (content.get("transient") or {}).get("display_id") or f"out{i}"
                shown[key] = content.get("data", {}).get("text/plain", "")
            elif kind == "error":
                shown[f"error{i}"] = f"{content['ename']}: {content['evalue']}"
        return "\n".join(shown.values())


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def send(self, code: str, cell_id: str | None = None) -> str:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def collect(self, msg_id: str, timeout: float = 60) -> Execution:
        deadline = time.monotonic() + timeout
        outputs: list[dict[str, Any]] = []
        while True:  # iopub until the kernel is idle for this request
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            outputs.append(msg)
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return Execution(reply, outputs)

    def execute(self, code: str, cell_id: str | None = None, timeout: float = 60) -> Execution:
        return self.collect(self.send(code, cell_id), timeout)

    def kill9(self) -> None:
        """SIGKILL the kernel process, as the OOM killer or a crash would."""
        process = self.km.provisioner.process  # type: ignore[union-attr]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def wait_for_output(self, msg_id: str, needle: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Read iopub until an output of `msg_id` contains `needle` (those messages are returned)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if needle in str(msg["content"]):
                return seen
        raise AssertionError(f"no output with {needle!r}: {seen}")


@contextmanager
def kernel(env: dict[str, str]) -> Iterator[Kernel]:
    """An ipykernel of this Python (so it imports this checkout's ollama_magic)."""
    km = KernelManager(kernel_name="python3")
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    full = {**os.environ, **env}
    full.pop("OLLAMA_MODEL", None)
    km.start_kernel(env=full)
    k = Kernel(km)
    try:
        # The kernel must run the ollama_magic under test (the wheel in CI), not another copy.
        import ollama_magic

        ex = k.execute("import ollama_magic; print(ollama_magic.__file__)")
        assert ex.text.strip() == ollama_magic.__file__, (ex.text, ollama_magic.__file__)
        yield k
    finally:
        k.kc.stop_channels()
        km.shutdown_kernel(now=True)
