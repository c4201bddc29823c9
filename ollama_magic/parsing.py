"""Reading what the user typed: the option line and KEY=VALUE options.

Kept apart from the magics so it can be tested (and fuzzed) on its own.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import OllamaMagicError

__all__ = ["NotFinite", "first_code_block", "json_value", "loads_finite", "parse_options", "split_args"]

_CODE_BLOCK = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n(.*?)^ {0,3}\1[ \t]*$", re.DOTALL | re.MULTILINE)


class NotFinite(ValueError):
    """NaN or Infinity in JSON: Python parses them, no JSON encoder (nor Ollama) takes them."""


def _no_constant(name: str) -> Any:
    raise NotFinite(f"{name}, which is not a number Ollama accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 overflows to inf without calling parse_constant
        raise NotFinite(f"{text}, which is not a number Ollama accepts")
    return value


def loads_finite(text: str | bytes) -> Any:
    """`json.loads` that raises `NotFinite` for NaN, Infinity and numbers that overflow to them."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def json_value(key: str, raw: str) -> Any:
    """`-o KEY=VALUE`: JSON when it parses; JSON-looking text that does not is an error.

    NaN and Infinity are refused: they parse, but no JSON encoder sends them.
    """
    try:
        return loads_finite(raw)
    except NotFinite as exc:
        raise OllamaMagicError(f"option {key}: {raw!r} holds {exc}; use a finite number") from None
    except ValueError:
        if raw[:1] in "[{\"":
            raise OllamaMagicError(
                f"option {key}: {raw!r} looks like JSON but does not parse; fix it, "
                f"or quote the whole option: -o '{key}=...'"
            ) from None
        return raw


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings into an options dict."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise OllamaMagicError(f"options are KEY=VALUE (like num_ctx=8192), not {pair!r}")
        out[key] = json_value(key, raw.strip())
    return out


_TOKEN = re.compile(r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[^\s"'])+""")
_QUOTED = re.compile(r"""^((?:-[-\w]*|[A-Za-z_]\w*)=)?("(?:[^"\\]|\\.)*"|'[^']*')$""")


def split_args(text: str) -> list[str]:
    """Split like a shell, but keep quotes that are part of a value.

    `--system "Be terse."` loses its quotes; `-o stop=["x"]` keeps them, so
    JSON values can be typed as they are.
    """
    tokens = _TOKEN.findall(text)
    if _TOKEN.sub("", text).strip():  # only an unclosed quote is left over
        raise OllamaMagicError("cannot parse the line: a quote is not closed")
    out = []
    for tok in tokens:
        m = _QUOTED.match(tok)
        if m:
            inner = m.group(2)[1:-1]
            if m.group(2)[0] == '"':
                # As in a POSIX shell, only \" and \\ are escapes: C:\Users stays.
                inner = re.sub(r'\\(["\\])', r"\1", inner)
            tok = (m.group(1) or "") + inner
        out.append(tok)
    return out


def first_code_block(text: str) -> str | None:
    """The body of the first fenced code block in `text`, if any."""
    m = _CODE_BLOCK.search(text)
    return m.group(2).rstrip("\n") if m else None
