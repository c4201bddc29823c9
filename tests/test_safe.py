"""safe.py, the one inert rendering path: the hostile corpus through it, without a browser."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_magic import safe
from hostile import ESCAPES, HOSTILE_MODEL_NAMES, PAYLOADS, violations

_WRAPPED = re.compile(r'^<div class="ollama-magic-reply tex2jax_ignore mathjax_ignore">.*</div>$', re.S)


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_payload_renders_inert(name):
    text = PAYLOADS[name]
    fragment = safe.markdown_html(text)
    assert violations(fragment) == [], fragment
    bundle = safe.reply_bundle(text, thinking=text, tool_lines=[f"echo(text={text!r}) → {text}"],
                               footer=f"{text} · 3 tokens")
    assert set(bundle) == {"text/html", "text/plain"}  # never text/markdown
    assert violations(bundle["text/html"]) == [], bundle["text/html"]
    assert _WRAPPED.match(bundle["text/html"])  # MathJax skips the whole output
    for esc in ESCAPES:
        assert esc not in bundle["text/html"] and esc not in bundle["text/plain"]


def test_corpus_is_large_enough():
    assert len(PAYLOADS) >= 25


@pytest.mark.parametrize("name", HOSTILE_MODEL_NAMES)
def test_model_name_is_text(name):
    out = safe.reply_bundle("hi", footer=f"{name} · 1 tokens")["text/html"]
    assert violations(out) == [] and "<a " not in out


def test_math_is_shown_as_code_with_its_source():
    out = safe.markdown_html("Euler: $e^{i\\pi} + 1 = 0$, and \\(a_1 * b_1\\).\n\n$$\n\\int_0^1 x\\,dx\n$$")
    assert "<code>$e^{i\\pi} + 1 = 0$</code>" in out
    assert "<code>\\(a_1 * b_1\\)</code>" in out  # no emphasis eaten out of the formula
    assert "<pre><code>$$\n\\int_0^1 x\\,dx\n$$</code></pre>" in out


def test_ordinary_markdown_keeps_its_shape():
    text = ("# Title\n\nSome **bold**, *em*, ~~gone~~ and `a < b && c`.\n\n- one\n- two\n\n3. three\n4. four\n\n"
            "| left | right |\n|:-----|------:|\n| 1 | 2 |\n\n```python\nif x < 3:\n    print('&')\n```\n\n"
            "[a link](https://example.org/x?a=1&b=2 \"title\")\n\n> quoted")
    out = safe.markdown_html(text)
    for piece in ["<h1>Title</h1>", "<strong>bold</strong>", "<em>em</em>", "<s>gone</s>",
                  "<code>a &lt; b &amp;&amp; c</code>", "<li>one</li>", '<ol start="3">', '<th align="left">left</th>',
                  '<td align="right">2</td>', '<code class="language-python">if x &lt; 3:\n    print(\'&amp;\')',
                  '<a href="https://example.org/x?a=1&amp;b=2" title="title" rel="noopener noreferrer">a link</a>',
                  "<blockquote>"]:
        assert piece in out, (piece, out)


def test_images_become_links_and_unsafe_targets_are_dropped():
    out = safe.markdown_html("![cat](https://example.org/cat.png) ![x](javascript:alert(1)) [y](data:text/html,hi)")
    assert '<a href="https://example.org/cat.png" rel="noopener noreferrer">[image: cat]</a>' in out
    assert "href=\"javascript" not in out and "href=\"data" not in out  # shown as text
    assert violations(out) == []


def test_terminal_escapes_controls_keeps_newline_and_tab():
    assert safe.terminal("a\tb\nc") == "a\tb\nc"
    assert safe.terminal("x\r\ny") == "x\ny"
    assert safe.terminal("\x1b]52;c;aGk=\x07") == "\\x1b]52;c;aGk=\\x07"
    assert safe.terminal("\r\x1b[2K\x1b[8m\x9b\u202e") == "\\x0d\\x1b[2K\\x1b[8m\\x9b\\u202e"


def test_text_html_escapes_everything():
    assert safe.text_html("<a href=\"x\">'&'</a>\x1b") == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;\\x1b"


def test_clean_html_is_the_allow_list():
    dirty = ('<div class="jp-Notebook" style="position:fixed" onclick="x()">a<script>b</script>'
             '<a href="javascript:x">c</a><a href="https://ok.example">d</a><img src="http://x/y"></div>')
    out = safe.clean_html(dirty)
    assert out == '<div>a<a rel="noopener noreferrer">c</a><a href="https://ok.example" rel="noopener noreferrer">d</a></div>'


def test_container_kind_is_ours():
    assert safe.container("x", "panel").startswith('<div class="ollama-magic-panel tex2jax_ignore mathjax_ignore">')
    with pytest.raises(ValueError):
        safe.container("x", 'a" onclick="y')


_PIECES = ["```", "~~~", "`", "$", "$$", "\\(", "\\)", "\\[", "<", ">", "&", "&#x3c;", '"', "'", "[a]", "(", ")",
           "](javascript:x)", "![i](http://e.x/i)", "<img src=x onerror=y>", "<script>", "</details>", "\n", "\n\n",
           "    ", "- ", "1. ", "> ", "|", "|---|", "\\", "*", "_", "~", "\x1b", "<!--", "-->", "javascript:",
           "\\href{javascript:x}{y}", "<svg onload=x>"]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_PIECES), max_size=24))
def test_fuzzed_markdown_is_inert(pieces):
    text = "".join(pieces)
    out = safe.reply_bundle(text, thinking=text, footer=text)["text/html"]
    assert violations(out) == [], (text, out)
    assert "\x1b" not in out
