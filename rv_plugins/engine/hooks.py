"""``AtomicCheckpointHook``: mmengine's CheckpointHook with checkpoints that survive a kill at any instant.

Importing this module registers the hook in mmengine's root ``HOOKS`` registry, so every scope (mmseg,
mmpretrain, ...) finds it. A config uses it with::

    custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.engine.hooks'], allow_failed_imports=False)
    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=100,
                                         max_keep_ckpts=1))

It takes CheckpointHook's arguments and changes four things (local folders only; for other storage
back-ends it behaves as CheckpointHook and warns once):

* a checkpoint is written to a hidden temporary file next to its final name, fsynced and renamed;
  ``last_checkpoint`` is replaced the same way and only ever names a complete file;
* checkpoints beyond ``max_keep_ckpts`` are deleted only after the new one is complete (mmengine deletes
  first, so a kill during the save can leave no checkpoint at all);
* ``resume=True`` without a path resumes from the newest checkpoint that is complete (not blindly the one
  ``last_checkpoint`` names), logs every file it skips and why, and says so when there is nothing to
  resume; with a path, an incomplete file is refused with the reason;
* the work dir is locked for the run (``train.lock``, see ``rv_plugins.engine.checkpointing``): a second
  run in the same work dir stops with a message naming the first.

Temporary files left by a killed run are removed when the next run starts.
"""
import os
import os.path as osp
import re

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from rv_plugins.engine import checkpointing as ck

__all__ = ["AtomicCheckpointHook"]


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook whose files are always complete; see the module docstring."""

    def __init__(self, *args, lock_work_dir: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock_work_dir = lock_work_dir
        self._locked_here = False
        self._warned_remote = False

    # -- run start: lock, choose the checkpoint to resume from ---------------------------------------
    def before_run(self, runner) -> None:
        if self.lock_work_dir and is_main_process() and isinstance(getattr(runner, "_train_loop", None), BaseLoop):
            if not ck.holds_work_dir_lock(runner.work_dir):  # tools/train.py locks before the runner
                ck.acquire_work_dir_lock(runner.work_dir, log=runner.logger.warning)
                self._locked_here = True
        resume = getattr(runner, "_resume", False)
        if not resume or not hasattr(runner, "_load_from"):
            return
        if runner._load_from is None:
            out_dir = self.out_dir if isinstance(self.out_dir, str) else None
            extra = [osp.join(out_dir, osp.basename(runner.work_dir.rstrip(os.sep)))] if out_dir else []
            path = ck.find_resume_checkpoint(runner.work_dir, extra, log=lambda m: (
                runner.logger.info if m.startswith("resume: resuming") else runner.logger.warning)(m))
            if path is None:
                runner._resume = False  # mmengine would log "...latest checkpoint None." and start anyway
            else:
                runner._load_from = path
        elif "://" not in str(runner._load_from):
            why = ck.checkpoint_problem(str(runner._load_from))
            if why is not None:
                raise ValueError(
                    f"--resume {runner._load_from}: cannot resume from this file: {why}. Name another "
                    f"checkpoint, or give --resume without a path to use the newest complete one of "
                    f"{runner.work_dir}.")

    def after_run(self, runner) -> None:
        if self._locked_here:
            ck.release_work_dir_lock(runner.work_dir)
            self._locked_here = False

    # -- training start: clean what a killed run left -----------------------------------------------
    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not self._is_local() or not is_main_process():
            return
        for d in {osp.abspath(self.out_dir), osp.abspath(runner.work_dir)}:
            if not osp.isdir(d):
                continue
            for name in os.listdir(d):
                if ck.is_temporary(name) and not name.startswith(f".{ck.LOCK_NAME}"):
                    os.unlink(osp.join(d, name))
                    runner.logger.info(f"removed {osp.join(d, name)}, an unfinished file of a killed run")
        if self.max_keep_ckpts > 0 and self.keep_ckpt_ids:
            # A kill between renaming a new checkpoint and deleting the outdated one leaves the old file
            # behind, unlisted in the resumed message hub: delete such files older than every kept one.
            oldest = min(self.keep_ckpt_ids)
            pattern = re.compile("^" + re.escape(self.filename_tmpl).replace(r"\{\}", r"(\d+)") + "$")
            for name in os.listdir(self.out_dir):
                m = pattern.match(name)
                if m and int(m.group(1)) < oldest:
                    os.unlink(osp.join(self.out_dir, name))
                    runner.logger.info(f"removed {name}: older than the {self.max_keep_ckpts} kept "
                                       f"checkpoint(s) (max_keep_ckpts), left by a killed run")

    def _is_local(self) -> bool:
        ok = isinstance(getattr(self, "file_backend", None), LocalBackend) and \
            getattr(self, "file_client_args", None) is None
        if not ok and not self._warned_remote:
            self._warned_remote = True
            from mmengine.logging import print_log
            print_log("AtomicCheckpointHook: out_dir is not a local folder; checkpoints are saved as "
                      "CheckpointHook saves them (not atomically)", logger="current", level=30)
        return ok

    # -- the save ---------------------------------------------------------------------------------------
    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0:
            keep = [s for s in self.keep_ckpt_ids if s != step] + [step]
            outdated, keep = keep[:-self.max_keep_ckpts], keep[-self.max_keep_ckpts:]
            self.keep_ckpt_ids.clear()
            self.keep_ckpt_ids.extend(keep)
            runner.message_hub.update_info("keep_ckpt_ids", list(keep))  # the checkpoint records itself
        filename = self.filename_tmpl.format(step)
        final = osp.join(self.out_dir, filename)
        tmp = ck.temporary_path(final)
        self.last_ckpt = final
        runner.message_hub.update_info("last_ckpt", final)

        try:
            runner.save_checkpoint(self.out_dir, osp.basename(tmp), save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        except BaseException:
            if osp.isfile(tmp):  # e.g. disk full: the previous checkpoints are untouched
                os.unlink(tmp)
            raise
        if not is_main_process():
            return
        ck.replace_atomically(tmp, final)                       # complete under its final name
        ck.atomic_write(osp.join(runner.work_dir, "last_checkpoint"), final, mode="w")
        for old in outdated:                                    # only now the outdated ones go
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.unlink(path)
        if outdated:
            ck.fsync_dir(self.out_dir)
        runner.logger.info(f"checkpoint complete: {final}")
