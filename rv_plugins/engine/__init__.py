"""Run safety for training tools: atomic checkpoint files, resume from the newest usable one, one run per
work dir.

Toolkit-free modules, one job each (this package re-exports their public names):

- :mod:`rv_plugins.engine.atomic`: files written atomically (temporary file, ``fsync``, rename);
- :mod:`rv_plugins.engine.resume`: checking a checkpoint file and choosing the one to resume from;
- :mod:`rv_plugins.engine.lock`: the work-dir lock (one training run per folder).

:mod:`rv_plugins.engine.hooks` holds the mmengine hook ``AtomicCheckpointHook`` (importing it imports
mmengine and registers the hook).
"""
from rv_plugins.engine.atomic import atomic_write, is_temporary, replace_atomically  # noqa: F401
from rv_plugins.engine.lock import (LOCK_NAME, WorkDirLock, WorkDirLocked, acquire_work_dir_lock,  # noqa: F401
                                    check_work_dir, holds_work_dir_lock, release_work_dir_lock)
from rv_plugins.engine.resume import (DETECTRON2_NAMES, MMENGINE_NAMES, NoCompleteCheckpoint,  # noqa: F401
                                      checkpoint_problem, find_resume_checkpoint)

__all__ = ["atomic_write", "replace_atomically", "is_temporary", "LOCK_NAME", "WorkDirLock", "WorkDirLocked",
           "acquire_work_dir_lock", "check_work_dir", "holds_work_dir_lock", "release_work_dir_lock",
           "MMENGINE_NAMES", "DETECTRON2_NAMES", "NoCompleteCheckpoint", "checkpoint_problem",
           "find_resume_checkpoint"]
