"""Helpers for the browser test: a private JupyterLab server and headless Chromium.

Everything stays on 127.0.0.1: JupyterLab runs with a token, temporary
HOME/config/data/runtime/settings directories, news and update checks off,
and the page aborts (and records) any request that is not for 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("OLLAMA_MAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fatal(RuntimeError):
    """A condition that can never become true: stop waiting at once."""


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Fatal:
            raise
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f" (last error: {last_exc!r})" if last_exc else ""))


class LabServer:
    """`python -m jupyter lab` in its own process group, isolated in `root`."""

    def __init__(self, root: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.notebook_dir = root / "notebooks"
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "lab.log"

    def _environment(self) -> dict[str, str]:
        root = self.root
        dirs = {
            "HOME": root / "home",
            "JUPYTER_CONFIG_DIR": root / "config",
            "JUPYTER_DATA_DIR": root / "data",
            "JUPYTER_RUNTIME_DIR": root / "runtime",
            "JUPYTERLAB_SETTINGS_DIR": root / "settings",
            "JUPYTERLAB_WORKSPACES_DIR": root / "workspaces",
            "IPYTHONDIR": root / "ipython",
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        # No request may leave the machine: no news, no "fetch news?" question.
        notification = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        env.update({k: str(v) for k, v in dirs.items()})
        env.update(
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
            JUPYTER_PLATFORM_DIRS="1",
            # The kernel must import this checkout, wherever its cwd is.
            PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parents[1])]
                + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> LabServer:
        cmd = [
            sys.executable, "-m", "jupyter", "lab",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={self.notebook_dir}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # no PyPI queries
            "--ServerApp.open_browser=False",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # containers and CI often run as root
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(cmd, env=self._environment(), cwd=self.notebook_dir,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._ready, timeout, f"JupyterLab on port {self.port}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise Fatal(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
        req = urllib.request.Request(f"{self.url}/api/status",
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # Lab and its kernels
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            try:  # kernels left behind in the group after Lab itself exited
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None


# -- JavaScript run in the page ---------------------------------------------------------

JS_KERNEL_STATE = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  if (!w || !w.sessionContext) return 'no-notebook';
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status + '/' + k.connectionStatus : 'no-kernel';
}"""

# Every code cell has an execution count, none shows [*], and the kernel is idle.
JS_ALL_DONE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!k || k.status !== 'idle') return false;
  for (const cell of w.content.widgets) {
    if (cell.model.type !== 'code') continue;
    if (cell.model.executionCount === null) return false;
    const prompt = cell.node.querySelector('.jp-InputPrompt');
    if (prompt && prompt.textContent.includes('*')) return false;
  }
  return true;
}"""

# The text of every output area of code cell `i` (negative counts from the end).
JS_CELL_OUTPUT_TEXT = """(i) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const cell = cells[i < 0 ? cells.length + i : i];
  const area = cell && cell.node.querySelector('.jp-OutputArea');
  return area ? area.innerText : '';
}"""

JS_ACTIVATE_LAST_CELL = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  nb.activeCellIndex = nb.widgets.length - 1;
  nb.mode = 'command';
  return nb.widgets.length;
}"""

JS_CELL_COUNT = "() => window.jupyterapp.shell.currentWidget.content.widgets.length"

# Dangerous elements inside any output area (the panel is an output too).
JS_HOSTILE_ELEMENTS = """() => {
  const found = [];
  for (const area of document.querySelectorAll('.jp-OutputArea')) {
    for (const el of area.querySelectorAll(
        'script, iframe, object, embed, style, img[src="x"], [onerror], [onload], a[href^="javascript:" i]'))
      found.push(el.outerHTML.slice(0, 200));
  }
  return found;
}"""
