"""The `%ollama` subcommands (the line magic), as a mixin of `OllamaMagics`.

Every subcommand is registered with `@subcommand(NAME, SUMMARY)` over
IPython's `@argument(...)` decorators: one `magic_arguments` parser per
subcommand, so each refuses what it does not take (`%ollama reset please`
is an error, not a reset). The handler gets the parsed `argparse.Namespace`.
To add one, write a method like those below on any mixin of `OllamaMagics`
(its module must be imported by `magics`); `%ollama help` lists the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments

from .errors import OllamaMagicError, did_you_mean, redact_host
from .models import same_model
from .options import check_options
from .parsing import parse_options, split_args
from .routing import refuse_near_miss
from .store import ConversationStore

if TYPE_CHECKING:
    import ollama

__all__ = ["CELL_HELP", "REGISTRY", "Subcommand", "Subcommands", "argument", "help_text", "parse_subcommand", "subcommand"]


@dataclass(frozen=True)
class Subcommand:
    """One `%ollama NAME ...`: its parser and its handler `func(magics, args)`."""

    name: str
    summary: str
    func: Callable[..., Any]
    text: bool = False  # its positional `text` is the rest of the line, as typed
    raw: str | None = None  # usage of a subcommand that parses its own line (args.line)

    @property
    def parser(self) -> MagicArgumentParser:
        # Built on first use: two dozen argparse parsers cost ~10 ms at %load_ext.
        if not hasattr(self.func, "parser"):
            magic_arguments(f"ollama {self.name}")(self.func)
        return self.func.parser  # type: ignore[attr-defined, no-any-return]

    @property
    def usage(self) -> str:
        if self.raw is not None:
            return f"%ollama {self.name} {self.raw}"
        # MagicHelpFormatter writes ":: %prog ..."; one plain line is wanted here.
        return "%" + " ".join(self.parser.format_usage().split()[1:]).lstrip(":% ")


REGISTRY: dict[str, Subcommand] = {}


def subcommand(name: str, summary: str, *, text: bool = False,
               raw: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `%ollama NAME`; put it above the `@argument(...)` lines.

    `text=True`: the subcommand takes free text (a system prompt, a search) in
    a positional `text` argument; a line that does not start with `-` is that
    text exactly as typed (quotes and apostrophes included), else it is parsed.
    `raw=USAGE`: the handler parses `args.line` itself (with another parser).
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = Subcommand(name, summary, func, text, raw)  # its parser: when first used
        return func

    return register


def parse_subcommand(spec: Subcommand, rest: str) -> argparse.Namespace:
    """The subcommand's arguments, or one line that says what is wrong."""
    if spec.raw is not None:
        return argparse.Namespace(line=rest)
    try:
        if spec.text and rest and not rest.startswith("-"):
            args = spec.parser.parse_args([])
            args.text = rest
            return args
        args = spec.parser.parse_args(split_args(rest))
    except UsageError as exc:
        msg = str(exc)
        hint = ""
        if m := re.search(r"unrecognized arguments: (\S+)", msg):
            word = m.group(1).split("=")[0]
            if word.startswith("-"):
                hint = did_you_mean(word, spec.parser._option_string_actions)
        raise OllamaMagicError(f"%ollama {spec.name}: {msg}{hint}. usage: {spec.usage}") from None
    if spec.text:
        args.text = " ".join(args.text or [])
    return args


