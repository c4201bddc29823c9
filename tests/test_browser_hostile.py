"""The hostile corpus in a real JupyterLab + Chromium, then reloaded, untrusted, and through nbconvert.

One JupyterLab, one notebook, one Run All: every payload of tests/hostile.py
comes back from the test server (its model echoes the question) as a reply,
as thinking, as a tool result, and hostile names of the server's models show
in footers, listings and errors. Then, from the page itself: no `window.__*`
flag of a payload is set, no element of an output has an `on*` or `style`
attribute, no script/iframe/style/form/img/svg/... came from a reply, no link
has a scheme other than http(s)/mailto, nothing of a reply was typeset by
MathJax (a control cell proves MathJax runs on this page), and no request
left 127.0.0.1. The notebook is saved and reloaded (trusted), a modified copy
is opened (untrusted), and the same holds; `jupyter nbconvert --to html` of the
saved file passes the same checks statically. A normal Markdown reply is
rendered too (OLLAMA_MAGIC_REPLY_SCREENSHOT=docs/reply.png saves its picture).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_util import CHROMIUM, CHROMIUM_ARGS, JS_ALL_DONE, JS_KERNEL_STATE, LabServer  # noqa: E402
from hostile import HOSTILE_MODEL_NAMES, PAYLOADS, violations  # noqa: E402

from ollama_magic.testing import OllamaTestServer  # noqa: E402

pytestmark = pytest.mark.browser

SCREENSHOT = os.environ.get("OLLAMA_MAGIC_REPLY_SCREENSHOT")
NOTEBOOK = "hostile"
FLAGS = sorted(set(re.findall(r"window\.(?:parent\.)?(__\w+)", json.dumps([PAYLOADS, HOSTILE_MODEL_NAMES]))))
TOOL_PAYLOADS = ["p1_dollar_backtick", "p4_dollar_link", "close_our_html", "mathjax_href", "remote_image",
                 "js_link", "svg_onload", "terminal_escapes"]
NORMAL = """normal

## A tidy reply

