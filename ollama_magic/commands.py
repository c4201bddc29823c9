"""The `%ollama` subcommands (the line magic), as a mixin of `OllamaMagics`.

Each `_sub_NAME(rest)` handles `%ollama NAME rest`; they talk to the store,
the server (through the magics' client) and files (through `persist`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import OllamaMagicError, did_you_mean, redact_host
from .parsing import parse_options, split_args
from .chat import _same_model
from .store import ConversationStore

if TYPE_CHECKING:
    import ollama

__all__ = ["HELP", "Subcommands"]


class Subcommands:
    """`%ollama SUBCOMMAND ...`; mixed into `OllamaMagics`, whose state it uses."""

    # Provided by OllamaMagics (settings, state and the turn machinery).
    store: ConversationStore
    shell: Any
    options: dict[str, Any]
    headers: dict[str, str]
    model: str | None
    rerun: str
    timeout: float
    default_num_ctx: int
    max_tool_rounds: int
    last_reply: str | None
    last_error: tuple[str, str] | None
    panels: Any
    _auto_model: str | None
    client: Callable[[], ollama.Client]
    context_window: Callable[..., int | None]
    _friendly: Callable[..., OllamaMagicError]
    _installed_or_none: Callable[[], list[str] | None]
    _host: Callable[[], tuple[str, str]]
    _is_rich: Callable[[], bool]
    _parse: Callable[[Callable[..., Any], str], Any]
    _turn: Callable[[Any, str], None]
    ollama: Callable[..., Any]

    def _line(self, line: str) -> Any:
        sub, _, rest = line.strip().partition(" ")
        sub = sub or "help"
        handler = getattr(self, f"_sub_{sub}", None) if sub.isidentifier() else None
        if handler is None:
            hint = did_you_mean(sub, _SUBCOMMANDS)
            raise OllamaMagicError(f"unknown subcommand {sub!r}{hint}. See %ollama help.")
        return handler(rest.strip())

    def _sub_help(self, rest: str) -> None:
        print(HELP)

    def _sub_models(self, rest: str) -> None:
        try:
            models = self.client().list().models
        except Exception as exc:
            raise self._friendly(exc) from None
        if not models:
            print("No models installed. Run `ollama pull llama3.2` (or another model).")
            return
        rows = [(m.model or "", _size(m.size), m.modified_at.strftime("%Y-%m-%d %H:%M") if m.modified_at else "") for m in models]
        width = max(len(r[0]) for r in rows)
        for name, size, modified in rows:
            print(f"{name:<{width}}  {size:>8}  {modified}")

    def _sub_model(self, rest: str) -> str | None:
        conv = self.store.active
        if not rest:
            current = conv.model or self.model or self._auto_model
            print(f"{current or '(none chosen)'} (chat {conv.name!r})")
            return None
        name = rest.strip()
        if not name or len(name.split()) != 1:
            raise OllamaMagicError(f"a model name is one word, like llama3.2, not {rest!r}")
        installed = self._installed_or_none()
        if installed is not None and not any(_same_model(name, m) for m in installed):
            hint = did_you_mean(name, installed)
            raise OllamaMagicError(f"Model {name!r} is not installed{hint}. Installed: {', '.join(installed) or 'none'}. Run `ollama pull {name}`.")
        self.store.set_model(name)
        print(f"Model for chat {conv.name!r}: {name}")
        return None

    def _sub_system(self, rest: str) -> None:
        conv = self.store.active
        if rest == "--clear":
            self.store.set_system(None)
            print(f"System prompt of chat {conv.name!r} removed.")
        elif rest:
            self.store.set_system(rest)
            print(f"System prompt of chat {conv.name!r} set.")
        else:
            print(conv.system or "(no system prompt)")

    def _sub_options(self, rest: str) -> None:
        conv = self.store.active
        if rest == "--clear":
            self.store.set_options({})
        elif rest:
            new = dict(conv.options)
            for key, value in parse_options(split_args(rest)).items():
                if value is None:
                    new.pop(key, None)
                else:
                    new[key] = value
            self.store.set_options(new)
        merged = {**self.options, **conv.options}
        print(f"Options for chat {conv.name!r}: {json.dumps(merged) if merged else '(server defaults)'}")

    def _sub_reset(self, rest: str) -> None:
        n = self.store.reset()
        print(f"Chat {self.store.active_name!r} emptied ({n} turn{'s' if n != 1 else ''}; undo with %ollama undo).")

    def _sub_undo(self, rest: str) -> None:
        if self.store.undo():
            conv = self.store.active
            print(f"Undone. Chat {conv.name!r} has {len(conv.turns)} turn{'s' if len(conv.turns) != 1 else ''}.")
        else:
            print(f"Nothing to undo in chat {self.store.active_name!r}.")

    def _sub_last(self, rest: str) -> str | None:
        return self.last_reply

    def _sub_chats(self, rest: str) -> None:
        rows = [("", "chat", "model", "turns", "tokens")]
        for conv in self.store:
            mark = "*" if conv.name == self.store.active_name else ""
            rows.append((mark, conv.name, conv.model or self.model or "-", str(len(conv.turns)), str(conv.context_tokens)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    def _sub_chat(self, rest: str) -> None:
        name = rest.strip()
        if not name:
            print(self.store.active_name)
            return
        if name not in self.store:
            hint = did_you_mean(name, self.store.names)
            if hint:
                raise OllamaMagicError(f"no chat {name!r}{hint}; to create it, use %%ollama -c {name}")
            self.store.create(name)
            print(f"New chat {name!r} (now active).")
            return
        self.store.switch(name)
        print(f"Chat {name!r} is active ({len(self.store.active.turns)} turns).")

    def _sub_fork(self, rest: str) -> None:
        parts = split_args(rest)
        at = None
        if "--at" in parts:
            i = parts.index("--at")
            try:
                at = int(parts[i + 1])
            except (IndexError, ValueError):
                raise OllamaMagicError("--at takes a number of turns, like --at 2") from None
            del parts[i:i + 2]
        if len(parts) != 1:
            raise OllamaMagicError("usage: %ollama fork NEW [--at N]")
        conv = self.store.fork(parts[0], at=at)
        print(f"Forked into chat {conv.name!r} with {len(conv.turns)} turns (now active).")

    def _sub_save(self, rest: str) -> None:
        from . import persist  # pydantic models: built only when files are touched

        path = self._path_arg(rest, "save", "chats.json")
        try:
            target = persist.save(self.store, path)
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Saved {len(self.store)} chat{'s' if len(self.store) != 1 else ''} to {target}.")

    def _sub_load(self, rest: str) -> None:
        from . import persist  # pydantic models: built only when files are touched

        path = self._path_arg(rest, "load", "chats.json")
        try:
            names = persist.load(self.store, path)
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Loaded {', '.join(names) or 'no chats'} from {path} (undo with %ollama undo); active: {self.store.active_name!r}.")

    def _sub_export(self, rest: str) -> None:
        from . import persist  # pydantic models: built only when files are touched

        path = self._path_arg(rest, "export", "chat.md")
        try:
            target = persist.write_text(path, persist.export_markdown(self.store.active))
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Exported chat {self.store.active_name!r} to {target}.")

    def _path_arg(self, rest: str, verb: str, example: str) -> str:
        parts = split_args(rest)
        if len(parts) != 1:
            raise OllamaMagicError(f"usage: %ollama {verb} PATH (for example %ollama {verb} {example})")
        return parts[0]

    def _sub_fix(self, rest: str) -> None:
        if self.last_error is None:
            print("No cell has failed in this kernel yet; nothing to fix.")
            return
        args = self._parse(self.ollama, "--error " + rest)
        self._turn(args, "")

    def _sub_history(self, rest: str) -> Any:
        from . import persist  # pydantic models: built only when files are touched

        if self._is_rich():
            from .widget import HistoryPanel

            panel = HistoryPanel(self.store, list_models=self._installed_or_none,
                                 default_model=lambda: self.model or self._auto_model,
                                 context_window=self.context_window,
                                 default_num_ctx=self.default_num_ctx, namespace=self.shell.user_ns)
            self.panels.add(panel)  # closed (and unsubscribed) on unload
            return panel
        print(persist.export_markdown(self.store.active), end="")
        return None

    def _sub_config(self, rest: str) -> None:
        host, source = self._host()
        conv = self.store.active
        lines = [
            f"host            {redact_host(host)} ({source})",
            f"model           {conv.model or self.model or self._auto_model or '(none chosen)'}",
            f"chat            {conv.name} ({len(conv.turns)} turns, {len(self.store)} chats)",
            f"options         {json.dumps({**self.options, **conv.options}) or '{}'}",
            f"system prompt   {'set' if conv.system else 'none'}",
            f"rerun           {self.rerun}",
            f"timeout         {self.timeout:g} s",
            f"default_num_ctx {self.default_num_ctx}",
            f"max_tool_rounds {self.max_tool_rounds}",
            f"headers         {', '.join(sorted(self.headers)) or 'none'} (values hidden)",
            f"api key         {'set (OLLAMA_API_KEY, hidden)' if os.environ.get('OLLAMA_API_KEY') else 'none'}",
        ]
        print("\n".join(lines))


def _size(n: int | None) -> str:
    if not n:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return str(n)


_SUBCOMMANDS = ["help", "models", "model", "system", "options", "chats", "chat", "history", "reset",
                "undo", "save", "load", "export", "fix", "fork", "last", "config"]

HELP = """\
%%ollama [options]        the cell is your message; each cell continues the chat
  -m/--model NAME         model for this turn (then the chat's model)
  -c/--chat NAME          use (or create) a named chat and make it active
  --system TEXT           set the chat's system prompt
  --new                   start the chat afresh (undoable)
  --once                  ask with the history, store nothing
  -o KEY=VALUE            Ollama option for this turn (repeatable): -o num_ctx=8192
  -t/--temperature X      shorthand for -o temperature=X
  --format json|VAR       JSON mode, or a JSON schema (dict or pydantic model) in VAR
  --think [high|medium|low]  ask for thinking; shown collapsed, stored with the reply
  --image PATH|VAR        attach an image file, bytes, PIL image or matplotlib figure
  --tools NAME[,NAME]     let the model call these functions of the notebook
  --error                 include the last failing cell and its traceback
  --out VAR               also put the reply (or parsed JSON) into VAR
  --no-stream             one request without streaming
  --code                  put the reply's first code block into the next cell
  {name} in the cell is replaced by the variable's value; {{name}} keeps the braces.

%ollama models            models on the server
%ollama model [NAME]      show / set the active chat's model
%ollama system [TEXT|--clear]   show / set / remove the system prompt
%ollama options [KEY=VALUE ...|--clear]   the chat's default options (KEY=null removes)
%ollama chats             list chats;  %ollama chat NAME  switches (or creates)
%ollama history           the history panel (a transcript in a terminal)
%ollama reset             empty the active chat (undoable)
%ollama undo              undo the last change to the active chat
%ollama save PATH         save all chats as JSON;  %ollama load PATH  adds them back
%ollama export PATH.md    the active chat as Markdown
%ollama fix               ask why the last failing cell failed
%ollama fork NEW [--at N] copy the active chat (or its first N turns) into a new chat
%ollama last              the last reply as a string (x = %ollama last)
%ollama config            effective settings"""
