"""The one run preparation of every OpenMMLab run that uses rv_plugins' run safety.

:class:`rv_plugins.openmmlab.prepared_runner.PreparedRunner` calls :func:`prepare_run` on its constructor
arguments before mmengine's Runner is built, so the same preparation serves our ``tools/train.py`` /
``tools/test.py`` (which always build a PreparedRunner) and the toolkits' own ``tools/train.py`` /
``tools/test.py`` (for configs with ``runner_type = 'PreparedRunner'``, which mmengine builds through its
``RUNNERS`` registry). It uses only what mmengine's Runner takes as arguments (``work_dir``,
``resume``, ``load_from``, ``default_hooks``): no private Runner attribute is read or written.

:func:`prepare_run` does, in order:

1. the work dir: a file at that path (or above it) or a folder without write permission is an error
   naming it (mmengine would fail later with ``FileExistsError``);
2. the checkpoint hook: mmengine's plain ``CheckpointHook`` becomes ``AtomicCheckpointHook``
   (:func:`use_atomic_checkpoints`; same arguments);
3. the checkpoint to resume from: ``resume=True`` without ``load_from`` becomes ``load_from`` = the
   newest usable checkpoint of the work dir (:func:`rv_plugins.engine.resume.find_resume_checkpoint`,
   with the keys mmengine's resume reads: a truncated, corrupted, garbage or weights-only newest file is
   skipped with the reason logged), or ``resume=False`` when there is none; an explicit ``load_from``
   that is not a usable checkpoint (for a resume: not a training checkpoint) is an error with the reason.

The work-dir lock is taken when training starts (``PreparedRunner.train``): at construction a Runner
does not know yet whether it will train or test (evaluating while a training run writes its
checkpoints into the same folder is allowed).

Plain Python: importing this module imports no toolkit.
"""
import os.path as osp
from typing import Callable, MutableMapping

from rv_plugins.engine.lock import WorkDirLocked, check_work_dir
from rv_plugins.engine.resume import (MMENGINE_RESUME_KEYS, NoCompleteCheckpoint, checkpoint_problem,
                                      find_resume_checkpoint, out_dir_checkpoints)

__all__ = ["RunPreparationError", "RUN_ERRORS", "prepare_run", "use_atomic_checkpoints", "init_cpu_process_group"]


class RunPreparationError(ValueError):
    """A run cannot start as configured (the message names the setting and the fix)."""


# What a tool reports as "error: <message>" instead of a traceback: the user's setting is the cause.
RUN_ERRORS = (RunPreparationError, WorkDirLocked, NoCompleteCheckpoint)


def use_atomic_checkpoints(cfg: MutableMapping) -> bool:
    """Swap mmengine's plain ``CheckpointHook`` in ``cfg['default_hooks']`` for ``AtomicCheckpointHook``
    (same arguments; see ``rv_plugins.engine.hooks``); a missing checkpoint hook becomes mmengine's default
    (``interval=1``, by epoch), atomic. Returns whether the checkpoint hook is ours. ``cfg`` is a Config
    or any mapping with a ``default_hooks`` entry."""
    if cfg.get("default_hooks") is None:
        cfg["default_hooks"] = {}
    hooks = cfg["default_hooks"]  # re-read: a Config stores its own copy of a dict
    if "checkpoint" not in hooks:  # mmengine would add CheckpointHook(interval=1) by epoch
        hooks["checkpoint"] = dict(type="CheckpointHook", interval=1)
    ckpt = hooks["checkpoint"]
    if not isinstance(ckpt, dict):  # None (no checkpoints) or a hook object built by the caller
        return type(ckpt).__name__ == "AtomicCheckpointHook"
    if ckpt.get("type") in ("CheckpointHook", "mmengine.CheckpointHook"):
        ckpt["type"] = "AtomicCheckpointHook"
    return ckpt.get("type") == "AtomicCheckpointHook"


def _checkpoint_out_dirs(run: MutableMapping) -> list:
    """Where the checkpoint hook saves besides the work dir."""
    ckpt = (run.get("default_hooks") or {}).get("checkpoint")
    out_dir = ckpt.get("out_dir") if isinstance(ckpt, dict) else getattr(ckpt, "out_dir", None)
    return out_dir_checkpoints(run["work_dir"], out_dir)


def prepare_run(run: MutableMapping, log: Callable[[str], None] = print) -> None:
    """Prepare a run in place (see the module docstring). ``run`` holds mmengine Runner arguments:
    ``work_dir``, ``resume``, ``load_from``, ``default_hooks``. Idempotent: a prepared run has a concrete
    ``load_from`` or ``resume=False``, and checking a file again is served from a cache."""
    work_dir = run["work_dir"]
    try:
        check_work_dir(work_dir)
    except OSError as e:
        raise RunPreparationError(str(e)) from None
    use_atomic_checkpoints(run)
    resume, load_from = bool(run.get("resume")), run.get("load_from")
    if resume and load_from is None:
        chosen = find_resume_checkpoint(work_dir, _checkpoint_out_dirs(run), log=log, required=MMENGINE_RESUME_KEYS)
        run["load_from"], run["resume"] = chosen, chosen is not None
        return
    if load_from is None or "://" in str(load_from):
        return
    load_from = str(load_from)
    option = "--resume" if resume else "load_from"
    if not osp.exists(load_from):
        hint = (f"give --resume without a path to resume from the newest usable checkpoint of {work_dir}"
                if resume else "check the path (load_from initialises the model from a checkpoint)")
        raise RunPreparationError(f"{option} {load_from}: no such file ({hint})")
    why = checkpoint_problem(load_from, MMENGINE_RESUME_KEYS if resume else ())
    if why is not None:
        hint = (f"Name another checkpoint, or give --resume without a path to use the newest usable one of "
                f"{work_dir}" if resume else "Name a complete checkpoint")
        raise RunPreparationError(f"{option} {load_from}: cannot use this file: {why}. {hint}.")


def init_cpu_process_group(launcher: str) -> None:
    """CPU-only distributed runs (e.g. ``torch.distributed.run`` on a machine without a GPU).

    mmengine 0.10.7's ``pytorch`` launcher always calls ``torch.cuda.set_device`` and fails without a
    GPU; its Runner skips its own ``init_dist`` when a process group exists, so on a CPU-only machine we
    create the gloo group from torchrun's environment first (and ``PreparedRunner.from_cfg`` wraps the
    model in DDP without ``device_ids``, which CPU modules require). With a GPU nothing changes.
    """
    import torch
    import torch.distributed as dist

    if launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend="gloo")
