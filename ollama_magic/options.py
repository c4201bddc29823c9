"""Ollama's request options: their names and types, and checking a dict against them.

Source: ollama/ollama `api/types.go` — the `Options` struct (predict options)
with its embedded `Runner` struct (load-time options), and
`(*Options).FromMap`, which is what the server runs on a request's
`options`. FromMap ignores an unknown name (one `slog.Warn` in the server
log, nothing in the answer), and refuses a value of the wrong type with
HTTP 500 `option "x" must be of type integer|float32|boolean|string|array`.
So a typo like `temprature` silently does nothing: we check before sending.

Only the standard library: the test server (`testing.py`) applies the same
table, as FromMap does, to refuse what real Ollama refuses.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["OPTION_TYPES", "check_options", "keep_alive_value", "option_error"]

# name -> Go kind, transcribed from api/types.go (Runner first, then Options).
OPTION_TYPES: dict[str, str] = {
    # Runner: set when the model is loaded (a change reloads it)
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",  # *int
    "use_mmap": "boolean",  # *bool
    "num_thread": "integer",
    "draft_num_predict": "integer",
    # Options: per request
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",  # []string
}

_EXAMPLES = {"integer": "8192", "float32": "0.7", "boolean": "true", "array": '["\\n\\n"]'}


def option_error(name: str, value: Any) -> str | None:
    """FromMap's complaint about one value, word for word, or None if it is accepted.

    JSON numbers all decode to float64 in Go, so an integer option takes 2.0
    (and truncates 2.5) and a float option takes 1; a JSON `true` is not a
    number. `null` is skipped by FromMap.
    """
    kind = OPTION_TYPES.get(name)
    if kind is None or value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("integer", "float32") and not number:
        return f'option "{name}" must be of type {kind}'
    if kind == "boolean" and not isinstance(value, bool):
        return f'option "{name}" must be of type boolean'
    if kind == "array":
        if not isinstance(value, list):
            return f'option "{name}" must be of type array'
        if not all(isinstance(item, str) for item in value):
            return f'option "{name}" must be of an array of strings'
    return None


def check_options(options: Mapping[str, Any], where: str = "option") -> str | None:
    """One line saying what is wrong with `options` (first problem), or None.

    An unknown name gets "did you mean"; a wrong type names the type wanted
    and an example value.
    """
    for name, value in options.items():
        if name not in OPTION_TYPES:
            close = difflib.get_close_matches(name, list(OPTION_TYPES), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return (f"{where} {name!r} is not an Ollama option ({hint}Ollama ignores unknown "
                    f"options silently). Options: {', '.join(sorted(OPTION_TYPES))}.")
        if option_error(name, value) is not None:
            kind = OPTION_TYPES[name]
            want = "an array of strings" if kind == "array" else {"float32": "a number"}.get(kind, f"an {kind}" if kind == "integer" else f"a {kind}")
            return (f"{where} {name} must be {want} (Ollama answers HTTP 500 otherwise), "
                    f"not {value!r}; for example {name}={_EXAMPLES.get(kind, '...')}.")
    return None


_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+|[-+]?0")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def keep_alive_value(value: Any, where: str, error: type[Exception]) -> float | str | None:
    """A keep_alive as Ollama takes it (api/types.go Duration.UnmarshalJSON).

    A number is seconds (negative: until the server stops, 0: unload after
    the request); a string is a Go duration ("30m", "1h30m"). Ollama refuses
    a bare number in a string ("-1" is HTTP 400), so that becomes a number.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise error(f"{where} takes seconds or a duration like '30m', not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise error(f"{where} takes a finite number of seconds (negative: keep loaded), not {value!r}")
        return float(value)
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    if _GO_DURATION.fullmatch(text):
        return text
    raise error(f"{where} takes seconds (-1 = keep loaded, 0 = unload at once) or a duration like "
                f"'30m' or '2h', not {value!r}")
