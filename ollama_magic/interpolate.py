"""Safe ``{name}`` interpolation of user-namespace variables into prompts.

Prompts routinely contain braces that are *not* meant for us (JSON, code,
f-strings, sets), so the rules are deliberately narrow:

* ``{ref}`` is replaced by the value as a model reads it (``reprs.render``:
  a DataFrame as shape, dtypes and a Markdown table, ``_repr_llm_``, ...,
  else ``str(value)``, bounded) when ``ref`` is a reference chain that
  resolves in the namespace.  A reference chain is a variable name
  followed by any number of ``.attr`` and ``[key]`` steps, e.g.
  ``{df.columns[0]}``, ``{In[3]}``, ``{Out[2]}``, ``{_}``, ``{d["k"]}``.
* ``{ref!s}`` and ``{ref!r}`` force ``str(value)`` / ``repr(value)``.
* ``{{ref}}`` (double braces around a syntactically valid reference) gives
  the literal text ``{ref}``, whether or not ``ref`` resolves.
* Everything else is left exactly as written: other braces, unknown names,
  failed lookups, values whose ``str()`` fails, expressions, calls,
  whitespace inside the braces, format specs and other conversions.

Nothing is ever evaluated: the only operations performed on user objects are
``namespace[name]``, ``getattr``, ``obj[key]`` and the value's own rendering
(``str()``, ``repr()``, ``_repr_llm_``, ``_repr_markdown_``, a DataFrame's
head and tail), and any ``Exception`` they raise just leaves that reference
as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from .reprs import DEFAULT_MAX_CHARS, render as _render_value

__all__ = ["Interpolated", "interpolate", "interpolate_refs", "lookup", "references"]

# Variable names may start with "_" (IPython's `_`, `_3`, private helpers);
# attribute names may not, which keeps `__class__`-style escapes out.
_NAME: Final = r"[^\W\d]\w*"
_ATTR: Final = r"[^\W\d_]\w*"
# Integer literals as Python writes them (no leading zeros), optionally
# negative; string literals without escapes or newlines.
_INT: Final = r"-?(?:0|[1-9][0-9]*)"
_STR: Final = r"'[^'\\\n]*'|\"[^\"\\\n]*\""
_CHAIN: Final = rf"{_NAME}(?:\.{_ATTR}|\[(?:{_INT}|{_STR})\])*"

# Each chain step begins with a distinct character ("." or "[") and names
# stop at the first non-word character, so the chain can only match one way:
# a failed attempt backtracks linearly, never exponentially.  The escaped
# form is tried first so that `{{x}}` is not read as `{` + `{x}` + `}`.
_CONV: Final = r"(?:![rs])?"
_PATTERN: Final = re.compile(
    rf"\{{\{{(?P<escaped>{_CHAIN}{_CONV})\}}\}}|\{{(?P<ref>{_CHAIN}{_CONV})\}}"
)

Renderer = Callable[[Any, str | None], str]


class _Item(NamedTuple):
    """An index step ``[key]``; a plain ``str`` step is an attribute name."""

    key: int | str


_Step = str | _Item


def _parse(ref: str) -> tuple[str, list[_Step]]:
    """Split an already-validated reference chain into name and steps."""
    end = len(ref)
    pos = 0
    while pos < end and ref[pos] not in ".[":
        pos += 1
    name = ref[:pos]
    steps: list[_Step] = []
    while pos < end:
        if ref[pos] == ".":
            stop = pos + 1
            while stop < end and ref[stop] not in ".[":
                stop += 1
            steps.append(ref[pos + 1 : stop])
            pos = stop
        elif ref[pos + 1] in "'\"":
            # String keys may contain "." "[" or "]", so find the matching
            # quote rather than the next bracket.
            close = ref.index(ref[pos + 1], pos + 2)
            steps.append(_Item(ref[pos + 2 : close]))
            pos = close + 2  # past the quote and the "]"
        else:
            close = ref.index("]", pos)
            # int() may raise ValueError past sys.get_int_max_str_digits();
            # the caller treats that like any other failed lookup.
            steps.append(_Item(int(ref[pos + 1 : close])))
            pos = close + 1
    return name, steps


def lookup(ref: str, namespace: Mapping[str, Any]) -> Any:
    """The value `ref` (a chain without conversion) names; raises if anything fails."""
    name, steps = _parse(ref)
    value = namespace[name]
    for step in steps:
        value = value[step.key] if isinstance(step, _Item) else getattr(value, step)
    return value


def split_conversion(ref: str) -> tuple[str, str | None]:
    """`"df!r"` -> `("df", "r")`; `"df"` -> `("df", None)`."""
    if len(ref) > 2 and ref[-2] == "!" and ref[-1] in "rs":
        return ref[:-2], ref[-1]
    return ref, None


def render_ref(ref: str, namespace: Mapping[str, Any], render: Renderer) -> str | None:
    """The rendering of `ref` (conversion included), or None if anything fails."""
    try:
        chain, conversion = split_conversion(ref)
        text = render(lookup(chain, namespace), conversion)
        return str.__str__(text) if isinstance(text, str) else None
    except Exception:  # user objects may raise anything; never propagate
        return None


def default_renderer(limit: int = DEFAULT_MAX_CHARS) -> Renderer:
    """`reprs.render` bounded by `limit` characters."""
    return lambda value, conversion: _render_value(value, conversion, limit)


_DEFAULT: Final = default_renderer()


class Interpolated(NamedTuple):
    """The interpolated text and, per reference used, the text it became."""

    text: str
    used: dict[str, str]


def interpolate_refs(text: str, namespace: Mapping[str, Any], render: Renderer = _DEFAULT) -> Interpolated:
    """Like :func:`interpolate`, and also which references were replaced by what."""
    used: dict[str, str] = {}
    if "{" not in text:
        return Interpolated(text, used)  # fast path: the common prompt has no braces at all

    def replace(match: re.Match[str]) -> str:
        escaped = match.group("escaped")
        if escaped is not None:
            return "{" + escaped + "}"
        ref = match.group("ref")
        rendered = used.get(ref)
        if rendered is None:
            rendered = render_ref(ref, namespace, render)
            if rendered is None:
                return match.group(0)
            used[ref] = rendered
        return rendered

    # re.sub is a single left-to-right pass, so braces inside substituted
    # values are never interpolated again.
    return Interpolated(_PATTERN.sub(replace, text), used)


def interpolate(text: str, namespace: Mapping[str, Any], render: Renderer = _DEFAULT) -> str:
    """Replace ``{ref}`` references in *text* with values from *namespace*.

    See the module docstring for the exact rules.  Never raises for any
    *text* and any *namespace*; unresolvable references are left as written.
    """
    return interpolate_refs(text, namespace, render).text


def references(text: str) -> list[str]:
    """Return the references in *text* that :func:`interpolate` would try.

    These are the syntactically valid ``{ref}`` occurrences, in order and
    with repetitions; escaped ``{{ref}}`` forms are not included.  Whether
    each one resolves depends on the namespace.
    """
    if "{" not in text:
        return []
    return [m.group("ref") for m in _PATTERN.finditer(text) if m.group("ref") is not None]
