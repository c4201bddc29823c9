"""The one inert rendering path for untrusted text: Markdown to sanitised HTML, plain text, terminals.

Everything the model, the server or a loaded file says (a reply, its
thinking, tool calls and results, model and chat names, the footer, the
panel) is shown through these functions, and nothing else turns such text
into markup. Safety holds by construction, not by predicting a renderer:

1. Markdown is rendered here, in Python, by markdown-it-py (CommonMark +
   tables + strikethrough) with raw HTML off, so `<` in the text is `&lt;`.
2. The HTML is then cleaned by nh3 (ammonia) with explicit allow-lists:
   `ALLOWED_TAGS`, `ALLOWED_ATTRIBUTES`, `URL_SCHEMES` (http, https, mailto).
   No `style`, no `id`, no `class` except a code block's `language-NAME`;
   every link gets `rel="noopener noreferrer"`. Images are never emitted:
   `![alt](url)` becomes a link to the image (http/https only) or its alt text.
3. Math is kept away from MathJax, which JupyterLab (and nbconvert's HTML)
   run on every `text/html` output: `$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]` are
   shown as code with their delimiters (MathJax skips `<code>`/`<pre>`), and
   every fragment is published inside `container()`, whose `tex2jax_ignore
   mathjax_ignore` classes make MathJax 2 and 3 skip the whole subtree, so
   `\\href{javascript:…}`, `\\style`, `\\unicode`, `\\class`, `\\require` stay text.
4. Control characters (C0 except newline and tab, DEL, C1, bidi overrides)
   are shown escaped (`\\x1b`), in HTML and in terminals alike.

API (stable; the panel and the views call only these):

- `markdown_html(text) -> str`: a sanitised HTML fragment (not yet wrapped).
- `text_html(text) -> str`: `text` as escaped HTML text (quotes too), controls escaped; no tags.
- `terminal(text) -> str`: `text` with control characters and escape sequences shown escaped.
- `clean_html(fragment) -> str`: any HTML through the same allow-list (for composed markup).
- `details(summary, body_html, *, open=False) -> str`: a collapsed block; `summary` is plain text.
- `container(inner_html, kind="reply") -> str`: the wrapper every published fragment goes in.
- `reply_bundle(content, *, thinking="", tool_lines=(), footer="") -> dict`: the final
  `{"text/html", "text/plain"}` bundle of a reply.
- `live_bundle(text) -> dict`: a streaming frame: `text/plain` only, controls escaped.
- `escaped_stdout()`: a context manager under which everything printed goes through `terminal`.

markdown-it-py and nh3 are imported at the first render (they cost ~40 ms,
more than `%load_ext` may).
"""

from __future__ import annotations

import contextlib
import html
import re
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any, TextIO

__all__ = [
    "ALLOWED_ATTRIBUTES", "ALLOWED_TAGS", "URL_SCHEMES", "clean_html", "container", "details",
    "escaped_stdout", "live_bundle", "markdown_html", "reply_bundle", "terminal", "text_html",
]

ALLOWED_TAGS = frozenset({
    "a", "blockquote", "br", "code", "del", "details", "div", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "li", "ol", "p", "pre", "s", "small", "strong", "summary", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
})
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},  # only `language-NAME`, see _attribute_filter
    "th": {"align"},
    "td": {"align"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
# What MathJax 2 (tex2jax) and MathJax 3 skip: nothing inside is typeset.
_NO_MATH = "tex2jax_ignore mathjax_ignore"
_LANGUAGE = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")
_ALIGN = re.compile(r"text-align:(left|right|center)")
_CLOSE = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}

# C0 except \t and \n, DEL, C1, and the bidi overrides/isolates ("Trojan Source").
_CONTROL_CODES = [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0),
                  *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROL_CODES}
_HTML_TEXT = {**_CONTROLS, ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;",
              ord('"'): "&quot;", ord("'"): "&#x27;"}


def terminal(text: str) -> str:
    """`text` with every control character shown escaped (`\\x1b`, `\\x07`, `\\u202e`); `\\n` and `\\t` pass.

    An escape sequence loses its ESC (or CSI, OSC) byte, so a terminal shows
    it as text: no clipboard writes (OSC 52), title changes, hidden text or
    overwritten lines. `\\r\\n` is a newline.
    """
    return text.replace("\r\n", "\n").translate(_CONTROLS)


