"""Model lifecycle from the notebook: `%ollama pull / ps / show / unload`.

A mixin of `OllamaMagics` (registered with `@subcommand`, like `commands`).
Pull streams Ollama's progress (`/api/pull`: "pulling manifest", one line
per layer with `total`/`completed`, "success"; server/images.go PullModel)
into an ipywidgets progress bar in a notebook (imported only then) or a text
bar in a terminal; Ctrl-C closes the stream, which stops the download.
Unload sends an empty chat with `keep_alive: 0` (server/routes.go
ChatHandler answers `done_reason: "unload"`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from .commands import _size, argument, subcommand
from .errors import OllamaMagicError
from .models import ModelInfo
from .safe import terminal
from .store import ConversationStore

if TYPE_CHECKING:
    import ollama

__all__ = ["Lifecycle"]


class _Bar:
    """A progress bar: ipywidgets in a notebook, one rewritten text line in a terminal."""

    def __init__(self, rich: bool, name: str) -> None:
        self.widget: Any = None
        self.name = name
        if rich:
            import ipywidgets  # only when a pull is shown in a notebook
            from IPython.display import display

            self.widget = ipywidgets.FloatProgress(min=0.0, max=1.0, description="pull",
                                                   layout=ipywidgets.Layout(width="60%"))
            self.label = ipywidgets.Label(f"{name}: starting")
            display(ipywidgets.HBox([self.widget, self.label]))

    def show(self, status: str, fraction: float | None) -> None:
        text = terminal(status)
        if self.widget is not None:
            if fraction is not None:
                self.widget.value = fraction
            self.label.value = f"{self.name}: {text}"
            return
        bar = "" if fraction is None else "[" + "#" * int(fraction * 30) + "." * (30 - int(fraction * 30)) + f"] {fraction:4.0%} "
        sys.stdout.write(f"\r{bar}{text}"[:100].ljust(100))
        sys.stdout.flush()

    def end(self, text: str) -> None:
        if self.widget is not None:
            self.label.value = f"{self.name}: {text}"
            self.widget.bar_style = "success" if text == "installed" else "danger"
        else:
            sys.stdout.write("\n")
        print(f"{self.name}: {text}")


def _until(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds > 100 * 365 * 86400:
        return "forever"
    if seconds < 60:
        return f"{max(0, int(seconds))} s"
    return f"{int(seconds // 60)} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Lifecycle:
    """`%ollama pull NAME`, `ps`, `show [NAME]`, `unload [NAME]`."""

    # Provided by OllamaMagics.
    models: ModelInfo
    store: ConversationStore
    options: dict[str, Any]
    default_num_ctx: int
    client: Callable[[], ollama.Client]
    _friendly: Callable[..., OllamaMagicError]
    _is_rich: Callable[[], bool]
    resolve_model: Callable[..., str]

    @subcommand("pull", "download a model from the Ollama library, with a progress bar (Ctrl-C stops)")
    @argument("name", metavar="NAME")
    def _sub_pull(self, args: argparse.Namespace) -> None:
        name = args.name.strip()
        bar = _Bar(self._is_rich(), name)
        stream = cast(Iterator[Any], None)
        try:
            stream = cast(Iterator[Any], self.client().pull(name, stream=True))
            for progress in stream:
                total, done = progress.total or 0, progress.completed or 0
                bar.show(progress.status or "", done / total if total else None)
        except KeyboardInterrupt:
            bar.end("interrupted; nothing installed (run %ollama pull again to resume)")
            raise OllamaMagicError(f"Pull of {name} interrupted; run %ollama pull {name} again to resume.") from None
        except Exception as exc:
            bar.end("failed")
            error = str(getattr(exc, "error", ""))
            if "file does not exist" in error:
                raise OllamaMagicError(f"{name!r} is not in the Ollama library (the registry has no such "
                                       "model or tag); see https://ollama.com/library for names.") from None
            raise self._friendly(exc) from None
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # closing the stream stops the download
        self.models.forget(name)
        bar.end("installed")

    @subcommand("ps", "loaded models: size, VRAM, context length, until when")
    def _sub_ps(self, args: argparse.Namespace) -> None:
        try:
            running = self.client().ps().models
        except Exception as exc:
            raise self._friendly(exc) from None
        if not running:
            print("No model is loaded (the next turn loads one).")
            return
        rows = [("model", "size", "on GPU", "context", "until")]
        for m in running:
            vram = f"{(m.size_vram or 0) / m.size:.0%}" if m.size else ""
            ctx = str(getattr(m, "context_length", None) or "")
            rows.append((terminal(m.model or m.name or ""), _size(m.size), vram, ctx, _until(m.expires_at)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    @subcommand("show", "a model's family, parameters, quantization, capabilities and windows")
    @argument("name", nargs="?", metavar="NAME", help="default: the active chat's model")
    def _sub_show(self, args: argparse.Namespace) -> None:
        name = args.name or self.resolve_model(None)
        self.models.forget(name)
        facts = self.models.facts(name)
        if facts is None:
            try:
                self.client().show(name)  # the real error, said plainly
            except Exception as exc:
                raise self._friendly(exc, name) from None
            raise OllamaMagicError(f"Ollama did not describe {name}.")
        if not facts.found:
            raise OllamaMagicError(f"Model {name!r} is not installed. Run %ollama pull {name}.")
        conv = self.store.active
        window = self.models.window(name, {**self.options, **conv.options}, self.default_num_ctx)
        lines = [
            f"model          {terminal(name)}",
            f"family         {terminal(facts.family or '?')}",
            f"parameters     {terminal(facts.parameter_size or '?')}",
            f"quantization   {terminal(facts.quantization or '?')}",
            f"capabilities   {', '.join(map(terminal, facts.capabilities)) if facts.capabilities is not None else '(not reported)'}",
            f"trained window {facts.trained or '?'}",
            f"window now     {window.size} ({_SOURCES[window.source]})" + (f"; {window.note}" if window.note else ""),
        ]
        print("\n".join(lines))

    @subcommand("unload", "free a model's memory now (keep_alive 0)")
    @argument("name", nargs="?", metavar="NAME", help="default: the active chat's model")
    def _sub_unload(self, args: argparse.Namespace) -> None:
        name = args.name or self.resolve_model(None)
        try:
            answer = self.client().chat(model=name, messages=[], keep_alive=0)
        except Exception as exc:
            raise self._friendly(exc, name) from None
        self.models.forget(name)
        print(f"{name} unloaded." if answer.done_reason == "unload" else f"{name}: Ollama answered {answer.done_reason!r}.")


_SOURCES = {"option": "your num_ctx", "loaded": "as loaded, /api/ps", "parameters": "the model's num_ctx parameter",
            "default": "the server default, OllamaMagics.default_num_ctx"}
