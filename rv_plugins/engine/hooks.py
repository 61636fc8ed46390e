"""``AtomicCheckpointHook``: mmengine's CheckpointHook with checkpoints that survive a kill at any instant.

Importing this module registers the hook in mmengine's root ``HOOKS`` registry, so every scope (mmseg,
mmpretrain, ...) finds it. A config uses it with::

    custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.openmmlab.prepared_runner'],
                          allow_failed_imports=False)
    runner_type = 'PreparedRunner'
    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=100,
                                         max_keep_ckpts=1))

It takes CheckpointHook's arguments and changes how checkpoints are written (local folders only; for
other storage back-ends it behaves as CheckpointHook and warns once):

* a checkpoint is written to a hidden temporary file next to its final name, fsynced and renamed;
  ``last_checkpoint`` is replaced the same way and only ever names a complete file;
* checkpoints beyond ``max_keep_ckpts`` are deleted only after the new one is complete (mmengine deletes
  first, so a kill during the save can leave no checkpoint at all);
* temporary files and outdated checkpoints left by a killed run are removed when training starts.

Choosing the checkpoint to resume from and locking the work dir are the run preparation's
(:class:`rv_plugins.openmmlab.prepared_runner.PreparedRunner`, which every run of our tools and every
config with ``runner_type='PreparedRunner'`` is built with). For a Runner built without it (a config that
names this hook but no ``runner_type``, run by a toolkit's own ``tools/train.py``), the hook checks
what the preparation would have done, through the public ``runner.cfg``:

* ``resume`` without a path: mmengine follows ``last_checkpoint`` blindly; if that is not the newest
  usable checkpoint the run stops with the reason and the fix (``runner_type='PreparedRunner'``);
  ``resume`` with a path that is not a usable training checkpoint stops with the reason;
* the work-dir lock is taken when training starts if this process does not hold it yet
  (``lock_work_dir=False`` turns that off).

On every resume (prepared or not), a checkpoint whose model weights or optimizer do not fit this run's
(another model's checkpoint) stops the run with what differs, before anything is loaded.
"""
import os
import os.path as osp
import re

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import find_latest_checkpoint

from rv_plugins.engine import atomic, lock
from rv_plugins.engine.resume import (MMENGINE_RESUME_KEYS, checkpoint_problem, find_resume_checkpoint,
                                     out_dir_checkpoints)

__all__ = ["AtomicCheckpointHook", "resume_mismatch"]


def _shapes(state_dict) -> dict:
    return {re.sub(r"^module\.", "", k): tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}


def _param_groups(state) -> list:
    """Every optimizer's ``param_groups`` sizes in an (OptimWrapper or OptimWrapperDict) state dict."""
    if not isinstance(state, dict):
        return []
    if "param_groups" in state:
        return [[len(g.get("params", ())) for g in state["param_groups"]]]
    return [sizes for key in sorted(state) for sizes in _param_groups(state[key])]


