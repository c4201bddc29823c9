"""Which notebook names a cell option may use: --format schemas, --tools functions, --out targets.

Suggestions ("did you mean") only ever name what the option could take, and
--out never overwrites a name IPython itself relies on.
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Mapping
from typing import Any

from .errors import OllamaMagicError, did_you_mean

__all__ = ["check_out_name", "format_hint", "is_schema", "is_tool", "tool_error"]

# IPython's own history variables: _, __, ___, _i, _ii, _iii, _5, _i5, _ih, _oh, _dh
_IPYTHON_VAR = re.compile(r"^(_{1,3}|_i{1,3}|_i?\d+|_[iod]h)$")


def is_schema(value: Any) -> bool:
    """A JSON schema --format can send: a dict, or a pydantic model class."""
    return isinstance(value, dict) or (isinstance(value, type) and callable(getattr(value, "model_json_schema", None)))


def is_tool(value: Any) -> bool:
    """A function the ollama client can describe to the model (it needs a name, a signature, a docstring)."""
    return inspect.isfunction(value) or inspect.ismethod(value)


def _public(ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in ns.items() if not k.startswith("_") and k not in hidden]


def format_hint(name: str, ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> str:
    return did_you_mean(name, [k for k, v in _public(ns, hidden) if is_schema(v)])


def tool_error(name: str, value: Any, ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> OllamaMagicError:
    """Why `name` cannot be a tool, with a near miss that could."""
    if callable(value) and not isinstance(value, type):
        kind = "a functools.partial" if type(value).__name__ == "partial" else f"a {type(value).__name__} object"
        return OllamaMagicError(
            f"--tools: {name!r} is {kind}, not a function; wrap it in a def with typed parameters "
            "and a docstring (the model is shown those)"
        )
    hint = did_you_mean(name, [k for k, v in _public(ns, hidden) if is_tool(v) and k != name])
    what = ("a class" if isinstance(value, type) else "not defined" if name not in ns
            else f"a value of type {type(value).__name__}")
    return OllamaMagicError(f"--tools: {name!r} is not a function in this notebook (it is {what}){hint}")


def check_out_name(name: str, hidden: Mapping[str, Any]) -> None:
    """--out VAR must be a plain variable name that IPython does not need for itself."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise OllamaMagicError(f"--out needs a variable name, not {name!r}")
    if name in hidden or _IPYTHON_VAR.match(name) or (name.startswith("__") and name.endswith("__")):
        raise OllamaMagicError(f"--out {name}: IPython uses that name itself; pick another, like --out reply")
