"""`%%ollama`: settings and the flow of one turn (the subcommands are in `commands`).

Options are declared with IPython's `magic_arguments` (the line is split by
`parsing`); settings are traitlets on this Configurable (so
`%config OllamaMagics.model = "llama3.2"` and `ipython_config.py` work);
talking to Ollama is `chat`, showing replies is `render`, and the
conversation lives in `store`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Dict, Enum, Float, Int, TraitError, Unicode, Union, default, observe, validate

from . import chat, context, window
from .models import ModelInfo, PromptShape, lacks_message, server_capability
from .options import check_options, keep_alive_value
from .commands import Subcommands
from .errors import Interrupted, OllamaMagicError, did_you_mean, host_secrets, is_http_status, redact_host, scrub, translate
from .interpolate import default_renderer, interpolate_refs
from .journal import Journal, default_path, session_key
from .journal_commands import JournalCommands
from .lifecycle import Lifecycle
from .live import Feed
from .parsing import first_code_block, parse_options, split_args
from .names import check_out_name, format_hint, is_tool, tool_error
from .routing import Target, target_chat
from .safe import escaped_stdout, terminal
from .render import NotebookView, TerminalView, View, footer_text
from .store import KEEP, Commit, ConversationStore, Rerun, StoreError, Turn, TurnMeta, _Keep

if TYPE_CHECKING:  # `ollama` is imported with the first client (chat.client_for), not at %load_ext
    from ollama import Client

__all__ = ["OllamaMagics"]

DEFAULT_HOST = "http://127.0.0.1:11434"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ERROR_CHARS = 4000
_INTERNAL = re.compile(r"[/\\\\](IPython|ipykernel)[/\\\\]")
_LOOKUP_TIMEOUT = 3.0  # seconds for /api/show and /api/ps hints: they never hold up a turn for long
_LOAD_TIMEOUT = 30.0  # seconds for loading a model to learn its window (the turn would wait for that load anyway)


def _user_traceback(err: BaseException) -> str:
    """The traceback as the user's code sees it: IPython's own frames are noise."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _INTERNAL.search(f.filename)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(err), err)
    return "".join(lines)


class _Hidden(dict):  # type: ignore[type-arg]
    """Headers whose values never show: `%config OllamaMagics` prints reprs."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '***'" for k in self) + "}"

    __str__ = __repr__


class SecretDict(Dict):
    """A Dict trait whose values are kept out of every repr."""

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        return value if isinstance(value, _Hidden) else _Hidden(value)


class _HiddenHost(str):
    """A host URL whose repr hides its user info: `%config OllamaMagics` prints reprs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_host(str.__str__(self)))


class SecretHost(Unicode):  # type: ignore[type-arg]
    """A Unicode trait whose repr never shows a password in the URL (the value itself is whole)."""

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        return value if value is None or isinstance(value, _HiddenHost) else _HiddenHost(value)


