"""End to end in a real browser: JupyterLab + headless Chromium + the Ollama test server.

One JupyterLab (private dirs, token, 127.0.0.1 only) and one browser page serve
all tests of this module, in order:

1. run-all: streamed replies appear and `%ollama history` renders a live panel;
2. an edit made through a message's Edit control is what the next cell sends
   to the model;
3. a short conversation in its own chat, followed live by the open panel
   (docs/panel.png is taken of it on request);
4. a hostile reply stays inert in the output and in the panel, and so does the
   whole shared corpus (tests/hostile.py) drawn by the panel;
5. a 1,000-turn chat: the panel is drawn fast, and the saved notebook (widget
   state included) grows by less than the conversation's own text.

Skipped only when OLLAMA_MAGIC_SKIP_BROWSER=1; a browser that cannot start fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_util import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    JS_ACTIVATE_LAST_CELL,
    JS_ALL_DONE,
    JS_CELL_COUNT,
    JS_CELL_OUTPUT_TEXT,
    JS_HOSTILE_ELEMENTS,
    JS_KERNEL_STATE,
    LabServer,
)

from hostile import PAYLOADS, violations  # noqa: E402

from ollama_magic.testing import OllamaTestServer  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
# The README's picture is refreshed only on request, so a test run leaves the tree clean:
# OLLAMA_MAGIC_SCREENSHOT=docs/panel.png python -m pytest tests/test_browser.py
SCREENSHOT = Path(os.environ.get("OLLAMA_MAGIC_SCREENSHOT") or Path(tempfile.gettempdir()) / "ollama_magic_panel.png")
NOTEBOOK = "browser_test"
CELLS = [
    "%load_ext ollama_magic",
    "%ollama model llama3.2",
    "%%ollama\nHello from the browser",
    "%%ollama\nSecond question",
    "%ollama history",
]
HISTORY_CELL = 4
REPLY_1 = "I saw 1 messages. You said: Hello from the browser"
REPLY_2 = "I saw 3 messages. You said: Second question"
EDITED = "Edited in the browser"
HOSTILE = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> '
           "[x](javascript:window.__pwned=3) <iframe src=about:blank></iframe>"
           "<style>body{display:none}</style>")
WIDGET_TROUBLE = ("Loading widget", "Error displaying widget", "Model not found", "model not found")

KERNEL_TIMEOUT = 90_000  # ms
CELL_TIMEOUT = 60_000  # ms


@dataclass
class Session:
    srv: OllamaTestServer
    lab: LabServer
    page: Any
    root: Path
    console: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def diagnostics(self, name: str) -> Iterator[None]:
        """On failure: print browser console errors, blocked requests, the Lab log
        tail, and save a screenshot of the page."""
        try:
            yield
        except BaseException:
            shot = self.root / f"failure-{name}.png"
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(shot), full_page=True)
            print(f"\n--- browser console ({len(self.console)} messages) ---", file=sys.stderr)
            for line in self.console[-80:]:
                print(line, file=sys.stderr)
            print(f"--- dialogs: {self.dialogs}\n--- blocked requests: {self.blocked}", file=sys.stderr)
            print(f"--- JupyterLab log tail ---\n{self.lab.log_tail()}", file=sys.stderr)
            print(f"--- failure screenshot: {shot}", file=sys.stderr)
            raise

    # -- notebook driving --------------------------------------------------------
    def wait_all_done(self, timeout: int = CELL_TIMEOUT) -> None:
        self.page.wait_for_function(JS_ALL_DONE, timeout=timeout, polling=100)

    def output_text(self, index: int) -> str:
        return str(self.page.evaluate(JS_CELL_OUTPUT_TEXT, index))

    def notebook_text(self) -> str:
        return str(self.page.evaluate("() => document.querySelector('.jp-Notebook').innerText"))

    def add_cell_and_run(self, source: str, expect: str) -> int:
        """Insert a cell below the last one, type `source` into it as a user
        would, run it, and wait until its output shows `expect`."""
        page = self.page
        before = int(page.evaluate(JS_ACTIVATE_LAST_CELL))
        page.evaluate("window.jupyterapp.commands.execute('notebook:insert-cell-below')")
        page.wait_for_function(f"() => ({JS_CELL_COUNT})() === {before + 1}", timeout=10_000)
        index = before
        editor = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
        editor.click()
        lines = source.split("\n")
        for i, line in enumerate(lines):
            page.keyboard.type(line)
            if i < len(lines) - 1:
                page.keyboard.press("Enter")
        typed = page.evaluate(
            "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.sharedModel.getSource()",
            index)
        assert typed == source, f"the editor holds {typed!r}, not {source!r}"
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
        page.wait_for_function(
            "([i, text]) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[i];"
            " const a = c && c.node.querySelector('.jp-OutputArea'); return !!a && a.innerText.includes(text); }",
            arg=[index, expect], timeout=CELL_TIMEOUT, polling=100)
        self.wait_all_done()
        return index

    def insert_cell(self, source: str) -> int:
        """Append a code cell holding `source` and make it the active cell; returns its index."""
        return int(self.page.evaluate(
            """(src) => { const nb = window.jupyterapp.shell.currentWidget.content;
                 nb.model.sharedModel.insertCell(nb.widgets.length, {cell_type: 'code', source: src});
                 nb.activeCellIndex = nb.widgets.length - 1; nb.mode = 'command'; return nb.widgets.length - 1; }""",
            source))

    def run_active_cell(self) -> None:
        # Not awaited: a kernel that never answers must time out below, not hang here.
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-cell'); }")
        self.page.wait_for_timeout(50)
        self.wait_all_done()

    def save(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        self.page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                                    timeout=CELL_TIMEOUT, polling=100)

    def dismiss_news_prompt(self) -> None:
        """Answer "No" to the "receive official Jupyter news?" toast if it shows."""
        toast = self.page.locator(".jp-toast-message, .Toastify__toast").filter(has_text="news")
        if toast.count():
            no = toast.first.get_by_role("button", name="No")
            if no.count():
                no.first.click()

    def panel(self) -> Any:
        """The history cell's panel."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(HISTORY_CELL).locator(".om-panel").first