class _Escaping:
    """A text stream that shows control characters escaped, then writes to `target`."""

    def __init__(self, target: TextIO) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target.write(terminal(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, ...
        return getattr(self._target, name)


@contextlib.contextmanager
def escaped_stdout() -> Iterator[None]:
    """Everything printed inside (server model names, chat names from files, transcripts) is inert."""
    if isinstance(sys.stdout, _Escaping):
        yield
        return
    with contextlib.redirect_stdout(_Escaping(sys.stdout)):
        yield


def text_html(text: str) -> str:
    """`text` as HTML text: `& < > " '` escaped, controls escaped as in `terminal`; no tags added."""
    return text.replace("\r\n", "\n").translate(_HTML_TEXT)


def container(inner_html: str, kind: str = "reply") -> str:
    """The wrapper of every fragment we publish: MathJax skips it; `kind` is one of our own names."""
    if not kind.isidentifier():
        raise ValueError(f"container kind must be a plain name, not {kind!r}")
    return f'<div class="ollama-magic-{kind} {_NO_MATH}">{inner_html}</div>'


def details(summary: str, body_html: str, *, open: bool = False) -> str:
    """A collapsed block we build ourselves around already-sanitised `body_html`."""
    attr = " open" if open else ""
    return f"<details{attr}><summary>{text_html(summary)}</summary>{body_html}</details>"


def markdown_html(text: str) -> str:
    """Untrusted Markdown as a sanitised HTML fragment (wrap it with `container` to publish it)."""
    if not text:
        return ""
    return clean_html(_markdown().render(text.replace("\r\n", "\n").translate(_CONTROLS)))


def clean_html(fragment: str) -> str:
    """Any HTML through the allow-list: what is not listed is dropped (script and style with their content)."""
    import nh3

    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_attribute_filter,
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if attr == "class":
        return value if tag == "code" and _LANGUAGE.fullmatch(value) else None
    if attr == "align":
        return value if value in ("left", "right", "center") else None
    if attr == "start":
        return value if value.isdigit() and len(value) <= 9 else None
    return value


def reply_bundle(content: str, *, thinking: str = "", tool_lines: Iterable[str] = (),
                 footer: str = "", notice: str = "") -> dict[str, str]:
    """The final display of a reply: sanitised `text/html` with `text/plain` beside it.

    Thinking and tool calls are collapsed; the footer (model name from the
    server included) is plain text. Nothing here is `text/markdown`: JupyterLab
    would run its own math pre-pass and marked over it.
    """
    tools = list(tool_lines)
    parts: list[str] = []
    if thinking:
        parts.append(details("Thinking", markdown_html(thinking)))
    parts.append(markdown_html(content))
    if tools:
        label = f"{len(tools)} tool call{'s' if len(tools) != 1 else ''}"
        parts.append(details(label, "<pre><code>" + text_html("\n".join(tools)) + "</code></pre>"))
    plain = [f"[thinking] {terminal(thinking)}\n[/thinking]"] if thinking else []
    plain.append(terminal(content))
    plain += [f"[tool] {terminal(line)}" for line in tools]
    if footer:
        parts.append(f"<hr><small>{text_html(footer)}</small>")
        plain.append(terminal(footer))
    if notice:
        parts.append(f"<p><small>{text_html(notice)}</small></p>")
        plain.append(terminal(notice))
    return {"text/html": container("".join(parts)), "text/plain": "\n\n".join(plain)}


def live_bundle(text: str) -> dict[str, str]:
    """A streaming frame: plain text only (no HTML, no Markdown, no math), controls escaped."""
    return {"text/plain": terminal(text)}


# -- the Markdown renderer ----------------------------------------------------
@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    from mdit_py_plugins.texmath import texmath_plugin

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    # Math is recognised only to keep its source intact (no emphasis or
    # escapes eaten inside it) and shown as code, never typeset.
    md.use(dollarmath_plugin, allow_space=True, allow_digits=False, double_inline=True)
    md.use(texmath_plugin, delimiters="brackets")
    md.add_render_rule("math_inline", _math_inline)
    md.add_render_rule("math_inline_double", _math_inline)
    for rule in ("math_block", "math_block_label", "math_block_eqno"):
        md.add_render_rule(rule, _math_block)
    md.add_render_rule("image", _image)
    md.add_render_rule("th_open", _cell_open)
    md.add_render_rule("td_open", _cell_open)
    return md


def _math_source(token: Any) -> str:
    opener = token.markup or "$"
    return f"{opener}{token.content}{_CLOSE.get(opener, opener)}"


def _math_inline(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    return f"<code>{text_html(_math_source(tokens[idx]))}</code>"


def _math_block(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    source = _math_source(tokens[idx]).strip("\n")
    return f"<pre><code>{text_html(source)}</code></pre>\n"


def _image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    # Shown, an image would be fetched: a URL chosen by the model could carry
    # the chat away. It becomes a link to the image (the sanitiser keeps only
    # http/https/mailto targets), labelled with its alt text.
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "image"
    src = str(token.attrGet("src") or "")
    label = f"[image: {html.escape(alt)}]"
    if not src:
        return label
    return f'<a href="{html.escape(src, quote=True)}">{label}</a>'


def _cell_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    # markdown-it aligns table cells with `style`; styles are not allowed, `align` is.
    token = tokens[idx]
    style = str(token.attrGet("style") or "")
    m = _ALIGN.fullmatch(style)
    tag = token.tag
    return f'<{tag} align="{m.group(1)}">' if m else f"<{tag}>"
