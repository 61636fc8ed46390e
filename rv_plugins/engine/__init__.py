"""Run safety for training tools: atomic checkpoints, resume from the newest complete one, work-dir locks.

``rv_plugins.engine.checkpointing`` is plain Python (no toolkit import); ``rv_plugins.engine.hooks``
holds the mmengine hook ``AtomicCheckpointHook`` (importing it imports mmengine and registers the hook).
"""
from rv_plugins.engine.checkpointing import (  # noqa: F401
    NoCompleteCheckpoint, WorkDirLock, WorkDirLocked, acquire_work_dir_lock, atomic_write, checkpoint_problem,
    find_resume_checkpoint, release_work_dir_lock)

__all__ = ["NoCompleteCheckpoint", "WorkDirLock", "WorkDirLocked", "acquire_work_dir_lock", "atomic_write",
           "checkpoint_problem", "find_resume_checkpoint", "release_work_dir_lock"]