def _write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    if os.environ.get("OLLAMA_MAGIC_SKIP_BROWSER") == "1":
        pytest.skip("OLLAMA_MAGIC_SKIP_BROWSER=1")
    # Imported here so a missing Playwright fails the test rather than collection.
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    root = tmp_path_factory.mktemp("browser")
    srv = OllamaTestServer(token_delay=0.02).start()
    lab = LabServer(root, extra_env={"OLLAMA_HOST": srv.host})
    pw = browser = None
    s: Session | None = None
    try:
        _write_notebook(lab.notebook_dir / f"{NOTEBOOK}.ipynb")
        widgets = root / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
        widgets.mkdir(parents=True, exist_ok=True)
        (widgets / "plugin.jupyterlab-settings").write_text('{"saveState": true}', encoding="utf-8")
        lab.start()
        print(f"\n[browser] JupyterLab up in {time.monotonic() - started:.1f} s on {lab.url}")
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(CELL_TIMEOUT)
        page = context.new_page()
        s = Session(srv=srv, lab=lab, page=page, root=root)

        def on_console(msg: Any) -> None:
            if msg.type in ("error", "warning"):
                s.console.append(f"[{msg.type}] {msg.text}")

        def on_dialog(dialog: Any) -> None:
            s.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        def guard(route: Any) -> None:
            # Strictly local: anything not for 127.0.0.1 is aborted and recorded.
            url = route.request.url
            host = urlsplit(url).hostname
            if url.startswith(("data:", "blob:", "about:")) or host == "127.0.0.1":
                route.continue_()
            else:
                s.blocked.append(url)
                route.abort()

        page.on("console", on_console)
        page.on("pageerror", lambda exc: s.console.append(f"[pageerror] {exc}"))
        page.on("dialog", on_dialog)
        context.route("**/*", guard)
        yield s
    finally:
        for step in (
            lambda: browser.close() if browser is not None else None,
            lambda: pw.stop() if pw is not None else None,
            lab.stop,
            srv.stop,
        ):
            with contextlib.suppress(Exception):
                step()
        if s is not None and s.console:
            print(f"\n[browser] console errors/warnings ({len(s.console)}):")
            for line in s.console[-40:]:
                print("   ", line[:300])
        print(f"\n[browser] module total {time.monotonic() - started:.1f} s")