def resume_mismatch(checkpoint: dict, model, optim_wrapper) -> str:
    """What about ``checkpoint`` does not fit ``model`` / ``optim_wrapper`` (``""`` when it fits)."""
    problems = []
    saved = _shapes(checkpoint.get("state_dict", {}))
    own = _shapes(model.state_dict())
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shape = sorted(k for k in set(own) & set(saved) if own[k] != saved[k])
    if missing or unexpected or shape:
        problems.append(
            f"its weights are not this model's ({len(missing)} of the model's {len(own)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(shape)} of another shape; e.g. "
            + ", ".join([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
                        + [f"{k} {saved[k]} here, {own[k]} in the model" for k in shape[:2]]) + ")")
    if "optimizer" in checkpoint and hasattr(optim_wrapper, "state_dict"):
        ours, theirs = _param_groups(optim_wrapper.state_dict()), _param_groups(checkpoint["optimizer"])
        if theirs and ours != theirs:
            problems.append(f"its optimizer has parameter groups of sizes {theirs}, this run's {ours} "
                            f"(another model or another optim_wrapper / paramwise_cfg)")
    return "; ".join(problems)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook whose files are always complete; see the module docstring."""

    def __init__(self, *args, lock_work_dir: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock_work_dir = lock_work_dir
        self._locked_here = False
        self._warned_remote = False
        self._resuming_from = None

    # -- run start: check the resume of a run that was not prepared ---------------------------------
    def before_run(self, runner) -> None:
        self._resuming_from = None
        if not runner.cfg.get("resume"):
            return
        load_from = runner.cfg.get("load_from")
        if load_from is None:  # Runner.from_cfg without PreparedRunner: mmengine reads last_checkpoint
            extra = out_dir_checkpoints(runner.work_dir, self.out_dir)
            ours = find_resume_checkpoint(runner.work_dir, extra, log=runner.logger.info,
                                          required=MMENGINE_RESUME_KEYS)
            theirs = find_latest_checkpoint(runner.work_dir)  # None without last_checkpoint, "" if empty
            if (osp.abspath(theirs) if theirs else theirs) != ours:
                newest = f"the newest usable checkpoint of {runner.work_dir} is {ours}" if ours else \
                    f"{runner.work_dir} has no checkpoint to resume from"
                instead = f", or resume from that file: --resume {ours}" if ours else \
                    ", or remove last_checkpoint to train from scratch"
                raise RuntimeError(
                    f"resume: mmengine would resume from {theirs!r} (what last_checkpoint names), but {newest} "
                    f"(see the lines above). This Runner was built without rv_plugins' run preparation: add "
                    f"runner_type='PreparedRunner' and 'rv_plugins.openmmlab.prepared_runner' (in custom_imports) "
                    f"to the config, or train with rv_plugins' tools/train.py{instead}.")
            self._resuming_from = ours
        elif "://" not in str(load_from):
            why = checkpoint_problem(str(load_from), MMENGINE_RESUME_KEYS)
            if why is not None:
                raise ValueError(
                    f"--resume {load_from}: cannot resume from this file: {why}. Name another checkpoint, "
                    f"or give --resume without a path to use the newest usable one of {runner.work_dir}.")
            self._resuming_from = str(load_from)

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        """On a resume, refuse a checkpoint whose model or optimizer is not this run's (before loading)."""
        source, self._resuming_from = self._resuming_from, None
        if source is None:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        problem = resume_mismatch(checkpoint, model, runner.optim_wrapper)
        if problem:
            raise ValueError(
                f"--resume {source}: this checkpoint was not saved by a run of this config: {problem}. Resume "
                f"only continues a run of the same model and optimizer; to start a new run from its weights, "
                f"give it as load_from (--cfg-options load_from={source}) without --resume.")

    def after_run(self, runner) -> None:
        if self._locked_here:
            lock.release_work_dir_lock(runner.work_dir)
            self._locked_here = False

    # -- training start: the lock of a run that was not prepared; clean what a killed run left ------
    def before_train(self, runner) -> None:
        if self.lock_work_dir and is_main_process() and not lock.holds_work_dir_lock(runner.work_dir):
            lock.acquire_work_dir_lock(runner.work_dir, log=runner.logger.warning)
            self._locked_here = True
        super().before_train(runner)
        if not self._is_local() or not is_main_process():
            return
        for d in {osp.abspath(self.out_dir), osp.abspath(runner.work_dir)}:
            atomic.remove_temporaries(d, runner.logger.info)
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
        tmp = atomic.temporary_path(final)
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
        atomic.replace_atomically(tmp, final)                       # complete under its final name
        atomic.atomic_write(osp.join(runner.work_dir, "last_checkpoint"), final, mode="w")
        for old in outdated:                                        # only now the outdated ones go
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.unlink(path)
        if outdated:
            atomic.fsync_dir(self.out_dir)
        runner.logger.info(f"checkpoint complete: {final}")
