"""`%ollama sessions | restore | forget | log`: the journal from the line magic.

A mixin of `OllamaMagics` beside `commands.Subcommands`, registered with
`commands.subcommand` (one `magic_arguments` parser each). What the journal holds came
from models and users, so it is printed as plain text with control
characters shown escaped.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from .commands import argument, subcommand
from .errors import OllamaMagicError
from .journal import Journal, JournalError
from .store import ConversationStore, StoreError

__all__ = ["JournalCommands"]

_SNIPPET = 100


def _plain(text: str, limit: int = _SNIPPET) -> str:
    """One line of untrusted text: control characters (escape sequences, bidi overrides) shown escaped."""
    from .safe import terminal

    out = terminal(" ".join(text.split()))
    return out if len(out) <= limit else out[: limit - 1] + "…"


_CONSOLE = "console:"
_CONSOLE_ID = 8  # hex digits of a console's id shown; enough to tell consoles apart


def _where(key: str) -> str:
    """A session as listed: the notebook's path, or `console:ID` (what `%ollama restore` takes)."""
    return key[: len(_CONSOLE) + _CONSOLE_ID] if key.startswith(_CONSOLE) else key


class JournalCommands:
    """The journal's subcommands; mixed into `OllamaMagics`, whose state it uses."""

    journal: Journal
    store: ConversationStore

    def _journal_on(self) -> Journal:
        if not self.journal.enabled:
            raise OllamaMagicError("The journal is off (OllamaMagics.db is ''); set %config OllamaMagics.db = 'PATH' to keep chats.")
        return self.journal

    def _journal_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (JournalError, StoreError) as exc:
            raise OllamaMagicError(str(exc)) from None
        except Exception as exc:  # sqlite3 and OS errors: the one line the journal would say
            raise OllamaMagicError(self.journal._describe(exc)) from None

    @subcommand("sessions", "notebooks and consoles in the journal: path, chats, turns, last change")
    def _sub_sessions(self, args: argparse.Namespace) -> None:
        journal = self._journal_on()
        rows = self._journal_call(journal.sessions)
        print(f"Journal {journal.path}: {len(rows)} session{'s' if len(rows) != 1 else ''}.")
        for key, _notebook, chats, turns, updated in rows:
            mark = "*" if key == journal.key else " "
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(updated))
            print(f"{mark} {stamp}  {chats:>3} chat{'s' if chats != 1 else ' '}  {turns:>5} turn{'s' if turns != 1 else ' '}  {_plain(_where(key), 200)}")

    @subcommand("restore", "bring back a notebook's journaled chats (default: this one; undoable)")
    @argument("path", nargs="?", metavar="PATH", help="the notebook whose chats to bring back, or console:ID from %%ollama sessions")
    def _sub_restore(self, args: argparse.Namespace) -> None:
        journal = self._journal_on()
        key = None
        if args.path and args.path.startswith(_CONSOLE):  # a terminal's or bare kernel's session, by its listed id
            key = self._journal_call(journal.console_key, args.path)
        elif args.path:
            key = os.path.abspath(os.path.expanduser(args.path))
        found = self._journal_call(journal.restore, key)
        if found is None:
            where = args.path or ("this notebook" if journal.notebook else "this console")
            raise OllamaMagicError(f"The journal holds nothing for {where}; %ollama sessions lists what it holds.")
        print(found.line())

    @subcommand("forget", "delete this notebook's journal (the chats stay in memory)")
    @argument("--undo", action="store_true", help="bring the forgotten journal back (until the kernel ends)")
    def _sub_forget(self, args: argparse.Namespace) -> None:
        journal = self._journal_on()
        if args.undo:
            self._journal_call(journal.unforget)
            print("The journal of this notebook is back, and journaling resumes.")
            return
        n = self._journal_call(journal.forget)
        print(f"Forgot this notebook's journal ({n} turn{'s' if n != 1 else ''}); this kernel journals it no more. "
              "%ollama forget --undo brings it back until the kernel ends.")

    @subcommand("log", "search every journaled message, across notebooks (default: the latest)", text=True)
    @argument("text", nargs="*", metavar="TEXT", help="words to look for")
    def _sub_log(self, args: argparse.Namespace) -> None:
        journal = self._journal_on()
        text = args.text.strip()
        hits = self._journal_call(journal.search, text)
        if not hits:
            print(f"No journaled turn contains {text!r}." if text else "The journal holds no turns yet.")
            return
        for origin, key, chat, live, messages in hits:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(origin))
            state = "" if live else " (rewound or replaced)"
            print(f"{stamp}  {_plain(_where(key), 200)}  chat {_plain(chat, 60)}{state}")
            user, reply = messages[0], messages[-1]
            print(f"  you:   {_plain(str(user.get('content') or ''))}")
            print(f"  model: {_plain(str(reply.get('content') or ''))}")