def test_run_all_streams_replies_and_renders_the_panel(session: Session) -> None:
    page = session.page
    with session.diagnostics("run-all"):
        page.goto(f"{session.lab.url}/lab/tree/{NOTEBOOK}.ipynb?token={session.lab.token}",
                  wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.content", timeout=KERNEL_TIMEOUT)
        page.wait_for_function(f"() => ({JS_KERNEL_STATE})() === 'idle/connected'",
                               timeout=KERNEL_TIMEOUT, polling=200)
        session.dismiss_news_prompt()
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        session.wait_all_done()

        # Streamed replies, each in its own cell.
        assert REPLY_1 in session.output_text(2)
        assert REPLY_2 in session.output_text(3)
        page.get_by_text(REPLY_1).first.wait_for(state="visible")
        assert len(session.srv.chat_requests()) == 2

        # The panel: one widget view with both turns drawn as a conversation.
        panel = session.panel()
        panel.wait_for(state="visible", timeout=CELL_TIMEOUT)
        page.wait_for_function(
            "(el) => el.querySelectorAll('.om-turn').length === 2", arg=panel.element_handle(),
            timeout=CELL_TIMEOUT, polling=100)
        users = panel.locator(".om-user .om-bubble").all_inner_texts()
        replies = panel.locator(".om-assistant .om-bubble").all_inner_texts()
        assert [u.strip() for u in users] == ["Hello from the browser", "Second question"], users
        assert [r.strip() for r in replies] == [REPLY_1, REPLY_2], replies
        assert "2 turns" in panel.locator(".om-head").inner_text()
        assert panel.locator("textarea:visible").count() == 0  # a read view: no text areas until Edit
        panel.locator(".om-turn").first.locator(".om-cell").click()  # the cell id leads to the cell
        assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex") == 2
        text = session.notebook_text()
        for bad in WIDGET_TROUBLE:
            assert bad not in text, f"{bad!r} is shown in the notebook"
        assert not session.dialogs
        assert not session.blocked, f"requests that would leave 127.0.0.1: {session.blocked}"


def test_edit_in_panel_is_sent_with_the_next_cell(session: Session) -> None:
    page = session.page
    with session.diagnostics("edit"):
        panel = session.panel()
        first = panel.locator(".om-turn").first.locator(".om-user")
        first.hover()
        first.locator(".om-edit").click()
        textarea = first.locator(".om-editor textarea")
        textarea.wait_for(state="visible")
        assert textarea.input_value() == "Hello from the browser"
        textarea.click()
        textarea.press("Control+a")
        page.keyboard.type(EDITED)
        assert textarea.input_value() == EDITED  # select-all replaced the whole text
        assert first.locator(".om-unsaved").is_visible()  # an unsaved edit is marked
        first.locator(".om-editor").get_by_role("button", name="Save").click()
        page.wait_for_function(
            "(el) => el.querySelector('.om-status').innerText.includes('saved the edit of your message in turn 1')",
            arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=100)
        turn = panel.locator(".om-turn").first
        assert "edited" in turn.locator(".om-turn-head").inner_text()
        assert turn.locator(".om-user .om-bubble").inner_text().strip() == EDITED
        assert turn.locator("textarea").count() == 0  # saved: back to the read view

        session.add_cell_and_run("%%ollama\nThird", expect="You said: Third")
        body = session.srv.last_chat()
        assert body["messages"][0]["content"] == EDITED, body["messages"]
        assert [m["content"] for m in body["messages"] if m["role"] == "user"] == [
            EDITED, "Second question", "Third"]
        assert "I saw 5 messages. You said: Third" in session.output_text(-1)
        # The panel is live: the third turn arrived without re-running %ollama history.
        page.wait_for_function("(el) => el.querySelectorAll('.om-turn').length === 3"
                               " && el.querySelector('.om-head').innerText.includes('3 turns')",
                               arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=100)


TOUR = [
    ("Explain Python decorators in two sentences.",
     "A **decorator** is a function that takes another function and returns a new one, adding "
     "behaviour around it without touching its code.\n\nYou apply it with `@name` on the line "
     "above a `def`."),
    ("Now show a tiny example.",
     "```python\ndef shout(fn):\n    def wrapper(*args):\n        return fn(*args).upper()\n"
     "    return wrapper\n\n@shout\ndef greet(name):\n    return f\"hello, {name}\"\n\n"
     "print(greet(\"ada\"))  # HELLO, ADA\n```\n\n`@shout` wraps `greet`, so every call "
     "comes back in capitals."),
    ("Can a decorator take arguments?",
     "Yes: write a function that *returns* a decorator.\n\n- `@repeat(3)` calls `repeat(3)` first\n"
     "- its result then wraps the function below it"),
]


def test_a_short_conversation_is_followed_live(session: Session) -> None:
    """A chat of its own with real-looking answers; the open panel switches to it and
    follows each reply as it streams (docs/panel.png is taken of it)."""
    page = session.page
    with session.diagnostics("tour"):
        panel = session.panel()
        session.srv.token_delay = 0.03
        try:
            for i, (question, answer) in enumerate(TOUR):
                session.srv.reply = answer
                chat = " -c decorators" if i == 0 else ""
                index = session.insert_cell(f"%%ollama{chat}\n{question}")
                if i == 1:  # watch the panel while the reply streams
                    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-cell'); }")  # no await
                    page.wait_for_function("(el) => !!el.querySelector('.om-live .om-stream')"
                                           " && el.querySelector('.om-live .om-stream').textContent.length > 0",
                                           arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=20)
                    session.wait_all_done()
                else:
                    session.run_active_cell()
                assert "tokens" in session.output_text(index)
        finally:
            session.srv.reply = None
            session.srv.token_delay = 0.02
        page.wait_for_function("(el) => el.querySelectorAll('.om-turn').length === 3"
                               " && !el.querySelector('.om-live')", arg=panel.element_handle(),
                               timeout=CELL_TIMEOUT, polling=100)
        assert panel.locator(".om-chat").input_value() == "decorators"
        assert panel.locator(".om-assistant pre code").count() == 1  # Markdown drawn, code as code
        assert "3 turns" in panel.locator(".om-head").inner_text()
        # The newest turn is in view inside the panel's own scroll area.
        assert panel.evaluate("el => { const l = el.querySelector('.om-list');"
                              " return l.scrollHeight - l.scrollTop - l.clientHeight < 40; }")
        _screenshot(session)


def _screenshot(session: Session) -> None:
    """docs/panel.png: the history panel, in a clean Lab window."""
    page = session.page
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")
    session.dismiss_news_prompt()
    page.evaluate(f"() => {{ const nb = window.jupyterapp.shell.currentWidget.content;"
                  f" nb.activeCellIndex = {HISTORY_CELL}; nb.mode = 'command';"
                  f" document.activeElement && document.activeElement.blur(); }}")
    panel = session.panel()
    panel.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.mouse.move(5, 5)  # no hover controls in the picture
    page.wait_for_timeout(300)  # let the scroll and layout settle before the shot
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    panel.screenshot(path=str(SCREENSHOT))
    print(f"[browser] screenshot: {SCREENSHOT}")


def test_hostile_reply_stays_inert(session: Session) -> None:
    page = session.page
    with session.diagnostics("hostile"):
        assert page.evaluate("() => document.querySelectorAll('.jp-OutputArea').length") > 0
        before = page.evaluate(JS_HOSTILE_ELEMENTS)
        assert before == [], before
        session.srv.reply = HOSTILE
        try:
            index = session.add_cell_and_run("%%ollama\nSay something nasty", expect="pwned")
        finally:
            session.srv.reply = None
        page.wait_for_timeout(500)  # give any injected handler (img onerror) time to fire

        assert session.dialogs == [], session.dialogs
        assert page.evaluate("() => typeof window.__pwned") == "undefined"
        assert page.evaluate(JS_HOSTILE_ELEMENTS) == []
        assert page.evaluate("() => getComputedStyle(document.body).display") != "none"
        out = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output").first
        shown = out.get_by_text("<script>window.__pwned=1</script>", exact=False)
        shown.first.wait_for(state="visible")
        assert "<iframe src=about:blank></iframe>" in out.inner_text()
        # The live panel shows the hostile reply as text, too.
        panel = session.panel()
        page.wait_for_function("(el) => el.innerText.includes('<script>window.__pwned=1</script>')",
                               arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=100)
        assert "<iframe src=about:blank></iframe>" in panel.locator(".om-assistant .om-bubble").last.inner_text()
        out.scroll_into_view_if_needed()
        page.screenshot(path=str(session.root / "hostile.png"))
        print(f"[browser] hostile reply screenshot: {session.root / 'hostile.png'}")
        assert not session.blocked, f"requests that would leave 127.0.0.1: {session.blocked}"


def test_hostile_markdown_is_inert_in_the_panel(session: Session) -> None:
    """Every payload of the shared corpus as question, reply and thinking, drawn by the open panel."""
    page = session.page
    with session.diagnostics("hostile-panel"):
        fill = (
            "import json\n"
            "from ollama_magic.store import Turn, TurnMeta\n"
            "_store = get_ipython().magics_manager.registry['OllamaMagics'].store\n"
            "_store.switch('hostile', create=True)\n"
            f"for _name, _text in json.loads({json.dumps(json.dumps(PAYLOADS))}).items():\n"
            "    _store.commit(Turn(({'role': 'user', 'content': _text},\n"
            "                        {'role': 'assistant', 'content': _text, 'thinking': _text}),\n"
            "                       TurnMeta(cell_id=_name, model=_text[:40])))\n"
            "print(len(_store.active.turns))")
        index = session.insert_cell(fill)
        session.run_active_cell()
        assert session.output_text(index).strip() == str(len(PAYLOADS))
        panel = session.panel()
        panel.locator(".om-earlier").click()  # draw every turn, not just the last page
        page.wait_for_function("([el, n]) => el.querySelectorAll('.om-turn').length === n",
                               arg=[panel.element_handle(), len(PAYLOADS)], timeout=CELL_TIMEOUT, polling=100)
        for box in panel.locator(".om-think").all():  # open every folded thinking block
            box.evaluate("el => { el.open = true; }")
        page.wait_for_timeout(500)  # give any injected handler (img onerror) time to fire
        flags = sorted(set(re.findall(r"window(?:\.parent)?\.(__\w+)", "".join(PAYLOADS.values()))))
        fired = page.evaluate("(names) => names.filter(n => typeof window[n] !== 'undefined')", flags)
        assert fired == [], fired
        assert page.evaluate(JS_HOSTILE_ELEMENTS) == []
        fragments = panel.evaluate("el => Array.from(el.querySelectorAll('.om-md'), x => x.innerHTML)")
        assert len(fragments) >= 3 * len(PAYLOADS) - 1
        for fragment in fragments:
            assert violations(fragment, allowed_classes=set()) == [], fragment
        assert "<script>window.__script=1</script>" in panel.inner_text()  # shown as text
        assert session.dialogs == [] and not session.blocked, (session.dialogs, session.blocked)
        assert page.evaluate("() => getComputedStyle(document.body).display") != "none"


BIG_TURNS = 1000
FILL_BIG = f"""
from ollama_magic.store import Turn, TurnMeta
_store = get_ipython().magics_manager.registry["OllamaMagics"].store
_store.switch("big", create=True)
for _i in range({BIG_TURNS}):
    _store.commit(Turn(({{"role": "user", "content": f"question {{_i}} " + "q" * 150}},
                        {{"role": "assistant", "content": f"answer {{_i}} **bold** and `code` " + "lorem ipsum " * 60}}),
                       TurnMeta(cell_id=f"big-{{_i}}", model="llama3.2", prompt_eval_count=100 + _i, eval_count=300)))
print("TEXT", sum(len(m["content"]) for t in _store.active.turns for m in t.messages))
"""

# Time from "run the cell" to the panel's turns drawn (and painted once).
JS_TIME_PANEL = """(i) => new Promise((resolve) => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  nb.activeCellIndex = i;
  const t0 = performance.now();
  const check = () => {
    const cell = nb.widgets[i];
    const n = cell && cell.node.querySelectorAll('.om-panel .om-turn').length;
    if (n >= 20) requestAnimationFrame(() => resolve({ms: performance.now() - t0, turns: n}));
    else if (performance.now() - t0 > 60000) resolve({ms: Infinity, turns: n});
    else setTimeout(check, 5);
  };
  window.jupyterapp.commands.execute('notebook:run-cell');
  check();
})"""


def test_a_thousand_turn_panel_is_fast_and_saves_small(session: Session) -> None:
    page = session.page
    with session.diagnostics("big"):
        index = session.insert_cell(FILL_BIG)
        session.run_active_cell()
        text_chars = int(session.output_text(index).split("TEXT")[1].split()[0])
        nb_path = session.lab.notebook_dir / f"{NOTEBOOK}.ipynb"
        session.save()
        before = nb_path.stat().st_size

        history = session.insert_cell("%ollama history")
        drawn = page.evaluate(JS_TIME_PANEL, history)
        session.wait_all_done()
        print(f"[browser] 1,000-turn panel drawn in {drawn['ms']:.0f} ms ({drawn['turns']} turns on its first page)")
        assert drawn["ms"] < 5000, drawn  # target < 300 ms on a quiet machine; the benchmark has the figure
        panel = page.locator(".jp-Notebook .jp-Cell").nth(history).locator(".om-panel")
        assert "1,000 turns" in panel.locator(".om-head").inner_text()
        assert panel.locator(".om-turn").count() == 20  # one page in the page, not 1,000 turns
        assert "question 999" in panel.locator(".om-turn").last.inner_text()
        assert panel.evaluate("el => { const l = el.querySelector('.om-list');"
                              " return l.scrollHeight > l.clientHeight && l.scrollHeight - l.scrollTop - l.clientHeight < 40; }")
        panel.locator(".om-earlier").click()  # earlier turns on demand
        page.wait_for_function("(el) => el.querySelectorAll('.om-turn').length === 40",
                               arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=50)

        session.save()
        saved = nbformat.read(str(nb_path), as_version=4)
        assert saved.metadata.get("widgets"), "widget state was saved (the worst case is measured)"
        grown = nb_path.stat().st_size - before
        print(f"[browser] saved notebook grew by {grown:,} bytes for {text_chars:,} characters of conversation")
        assert grown < text_chars, (grown, text_chars)


        # The controls, as a user reaches them: find, delete + Undo right there, find in all chats.
        find = panel.locator(".om-search")
        find.fill("question 998 ")
        page.wait_for_function("(el) => el.querySelector('.om-find-info').innerText === '1 turn matches'"
                               " && el.querySelectorAll('.om-turn').length === 1", arg=panel.element_handle(),
                               timeout=CELL_TIMEOUT, polling=50)
        find.fill("")
        page.wait_for_function("(el) => el.querySelectorAll('.om-turn').length === 20", arg=panel.element_handle(),
                               timeout=CELL_TIMEOUT, polling=50)
        last = panel.locator(".om-turn").last
        last.hover()
        last.locator(".om-menu summary").click()
        last.get_by_role("button", name="Delete turn").click()
        notice = panel.locator(".om-notice")
        notice.wait_for(state="visible")
        assert "deleted turn 1000" in notice.inner_text()
        assert "999 turns" in panel.locator(".om-head").inner_text()
        notice.get_by_role("button", name="Undo").click()
        page.wait_for_function("(el) => el.querySelector('.om-head').innerText.includes('1,000 turns')"
                               " && el.querySelector('.om-status').innerText.includes('undid deleting turn 1000')",
                               arg=panel.element_handle(), timeout=CELL_TIMEOUT, polling=50)
        panel.locator(".om-find input[type=checkbox]").check()
        find.fill("Second question")
        hit = panel.locator(".om-hit-row").first
        hit.wait_for(state="visible")
        assert hit.inner_text().startswith("default · turn 2")
        hit.click()
        page.wait_for_function("(el) => el.querySelector('.om-chat').value === 'default'"
                               " && !!el.querySelector('.om-turn.om-hit')", arg=panel.element_handle(),
                               timeout=CELL_TIMEOUT, polling=50)
        assert "Second question" in panel.locator(".om-turn.om-hit").inner_text()
