"""Files that are complete or absent: write to a temporary file, ``fsync``, rename over the destination.

Toolkit-free. A reader (or a resumed run) sees either the old complete file or the new complete file,
never a partial one, whatever instant the writer is killed at (power loss included, on file systems
that honour ``fsync``):

* :func:`temporary_path`: ``<folder>/.<name>.<pid>.rvtmp``, next to its destination (same file system,
  so the rename is atomic); :func:`is_temporary` recognises such names (a killed writer leaves one).
* :func:`replace_atomically`: ``fsync`` a finished temporary file, rename it over the destination,
  ``fsync`` the folder.
* :func:`atomic_write`: the whole sequence for bytes, text, or a callable that writes into the open file
  (e.g. ``lambda f: torch.save(obj, f)``); on any error the temporary file is removed and the
  destination is untouched.
"""
import os
import os.path as osp
import time

__all__ = ["TMP_SUFFIX", "SAVE_DELAY_ENV", "atomic_write", "replace_atomically", "fsync_dir", "temporary_path",
           "is_temporary"]

TMP_SUFFIX = ".rvtmp"
# Test-only: seconds to sleep while a file exists only as its temporary file (widens the window in which
# the fault-injection tests' kills land). Unset in normal use.
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
    """The temporary name under which ``path`` is written: ``.<name>.<pid>.rvtmp`` in the same folder."""
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f".{name}.{os.getpid()}{TMP_SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`temporary_path`'s."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def remove_temporaries(folder: str, log) -> None:
    """Delete the temporary files (:func:`is_temporary`) a killed run's saves left in ``folder``, calling
    ``log(message)`` for each; a missing folder or a file another process removed first is fine."""
    if not osp.isdir(folder):
        return
    for name in os.listdir(folder):
        if is_temporary(name):
            try:
                os.unlink(osp.join(folder, name))
            except FileNotFoundError:  # another process of this run removed it
                continue
            log(f"removed {osp.join(folder, name)}, an unfinished file of a killed run")


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