Some **bold** text, *emphasis*, `inline code` and a [link](https://example.org).

1. first step
2. second step

| tool | use |
|:-----|----:|
| `pip` | install |
| `pytest` | test |

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

Math stays as written: $e^{i\\pi} + 1 = 0$."""


def _b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


CELLS = {
    "setup": ("%load_ext ollama_magic\n%ollama model llama3.2\nimport base64, json, shlex\n"
              f"P = json.loads(base64.b64decode('{_b64(PAYLOADS)}').decode())\n"
              f"NAMES = json.loads(base64.b64decode('{_b64(HOSTILE_MODEL_NAMES)}').decode())\n"
              f"TOOLS = {TOOL_PAYLOADS!r}\n"
              "def echo(text: str) -> str:\n    '''Echo.\n\n    Args:\n      text: what to echo\n    '''\n    return text"),
    # The test server's model echoes the question, so each reply carries its payload.
    "replies": "for k, v in P.items():\n    get_ipython().run_cell_magic('ollama', '--once', k + '\\n' + v)",
    "thinking": "for k, v in P.items():\n    get_ipython().run_cell_magic('ollama', '--once -m qwen3 --think', k + '\\n' + v)",
    "tools": "for k in TOOLS:\n    get_ipython().run_cell_magic('ollama', '--once --tools echo', k + '\\n' + P[k])",
    "names": ("%ollama models\nfor n in NAMES:\n    get_ipython().run_cell_magic('ollama', '--once -m ' + shlex.quote(n), 'hi')\n"
              "try:\n    get_ipython().run_cell_magic('ollama', '--once -m nope', 'hi')\n"
              "except Exception as e:\n    print(e)"),
    "control": ("from IPython.display import HTML, display\n"
                "display(HTML('<p class=\"math-control\">control: $x^2 + 1$</p>'))"),
    "normal": f"%%ollama --once\n{NORMAL}",
}

# Run in the page: everything that would mean a payload came alive.
JS_AUDIT = """(flags) => {
  const bad = [];
  for (const f of flags) if (typeof window[f] !== 'undefined') bad.push('flag ' + f);
  const outputs = document.querySelectorAll('.jp-OutputArea-output');
  let ours = 0, typeset = 0, control = 0;
  for (const out of outputs) {
    const isControl = !!out.querySelector('.math-control');
    if (isControl) { control += out.querySelectorAll('mjx-container, .MathJax').length; continue; }
    ours += out.querySelectorAll('.ollama-magic-reply').length;
    typeset += out.querySelectorAll('mjx-container, .MathJax, .MathJax_Preview').length;
    for (const el of out.querySelectorAll('*')) {
      for (const a of el.attributes) {
        if (/^on/i.test(a.name) || a.name === 'style' || a.name === 'srcdoc') bad.push(el.tagName + ' ' + a.name + '=' + a.value.slice(0, 60));
      }
      const tag = el.tagName.toLowerCase();
      if (['script', 'iframe', 'style', 'form', 'object', 'embed', 'img', 'svg', 'math', 'input', 'link',
           'meta', 'base', 'frame', 'video', 'audio', 'textarea', 'button', 'template'].includes(tag))
        bad.push('<' + tag + '> ' + el.outerHTML.slice(0, 80));
      if (tag === 'a' && el.hasAttribute('href')) {
        const p = new URL(el.href, location.href).protocol;
        if (!['http:', 'https:', 'mailto:'].includes(p)) bad.push('link ' + el.getAttribute('href'));
      }
      const pos = getComputedStyle(el).position;
      if (pos === 'fixed' || pos === 'sticky') bad.push('positioned ' + tag);
    }
  }
  if (getComputedStyle(document.body).display === 'none') bad.push('body hidden');
  return {bad, ours, typeset, control, outputs: outputs.length};
}"""


@contextlib.contextmanager
def _page(srv: OllamaTestServer, lab: LabServer) -> Iterator[tuple[Any, list[str], list[str]]]:
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})

            def guard(route: Any) -> None:
                url = route.request.url
                if url.startswith(("data:", "blob:", "about:")) or urlsplit(url).hostname == "127.0.0.1":
                    route.continue_()
                else:
                    blocked.append(url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            yield page, blocked, dialogs
        finally:
            browser.close()


def _open(page: Any, lab: LabServer, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{name}.ipynb?token={lab.token}", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function("(p) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return !!w && !!w.content && w.context.isReady && w.context.path === p; }",
                           arg=f"{name}.ipynb", timeout=90_000)


def _audit(page: Any, where: str, *, min_ours: int) -> dict[str, Any]:
    page.wait_for_function("() => document.querySelectorAll('.ollama-magic-reply').length > 0", timeout=30_000)
    page.wait_for_timeout(1000)  # any injected handler (img onerror, MathJax) has time to act
    result = page.evaluate(JS_AUDIT, FLAGS)
    assert result["bad"] == [], (where, result["bad"][:20])
    assert result["typeset"] == 0, (where, "MathJax typeset a reply")
    assert result["ours"] >= min_ours, (where, result)
    return dict(result)


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.environ.get("OLLAMA_MAGIC_SKIP_BROWSER") == "1":
        pytest.skip("OLLAMA_MAGIC_SKIP_BROWSER=1")
    started = time.monotonic()
    root = tmp_path_factory.mktemp("hostile")
    srv = OllamaTestServer().start()
    for name in HOSTILE_MODEL_NAMES:
        srv.models[name] = {}
    lab = LabServer(root, extra_env={"OLLAMA_HOST": srv.host})
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, id=key) for key, src in CELLS.items()]
    path = lab.notebook_dir / f"{NOTEBOOK}.ipynb"
    nbformat.write(nb, str(path))
    try:
        lab.start()
        yield {"srv": srv, "lab": lab, "path": path, "root": root}
    finally:
        lab.stop()
        srv.stop()
        print(f"\n[browser-hostile] module total {time.monotonic() - started:.1f} s")


MIN_OURS = len(PAYLOADS) * 2 + len(TOOL_PAYLOADS) + len(HOSTILE_MODEL_NAMES) + 1


def test_corpus_is_inert_live_saved_and_untrusted(lab_run: dict[str, Any]) -> None:
    srv, lab, path = lab_run["srv"], lab_run["lab"], lab_run["path"]
    with _page(srv, lab) as (page, blocked, dialogs):
        _open(page, lab, NOTEBOOK)
        page.wait_for_function(f"() => ({JS_KERNEL_STATE})() === 'idle/connected'", timeout=90_000, polling=200)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(JS_ALL_DONE, timeout=180_000, polling=200)
        live = _audit(page, "live", min_ours=MIN_OURS)
        assert live["control"] > 0, "MathJax did not run on this page: the check would prove nothing"
        text = page.evaluate("() => document.querySelector('.jp-Notebook').textContent")
        assert "Installed:" in text  # the error line with the hostile names, printed as text
        assert "window.__p1=1" in text and "\\x1b]52;" in text  # payloads are there, as text
        if SCREENSHOT:
            _reply_screenshot(page, Path(SCREENSHOT))
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)

        # Reopened from disk: trusted (we saved it), then a changed copy, which is not.
        page.reload(wait_until="domcontentloaded")
        _open(page, lab, NOTEBOOK)
        _audit(page, "reloaded", min_ours=MIN_OURS)
        copy = nbformat.read(str(path), as_version=4)
        copy.metadata["copied"] = True  # another hash: JupyterLab does not trust it
        nbformat.write(copy, str(lab.notebook_dir / "untrusted.ipynb"))
        _open(page, lab, "untrusted")
        trusted = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.cells.get(1).trusted")
        assert trusted is False
        _audit(page, "untrusted", min_ours=MIN_OURS)
        assert dialogs == [], dialogs
        assert blocked == [], f"requests that would leave 127.0.0.1: {blocked}"
    saved = nbformat.read(str(path), as_version=4)
    htmls = [o["data"]["text/html"] for c in saved.cells for o in c.get("outputs", [])
             if "text/html" in o.get("data", {}) and "ollama-magic-reply" in o["data"]["text/html"]]
    assert len(htmls) >= MIN_OURS
    assert not any("text/markdown" in o.get("data", {}) for c in saved.cells for o in c.get("outputs", []))


def _reply_screenshot(page: Any, target: Path) -> None:
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")
    page.set_viewport_size({"width": 1000, "height": 1500})  # the whole cell, footer included
    cell = page.locator(".jp-Notebook .jp-Cell").nth(list(CELLS).index("normal"))
    cell.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    target.parent.mkdir(parents=True, exist_ok=True)
    cell.screenshot(path=str(target))
    page.set_viewport_size({"width": 1100, "height": 900})
    print(f"[browser-hostile] screenshot: {target}")


class _Outputs(HTMLParser):
    """Collects the HTML inside nbconvert's output areas (what came from the kernel)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.depth = 0  # >0 inside an output area's div
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if self.depth:
            self.depth += tag not in _VOID
            self.parts.append(self.get_starttag_text() or "")
        elif tag == "div" and "jp-OutputArea-output" in classes:
            self.depth = 1
            self.parts.append("\n<!-- output -->\n")

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= tag not in _VOID
            if self.depth:
                self.parts.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)

    def handle_entityref(self, name: str) -> None:
        if self.depth:
            self.parts.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        if self.depth:
            self.parts.append(f"&#{name};")


