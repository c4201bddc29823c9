"""The journal: every change to the conversation store, kept in SQLite.

A notebook outlives its kernel; its conversation should too. The journal
listens to the store's events (the store knows nothing of it) and writes each
change in a transaction of its own, in the kernel's thread, while the cell
runs: the turn is on disk before its reply is finished, so a `kill -9` right
after a reply loses nothing.

* Keyed by notebook (`JPY_SESSION_NAME`, else `__vsc_ipynb_file__`, else
  `__session__`, as an absolute path). A terminal or bare kernel journals
  under a console key of its own and is never restored automatically.
* Append-only per turn: a new turn is one INSERT. A rewind, delete or reset
  marks rows not live (`live = 0`) instead of deleting them, so every
  completed turn stays there for replay; only rare changes (undo, delete,
  edit) touch more than one row.
* Replay answers a request journaled for this notebook by an earlier kernel
  (its canonical JSON's SHA-256) without asking the server; within one
  kernel a re-run asks again.
* A broken database (locked, corrupt, read-only, full, newer schema) never
  stops a turn: one line says so, the kernel goes on in memory, and the next
  change tries again (writing this notebook's rows in full, as after any
  gap).
* A failed restore never lets an empty kernel overwrite a notebook's
  chats: until the restore has succeeded, each cell tries it again first,
  and so does each write (in its transaction). Before this kernel changed
  anything it is a normal restore; after, the earlier chats come back
  beside this kernel's (renamed `NAME-restored` where the name is taken), so
  both are in memory and in the journal.
* No secrets: only messages, turn metadata, chat names, models and options
  go in; never the host, headers or keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digest import SEED, canonical, chain
from .store import Conversation, ConversationStore, Event, Message, Turn, TurnMeta

if TYPE_CHECKING:
    import sqlite3

    from .chat import ChatRequest, Reply, Sink

__all__ = [
    "SCHEMA_VERSION",
    "Journal",
    "JournalError",
    "default_path",
    "legacy_request_key",
    "request_key",
    "session_key",
]

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 0.2  # seconds to wait for another kernel's write; then go on in memory
FILE_NAME = "ollama_magic.db"
# This process. Replay answers only from turns other (earlier) kernels wrote;
# a module constant, so %reload_ext is still the same kernel.
KERNEL = uuid.uuid4().hex
_TURN_FIELDS = frozenset(f.name for f in dataclasses.fields(TurnMeta))
_STAT_KEYS = ("done_reason", "total_duration", "load_duration", "prompt_eval_count",
              "prompt_eval_duration", "eval_count", "eval_duration")

_SCHEMA = """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,          -- notebook path, or console:<kernel>
    notebook INTEGER NOT NULL,
    active TEXT,
    seq INTEGER NOT NULL DEFAULT 0,    -- change counter: tells a kernel another one wrote
    writer TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE chats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session INTEGER NOT NULL,
    name TEXT NOT NULL,
    model TEXT,
    system TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    pos INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session, name)
);
CREATE TABLE turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a remembered row id stays true
    chat INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    live INTEGER NOT NULL,             -- 0: rewound, deleted, reset or edited away
    messages TEXT NOT NULL,
    meta TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT,                      -- request_key of what produced this reply
    kernel TEXT NOT NULL,
    origin REAL NOT NULL               -- when the model gave this reply
);
CREATE INDEX turns_live ON turns (chat, live, pos);
CREATE INDEX turns_request ON turns (request) WHERE request IS NOT NULL;
"""
_FTS = "CREATE VIRTUAL TABLE turn_text USING fts5 (body)"


class JournalError(Exception):
    """The journal cannot do what was asked; the message says what to do."""


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock up front) ... COMMIT; rolled back on any exception, an interrupt too."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _say(text: str) -> None:
    print(f"ollama_magic: {text}", file=sys.stderr)


# -- where and which notebook ---------------------------------------------------
def default_path(shell: Any) -> str:
    """$OLLAMA_MAGIC_DB, else a file in the IPython profile directory (like storemagic)."""
    env = os.environ.get("OLLAMA_MAGIC_DB")
    if env is not None:
        return env
    location = getattr(getattr(shell, "profile_dir", None), "location", None)
    if not location:
        from IPython.paths import get_ipython_dir

        location = os.path.join(get_ipython_dir(), "profile_default")
    return os.path.join(location, FILE_NAME)


def session_key(shell: Any) -> tuple[str, bool]:
    """(key, is_notebook): the notebook's absolute path, else this console's own key."""
    ns = getattr(shell, "user_ns", None) or {}
    for name in (os.environ.get("JPY_SESSION_NAME"), ns.get("__vsc_ipynb_file__"), ns.get("__session__")):
        if isinstance(name, str) and name.strip():
            return os.path.abspath(os.path.expanduser(name.strip())), True
    return f"console:{KERNEL}", False


# -- what a request is ----------------------------------------------------------
def _tool_schemas(tools: Mapping[str, Callable[..., Any]] | None) -> list[Any] | None:
    if not tools:
        return None
    out: list[Any] = []
    for name, fn in tools.items():
        try:  # the schema the client sends for a function
            from ollama._utils import convert_function_to_tool

            out.append(convert_function_to_tool(fn).model_dump(exclude_none=True))
        except Exception:
            import inspect

            try:
                sig = str(inspect.signature(fn))
            except (TypeError, ValueError):
                sig = "?"
            out.append([name, sig, inspect.getdoc(fn) or ""])
    return out


KEY_VERSION = "2:"  # request keys before it were bare hex digests (legacy_request_key)


def request_key(req: ChatRequest, history: tuple[int, int, bytes] | None = None) -> str:
    """The request as one string: model, options, format, think, tools, every message.

    SHA-256 of the canonical head (with a leading system message) and the
    chained digest (`digest.chain`) of the other messages. `history` =
    (start, n, digest): `req.messages[start:start + n]` chain to `digest`
    (`Conversation.chain`), so only the messages after them are hashed: a
    request key costs O(1) per turn however long the chat. Without it the
    whole request is hashed; both give the same key.
    """
    msgs = req.messages
    if history is None:
        start = 1 if msgs and msgs[0].get("role") == "system" else 0
        n, prev = 0, SEED
    else:
        start, n, prev = history
    head = {"model": req.model, "options": req.options or {}, "format": req.format,
            "think": req.think, "tools": _tool_schemas(req.tools), "lead": msgs[:start]}
    tail = chain(prev, msgs[start + n:])
    return KEY_VERSION + hashlib.sha256(canonical(head) + b"\n" + tail).hexdigest()


def legacy_request_key(req: ChatRequest) -> str:
    """The key journals written before KEY_VERSION hold (the whole request hashed, O(history)).

    Asked only when this database still has such rows, so their replies still replay.
    """
    head = {"model": req.model, "options": req.options or {}, "format": req.format,
            "think": req.think, "tools": _tool_schemas(req.tools)}
    digest = hashlib.sha256(canonical(head))
    for msg in req.messages:
        digest.update(b"\n")
        digest.update(canonical(msg))
    return digest.hexdigest()


def _dumps(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate from a server: keep it, escaped
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


def _text_of(messages: Iterable[Message]) -> str:
    body = "\n".join(str(m.get("content") or "") for m in messages)
    return body.encode("utf-8", "replace").decode("utf-8")


def _header(conv: Conversation) -> tuple[str | None, str | None, str]:
    return conv.model, conv.system, _dumps(conv.options)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# -- the mirror: what this kernel knows is in the database ------------------------
@dataclass
class _Row:
    turn: Turn
    rowid: int
    request: str | None
    kernel: str
    origin: float


@dataclass
class _Chat:
    rowid: int
    header: tuple[str | None, str | None, str]
    rows: list[_Row]


@dataclass
class Restored:
    """What `Journal.read` found for one notebook."""

    key: str
    chats: list[Conversation]
    active: str | None
    updated: float
    seq: int
    rows: dict[str, _Chat]

    @property
    def turns(self) -> int:
        return sum(len(c.turns) for c in self.chats)

    def line(self) -> str:
        n, t = len(self.chats), self.turns
        return (f"restored {n} chat{'s' if n != 1 else ''}, {t} turn{'s' if t != 1 else ''} "
                f"from {_stamp(self.updated)}; %ollama reset to start afresh")


@dataclass
class _Forgotten:
    session: tuple[Any, ...]
    chats: list[tuple[Any, ...]]
    turns: list[tuple[Any, ...]]
    texts: list[tuple[Any, ...]]


RESTORED_SUFFIX = "-restored"

Plan = Callable[[], None]


class Journal:
    """One kernel's journal of one store, keyed by its notebook (or console)."""

    def __init__(self, path: str | os.PathLike[str] | None, key: str, *, notebook: bool,
                 say: Callable[[str], None] = _say) -> None:
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path)))) if path else None
        self.key = key
        self.notebook = notebook
        self._say = say
        self._conn: sqlite3.Connection | None = None
        self._fts = False
        self._store: ConversationStore | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._chats: dict[str, _Chat] = {}
        self._known: dict[int, _Row] = {}  # id(turn) -> its committed row (holds the turn, so ids stay unique)
        self._seq: int | None = None  # the session's change counter as this kernel last saw it
        self._dirty = True  # the mirror may not match the database: write the session in full
        self._problem: str | None = None  # the failure last reported (each is said once)
        self._pending: tuple[str, Message, float | None] | None = None  # (request key, user message, origin)
        self._asked: set[str] = set()  # request keys this kernel has seen: those are asked anew
        self._legacy: bool | None = None  # the database holds keys older than KEY_VERSION (asked once)
        self._notes: list[str] = []
        self._paused = False  # after %ollama forget
        self._forgotten: _Forgotten | None = None
        # The restore on load failed: the journal may hold chats this kernel has
        # not seen, so no write may replace them until they are read (`_settle`).
        self._awaiting = False
        self._touched: set[str] = set()  # chats this kernel changed meanwhile
        self._quiet = False  # bringing chats in that the next write journals in full

    @property
    def enabled(self) -> bool:
        return self.path is not None

    # -- lifecycle ---------------------------------------------------------------
    def attach(self, store: ConversationStore, *, restore: bool = False) -> Restored | None:
        """Journal every change of `store` from now on; first restore this notebook if asked.

        A failed restore is said once; the kernel starts empty, and the restore
        is tried again before the next cell (`retry`) or write.
        """
        self.detach()
        self._store = store
        self._awaiting, self._touched = False, set()
        found = None
        if restore and self.notebook and self.path is not None:
            try:
                found = self.restore(undoable=False)  # a new kernel has no earlier state to undo to
            except Exception as exc:
                self._fail(exc)
                self._awaiting = True
        self._unsubscribe = store.subscribe(self._on_event)
        return found

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = None

    def close(self) -> None:
        self.detach()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- the database ---------------------------------------------------------------
    def _open(self, *, write: bool) -> sqlite3.Connection | None:
        """The connection; None when there is nothing to read (and `write` is False)."""
        if self._conn is not None:
            return self._conn
        path = self.path
        if path is None:
            return None
        if not path.exists():
            if not write:
                return None  # nothing journaled yet: cost nothing until the first change
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # owner only: it holds conversations
        import sqlite3

        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            version = self._version(conn)  # fails here on a file that is not a database
            if version < SCHEMA_VERSION:
                if not write:
                    conn.close()
                    return None
                self._create(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: survives a killed kernel, ~0.05 ms a commit
            try:
                conn.execute("SELECT 1 FROM turn_text LIMIT 0")
                self._fts = True
            except sqlite3.Error:  # created without FTS5, or this build lacks it: LIKE instead
                self._fts = False
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _version(self, conn: sqlite3.Connection) -> int:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} is from a newer ollama_magic (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); this kernel keeps its chats in memory only. Upgrade "
                "ollama_magic, or set %config OllamaMagics.db to another file."
            )
        return version

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent; needs no transaction open
        with _immediate(conn):
            version = self._version(conn)  # another kernel may have created it meanwhile
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise JournalError(
                        f"{self.path} is a database of something else, not an ollama_magic journal; "
                        "set %config OllamaMagics.db to another file. This kernel keeps its chats in memory."
                    )
                for statement in _SCHEMA.split(";"):  # not executescript: it would commit
                    if statement.strip():
                        conn.execute(statement)
                try:
                    conn.execute(_FTS)
                except Exception:  # no FTS5 in this SQLite: %ollama log uses LIKE
                    pass
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _fail(self, exc: BaseException) -> None:
        message = self._describe(exc)
        if message != self._problem:
            self._problem = message
            self._say(message)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, JournalError):
            return str(exc)
        text = str(exc) or type(exc).__name__
        low = text.lower()
        if "locked" in low or "busy" in low:
            cause = "is locked by another process (a kernel writing it)"
        elif "readonly" in low or "read-only" in low or isinstance(exc, PermissionError):
            cause = "is read-only"
        elif "full" in low or getattr(exc, "errno", None) == 28:
            cause = "is on a full disk"
        elif "not a database" in low or "malformed" in low or "corrupt" in low:
            cause = "is not a readable database (damaged?); move it away and a new one is started"
        else:
            cause = f"cannot be used ({text})"
        return (f"the journal {self.path} {cause}; this kernel keeps its chats in memory and tries "
                "again at the next change (%config OllamaMagics.db = '' turns the journal off).")

    # -- writing ----------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if self._quiet:
            return
        if self._awaiting and event.kind != "switched":
            self._touched.add(event.chat)
        if self._paused or self.path is None or self._store is None:
            return
        self.write(event)

    def write(self, event: Event | None = None) -> bool:
        """Journal the store's change (`None`: the whole session); False if it failed."""
        if self._store is None or self.path is None:
            return False
        dirty, self._dirty = self._dirty, True  # stays so unless the plan below lands
        try:
            conn = self._open(write=True)
            assert conn is not None
            if conn.in_transaction:  # an interrupt in an earlier change
                conn.execute("ROLLBACK")
            with _immediate(conn):
                self._version(conn)
                if self._awaiting:  # read what the failed restore missed before writing over it
                    if line := self._settle(self.read()):
                        self._say(line)
                    dirty = True
                plan, seq = self._apply(conn, event, dirty)
        except Exception as exc:  # whatever it is, the turn goes on in memory
            self._fail(exc)
            return False
        plan()
        self._seq, self._dirty, self._problem = seq, False, None
        return True

    def _apply(self, conn: sqlite3.Connection, event: Event | None, dirty: bool) -> tuple[Plan, int]:
        store = self._store
        assert store is not None
        now = time.time()
        found = conn.execute("SELECT id, seq FROM sessions WHERE key = ?", (self.key,)).fetchone()
        if found is None:
            sid = int(conn.execute(
                "INSERT INTO sessions (key, notebook, seq, created, updated) VALUES (?, ?, 0, ?, ?)",
                (self.key, int(self.notebook), now, now)).lastrowid or 0)
            seq = 0
        else:
            sid, seq = found
        if self._seq is not None and seq != self._seq:
            self._say("another kernel changed this notebook's journal since this kernel last wrote it; "
                      "it now holds this kernel's chats (the last change wins).")
        if dirty or seq != self._seq or event is None:
            plan = self._sync_all(conn, sid)
        elif event.kind == "switched":
            plan = _nothing
        elif event.chat not in store:
            plan = self._drop_chat(conn, event.chat)
        else:
            plan = self._sync_chat(conn, sid, store.get(event.chat), append=event.kind == "turn_added")
        conn.execute("UPDATE sessions SET seq = ?, active = ?, writer = ?, updated = ? WHERE id = ?",
                     (seq + 1, store.active_name, KERNEL, now, sid))
        return plan, seq + 1

    def _drop_chat(self, conn: sqlite3.Connection, name: str) -> Plan:
        chat = self._chats.get(name)
        if chat is None:
            return _nothing
        conn.execute("UPDATE chats SET removed = 1 WHERE id = ?", (chat.rowid,))
        conn.execute("UPDATE turns SET live = 0 WHERE chat = ? AND live = 1", (chat.rowid,))
        def plan() -> None:
            self._chats.pop(name, None)
        return plan

    def _chat_row(self, conn: sqlite3.Connection, sid: int, conv: Conversation,
                  existing: int | None) -> int:
        """The chat's row, made live with the chat's settings; its turns start not live."""
        model, system, options = _header(conv)
        pos = self._store.names.index(conv.name) if self._store else 0
        if existing is None:
            hit = conn.execute("SELECT id FROM chats WHERE session = ? AND name = ?", (sid, conv.name)).fetchone()
            existing = hit[0] if hit else None
        if existing is None:
            return int(conn.execute(
                "INSERT INTO chats (session, name, model, system, options, pos) VALUES (?, ?, ?, ?, ?, ?)",
                (sid, conv.name, model, system, options, pos)).lastrowid or 0)
        conn.execute("UPDATE chats SET model = ?, system = ?, options = ?, pos = ?, removed = 0 WHERE id = ?",
                     (model, system, options, pos, existing))
        conn.execute("UPDATE turns SET live = 0 WHERE chat = ? AND live = 1", (existing,))
        return existing

    def _sync_chat(self, conn: sqlite3.Connection, sid: int, conv: Conversation, *, append: bool) -> Plan:
        chat = self._chats.get(conv.name)
        if chat is None:
            cid = self._chat_row(conn, sid, conv, None)
            chat = _Chat(cid, _header(conv), [])
            new = True
        else:
            new = False
            header = _header(conv)
            if header != chat.header:
                conn.execute("UPDATE chats SET model = ?, system = ?, options = ? WHERE id = ?",
                             (*header, chat.rowid))
        old, turns = chat.rows, conv.turns
        if append and len(turns) == len(old) + 1:
            keep = len(old)  # the common case: one INSERT, whatever the length of the chat
        else:
            keep, n = 0, min(len(turns), len(old))
            while keep < n and turns[keep] is old[keep].turn:
                keep += 1
            if keep < len(old):
                conn.execute("UPDATE turns SET live = 0 WHERE chat = ? AND live = 1 AND pos >= ?",
                             (chat.rowid, keep))
        tail = [self._put(conn, chat.rowid, i, t, old[i] if i < len(old) else None)
                for i, t in enumerate(turns[keep:], keep)]
        header = _header(conv)

        def plan() -> None:
            chat.header = header
            del chat.rows[keep:]
            chat.rows.extend(tail)
            for row in tail:
                self._known[id(row.turn)] = row
            if new:
                self._chats[conv.name] = chat
        return plan

    def _sync_all(self, conn: sqlite3.Connection, sid: int) -> Plan:
        """Make the session's rows exactly this kernel's store (after a gap, or another kernel)."""
        store = self._store
        assert store is not None
        conn.execute("UPDATE turns SET live = 0 WHERE live = 1 AND chat IN (SELECT id FROM chats WHERE session = ?)", (sid,))
        conn.execute("UPDATE chats SET removed = 1 WHERE session = ?", (sid,))
        existing = dict(conn.execute("SELECT name, id FROM chats WHERE session = ?", (sid,)).fetchall())
        chats: dict[str, _Chat] = {}
        for conv in store:
            cid = self._chat_row(conn, sid, conv, existing.get(conv.name))
            rows = [self._put(conn, cid, i, t, None) for i, t in enumerate(conv.turns)]
            chats[conv.name] = _Chat(cid, _header(conv), rows)

        def plan() -> None:
            self._chats = chats
            for chat in chats.values():
                for row in chat.rows:
                    self._known[id(row.turn)] = row
        return plan

    def _put(self, conn: sqlite3.Connection, cid: int, pos: int, turn: Turn, replaced: _Row | None) -> _Row:
        """The turn's row at `pos`: its old row made live again, else a new one."""
        known = self._known.get(id(turn))
        if known is not None and known.turn is turn:
            if conn.execute("UPDATE turns SET live = 1, pos = ? WHERE id = ? AND chat = ?",
                            (pos, known.rowid, cid)).rowcount == 1:
                return known
            request, kernel, origin = known.request, known.kernel, known.origin  # a copy keeps its origin
        else:
            request, kernel, origin = self._request_of(turn, replaced), KERNEL, time.time()
            if self._pending is not None and request == self._pending[0] and self._pending[2]:
                origin = self._pending[2]  # a replayed reply dates from when the model gave it
        meta = turn.meta.to_dict()
        rowid = int(conn.execute(
            "INSERT INTO turns (chat, pos, live, messages, meta, status, request, kernel, origin) "
            "VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (cid, pos, _dumps(list(turn.messages)), _dumps(meta), turn.meta.status, request, kernel, origin),
        ).lastrowid or 0)
        return _Row(turn, rowid, request, kernel, origin)

    def _request_of(self, turn: Turn, replaced: _Row | None) -> str | None:
        pending = self._pending
        if pending is not None and turn.messages[0] is pending[1]:
            return pending[0]
        # An edited reply still answers its request: replay gives the corrected one.
        if (replaced is not None and replaced.request and turn.meta.edited
                and replaced.turn.messages[:-1] == turn.messages[:-1]):
            return replaced.request
        return None

    # -- reading ----------------------------------------------------------------
    def read(self, key: str | None = None) -> Restored | None:
        """The chats journaled for `key` (default: this notebook), as after their last change."""
        conn = self._open(write=False)
        if conn is None:
            return None
        key = self.key if key is None else key
        found = conn.execute("SELECT id, active, seq, updated FROM sessions WHERE key = ?", (key,)).fetchone()
        if found is None:
            return None
        sid, active, seq, updated = found
        heads: dict[int, tuple[str, str | None, str | None, str]] = {}
        for cid, name, model, system, options in conn.execute(
                "SELECT id, name, model, system, options FROM chats WHERE session = ? AND removed = 0 "
                "ORDER BY pos, id", (sid,)):
            heads[cid] = (name, model, system, options or "{}")
        rows: dict[int, list[_Row]] = {cid: [] for cid in heads}
        for rowid, cid, messages, meta, request, kernel, origin in conn.execute(
                "SELECT id, chat, messages, meta, request, kernel, origin FROM turns "
                "WHERE live = 1 AND chat IN (SELECT id FROM chats WHERE session = ? AND removed = 0) "
                "ORDER BY chat, pos", (sid,)):
            info = {k: v for k, v in json.loads(meta).items() if k in _TURN_FIELDS}
            turn = Turn(tuple(json.loads(messages)), TurnMeta(**info))
            rows[cid].append(_Row(turn, rowid, request, kernel, origin))
        convs: list[Conversation] = []
        mirror: dict[str, _Chat] = {}
        for cid, (name, model, system, options) in heads.items():
            conv = Conversation(name, model, system, dict(json.loads(options)), [r.turn for r in rows[cid]])
            convs.append(conv)
            mirror[name] = _Chat(cid, _header(conv), rows[cid])  # the header as this kernel compares it
        return Restored(key, convs, active, updated, seq, mirror)

    def restore(self, key: str | None = None, *, undoable: bool = True) -> Restored | None:
        """Bring a notebook's journaled chats into the store (undoable, like a load, unless on load)."""
        store = self._store
        assert store is not None
        found = self.read(key)
        if found is None:
            return None
        self._take(found, undoable=undoable)
        return found

    def _take(self, found: Restored, *, undoable: bool) -> None:
        store = self._store
        assert store is not None
        self._remember(found)
        if found.key != self.key or self._paused:
            store.absorb(found.chats, found.active, undoable=undoable)  # journaled as changes of this notebook
            return
        self._awaiting, self._touched = False, set()
        # This notebook's own rows: the mirror is the database as read, so the
        # absorb is not a change to write (and its date stays the last real one).
        listening = self._unsubscribe is not None
        self.detach()
        try:
            store.absorb(found.chats, found.active, undoable=undoable)
        finally:
            if listening:
                self._unsubscribe = store.subscribe(self._on_event)
        self._chats.update(found.rows)
        self._seq = found.seq
        self._dirty = any(name not in found.rows for name in store.names)  # chats the journal lacks

    def _remember(self, found: Restored) -> None:
        for chat in found.rows.values():
            for row in chat.rows:
                self._known[id(row.turn)] = row  # a row copied elsewhere keeps its request and origin

    def retry(self) -> str | None:
        """Before a cell: if the restore on load failed, try it again; the line to show when it worked."""
        if not self._awaiting or self._paused or self.path is None or self._store is None:
            return None
        try:
            found = self.read()
        except Exception as exc:
            self._fail(exc)  # the same problem is not said again
            return None
        self._problem = None
        changed = bool(self._touched)
        line = self._settle(found)
        if changed:
            self.write(None)  # this kernel's changes missed the disk too: journal both now
        return line

    def _settle(self, found: Restored | None) -> str | None:
        """The journal is readable after a failed restore: bring its chats in, losing none of this kernel's.

        Nothing changed yet: the restore on load, late (its line is returned).
        Else the earlier chats join this kernel's, each under its own name
        unless this kernel changed a chat of that name (then `NAME-restored`);
        said in one line. The caller's next write journals them all.
        """
        store = self._store
        assert store is not None
        touched, self._awaiting, self._touched = self._touched, False, set()
        if found is None:
            return None  # nothing journaled for this notebook: nothing to lose
        if not touched:
            self._take(found, undoable=False)
            return found.line()
        self._remember(found)
        taken = set(store.names) | {c.name for c in found.chats}
        back: list[Conversation] = []
        renamed: list[str] = []
        for conv in found.chats:
            if conv.name in store and conv.name in touched:
                if not conv.turns and not conv.system:
                    continue  # an empty chat: nothing of it to lose
                name = _free_name(conv.name, taken)
                taken.add(name)
                renamed.append(f"{conv.name} is now {name}")
                conv = Conversation(name, conv.model, conv.system, conv.options, list(conv.turns))
            back.append(conv)
        if not back:
            return None
        self._quiet = True
        try:
            store.absorb(back, None, undoable=False)
        finally:
            self._quiet = False
        self._dirty = True
        n, t = len(back), sum(len(c.turns) for c in back)
        self._say(f"the journal could not be read when this kernel started, and this kernel has changed its chats "
                  f"since: restored {n} earlier chat{'s' if n != 1 else ''}, {t} turn{'s' if t != 1 else ''} from "
                  f"{_stamp(found.updated)} beside them{' (' + '; '.join(renamed) + ')' if renamed else ''}; "
                  "%ollama chats lists them all.")
        return None

    # -- replay -------------------------------------------------------------------
    def replay(self, request: ChatRequest, view: Sink, *, fresh: bool = False,
               history: Callable[[], tuple[int, int, bytes]] | None = None) -> tuple[list[Message], Reply] | None:
        """The journaled answer to exactly this request from an earlier kernel, shown on `view`; else None.

        `history()`: the (start, n, digest) of `request_key` for the stored history the request carries.
        """
        if self.path is None or self._paused:
            return None
        key = request_key(request, history() if history is not None else None)
        first = key not in self._asked
        self._asked.add(key)
        self._pending = (key, request.messages[-1], None)
        if fresh or not first:
            return None
        try:
            conn = self._open(write=False)
            hit = self._answer(conn, key) if conn is not None else None
            if hit is None and conn is not None and self._has_legacy(conn):
                hit = self._answer(conn, legacy_request_key(request))
        except Exception as exc:  # a broken journal just means: ask the model
            self._fail(exc)
            return None
        if hit is None:
            return None
        from .chat import Reply

        messages, meta = json.loads(hit[0]), json.loads(hit[1])
        self._pending = (key, request.messages[-1], hit[2])
        final = messages[-1]
        reply = Reply(parts=[final.get("content") or ""], done=True, chunks=1,
                      stats={k: meta.get(k) for k in _STAT_KEYS})
        if final.get("thinking"):
            reply.thinking_parts.append(final["thinking"])
        view.begin(reply)
        _show_tools(view, messages[1:-1])
        view.update(reply)
        self._notes.append(f"replayed from {_stamp(hit[2])} (ask the model anew with --fresh)")
        return list(messages[1:-1]), reply

    def _answer(self, conn: sqlite3.Connection, key: str) -> Any:
        return conn.execute(
            "SELECT t.messages, t.meta, t.origin FROM turns t JOIN chats c ON c.id = t.chat "
            "JOIN sessions s ON s.id = c.session WHERE t.request = ? AND s.key = ? AND t.kernel <> ? "
            "AND t.status = 'ok' ORDER BY t.id DESC LIMIT 1", (key, self.key, KERNEL),
        ).fetchone()

    def _has_legacy(self, conn: sqlite3.Connection) -> bool:
        """Whether any row holds a key from before KEY_VERSION (through the request index; once per kernel)."""
        if self._legacy is None:
            self._legacy = conn.execute(
                "SELECT 1 FROM turns WHERE request IS NOT NULL AND (request < ? OR request >= ?) LIMIT 1",
                (KEY_VERSION, KEY_VERSION[:-1] + chr(ord(KEY_VERSION[-1]) + 1))).fetchone() is not None
        return self._legacy

    def notes(self) -> list[str]:
        """Footer notes of the turn that just ran (then forgotten)."""
        notes, self._notes = self._notes, []
        return notes

    # -- commands -------------------------------------------------------------------
    def sessions(self) -> list[tuple[str, bool, int, int, float]]:
        """(key, notebook, chats, live turns, last change) of every session, newest first."""
        conn = self._open(write=False)
        if conn is None:
            return []
        return conn.execute(
            "SELECT s.key, s.notebook, "
            " (SELECT count(*) FROM chats c WHERE c.session = s.id AND c.removed = 0), "
            " (SELECT count(*) FROM turns t JOIN chats c ON c.id = t.chat "
            "  WHERE c.session = s.id AND c.removed = 0 AND t.live = 1), s.updated "
            "FROM sessions s ORDER BY s.updated DESC").fetchall()

    def console_key(self, prefix: str) -> str:
        """The console session `prefix` (`console:ID` as listed) names; one line if none or several."""
        conn = self._open(write=False)
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        keys = [k for (k,) in conn.execute("SELECT key FROM sessions WHERE notebook = 0 AND key LIKE ? ESCAPE '\\'",
                                            (pattern,))] if conn is not None else []
        if len(keys) != 1:
            what = "no console session" if not keys else f"{len(keys)} console sessions"
            raise JournalError(f"the journal holds {what} starting with {prefix!r}; %ollama sessions lists them.")
        return str(keys[0])

    def search(self, text: str, limit: int = 20) -> list[tuple[float, str, str, bool, list[Message]]]:
        """(when, notebook, chat, live, messages) of journaled turns containing `text`, newest first."""
        conn = self._open(write=False)
        if conn is None:
            return []
        head = ("SELECT t.origin, s.key, c.name, t.live, t.messages FROM turns t JOIN chats c ON c.id = t.chat "
                "JOIN sessions s ON s.id = c.session ")
        if not text:
            rows = conn.execute(head + "ORDER BY t.id DESC LIMIT ?", (limit,)).fetchall()
        elif self._fts and self._index_text(conn):
            phrase = '"' + text.replace('"', '""') + '"'
            rows = conn.execute(head + "WHERE t.id IN (SELECT rowid FROM turn_text WHERE turn_text MATCH ?) "
                                "ORDER BY t.id DESC LIMIT ?", (phrase, limit)).fetchall()
        else:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = conn.execute(head + "WHERE t.messages LIKE ? ESCAPE '\\' ORDER BY t.id DESC LIMIT ?",
                                (pattern, limit)).fetchall()
        return [(o, k, c, bool(live), json.loads(m)) for o, k, c, live, m in rows]

    def _index_text(self, conn: sqlite3.Connection) -> bool:
        """Bring the full-text index up to the turns; False if it cannot be written (search with LIKE).

        Filled here, when a search needs it, not per commit: an FTS5 insert
        writes a new index segment with every transaction, which was most of a
        commit's cost. Turn ids only grow, so the rows past the index's
        largest rowid are exactly the ones it lacks.
        """
        import sqlite3

        try:
            with _immediate(conn):
                last = conn.execute("SELECT coalesce(max(rowid), 0) FROM turn_text").fetchone()[0]
                rows = conn.execute("SELECT id, messages FROM turns WHERE id > ? ORDER BY id", (last,)).fetchall()
                conn.executemany("INSERT INTO turn_text (rowid, body) VALUES (?, ?)",
                                 ((rowid, _text_of(json.loads(m))) for rowid, m in rows))
        except sqlite3.Error:  # read-only or locked: the search still works, by LIKE
            return False
        return True

    def forget(self) -> int:
        """Delete this notebook's journal and stop journaling it; returns the turns deleted."""
        if self._paused:
            raise JournalError("this notebook's journal is already forgotten; %ollama forget --undo brings it back")
        conn = self._open(write=False)
        gone = _Forgotten((), [], [], [])
        if conn is not None:
            if self._fts:  # every turn indexed first, so --undo brings the whole index back
                self._index_text(conn)
            conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not just unlinked
            try:
                with _immediate(conn):
                    gone = self._delete_session(conn)
            finally:
                conn.execute("PRAGMA secure_delete = OFF")
            try:  # the deleted text leaves the write-ahead log too
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except Exception:
                pass
        self._paused, self._chats, self._seq, self._dirty = True, {}, None, True
        self._forgotten = gone
        return sum(1 for t in gone.turns if t[3])  # column 3: live

    def _delete_session(self, conn: sqlite3.Connection) -> _Forgotten:
        found = conn.execute("SELECT * FROM sessions WHERE key = ?", (self.key,)).fetchone()
        if found is None:
            return _Forgotten((), [], [], [])
        sid = found[0]
        of_session = "SELECT t.id FROM turns t JOIN chats c ON c.id = t.chat WHERE c.session = ?"
        chats = conn.execute("SELECT * FROM chats WHERE session = ?", (sid,)).fetchall()
        turns = conn.execute(f"SELECT * FROM turns WHERE id IN ({of_session})", (sid,)).fetchall()
        texts = []
        if self._fts:
            texts = conn.execute(f"SELECT rowid, body FROM turn_text WHERE rowid IN ({of_session})", (sid,)).fetchall()
            conn.execute(f"DELETE FROM turn_text WHERE rowid IN ({of_session})", (sid,))
            # Merge the index, so no segment keeps the deleted words.
            conn.execute("INSERT INTO turn_text (turn_text) VALUES ('optimize')")
        conn.execute(f"DELETE FROM turns WHERE id IN ({of_session})", (sid,))
        conn.execute("DELETE FROM chats WHERE session = ?", (sid,))
        conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
        return _Forgotten(tuple(found), chats, turns, texts)

    def unforget(self) -> None:
        """Undo `forget` (until the kernel ends): the rows come back, journaling resumes."""
        gone = self._forgotten
        if gone is None:
            raise JournalError("nothing to bring back: %ollama forget has not run in this kernel")
        if gone.session:
            conn = self._open(write=True)
            assert conn is not None
            with _immediate(conn):
                if conn.execute("SELECT 1 FROM sessions WHERE key = ?", (self.key,)).fetchone():
                    raise JournalError("another kernel has journaled this notebook since the forget; "
                                       "the forgotten chats cannot come back over it")
                for table, rows in (("sessions", [gone.session]), ("chats", gone.chats), ("turns", gone.turns)):
                    for row in rows:
                        conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
                if self._fts:  # only the turns the index held: the rest are indexed when searched
                    conn.executemany("INSERT INTO turn_text (rowid, body) VALUES (?, ?)", gone.texts)
            self._seq = gone.session[4]  # column 4: seq
        self._forgotten, self._paused, self._dirty = None, False, True
        self.write(None)  # what changed meanwhile


def _nothing() -> None:
    return None


def _free_name(name: str, taken: set[str]) -> str:
    candidate, n = name + RESTORED_SUFFIX, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}{RESTORED_SUFFIX}{n}"
    return candidate


def _show_tools(view: Sink, exchange: Iterable[Message]) -> None:
    """A replayed tool exchange shows as the live one did."""
    calls: list[dict[str, Any]] = []
    for msg in exchange:
        if msg.get("role") == "assistant":
            calls = [c.get("function") or {} for c in msg.get("tool_calls") or []]
        elif msg.get("role") == "tool":
            fn = calls.pop(0) if calls else {}
            content = str(msg.get("content") or "")
            view.tool(str(msg.get("tool_name") or fn.get("name") or ""), fn.get("arguments") or {},
                      content, not content.startswith("Error:"))