@magics_class
class OllamaMagics(Lifecycle, JournalCommands, Subcommands, Magics):
    """Chat with an Ollama model from notebook cells; each cell continues the conversation."""

    host = SecretHost(None, allow_none=True, help="Ollama server URL; default: $OLLAMA_HOST, else http://127.0.0.1:11434.").tag(config=True)
    model = Unicode(None, allow_none=True, help="Model for chats that have none of their own; default: $OLLAMA_MODEL.").tag(config=True)
    timeout = Float(300.0, help="Seconds to wait for the server to send something (connect, or the next chunk).").tag(config=True)
    options = Dict(help="Ollama options for every request (a chat's own options and -o override them).").tag(config=True)
    headers = SecretDict(help="Extra HTTP headers for the server (e.g. auth for a remote Ollama); never shown.").tag(config=True)
    rerun = Enum(["rewind", "append"], "rewind", help="Re-running a cell replaces its turn (rewind) or adds a new one (append).").tag(config=True)
    default_num_ctx = Int(4096, help="The server's default window (OLLAMA_CONTEXT_LENGTH, else 4096/32768/262144 by VRAM), assumed when neither the options, /api/ps nor the model's parameters say.").tag(config=True)
    keep_alive = Union([Float(), Unicode()], default_value=None, allow_none=True, help="How long Ollama keeps the model loaded after each request: seconds, or a duration like '30m' or '2h'; negative = until the server stops; None = the server's default (5 m).").tag(config=True)
    max_tool_rounds = Int(5, help="Tool-call rounds per cell before giving up.").tag(config=True)
    max_tool_calls = Int(20, help="Tool calls run per round; the model is told the rest were not run.").tag(config=True)
    display_rate = Float(15.0, help="Most display updates per second while a reply streams.").tag(config=True)
    rich = Enum(["auto", "on", "off"], "auto", help="Rich (notebook) output or plain text; auto asks the frontend.").tag(config=True)
    undo_depth = Int(100, help="Undo steps kept per chat.").tag(config=True)
    warn_context = Bool(True, help="Warn when a prompt nears or passes the context window.").tag(config=True)
    auto_num_ctx = Bool(True, help="Raise a chat's num_ctx (in powers of two) before a prompt would pass 90% of the window; never overrides your own num_ctx.").tag(config=True)
    max_num_ctx = Int(32768, help="The largest num_ctx auto_num_ctx sends (the model's trained length bounds it too).").tag(config=True)
    max_var_chars = Int(8000, help="Most characters one {name}, --cells cell or --file puts into a prompt (the rest is cut, with a note).").tag(config=True)
    db = Unicode(help="SQLite journal that keeps every chat across kernels; '' turns it off. Default: $OLLAMA_MAGIC_DB, else ollama_magic.db in the IPython profile directory.").tag(config=True)
    restore = Enum(["auto", "off"], "auto", help="On %load_ext, bring back this notebook's journaled chats (auto) or start empty (off).").tag(config=True)
    replay = Bool(True, help="Answer a request an earlier kernel of this notebook already asked from the journal (--fresh asks anyway).").tag(config=True)

    @validate("options")
    def _valid_options(self, proposal: Any) -> Any:
        if problem := check_options(proposal["value"], "OllamaMagics.options:"):
            raise TraitError(problem)
        return proposal["value"]

    @validate("keep_alive")
    def _valid_keep_alive(self, proposal: Any) -> Any:
        return keep_alive_value(proposal["value"], "OllamaMagics.keep_alive", TraitError)

    @default("model")
    def _default_model(self) -> str | None:
        return os.environ.get("OLLAMA_MODEL") or None

    @default("db")
    def _default_db(self) -> str:
        return default_path(self.shell)

    @observe("db")
    def _db_changed(self, change: Any) -> None:
        if hasattr(self, "journal"):  # a new file from the next change on (no restore)
            self.journal.close()
            self._open_journal(restore=False)

    @observe("undo_depth")
    def _undo_depth_changed(self, change: Any) -> None:
        if hasattr(self, "store"):  # %config after load: the store's stacks follow
            self.store.set_undo_depth(change["new"])

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.store = ConversationStore(undo_depth=self.undo_depth)
        self.cell_id: str | None = None
        self._cell_source: str | None = None  # the running cell, to tell it from earlier ones
        self.last_reply: str | None = None
        self.last_error: tuple[str, str] | None = None  # (code, traceback) of the last failing cell
        self._auto_model: str | None = None
        self.panels: weakref.WeakSet[Any] = weakref.WeakSet()
        # What the server says about models (capabilities, windows), with short timeouts of its own.
        self.models = ModelInfo(lambda: chat.client_for(self._host()[0], dict(self.headers), min(self.timeout, _LOOKUP_TIMEOUT)),
                                lambda: self._host()[0],
                                load_client=lambda: chat.client_for(self._host()[0], dict(self.headers), min(self.timeout, _LOAD_TIMEOUT)))
        self._shapes: dict[str, PromptShape] = {}  # chat -> the last stored request's shape
        self.sizer = window.Sizer(lambda model: self.context_window(model), self.trained_length,
                                  learn=self.models.learn_window)
        self.stale = context.Staleness(lambda: self.shell.user_ns if self.shell is not None else {},
                                       lambda: self.max_var_chars)
        self._open_journal(restore=self.restore == "auto")

    def _open_journal(self, *, restore: bool) -> None:
        key, notebook = session_key(self.shell)
        self.journal = Journal(self.db, key, notebook=notebook)
        if restored := self.journal.attach(self.store, restore=restore):
            print(restored.line())

    def close(self) -> None:
        """Close every open history panel (they listen to the store)."""
        for panel in list(self.panels):
            panel.close()
        self.journal.close()

    # -- kernel events ---------------------------------------------------
    def pre_run_cell(self, info: Any) -> None:
        self.cell_id = getattr(info, "cell_id", None) or None
        self._cell_source = getattr(info, "raw_cell", None)
        if line := self.journal.retry():  # the restore on load failed; it works now
            print(line)

    def post_run_cell(self, result: Any) -> None:
        self.stale.ran(getattr(result.info, "cell_id", None), result.execution_count)
        err = result.error_in_exec or result.error_before_exec
        if err is None or isinstance(err, KeyboardInterrupt):
            return
        code = result.info.raw_cell if result.info else ""
        if code.lstrip().startswith(("%%ollama", "%ollama")):
            return  # our own errors are not what `%ollama fix` is about
        if isinstance(err, UsageError):
            tb = f"UsageError: {err}"
        else:
            tb = _user_traceback(err)
        self.last_error = (code, _ANSI.sub("", tb)[-_ERROR_CHARS:])

    # -- settings --------------------------------------------------------
    def _host(self) -> tuple[str, str]:
        if self.host:
            return self.host, "from OllamaMagics.host"
        if env := os.environ.get("OLLAMA_HOST"):
            return env, "from OLLAMA_HOST"
        return DEFAULT_HOST, "the default; OLLAMA_HOST is not set"

    def client(self) -> Client:
        return chat.client_for(self._host()[0], dict(self.headers), self.timeout)

    def _friendly(self, exc: BaseException, model: str = "", *, started: bool = False) -> OllamaMagicError:
        if isinstance(exc, OllamaMagicError):  # already one line (a bad host URL, ...)
            return exc
        host, source = self._host()
        # The server's own 400 for think/tools without the capability: the same line as our check.
        if is_http_status(exc, 400) and (capability := server_capability(str(getattr(exc, "error", "")))):
            self.models.forget(model)
            return OllamaMagicError(self._lacks(model, capability))
        installed = None
        if is_http_status(exc, 404):
            installed = self._installed_or_none()
        err = translate(exc, host=host, host_source=source, model=model, installed=installed,
                        timeout=self.timeout, started=started)
        return err or OllamaMagicError(f"{type(exc).__name__}: {exc}")

    def _installed_or_none(self) -> list[str] | None:
        try:
            return chat.installed_models(self.client())
        except Exception:  # only a hint wherever it is used (and _friendly calls this)
            return None

    def installed(self) -> list[str]:
        """The server's models; a friendly error if the server is not there."""
        try:
            return chat.installed_models(self.client())
        except Exception as exc:
            raise self._friendly(exc) from None

    def resolve_model(self, explicit: str | None = None) -> str:
        """-m, else the chat's model, else config/OLLAMA_MODEL, else the only installed one."""
        model = (explicit or self.store.active.model or self.model or self._auto_model or "").strip()
        if model:
            return model
        names = self.installed()
        if len(names) == 1:
            self._auto_model = names[0]
            print(f"Using {names[0]}, the only model on the server (choose another with %ollama model NAME).")
            return names[0]
        if not names:
            raise OllamaMagicError("The Ollama server has no models. Run `ollama pull llama3.2` (or another model), then try again.")
        raise OllamaMagicError(
            f"No model chosen. Installed: {', '.join(names)}. Pick one with `%ollama model NAME`, "
            "`-m NAME`, or set OLLAMA_MODEL."
        )

    def _is_rich(self) -> bool:
        if self.rich != "auto":
            return self.rich == "on"
        from IPython.core.displaypub import DisplayPublisher

        # Terminal IPython prints reprs through the base publisher; a kernel
        # (or a test's recording publisher) has a frontend for rich output.
        return getattr(self.shell, "kernel", None) is not None or type(self.shell.display_pub) is not DisplayPublisher

    # -- the magic -------------------------------------------------------
    @magic_arguments()
    @argument("-m", "--model", help="model for this turn; after it succeeds, the chat's model")
    @argument("-c", "--chat", help="use (create if new) the named chat; it is active once the turn is stored")
    @argument("--system", help="set the chat's system prompt")
    @argument("--new", action="store_true", help="start the chat afresh (old turns go to the undo stack)")
    @argument("--once", action="store_true", help="ask with the history but store neither question nor answer")
    @argument("-o", "--option", action="append", metavar="KEY=VALUE", help="Ollama option for this turn (repeatable); VALUE is JSON when it parses")
    @argument("-t", "--temperature", type=float, help="shorthand for -o temperature=X")
    @argument("--format", help="'json', or a variable holding a JSON schema (dict or pydantic model)")
    @argument("--think", nargs="?", const=True, choices=[True, "true", "false", "high", "medium", "low"], help="thinking on (optionally high/medium/low) or off (false); a thinking model thinks unless told not to")
    @argument("--no-think", dest="think", action="store_const", const=False, help="turn thinking off (sends think: false)")
    @argument("--keep-alive", metavar="DURATION", help="how long Ollama keeps the model loaded after this turn: seconds or e.g. 30m, -1 = keep")
    @argument("--image", action="append", metavar="PATH|VAR", help="attach an image: a file, or a variable with bytes, a PIL image or a matplotlib figure (repeatable)")
    @argument("--tools", metavar="NAME[,NAME]", help="offer these functions from the namespace to the model")
    @argument("--error", action="store_true", help="put the last failing cell's code and traceback before the question")
    @argument("--out", metavar="VAR", help="also store the reply text (or parsed JSON with --format) in VAR")
    @argument("--no-stream", action="store_true", help="one request without streaming")
    @argument("--code", action="store_true", help="put the reply's first code block into the next cell")
    @argument("--cells", type=int, metavar="N", help="put the code and results of the last N cells run before the question")
    @argument("--file", action="append", metavar="PATH", help="attach a text file as a fenced block (repeatable)")
    @argument("--fresh", action="store_true", help="ask the model even if the journal could replay this exact request")
    @line_cell_magic
    def ollama(self, line: str, cell: str | None = None) -> Any:
        """Chat with Ollama. `%%ollama [options]` sends the cell; `%ollama help` lists the subcommands."""
        try:
            with escaped_stdout():  # names and text from the server or files print inert
                if cell is None:
                    return self._line(line)
                return self._turn(self._parse(self.ollama, line), cell)
        except (OllamaMagicError, StoreError) as exc:
            # IPython prints one line only for UsageError itself, not subclasses;
            # the store's errors (unknown chat, name taken, ...) are the user's too.
            # Error text can quote the server (model names, its messages): inert too.
            raise UsageError(terminal(str(exc))) from None

    def _parse(self, func: Callable[..., Any], line: str) -> Any:
        try:
            # POSIX quoting, so --system "Be terse." arrives without its quotes.
            return getattr(func, "parser").parse_args(split_args(line))
        except UsageError as exc:
            msg = str(exc)
            hint = ""
            if m := re.search(r"unrecognized arguments: (\S+)", msg):
                hint = did_you_mean(m.group(1).split("=")[0], getattr(func, "parser")._option_string_actions)
            raise OllamaMagicError(f"{msg}{hint}. See %ollama help.") from None

    # -- one turn ----------------------------------------------------------
    def _turn(self, args: Any, cell: str) -> None:
        store = self.store
        ns = self.shell.user_ns
        started_at = time.perf_counter()
        text, used = interpolate_refs(cell.strip("\n"), ns, default_renderer(self.max_var_chars))
        variables = context.fingerprints(used)
        if args.error:
            text = self._error_prompt(text)
        if not text.strip():
            raise OllamaMagicError("The cell is empty: write a question below %%ollama.")
        text = self._with_context(args, text)
        user: dict[str, Any] = {"role": "user", "content": text}
        if args.image:
            user["images"] = [self._image(ref) for ref in args.image]
        options = dict(self.options)
        fmt = self._format(args.format)
        tools = self._tools(args.tools)
        turn_opts = parse_options(args.option)
        if args.temperature is not None:
            if not math.isfinite(args.temperature):
                raise OllamaMagicError(f"-t takes a finite number like 0.7, not {args.temperature}")
            turn_opts["temperature"] = args.temperature
        if args.out:
            check_out_name(args.out, self.shell.user_ns_hidden)
        cell_id = None if args.once else self.cell_id
        # Nothing changes until the turn is stored: -c NEW is made (and made active) then.
        target = target_chat(store, args.chat, cell_id, rerun=self._rerun, confirmed=args.new)
        conv = target.conv
        options.update(conv.options)
        options.update(turn_opts)
        model = self.resolve_model(args.model or conv.model)
        think = {"true": True, "false": False}.get(args.think, args.think) if isinstance(args.think, str) else args.think
        self._check_request(model, think, tools, bool(args.image), options)
        keep_alive = self.keep_alive if args.keep_alive is None else keep_alive_value(args.keep_alive, "--keep-alive", OllamaMagicError)
        base = 0 if args.new or target.create else store.base_for(cell_id, chat=target.name, rerun=self._rerun)
        system = conv.system if args.system is None else (args.system or None)
        messages = conv.wire(base, system=system)  # the history as a view: nothing copied, however long
        try:  # may load the model to learn its window (window.Sizer): Ctrl-C there sent nothing
            sizing = self.sizer.before(conv, base, system, user, model, options.get("num_ctx"), enabled=self.auto_num_ctx,
                                       max_num_ctx=self.max_num_ctx, default=self.default_num_ctx)
        except KeyboardInterrupt:
            raise Interrupted("stopped before the request (while asking the server about the model's window); "
                              "nothing was sent or stored") from None
        if sizing.num_ctx:
            options["num_ctx"] = sizing.num_ctx
        n_history = len(messages)
        messages.append(user)
        request = chat.ChatRequest(model, messages, options or None, fmt,
                                   think, tools, stream=not args.no_stream, keep_alive=keep_alive)
        client = self.client()
        # The placeholder goes up last, right before the request: from here on
        # every exit (reply, error, interrupt) replaces it.
        view: View = NotebookView(model, rate=self.display_rate) if self._is_rich() else TerminalView(model)
        exchange: list[dict[str, Any]] = []
        try:
            with Feed(store, target.name, user, view, rate=self.display_rate) as sink:  # the panel's live view
                lead = 1 if system else 0  # the key hashes only what the store has not chained yet
                exchange, reply = (self.journal.replay(request, sink, fresh=args.fresh or not self.replay,
                                                       history=lambda: (lead, n_history - lead, conv.chain(base)))
                                   or chat.converse(client, request, sink, max_tool_rounds=self.max_tool_rounds,
                                                  max_tool_calls=self.max_tool_calls))
        except KeyboardInterrupt:
            kept = self._interrupted(view, args, user, cell_id, model, started_at, target, variables)
            # Still a KeyboardInterrupt (Run All stops), shown as one line, not httpx's traceback.
            raise Interrupted(kept) from None
        except chat.ToolRoundsExceeded as exc:
            view.finish(footer_text(model, {}, time.perf_counter() - started_at, ["stopped: too many tool rounds"]))
            raise OllamaMagicError(f"{exc}; nothing of this turn was stored. Raise %config OllamaMagics.max_tool_rounds or ask differently.") from None
        except chat.IncompleteReply:
            view.finish(footer_text(model, {}, time.perf_counter() - started_at, ["failed"]))
            host = self._host()[0]
            raise OllamaMagicError(f"The reply from Ollama at {redact_host(host)} ended before it was complete. Nothing was stored; run the cell again.") from None
        except Exception as exc:
            started = bool(view.reply.chunks)
            err = self._friendly(exc, model, started=started)
            if started:
                view.finish(footer_text(model, {}, time.perf_counter() - started_at, ["failed"]))
            else:
                view.abandon()
            raise err from None
        seconds = time.perf_counter() - started_at
        reply_msg = reply.message(with_tool_calls=False)
        notes: list[str] = []
        skipped = ""
        ignored = reply.tool_calls[:self.max_tool_calls] if (reply.tool_calls and not tools) else None
        notes += sizing.notes if self.warn_context or sizing.raised else []
        notes += self.stale.notes(conv, base)
        notes += done_reason_notes(reply.stats.get("done_reason"), options)
        if reply.stats.get("done_reason") in ("load", "unload") and not (reply.content or reply.thinking):
            # routes.go ChatHandler: a load/unload answer is not a reply; never store it as a turn.
            view.finish(footer_text(model, reply.stats, seconds, [f"Ollama only {reply.stats['done_reason']}ed the model", "nothing stored"]))
            raise OllamaMagicError(f"Ollama answered with done_reason {reply.stats['done_reason']!r} and no reply, so nothing was stored; run the cell again.")
        if not args.once:
            meta = self._meta(reply.stats, cell_id, model, "ok", options, variables)
            turn = Turn((user, *exchange, reply_msg), meta)
            # A prompt smaller than an earlier one of a history that only grew
            # means Ollama dropped messages; judge against the history as it was.
            grew = base == len(conv.turns) and not args.new and not conv.edited
            # ... unless the request shrank by itself (another model, fewer tools, a shorter system prompt).
            shape = PromptShape(model, len(system or ""), frozenset(tools or ()))
            prior = conv.max_prompt if grew and not shape.explains_shrink(self._shapes.get(conv.name)) else 0
            self._shapes[conv.name] = shape
            done = self._commit(turn, args, target)
            notes += [target.note] if target.note else []
            if self.warn_context:
                try:  # may ask the server (short timeout); the turn is stored already
                    notes += self.sizer.after(sizing, meta.prompt_eval_count, prior, model,
                                              enabled=self.auto_num_ctx, default=self.default_num_ctx)
                except KeyboardInterrupt:  # finish the output and --out first, then stop the cell
                    skipped = "the reply is complete and stored; the context-window check was skipped"
            if done.dropped:
                notes.append(f"rewound {done.dropped} later turn{'s' if done.dropped != 1 else ''} (undo with %ollama undo)")
        else:
            notes.append("not stored (--once)")
        self.last_reply = reply.content
        notes += self.journal.notes()
        view.finish(footer_text(model, reply.stats, seconds, notes), ignored_calls=ignored)
        self._deliver(args, reply.content)
        if skipped:
            raise Interrupted(skipped)

    def _deliver(self, args: Any, content: str) -> None:
        if args.out:
            value: Any = content
            if args.format:
                try:
                    value = json.loads(content)
                except ValueError:
                    print(f"--out: the reply is not valid JSON; {args.out} holds the text instead.", file=sys.stderr)
            self.shell.user_ns[args.out] = value
        if args.code:
            code = first_code_block(content)
            if code is None:
                print("--code: the reply has no fenced code block.", file=sys.stderr)
            else:
                self.shell.set_next_input(code, replace=False)

    def _interrupted(self, view: View, args: Any, user: dict[str, Any], cell_id: str | None,
                     model: str, started_at: float, target: Target, variables: dict[str, str]) -> str:
        """Keep what arrived, marked; a half tool exchange is not a valid history.

        A round that asked for tools (whether or not one has run yet) is such a
        half exchange: nothing is stored. Returns what the one-line notice says.
        """
        reply = view.reply
        seconds = time.perf_counter() - started_at
        if view.tools or reply.tool_calls or not (reply.parts or reply.thinking_parts) or args.once:
            view.finish(footer_text(model, reply.stats, seconds, ["interrupted", "nothing stored"]))
            return "nothing of this turn was stored"
        meta = self._meta(reply.stats, cell_id, model, "interrupted", {}, variables)
        turn = Turn((user, reply.message(with_tool_calls=False)), meta)
        self._commit(turn, args, target)
        self.last_reply = reply.content
        notes = ["interrupted", "partial reply kept", *([target.note] if target.note else [])]
        view.finish(footer_text(model, reply.stats, seconds, notes))
        return f"partial reply kept in chat {target.name!r}, marked interrupted (undo with %ollama undo)"

    def _commit(self, turn: Turn, args: Any, target: Target) -> Commit:
        """Store a turn with the cell's -c, -m, --system and --new, as one undo step."""
        return self.store.commit(turn, chat=target.name, rerun=self._rerun, model=args.model or None,
                                 system=_keep(args.system), fresh=args.new,
                                 create=target.create, activate=target.activate)

    def _meta(self, stats: Mapping[str, Any], cell_id: str | None, model: str, status: str,
              options: Mapping[str, Any], variables: dict[str, str] | None = None) -> TurnMeta:
        num_ctx = options.get("num_ctx")
        return TurnMeta(
            cell_id=cell_id, model=model, status="interrupted" if status == "interrupted" else "ok",
            done_reason=stats.get("done_reason"), prompt_eval_count=stats.get("prompt_eval_count"),
            eval_count=stats.get("eval_count"), total_duration=stats.get("total_duration"),
            load_duration=stats.get("load_duration"), prompt_eval_duration=stats.get("prompt_eval_duration"),
            eval_duration=stats.get("eval_duration"), num_ctx=num_ctx if isinstance(num_ctx, int) else None,
            variables=variables or None,
        )

    @property
    def _rerun(self) -> Rerun:
        return "append" if self.rerun == "append" else "rewind"

    def context_window(self, model: str) -> int | None:
        """The window the server runs `model` with when no num_ctx is sent, if it says (`ModelInfo.server_window`)."""
        window = self.models.server_window(model)
        return window.size if window is not None else None

    def trained_length(self, model: str) -> int | None:
        """The model's trained context length (`model_info.*.context_length`)."""
        facts = self.models.facts(model)
        return facts.trained if facts is not None else None

    def _check_request(self, model: str, think: Any, tools: Any, images: bool, options: Mapping[str, Any]) -> None:
        """Refuse, before sending, what Ollama would refuse or silently ignore (issue #13 points 3, 5)."""
        if problem := check_options(options):
            raise OllamaMagicError(problem)
        wanted = [c for c, on in (("thinking", think not in (None, False)), ("tools", bool(tools)), ("vision", images)) if on]
        if not wanted:
            return
        facts = self.models.facts(model)
        for capability in wanted:
            if facts is not None and facts.lacks(capability):
                raise OllamaMagicError(self._lacks(model, capability))

    def _lacks(self, model: str, capability: str) -> str:
        installed = self._installed_or_none()
        having = self.models.having(capability, installed) if installed is not None else None
        return lacks_message(model, capability, having)

    def _with_context(self, args: Any, question: str) -> str:
        """--cells and --file blocks, then the question."""
        blocks = []
        if args.cells is not None:
            hm = self.shell.history_manager
            render = default_renderer(self.max_var_chars)
            blocks.append(context.cells_block(hm.input_hist_raw, hm.output_hist, args.cells,
                                              current=self._cell_source,
                                              render=lambda v: render(v, None), limit=self.max_var_chars))
        blocks += [context.file_block(ref, self.max_var_chars) for ref in args.file or ()]
        return "\n\n".join([*blocks, question])

    def _error_prompt(self, question: str) -> str:
        if self.last_error is None:
            raise OllamaMagicError("No cell has failed in this kernel yet; nothing to explain.")
        code, tb = (scrub(part, self._secrets()) for part in self.last_error)
        ask = question.strip() or "Why did this fail, and how do I fix it?"
        return f"This notebook cell failed:\n\n```python\n{code.strip()}\n```\n\nTraceback:\n\n```\n{tb.strip()}\n```\n\n{ask}"

    def _secrets(self) -> list[str]:
        """What must never be sent or stored: header values, OLLAMA_API_KEY, host passwords."""
        found: list[str] = []
        for value in self.headers.values():
            value = str(value)
            found.append(value)
            if " " in value.strip():  # "Bearer TOKEN": the token alone too
                found.append(value.strip().split(None, 1)[1])
        if key := os.environ.get("OLLAMA_API_KEY"):
            found.append(key)
        for host in (self.host, os.environ.get("OLLAMA_HOST")):
            if host:
                found += host_secrets(str(host))
        return found

    def _format(self, spec: str | None) -> str | dict[str, Any] | None:
        if not spec:
            return None
        if spec == "json":
            return "json"
        ns = self.shell.user_ns
        if spec not in ns:
            raise OllamaMagicError(f"--format takes 'json' or a variable holding a JSON schema; {spec!r} is not defined{format_hint(spec, ns, self.shell.user_ns_hidden)}")
        value = ns[spec]
        if isinstance(value, dict):
            return value
        schema = getattr(value, "model_json_schema", None)
        if isinstance(value, type) and callable(schema):
            return cast("dict[str, Any]", schema())
        raise OllamaMagicError(f"--format {spec}: expected a dict (JSON schema) or a pydantic model class, got {type(value).__name__}")

    def _tools(self, spec: str | None) -> dict[str, Callable[..., Any]] | None:
        if not spec:
            return None
        ns = self.shell.user_ns
        tools: dict[str, Callable[..., Any]] = {}
        for name in (n.strip() for n in spec.split(",")):
            if not name:
                continue
            fn = ns.get(name)
            if not is_tool(fn):
                raise tool_error(name, fn, ns, self.shell.user_ns_hidden)
            tools[name] = fn
        return tools or None

    def _image(self, ref: str) -> str:
        from .images import to_base64

        ns = self.shell.user_ns
        if ref.isidentifier() and ref in ns:
            try:
                return to_base64(ns[ref])
            except (TypeError, ValueError) as exc:
                raise OllamaMagicError(f"--image {ref}: {exc}") from None
        path = Path(ref).expanduser()
        if not path.is_file():
            raise OllamaMagicError(f"--image {ref}: no such file or variable")
        try:
            return to_base64(path.read_bytes())
        except OSError as exc:
            raise OllamaMagicError(f"--image {ref}: cannot read it ({exc.strerror})") from None
        except (TypeError, ValueError) as exc:
            raise OllamaMagicError(f"--image {ref}: {exc}") from None


def done_reason_notes(reason: Any, options: Mapping[str, Any]) -> list[str]:
    """The footer's word on a reply Ollama stopped early (done_reason "length")."""
    if reason != "length":
        return []
    limit = options.get("num_predict")
    why = f"num_predict is {limit}" if isinstance(limit, int) and limit >= 0 else "the context window filled up"
    return [f"⚠ cut at num_predict / context ({why}): the reply is incomplete; raise -o num_predict=N "
            f"(-1 = no limit) or num_ctx, or ask to continue"]


def _keep(system: str | None) -> str | None | _Keep:
    """--system given (even empty, to clear) changes the prompt; absent keeps it."""
    return KEEP if system is None else system
