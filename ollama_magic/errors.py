"""Friendly errors: one line that says what happened and what to do.

Every failure a user can cause or meet (server down, unknown model, a server
error mid-reply, bad input) ends up as an `OllamaMagicError`. It subclasses
IPython's `UsageError`, which IPython shows as one line without a traceback.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterable
from typing import Any

from IPython.core.error import UsageError

__all__ = ["Interrupted", "OllamaMagicError", "did_you_mean", "host_secrets", "is_http_status", "redact_host", "scrub", "translate"]


class _Unloaded:
    """Stands in for a module that is not imported: no exception is one of its classes."""

    def __getattr__(self, name: str) -> type:
        return _Never


class _Never(Exception):
    """A class no raised exception is an instance of."""


def _loaded(name: str) -> Any:
    # The isinstance checks below must not import `ollama` or `httpx` (300 ms at
    # %load_ext): an exception of a module that was never imported cannot exist.
    return sys.modules.get(name) or _Unloaded()


def is_http_status(exc: BaseException, status: int) -> bool:
    """Whether `exc` is the client's `ResponseError` with this HTTP status."""
    return isinstance(exc, _loaded("ollama").ResponseError) and exc.status_code == status


class OllamaMagicError(UsageError):
    """A one-line error for the user (no traceback)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / the stop button during a turn: what was kept, in one line.

    A KeyboardInterrupt, so Jupyter ends the cell and "Run All" stops; IPython
    shows `_render_traceback_` instead of the ~130 lines through httpx.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"Interrupted: {self}"]


Interrupted.__name__ = "KeyboardInterrupt"  # the `ename` Jupyter reports, as for any Ctrl-C


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# The scheme (`http://`), a bare `//`, or nothing; then everything up to the
# LAST `@` is user info. A password may hold `/`, `@`, `:` or `%40`, which
# no URL parser agrees on; hiding up to the last `@` hides it whatever it holds
# (a path with an `@` in it is hidden too: over-hiding is the safe side).
_AUTHORITY = re.compile(r"(\s*(?:[A-Za-z][A-Za-z0-9+.-]*://|//)?)(.*)", re.S)


def redact_host(host: str) -> str:
    """The host as it may be shown: user and password in the URL (`http://user:pw@host`) become `***`."""
    m = _AUTHORITY.fullmatch(host)
    if m is None:  # pragma: no cover - the pattern matches every string
        return host
    prefix, rest = m.groups()
    at = rest.rfind("@")
    return host if at < 0 else f"{prefix}***{rest[at:]}"


def host_secrets(host: str) -> list[str]:
    """The password (and user info) in a host URL, as written and %-decoded: what to scrub from text."""
    from urllib.parse import unquote

    m = _AUTHORITY.fullmatch(host.strip())
    if m is None:  # pragma: no cover
        return []
    rest = m.group(2)
    at = rest.rfind("@")
    if at < 0:
        return []
    userinfo = rest[:at]
    found = {userinfo}
    if ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    found |= {unquote(x) for x in found}
    return [x for x in found if len(x) >= 3]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `***` (longest first, so no part of one survives)."""
    for secret in sorted({x for x in secrets if x and len(x) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def translate(exc: BaseException, *, host: str, host_source: str, model: str,
              installed: list[str] | None = None, timeout: float | None = None,
              started: bool = False) -> OllamaMagicError | None:
    """The friendly error for a failure of a request to Ollama, or None if unknown.

    `started` says whether part of the reply had arrived (the error came
    mid-stream); `installed` is the server's model list, if it could be read.
    """
    lost = " Nothing was stored; run the cell again." if started else " Nothing was stored."
    host = redact_host(host)
    httpx, ollama = _loaded("httpx"), _loaded("ollama")
    if isinstance(exc, (ConnectionError, httpx.ConnectError)):
        return OllamaMagicError(
            f"Cannot reach Ollama at {host} ({host_source}). Start it with `ollama serve`, "
            "or point OLLAMA_HOST (or %config OllamaMagics.host = '...') at a running server."
        )
    if isinstance(exc, ollama.ResponseError):
        text = _one_line(exc.error)
        if exc.status_code in (401, 403):
            signin = _signin_url(exc)
            return OllamaMagicError(
                f"Ollama at {host} refused the request (HTTP {exc.status_code}{': ' + text if text else ''}). "
                "For Ollama's cloud set OLLAMA_API_KEY; for a proxy set %config OllamaMagics.headers = {...}"
                + (f"; or sign in at {signin}" if signin else "") + f".{lost}"
            )
        if exc.status_code == 404 and not _about_a_model(text):
            # A wrong path prefix or a proxy's "404 page not found", not Ollama's "model 'x' not found".
            return OllamaMagicError(
                f"Ollama at {host} answered HTTP 404 ({text or 'no body'}): that address does not serve the "
                f"Ollama API. Check OLLAMA_HOST ({host_source}): it takes the server's root, like "
                f"http://127.0.0.1:11434, without /api or /v1.{lost}"
            )
        if exc.status_code == 404:
            names = ", ".join(installed) if installed else "none"
            hint = did_you_mean(model, installed or [])
            return OllamaMagicError(
                f"Model {model!r} is not installed on {host}{hint}. Installed: {names}. "
                f"Run `%ollama pull {model}` (or `ollama pull {model}`) or choose one with `%ollama model NAME`."
            )
        if exc.status_code == -1 or started:
            return OllamaMagicError(f"Ollama reported an error mid-reply: {text}.{lost}")
        said = f": {text}" if text else " with an empty body"  # a bare 503 from a proxy or a busy server
        return OllamaMagicError(f"Ollama at {host} answered HTTP {exc.status_code}{said}.{lost}")
    if isinstance(exc, httpx.TimeoutException):
        limit = f"within {timeout:g} s" if timeout else "in time"
        return OllamaMagicError(
            f"Ollama at {host} did not answer {limit}.{lost} "
            "Check the server, or raise %config OllamaMagics.timeout."
        )
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return OllamaMagicError(f"The connection to Ollama at {host} dropped mid-reply.{lost}")
    if isinstance(exc, json.JSONDecodeError):
        return OllamaMagicError(f"Ollama at {host} sent a response that is not JSON.{lost} Is it an Ollama server?")
    if isinstance(exc, httpx.HTTPError):
        return OllamaMagicError(f"Request to Ollama at {host} failed: {_one_line(str(exc))}.{lost}")
    if isinstance(exc, _loaded("pydantic_core").ValidationError):  # 200 and JSON, but the wrong shape
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "the response"
        return OllamaMagicError(
            f"Ollama at {host} answered with JSON that is not what the Ollama API sends "
            f"({where}: {_one_line(first.get('msg', 'invalid'), 120)}).{lost} Is it an Ollama server?"
        )
    return None


def _about_a_model(text: str) -> bool:
    """Ollama's 404s for models: "model 'x' not found" (routes.go), older "model \"x\" not found, try pulling it first"."""
    return "model" in text.lower() and "not found" in text


def _signin_url(exc: BaseException) -> str | None:
    """The `signin_url` Ollama's 401 carries (routes.go ChatHandler); the client keeps only `error`,
    but the httpx error it was raised from still holds the body."""
    response = getattr(exc.__context__, "response", None)
    try:
        url = json.loads(response.text).get("signin_url") if response is not None else None
    except (ValueError, AttributeError, TypeError):
        return None
    return _one_line(url, 200) if isinstance(url, str) and url.startswith("https://") else None


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split()).rstrip(".")  # the caller ends the sentence
    return line if len(line) <= limit else line[: limit - 1] + "…"