_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


def test_nbconvert_html_is_inert(lab_run: dict[str, Any]) -> None:
    path: Path = lab_run["path"]
    saved = nbformat.read(str(path), as_version=4)
    if not any(c.get("outputs") for c in saved.cells):
        pytest.skip("the browser run did not save outputs (it failed first)")
    html = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--stdout", str(path)],
        check=True, capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()).stdout
    grab = _Outputs()
    grab.feed(html)
    outputs = "".join(grab.parts)
    assert outputs.count("ollama-magic-reply") >= MIN_OURS
    ours = re.sub(r'<p class="math-control">.*?</p>', "", outputs, flags=re.S)  # the control cell is ours
    found = violations(ours, allowed_classes={"tex2jax_ignore", "mathjax_ignore", "ollama-magic-reply", "math-control",
                                              "ansi-red-fg", "ansi-green-fg", "ansi-cyan-fg", "ansi-blue-fg",
                                              "ansi-yellow-fg", "ansi-bold"})
    assert found == [], found[:20]
    # MathJax 2 (nbconvert) skips class tex2jax_ignore: every reply sits in such a container.
    for chunk in re.findall(r'<div class="ollama-magic-reply[^"]*"', outputs):
        assert "tex2jax_ignore" in chunk and "mathjax_ignore" in chunk
