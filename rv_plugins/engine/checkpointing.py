"""Checkpoint files that survive a kill, resume that finds the newest complete one, one run per folder.

Toolkit-free (no mmengine, no Detectron2 import): the mmengine hook in ``rv_plugins.engine.hooks`` and
the tools use these functions.

* :func:`atomic_write` / :func:`replace_atomically`: write to a temporary file in the destination's
  folder, ``fsync`` it, ``os.replace`` it over the destination, ``fsync`` the folder. A reader (or a
  resumed run) sees either the old complete file or the new complete file, never a partial one,
  whatever instant the writer is killed at (power loss included, on file systems that honour fsync).
* :func:`checkpoint_problem`: why a file is not a complete torch checkpoint (missing, empty, truncated,
  a CRC mismatch in the zip archive, no pickle inside), or ``None``. Reads the whole file, loads nothing.
* :func:`find_resume_checkpoint`: the newest checkpoint of a work dir that is complete, with the files
  it skipped and why.
* :class:`WorkDirLock`: ``<work_dir>/train.lock`` holds the owner's pid, host, start time and command
  under a POSIX record lock (``fcntl.lockf``), which the kernel drops when the owner dies; a second run
  refuses with a message that names the owner, and a lock left by a dead run is taken over.
"""
import errno
import json
import os
import os.path as osp
import re
import socket
import sys
import time
import zipfile
from typing import Callable, Iterable, List, Optional, Tuple

__all__ = [
    "TMP_SUFFIX", "LOCK_NAME", "atomic_write", "replace_atomically", "fsync_dir", "checkpoint_problem",
    "checkpoint_candidates", "find_resume_checkpoint", "NoCompleteCheckpoint",
    "WorkDirLock", "WorkDirLocked", "acquire_work_dir_lock", "holds_work_dir_lock", "release_work_dir_lock",
    "is_temporary",
]

TMP_SUFFIX = ".rvtmp"   # temporary files are ".<name>.<pid>.rvtmp" next to their destination
LOCK_NAME = "train.lock"
_CKPT_RE = re.compile(r"^(iter|epoch)_(\d+)\.pth$")
# Test-only: seconds to sleep while a checkpoint exists only as its temporary file (widens the window
# in which the fault-injection test's kills land). Unset in normal use.
SAVE_DELAY_ENV = "RV_PLUGINS_TEST_SAVE_DELAY"


def fsync_dir(path: str) -> None:
    """Make a rename/unlink inside ``path`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str) -> str:
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f".{name}.{os.getpid()}{TMP_SUFFIX}")


def is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def replace_atomically(tmp_path: str, path: str) -> None:
    """``fsync`` the finished ``tmp_path``, rename it over ``path``, ``fsync`` the folder."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))
    os.replace(tmp_path, path)
    fsync_dir(osp.dirname(osp.abspath(path)))


def atomic_write(path: str, data, mode: str = "wb") -> None:
    """Write ``data`` (bytes, str, or a callable taking the open file) to ``path`` atomically."""
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_atomically(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------------
# checking and finding checkpoints

def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a complete torch checkpoint, or ``None`` if it is.

    torch (>= 1.6) saves a zip archive; a kill during the write leaves a file without the archive's
    central directory (truncated), and disk or copy errors show as CRC mismatches: both are found by
    reading every member once. Files in torch's legacy (pre-zip) format are accepted unchecked.
    """
    if not osp.exists(path):
        return "the file does not exist"
    if not osp.isfile(path):
        return "not a regular file"
    size = osp.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # torch's legacy pickle format: nothing cheap to check
        return None
    if head != b"PK\x03\x04":
        return f"not a torch checkpoint (starts with {head!r}, not a zip archive)"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        return f"truncated or corrupted zip archive ({e}; {size} bytes)"
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if bad is not None:
        return f"corrupted: CRC mismatch in archive member {bad!r}"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive without torch's data.pkl: not a torch checkpoint"
    return None


def _step(path: str) -> Optional[int]:
    m = _CKPT_RE.match(osp.basename(path))
    return int(m.group(2)) if m else None


def read_last_checkpoint(work_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(path named by ``<work_dir>/last_checkpoint``, or None; why it is unusable, or None)."""
    marker = osp.join(work_dir, "last_checkpoint")
    if not osp.exists(marker):
        return None, None
    with open(marker) as f:
        target = f.read().strip()
    if not target:
        return None, f"{marker} is empty (ignored)"
    if not osp.isabs(target) and not osp.exists(target):
        target = osp.join(work_dir, osp.basename(target))
    return target, None


def checkpoint_candidates(work_dir: str, extra_dirs: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """Checkpoints that could be resumed from, newest first, and notes about what was ignored.

    Newest = highest step in ``iter_<N>.pth`` / ``epoch_<N>.pth`` (the work dir, ``extra_dirs`` and the
    folder of ``last_checkpoint``'s target); the target of ``last_checkpoint`` comes first among equal
    steps, and after every numbered checkpoint if its name carries no step.
    """
    notes: List[str] = []
    target, why = read_last_checkpoint(work_dir)
    if why:
        notes.append(why)
    dirs = [work_dir] + [d for d in extra_dirs if d]
    if target:
        dirs.append(osp.dirname(target))
    found = {}
    for d in dict.fromkeys(osp.abspath(d) for d in dirs):
        if not osp.isdir(d):
            continue
        for name in os.listdir(d):
            if _CKPT_RE.match(name):
                found[osp.join(d, name)] = None
    if target:
        target = osp.abspath(target)
        if not osp.exists(target):
            notes.append(f"last_checkpoint names {target}, which does not exist (ignored)")
            target = None
        else:
            found[target] = None

    def key(p):
        s = _step(p)
        mtime = osp.getmtime(p) if osp.exists(p) else 0.0
        return (s if s is not None else -1, p == target, mtime)

    ordered = sorted(found, key=key, reverse=True)
    return ordered, notes


class NoCompleteCheckpoint(RuntimeError):
    """Checkpoints exist but none is complete."""


def find_resume_checkpoint(work_dir: str, extra_dirs: Iterable[str] = (),
                           log: Callable[[str], None] = print) -> Optional[str]:
    """The newest complete checkpoint of ``work_dir``; every file skipped is logged with the reason.

    Returns ``None`` (after logging that training starts from scratch) when there is no checkpoint at
    all; raises :class:`NoCompleteCheckpoint` when there are checkpoints but none is complete.
    """
    candidates, notes = checkpoint_candidates(work_dir, extra_dirs)
    for note in notes:
        log(f"resume: {note}")
    skipped = []
    for path in candidates:
        why = checkpoint_problem(path)
        if why is None:
            for p, w in skipped:
                log(f"resume: skipped {p}: {w}")
            log(f"resume: resuming from {path} (the newest complete checkpoint in {work_dir})")
            return path
        skipped.append((path, why))
    if skipped:
        listing = "; ".join(f"{p}: {w}" for p, w in skipped)
        raise NoCompleteCheckpoint(
            f"--resume: none of the {len(skipped)} checkpoint(s) in {work_dir} is complete ({listing}). "
            f"Move them out of the work dir to train from scratch, or name a good checkpoint "
            f"with --resume PATH.")
    log(f"resume: nothing to resume in {osp.abspath(work_dir)} (no last_checkpoint file and no "
        f"iter_*.pth / epoch_*.pth); training starts from scratch")
    return None


# ---------------------------------------------------------------------------------------------------
# one run per work dir

class WorkDirLocked(RuntimeError):
    """Another live run holds the work dir."""


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


import atexit  # noqa: E402

atexit.register(_release_all)
