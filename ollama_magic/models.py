"""What the server says about a model, cached per (host, model), and the window in force.

API (the context-window code in `context.py` builds on it):

- `ModelInfo(client, host, ttl=60)`: `client()` returns an `ollama.Client`
  with a short timeout of its own (these lookups must never block or fail a
  turn: every failure is "unknown", None). `host()` keys the cache.
- `ModelInfo.facts(model) -> Facts | None`: `/api/show` — capabilities,
  trained length (`model_info.<arch>.context_length`), Modelfile `num_ctx`
  (`parameters`; library models have none), details. None when the server
  could not be asked; `Facts.found` False for a model it does not have.
- `ModelInfo.loaded_window(model) -> int | None`: `/api/ps` `context_length`
  of the loaded model (Ollama >= 0.5.2), None when it is not loaded.
- `ModelInfo.server_window(model) -> Window | None`: the window the server
  runs `model` with when no num_ctx is sent, if it says: `/api/ps` once
  loaded (or as `learn_window` found it), else a Modelfile `num_ctx`
  (`parameters`) clamped to the trained length; None when unknown. The one
  order: the context-window sizing, the panel and `window` all use it.
- `ModelInfo.window(model, options, default) -> Window`: the effective
  `num_ctx` (issue #13 point 4): an explicit option, clamped to the trained
  length with a note (server/sched.go effectiveContext); else
  `server_window`; else `default` (the server's default, e.g.
  `OllamaMagics.default_num_ctx`, standing for OLLAMA_CONTEXT_LENGTH).
- `ModelInfo.learn_window(model) -> int | None`: the window
  the server gives `model` when no num_ctx is sent, learned by loading it
  (Ollama's own load request, an /api/chat with no messages, answered with
  done_reason "load"; server/routes.go ChatHandler) and reading /api/ps.
  Cached like the rest; `learned(model)` reads the cache only.
- `ModelInfo.having(capability, names) -> list[str]`: which of `names` have it.
- `ModelInfo.forget(model=None)`: drop cached answers (after a turn that may
  have reloaded the model, a pull, a delete, an unload).

`PromptShape` decides whether a smaller `prompt_eval_count` means Ollama
dropped messages or the request itself shrank.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ollama

__all__ = ["Facts", "ModelInfo", "PromptShape", "Window", "same_model"]

_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)
_PS_TTL = 5.0  # /api/ps changes with every load: trust it only briefly


def same_model(a: str, b: str) -> bool:
    """"x" and "x:latest" are one model, as Ollama names them."""
    def norm(name: str) -> str:
        return name if ":" in name else name + ":latest"
    return norm(a) == norm(b)


@dataclass(frozen=True)
class Facts:
    """A model as `/api/show` describes it."""

    name: str
    found: bool = True
    capabilities: tuple[str, ...] | None = None  # None: an old server that does not say
    trained: int | None = None  # model_info.<arch>.context_length
    num_ctx: int | None = None  # a Modelfile PARAMETER num_ctx
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None

    def lacks(self, capability: str) -> bool:
        """True only when the server said what the model can do and this is not among it."""
        return self.found and self.capabilities is not None and capability not in self.capabilities


@dataclass(frozen=True)
class Window:
    """The context window a request runs with, and where that number came from."""

    size: int
    source: str  # "option", "loaded" (/api/ps), "parameters", "default"
    note: str | None = None  # e.g. an option clamped to the trained length


@dataclass(frozen=True)
class PromptShape:
    """What of a request is not history: a prompt may shrink when this does."""

    model: str
    system: int  # characters of the system prompt
    tools: frozenset[str]

    def explains_shrink(self, before: PromptShape | None) -> bool:
        """True when this request is smaller by itself (another model, fewer tools, a shorter system prompt)."""
        if before is None:
            return True  # nothing to compare with: do not guess
        return (not same_model(self.model, before.model) or self.system < before.system
                or not before.tools <= self.tools)


class ModelInfo:
    """Cached answers of `/api/show` and `/api/ps` for one kernel."""

    def __init__(self, client: Callable[[], ollama.Client], host: Callable[[], str], ttl: float = 60.0,
                 load_client: Callable[[], ollama.Client] | None = None) -> None:
        self._client = client
        self._load_client = load_client or client  # a load takes longer than a lookup
        self._host = host
        self.ttl = ttl
        self._facts: dict[tuple[str, str], tuple[float, Facts | None]] = {}
        self._ps: dict[str, tuple[float, dict[str, int]]] = {}
        self._learned: dict[tuple[str, str], tuple[float, int]] = {}

    def forget(self, model: str | None = None) -> None:
        host = self._host()
        self._ps.pop(host, None)
        for key in [k for k in self._learned if k[0] == host and (model is None or same_model(k[1], model))]:
            del self._learned[key]
        for key in [k for k in self._facts if k[0] == host and (model is None or same_model(k[1], model))]:
            del self._facts[key]

    def facts(self, model: str) -> Facts | None:
        key = (self._host(), model)
        hit = self._facts.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        found = self._ask_show(model)
        self._facts[key] = (time.monotonic(), found)
        return found

    def _ask_show(self, model: str) -> Facts | None:
        try:
            shown = self._client().show(model)
        except Exception as exc:  # never fail a turn over a hint
            if getattr(exc, "status_code", None) == 404:
                return Facts(model, found=False)
            return None
        info: Mapping[str, Any] = shown.modelinfo or {}
        trained = next((int(v) for k, v in info.items()
                        if k.endswith(".context_length") and isinstance(v, (int, float))), None)
        m = _NUM_CTX.search(shown.parameters or "")
        details = shown.details
        caps = getattr(shown, "capabilities", None)
        return Facts(
            model, capabilities=tuple(caps) if caps is not None else None, trained=trained,
            num_ctx=int(m.group(1)) if m else None,
            family=details.family if details else None,
            parameter_size=details.parameter_size if details else None,
            quantization=details.quantization_level if details else None,
        )

    def loaded(self) -> dict[str, int] | None:
        """Loaded model -> context_length, from /api/ps (None when it cannot be asked)."""
        host = self._host()
        hit = self._ps.get(host)
        if hit is not None and time.monotonic() - hit[0] < _PS_TTL:
            return hit[1]
        try:
            running = self._client().ps().models
        except Exception:
            return None
        windows = {(m.model or m.name or ""): int(getattr(m, "context_length", None) or 0) for m in running}
        self._ps[host] = (time.monotonic(), windows)
        return windows

    def loaded_window(self, model: str) -> int | None:
        for name, size in (self.loaded() or {}).items():
            if same_model(name, model) and size > 0:
                return size
        return None

    def learned(self, model: str) -> int | None:
        """The window `learn_window` found for `model`, while the cache trusts it."""
        hit = self._learned.get((self._host(), model))
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl else None

    def learn_window(self, model: str) -> int | None:
        """Load `model` with no num_ctx and read the window the server gave it (None if it cannot say).

        The server's default is per model (OLLAMA_CONTEXT_LENGTH, else chosen by
        VRAM and lowered for a model that does not fit; server/sched.go), so
        only a load tells it. The load is one the turn would make anyway; it
        keeps the server's keep_alive (the turn's request sets the user's next).
        """
        if (hit := self.learned(model)) is not None:
            return hit
        try:
            self._load_client().chat(model, messages=[], stream=False)
        except Exception:  # never fail a turn over a hint (a slow load times out: unknown)
            return None
        self._ps.pop(self._host(), None)  # /api/ps changed with the load
        size = self.loaded_window(model)
        if size is not None:
            self._learned[(self._host(), model)] = (time.monotonic(), size)
        return size

    def server_window(self, model: str) -> Window | None:
        """The window the server runs `model` with when no num_ctx is sent, if it says (None: unknown)."""
        if (loaded := self.loaded_window(model) or self.learned(model)) is not None:
            return Window(loaded, "loaded")
        facts = self.facts(model)
        if facts is not None and facts.num_ctx:
            # Ollama clamps any num_ctx to the trained length (sched.go effectiveContext).
            return Window(min(facts.num_ctx, facts.trained) if facts.trained else facts.num_ctx, "parameters")
        return None

    def window(self, model: str, options: Mapping[str, Any], default: int) -> Window:
        wanted = options.get("num_ctx")
        facts = self.facts(model)
        trained = facts.trained if facts else None
        if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and wanted > 0:
            if trained and wanted > trained:
                return Window(trained, "option", f"num_ctx {int(wanted)} is more than {model} was trained on; "
                                                  f"Ollama uses {trained}")
            return Window(int(wanted), "option")
        # The server's default is clamped to the trained length too.
        return self.server_window(model) or Window(min(default, trained) if trained else default, "default")

    def having(self, capability: str, names: Iterable[str]) -> list[str]:
        out = []
        for name in names:
            facts = self.facts(name)
            if facts is not None and facts.capabilities is not None and capability in facts.capabilities:
                out.append(name)
        return out


# What a flag needs, and how to say a model lacks it (server/routes.go ChatHandler
# and server/images.go CheckCapabilities give the server's own 400s for think and tools).
NEEDS = {"thinking": ("--think", "think"), "tools": ("--tools", "call tools"), "vision": ("--image", "see images")}
_SERVER_400 = re.compile(r"does not support (thinking|tools)\b")


def lacks_message(model: str, capability: str, having: list[str] | None) -> str:
    """One line: the model, the capability, installed models that have it."""
    flag, verb = NEEDS[capability]
    others = f"Installed models that can: {', '.join(having)}." if having else (
        "No installed model can" + (f"; pull one, e.g. %ollama pull {_EXAMPLE[capability]}." if capability in _EXAMPLE else "."))
    return (f"{model} cannot {verb} (Ollama lists no {capability!r} capability for it), so {flag} is refused; "
            f"nothing was sent or stored. {others}")


_EXAMPLE = {"thinking": "qwen3", "tools": "llama3.2", "vision": "gemma3"}


def server_capability(error: str) -> str | None:
    """The capability an Ollama 400 says the model lacks ("... does not support tools"), if any."""
    m = _SERVER_400.search(error)
    return m.group(1) if m else None
