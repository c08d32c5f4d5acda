"""One writer per folder: a process that writes a run folder (or a plan's output folder) holds an
exclusive lock on a file in it for as long as it runs. A second process is refused in one line naming
the holder; a holder that died, even by SIGKILL, holds nothing, because the kernel drops a flock with
the last descriptor of the file (on NFS, Linux maps flock onto the server's byte-range locks, so it
also holds across nodes; Lustre needs its `flock` mount option)."""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path

from util import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unguarded
    fcntl = None


class FolderLock:
    """The lock of `folder`, taken by `acquire()` and given back by `release()` or by the process's end.

    The lock file holds who took it (host, pid, since, command) for the refusal of the next one, and is
    removed by `release()`; one left by a process that died holds no lock and is taken over. A folder
    that does not exist yet is made by `acquire()` and removed again by a refused `acquire()` and by
    `release()` while it holds nothing else, so that a run refused after the lock leaves nothing."""

    def __init__(self, folder: str | Path, name: str = ".lock", what: str = "run folder") -> None:
        self.path = Path(folder) / name
        self.what = what
        self._file = None
        self._made: list[Path] = []  # the folders acquire() made, the lock's own last

    def acquire(self) -> None:
        folder = self.path.parent
        self._made = [p for p in (*reversed(folder.parents), folder) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
        except BaseException:
            self._remove_made_folders()
            raise

    def _lock(self) -> None:
        if fcntl is None:
            return
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                handle.seek(0)
                holder = handle.read()
                handle.close()
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    print(f"note: {self.path.parent}: this filesystem takes no file locks; nothing keeps a "
                          f"second process from writing this {self.what}", file=sys.stderr)
                    return
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise UsageError(f"{self.path.parent}: {self.what} in use by {describe_holder(holder)}; wait for "
                                 f"it to end (or stop it), or write elsewhere") from None
            if _same_file(handle, self.path):
                break
            handle.close()  # locked a file its holder removed on release: the lock is the file now at the path
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                 "command": " ".join(sys.argv)}) + "\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # while still held: the next writer then locks a new file
            self._file.close()  # closing the last descriptor drops the flock
            self._file = None
        self._remove_made_folders()

    def _remove_made_folders(self) -> None:
        """The folders acquire() made, deepest first, while they hold nothing (the lock file aside)."""
        if self._made and {p.name for p in self.path.parent.iterdir()} <= {self.path.name}:
            self.path.unlink(missing_ok=True)
            for folder in reversed(self._made):
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        self._made = []

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def describe_holder(recorded: str) -> str:
    """`pid 123 on node7 since 2026-12-05T09:00:00+00:00 (python train_supervised_ssl.py ...)`, from the
    lock file's line (a holder still writing it reads as unknown)."""
    try:
        holder = json.loads(recorded)
        return (f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
                + (f" ({holder['command']})" if holder.get("command") else ""))
    except (json.JSONDecodeError, KeyError, TypeError):
        return "another process (it has not said which yet)"