def help_text() -> str:
    """Usage of the cell magic and of every registered subcommand."""
    rows = [(s.usage, s.summary) for s in REGISTRY.values()]
    width = min(max(len(u) for u, _ in rows), 34)
    lines = [f"{u:<{width}}  {s}" if len(u) <= width else f"{u}\n{'':<{width}}  {s}" for u, s in rows]
    return CELL_HELP + "\n\n" + "\n".join(lines) + "\n\n%ollama help NAME shows one subcommand's options."


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of turns, like --at 2, not {text!r}") from None


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
    max_var_chars: int
    keep_alive: float | str | None
    max_tool_rounds: int
    max_tool_calls: int
    last_reply: str | None
    last_error: tuple[str, str] | None
    panels: Any
    stale: Any  # context.Staleness
    sizer: Any  # window.Sizer
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
        parts = line.strip().split(None, 1)
        sub = parts[0] if parts else "help"
        rest = parts[1].strip() if len(parts) > 1 else ""
        if sub in ("-h", "--help"):
            sub = "help"
        spec = REGISTRY.get(sub)
        if spec is None:
            hint = did_you_mean(sub, list(REGISTRY))
            raise OllamaMagicError(f"unknown subcommand {sub!r}{hint}. See %ollama help.")
        return spec.func(self, parse_subcommand(spec, rest))

    @subcommand("help", "this help, or one subcommand's options")
    @argument("name", nargs="?", metavar="NAME")
    def _sub_help(self, args: argparse.Namespace) -> None:
        if args.name is None:
            print(help_text())
            return
        spec = REGISTRY.get(args.name)
        if spec is None:
            raise OllamaMagicError(f"no subcommand {args.name!r}{did_you_mean(args.name, list(REGISTRY))}. See %ollama help.")
        print(f"{spec.usage}\n  {spec.summary}")
        options = [a for a in spec.parser._actions if a.help]
        for action in options:
            print(f"  {', '.join(action.option_strings) or action.metavar or action.dest}: {(action.help or '').replace('%%', '%')}")

    @subcommand("models", "models on the server")
    def _sub_models(self, args: argparse.Namespace) -> None:
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

    @subcommand("model", "show / set the active chat's model")
    @argument("name", nargs="?", metavar="NAME")
    def _sub_model(self, args: argparse.Namespace) -> None:
        conv = self.store.active
        name = args.name
        if name is None:
            current = conv.model or self.model or self._auto_model
            print(f"{current or '(none chosen)'} (chat {conv.name!r})")
            return
        if not name.strip() or len(name.split()) != 1:
            raise OllamaMagicError(f"a model name is one word, like llama3.2, not {name!r}")
        installed = self._installed_or_none()
        if installed is not None and not any(same_model(name, m) for m in installed):
            hint = did_you_mean(name, installed)
            raise OllamaMagicError(f"Model {name!r} is not installed{hint}. Installed: {', '.join(installed) or 'none'}. Run `ollama pull {name}`.")
        self.store.set_model(name)
        print(f"Model for chat {conv.name!r}: {name}")

    @subcommand("system", "show / set / remove the system prompt", text=True)
    @argument("--clear", action="store_true", help="remove the system prompt")
    @argument("text", nargs="*", metavar="TEXT", help="the new system prompt (the rest of the line, as typed)")
    def _sub_system(self, args: argparse.Namespace) -> None:
        conv = self.store.active
        if args.clear:
            if args.text:
                raise OllamaMagicError("%ollama system: --clear takes no text")
            self.store.set_system(None)
            print(f"System prompt of chat {conv.name!r} removed.")
        elif args.text:
            self.store.set_system(args.text)
            print(f"System prompt of chat {conv.name!r} set.")
        else:
            print(conv.system or "(no system prompt)")

    @subcommand("options", "show / set the chat's default options (KEY=null removes one)")
    @argument("--clear", action="store_true", help="remove all of the chat's options")
    @argument("pairs", nargs="*", metavar="KEY=VALUE", help="Ollama options, like num_ctx=8192")
    def _sub_options(self, args: argparse.Namespace) -> None:
        conv = self.store.active
        if args.clear and args.pairs:
            raise OllamaMagicError("%ollama options: --clear takes no KEY=VALUE")
        if args.clear:
            self.store.set_options({})
        elif args.pairs:
            new = dict(conv.options)
            for key, value in parse_options(args.pairs).items():
                if value is None:
                    new.pop(key, None)
                else:
                    new[key] = value
            if problem := check_options(new):  # before anything is stored (options.py: api/types.go)
                raise OllamaMagicError(problem)
            self.store.set_options(new)
        merged = {**self.options, **conv.options}
        shown = json.dumps(merged) if merged else "(server defaults)"
        if "num_ctx" not in merged and (auto := self.sizer.describe(conv.name)):
            shown += f"; {auto}"  # grown by auto_num_ctx: not an option of yours
        print(f"Options for chat {conv.name!r}: {shown}")

    @subcommand("chats", "list chats (active, name, model, turns, tokens)")
    def _sub_chats(self, args: argparse.Namespace) -> None:
        rows = [("", "chat", "model", "turns", "tokens", "stale")]
        for conv in self.store:
            mark = "*" if conv.name == self.store.active_name else ""
            rows.append((mark, conv.name, conv.model or self.model or "-", str(len(conv.turns)),
                         str(conv.context_tokens), str(len(self.stale.of(conv)))))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    @subcommand("stale", "turns whose interpolated variables have changed since they were asked")
    def _sub_stale(self, args: argparse.Namespace) -> None:
        print(self.stale.report(self.store))

    @subcommand("chat", "show the active chat, or switch to NAME (a new name creates it)")
    @argument("name", nargs="?", metavar="NAME")
    @argument("--new", action="store_true", help="create NAME even though it is close to an existing chat's name")
    def _sub_chat(self, args: argparse.Namespace) -> None:
        name = (args.name or "").strip()
        if not name:
            if args.new:
                raise OllamaMagicError("%ollama chat --new needs a NAME")
            print(self.store.active_name)
            return
        if name not in self.store:
            refuse_near_miss(self.store, name, "%ollama chat {name} --new", confirmed=args.new)
            self.store.create(name)
            print(f"New chat {name!r} (now active).")
            return
        self.store.switch(name)
        print(f"Chat {name!r} is active ({len(self.store.active.turns)} turns).")

    @subcommand("history", "the history panel (a transcript in a terminal)")
    @argument("--last", type=_count, metavar="N", help="only the last N turns (in a notebook: the page shown first)")
    @argument("--chat", metavar="NAME", help="that chat (in a notebook: switch to it)")
    def _sub_history(self, args: argparse.Namespace) -> Any:
        if args.last is not None and args.last < 1:
            raise OllamaMagicError(f"--last takes a number of turns of at least 1, not {args.last}")
        if self._is_rich():
            try:
                from .widget import HistoryPanel
            except ImportError as exc:  # e.g. a venv from before the panel needed anywidget
                need = exc.name or "a dependency"
                raise OllamaMagicError(f"The history panel needs {need}, which is not installed: "
                                       "reinstall ollama_magic (pip install -e . in a checkout) and "
                                       "restart the kernel.") from None

            if args.chat:
                self.store.switch(args.chat)  # the panel shows (and switches) the active chat
            cell = getattr(self, "cell_id", None)
            # Re-running the cell retires its old panel: N re-runs cost one panel.
            for old in [p for p in self.panels if getattr(p, "cell_id", None) == cell]:
                old.close()
                self.panels.discard(old)
            panel = HistoryPanel(self.store, list_models=self._installed_or_none,
                                 default_model=lambda: self.model or self._auto_model,
                                 context_window=self.context_window,
                                 default_num_ctx=self.default_num_ctx, namespace=self.shell.user_ns,
                                 page_size=args.last or 20, max_var_chars=lambda: self.max_var_chars,
                                 events=self.shell.events)
            panel.cell_id = cell
            self.panels.add(panel)  # closed (and unsubscribed) on unload
            return panel
        from . import persist  # pydantic models: built only when files are touched

        from .safe import terminal

        conv = self.store.get(args.chat) if args.chat else self.store.active
        print(terminal(persist.export_markdown(conv, last=args.last)), end="")
        return None

    @subcommand("reset", "empty the active chat (undoable)")
    def _sub_reset(self, args: argparse.Namespace) -> None:
        n = self.store.reset()
        print(f"Chat {self.store.active_name!r} emptied ({n} turn{'s' if n != 1 else ''}; undo with %ollama undo).")

    @subcommand("undo", "undo the last change to the active chat")
    def _sub_undo(self, args: argparse.Namespace) -> None:
        if self.store.undo():
            conv = self.store.active
            print(f"Undone. Chat {conv.name!r} has {len(conv.turns)} turn{'s' if len(conv.turns) != 1 else ''}.")
        else:
            print(f"Nothing to undo in chat {self.store.active_name!r}.")

    @subcommand("save", "save all chats as JSON (atomic)")
    @argument("path", metavar="PATH", help="the file to write, e.g. chats.json")
    def _sub_save(self, args: argparse.Namespace) -> None:
        from . import persist  # pydantic models: built only when files are touched

        try:
            target = persist.save(self.store, args.path)
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Saved {len(self.store)} chat{'s' if len(self.store) != 1 else ''} to {target}.")

    @subcommand("load", "add the chats of a saved file (undoable)")
    @argument("path", metavar="PATH", help="a file written by %%ollama save")
    def _sub_load(self, args: argparse.Namespace) -> None:
        from . import persist  # pydantic models: built only when files are touched

        try:
            names = persist.load(self.store, args.path)
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Loaded {', '.join(names) or 'no chats'} from {args.path} (undo with %ollama undo); active: {self.store.active_name!r}.")

    @subcommand("export", "the active chat as Markdown")
    @argument("path", metavar="PATH", help="the file to write, e.g. chat.md")
    def _sub_export(self, args: argparse.Namespace) -> None:
        from . import persist  # pydantic models: built only when files are touched

        try:
            target = persist.write_text(args.path, persist.export_markdown(self.store.active))
        except persist.FileError as exc:
            raise OllamaMagicError(str(exc)) from None
        print(f"Exported chat {self.store.active_name!r} to {target}.")

    @subcommand("fix", "ask why the last failing cell failed", raw="[%%ollama OPTIONS]")
    def _sub_fix(self, args: argparse.Namespace) -> None:
        # Parsed by the cell magic's own parser, which refuses what it does not take.
        turn_args = self._parse(self.ollama, "--error " + args.line)
        if self.last_error is None:
            print("No cell has failed in this kernel yet; nothing to fix.")
            return
        self._turn(turn_args, "")

    @subcommand("fork", "copy the active chat (or its first N turns, or from turn N on) into a new chat")
    @argument("new", metavar="NEW", help="name of the new chat")
    @argument("--at", type=_count, metavar="N", help="copy only the first N turns")
    @argument("--from", dest="start", type=_count, metavar="N", help="leave out the turns before turn N (a shorter context)")
    def _sub_fork(self, args: argparse.Namespace) -> None:
        start = 0 if args.start is None else max(args.start - 1, 0)
        before = len(self.store.get(args.new).turns) if args.new in self.store else None
        conv = self.store.fork(args.new, at=args.at, start=start)
        again = "" if before is None else (  # a re-run of this fork (Run All)
            f"; it was this fork already, its {before - len(conv.turns)} later turn(s) went to the undo stack"
            if before > len(conv.turns) else "; it was this fork already")
        print(f"Forked into chat {conv.name!r} with {len(conv.turns)} turns (now active){again}.")

    @subcommand("last", "the last reply as a string (x = %ollama last)")
    def _sub_last(self, args: argparse.Namespace) -> str | None:
        return self.last_reply

    @subcommand("config", "effective settings (secrets hidden)")
    def _sub_config(self, args: argparse.Namespace) -> None:
        host, source = self._host()
        conv = self.store.active
        lines = [
            f"host            {redact_host(host)} ({source})",
            f"model           {conv.model or self.model or self._auto_model or '(none chosen)'}",
            f"chat            {conv.name} ({len(conv.turns)} turns, {len(self.store)} chats)",
            f"options         {json.dumps({**self.options, **conv.options}) or '{}'}"
            + (f"; {self.sizer.describe(conv.name)}" if self.sizer.describe(conv.name) else ""),
            f"system prompt   {'set' if conv.system else 'none'}",
            f"rerun           {self.rerun}",
            f"timeout         {self.timeout:g} s",
            f"default_num_ctx {self.default_num_ctx}",
            f"keep_alive      {self.keep_alive if self.keep_alive is not None else 'server default (5m)'}",
            f"max_tool_rounds {self.max_tool_rounds}",
            f"max_tool_calls  {self.max_tool_calls}",
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


CELL_HELP = """\
%%ollama [options]        the cell is your message; each cell continues the chat
  -m/--model NAME         model for this turn (then the chat's model)
  -c/--chat NAME          use (or create) a named chat; active once the turn is stored
  --system TEXT           set the chat's system prompt
  --new                   start the chat afresh (undoable); with -c, create a chat named like another
  --once                  ask with the history, store nothing
  -o KEY=VALUE            Ollama option for this turn (repeatable): -o num_ctx=8192
  -t/--temperature X      shorthand for -o temperature=X
  --format json|VAR       JSON mode, or a JSON schema (dict or pydantic model) in VAR
  --think [high|medium|low|false]  thinking on (a level) or off; thinking models think by default
  --no-think              turn thinking off (think: false)
  --keep-alive DURATION   keep the model loaded this long after the turn (30m, -1 = keep)
  --image PATH|VAR        attach an image file, bytes, PIL image or matplotlib figure
  --tools NAME[,NAME]     let the model call these functions of the notebook
  --error                 include the last failing cell and its traceback
  --out VAR               also put the reply (or parsed JSON) into VAR
  --no-stream             one request without streaming
  --code                  put the reply's first code block into the next cell
  --fresh                 ask the model even if the journal could replay this request
  --cells N               put the last N cells run (code and Out) before the question
  --file PATH             attach a text file as a fenced block (repeatable)
  {name} in the cell is replaced by the value as a model reads it (DataFrames as
  a table of their first and last rows); {name!r} forces repr; {{name}} keeps the braces."""
