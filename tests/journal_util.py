"""A journal locked by another process, the way SQLite really locks it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Exclusive locking mode (as `sqlite3` run with `PRAGMA locking_mode = EXCLUSIVE`,
# or a tool copying the file, holds it): in WAL mode even readers are refused.
_HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
print("locked", flush=True)
sys.stdin.read()
conn.close()
"""


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process holds `path` locked until the block ends; a read (not just a write) fails meanwhile."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
