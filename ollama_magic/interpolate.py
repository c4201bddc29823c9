"""Safe ``{name}`` interpolation of user-namespace variables into prompts.

Prompts routinely contain braces that are *not* meant for us (JSON, code,
f-strings, sets), so the rules are deliberately narrow:

* ``{ref}`` is replaced by ``str(value)`` when ``ref`` is a reference chain
  that resolves in the namespace.  A reference chain is a variable name
  followed by any number of ``.attr`` and ``[key]`` steps, e.g.
  ``{df.columns[0]}``, ``{In[3]}``, ``{Out[2]}``, ``{_}``, ``{d["k"]}``.
* ``{{ref}}`` (double braces around a syntactically valid reference) gives
  the literal text ``{ref}``, whether or not ``ref`` resolves.
* Everything else is left exactly as written: other braces, unknown names,
  failed lookups, values whose ``str()`` fails, expressions, calls,
  whitespace inside the braces, format specs and conversions.

Nothing is ever evaluated: the only operations performed on user objects are
``namespace[name]``, ``getattr``, ``obj[key]`` and ``str()``, and any
``Exception`` they raise just leaves that reference as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, Union

__all__ = ["interpolate", "references"]

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
_PATTERN: Final = re.compile(
    rf"\{{\{{(?P<escaped>{_CHAIN})\}}\}}|\{{(?P<ref>{_CHAIN})\}}"
)


class _Item(NamedTuple):
    """An index step ``[key]``; a plain ``str`` step is an attribute name."""

    key: Union[int, str]


_Step = Union[str, _Item]


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


def _render(ref: str, namespace: Mapping[str, Any]) -> str | None:
    """Return ``str()`` of the referenced value, or None if anything fails."""
    try:
        name, steps = _parse(ref)
        value = namespace[name]
        for step in steps:
            value = value[step.key] if isinstance(step, _Item) else getattr(value, step)
        # A __str__ may return a str subclass with hostile methods; copy it
        # into a plain str so nothing user-defined runs after this point.
        return str.__str__(str(value))
    except Exception:  # user objects may raise anything; never propagate
        return None


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{ref}`` references in *text* with values from *namespace*.

    See the module docstring for the exact rules.  Never raises for any
    *text* and any *namespace*; unresolvable references are left as written.
    """
    if "{" not in text:
        return text  # fast path: the common prompt has no braces at all

    def replace(match: re.Match[str]) -> str:
        escaped = match.group("escaped")
        if escaped is not None:
            return "{" + escaped + "}"
        rendered = _render(match.group("ref"), namespace)
        return match.group(0) if rendered is None else rendered

    # re.sub is a single left-to-right pass, so braces inside substituted
    # values are never interpolated again.
    return _PATTERN.sub(replace, text)


def references(text: str) -> list[str]:
    """Return the references in *text* that :func:`interpolate` would try.

    These are the syntactically valid ``{ref}`` occurrences, in order and
    with repetitions; escaped ``{{ref}}`` forms are not included.  Whether
    each one resolves depends on the namespace.
    """
    if "{" not in text:
        return []
    return [m.group("ref") for m in _PATTERN.finditer(text) if m.group("ref") is not None]
