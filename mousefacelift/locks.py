"""File locks that end with their holder: flock(2), plus a record of who holds them.

A flock belongs to an open file description, so the kernel drops it when the holding process
exits, however it exits (killed, crashed): a lock is never stale, and "is it held?" tells a live
run from a dead one without trusting PIDs. A second open of the same file, even in the same
process, conflicts with it. The lock file keeps, as JSON, who took it last (PID, host, start time
and what the caller adds), so a refused attempt can name the holder. Lock files are never deleted:
removing one while another process has it open would split the lock in two.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO, Iterator


class LockHeld(RuntimeError):
    """The lock at ``path`` is held by another open file (see ``holder``)."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


def describe(holder: dict) -> str:
    """'PID 123 on host h since 2026-01-01T10:00:00' from a lock file's record."""
    if not holder.get("pid"):
        return "another process (no record of which)"
    return f"PID {holder['pid']} on host {holder.get('host', '?')} since {holder.get('started', '?')}"


def holder(path: Path) -> dict:
    """The record in a lock file ({} when missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def acquire(path: Path, **info) -> IO:
    """Take the exclusive lock at ``path`` without waiting and record the holder (PID, host, start
    time, ``info``). -> the open file that holds it: close it to release. Raises LockHeld."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")  # no truncation before locking
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise LockHeld(path, holder(path)) from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": dt.datetime.now().isoformat(timespec="seconds"), **info}
    f.seek(0)
    f.truncate()
    f.write(json.dumps(record))
    f.flush()
    return f


def is_held(path: Path) -> bool:
    """Whether a process (this one included) holds the lock at ``path``. A missing file is not held."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock at ``path`` for a short critical section, waiting for it if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield
