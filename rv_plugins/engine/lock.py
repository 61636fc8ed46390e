"""One training run per work dir: ``<work_dir>/train.lock``.

Toolkit-free. :class:`WorkDirLock` holds the owner's pid, host, start time and command under a POSIX
record lock (``fcntl.lockf``), which the kernel drops when the owner dies; a second run refuses with a
message that names the owner, and a lock left by a dead run is taken over (and said so).
:func:`acquire_work_dir_lock` / :func:`release_work_dir_lock` keep one lock per work dir and process
(idempotent; every lock still held is released at interpreter exit).
"""
import atexit
import errno
import json
import os
import os.path as osp
import socket
import sys
import time
from typing import Callable, Optional

__all__ = ["LOCK_NAME", "WorkDirLock", "WorkDirLocked", "acquire_work_dir_lock", "holds_work_dir_lock",
           "release_work_dir_lock", "check_work_dir"]

LOCK_NAME = "train.lock"

class WorkDirLocked(RuntimeError):
    """Another live run holds the work dir."""


def check_work_dir(work_dir: str, option: str = "--work-dir") -> None:
    """Raise a clear error unless ``work_dir`` is (or can become) a folder this process writes into.

    ``option`` names the setting in the message (``--work-dir``, ``OUTPUT_DIR``). A missing folder is
    fine (it is created); a file at that path or at a folder above it, or a folder without write
    permission, is not.
    """
    path = probe = osp.abspath(work_dir)
    while not osp.exists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if not osp.isdir(probe):
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise NotADirectoryError(f"{option} {work_dir}: the path {where}, not a folder. Give a folder (it is "
                                 f"created when missing), or move the file out of the way.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {work_dir}: {probe} is not writable by this user, so no checkpoint or "
                              f"log could be written. Give a folder you can write to.")


def _describe(info: dict) -> str:
    if not info:
        return "a run whose lock file is empty or unreadable"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"pid {info.get('pid')} on host {info.get('host')} (started {when}: "
            f"{info.get('command', '?')})")


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            raw += chunk
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


class WorkDirLock:
    """``<work_dir>/train.lock``: held by one process at a time (see the module's docstring).

    The lock is a POSIX record lock (``fcntl.lockf``): the kernel releases it when the owner exits or
    is killed, and forked children (data-loader workers) do not inherit it. The file's content (pid,
    host, start time, command) only serves the message of a refused run. On release the file is
    removed. On systems without ``fcntl`` the pid in the file decides (same host only).
    """

    def __init__(self, work_dir: str):
        self.work_dir = osp.abspath(work_dir)
        self.path = osp.join(self.work_dir, LOCK_NAME)
        self.fd: Optional[int] = None
        self.took_over: Optional[dict] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _refuse(self, info: dict) -> None:
        raise WorkDirLocked(
            f"work dir {self.work_dir} is in use by another training run: {_describe(info)}. "
            f"Two runs in one work dir overwrite each other's checkpoints and logs. Wait for it to "
            f"finish, stop it, or give this run another --work-dir. (Lock file: {self.path}; it is "
            f"released automatically when that process exits.)")

    def acquire(self) -> "WorkDirLock":
        if self.fd is not None:
            return self
        check_work_dir(self.work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno not in (errno.EACCES, errno.EAGAIN):
                            raise
                        self._refuse(_read_info(fd))
                    # the file may have been removed (released) between our open and lock: retry
                    try:
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                previous = _read_info(fd)
                if previous:
                    same_host = previous.get("host") == socket.gethostname()
                    if fcntl is None and same_host and _pid_alive(previous.get("pid")) \
                            and previous.get("pid") != os.getpid():
                        self._refuse(previous)
                    self.took_over = previous
                info = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                            command=" ".join(sys.argv) or sys.executable)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(info).encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return self
        raise WorkDirLocked(f"could not lock {self.path}: it keeps being replaced by other processes")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking: a waiter that locked the old inode retries
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the record lock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_HELD = {}


def acquire_work_dir_lock(work_dir: str, log: Callable[[str], None] = print) -> WorkDirLock:
    """Lock ``work_dir`` for this process (idempotent); released at exit or by
    :func:`release_work_dir_lock`. Raises :class:`WorkDirLocked` naming the owner if another run holds it."""
    key = osp.realpath(work_dir)
    lock = _HELD.get(key)
    if lock is None or not lock.held:
        lock = WorkDirLock(work_dir).acquire()
        _HELD[key] = lock
        if lock.took_over:
            log(f"work dir lock: took over {lock.path} from {_describe(lock.took_over)}, "
                f"which is no longer running")
    return lock


def holds_work_dir_lock(work_dir: str) -> bool:
    """Whether this process holds ``work_dir``'s lock (taken by :func:`acquire_work_dir_lock`)."""
    lock = _HELD.get(osp.realpath(work_dir))
    return lock is not None and lock.held


def release_work_dir_lock(work_dir: str) -> None:
    lock = _HELD.pop(osp.realpath(work_dir), None)
    if lock is not None:
        lock.release()


def _release_all() -> None:
    for key in list(_HELD):
        _HELD.pop(key).release()


atexit.register(_release_all)
