"""``PreparedRunner``: mmengine's Runner with rv_plugins' run preparation, for every script that builds one.

Importing this module registers, in mmengine's root registries (so every scope finds them):
``PreparedRunner`` (``RUNNERS``), ``AtomicCheckpointHook`` (``HOOKS``, from :mod:`rv_plugins.engine.hooks`)
and ``BF16AutocastOptimWrapper`` (``OPTIM_WRAPPERS``, from :mod:`rv_plugins.openmmlab.amp`). A config
gets the same run safety from our ``tools/train.py`` and from mmsegmentation's / mmpretrain's own
``tools/train.py`` (which build ``RUNNERS.build(cfg)`` when the config names a ``runner_type``) with::

    custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.openmmlab.prepared_runner'],
                          allow_failed_imports=False)
    runner_type = 'PreparedRunner'

What it adds to mmengine's Runner, through public mmengine APIs only:

* construction (:func:`rv_plugins.openmmlab.preparation.prepare_run` on the constructor's arguments,
  before mmengine's Runner is built): the work dir checked, ``AtomicCheckpointHook`` for mmengine's
  ``CheckpointHook``, and the checkpoint to resume from chosen (the newest usable one, each skipped
  file logged with the reason) and passed on as ``load_from``;
* :meth:`PreparedRunner.from_cfg`: CPU-only distributed runs (``--launcher pytorch`` without a GPU)
  get a gloo process group and DDP without ``device_ids``;
* :meth:`PreparedRunner.train`: the work-dir lock (``train.lock``, main process), held until training
  ends; a second training run in the same work dir stops with a message naming the first.
"""
import inspect

from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import rv_plugins.engine.hooks  # noqa: F401  (registers AtomicCheckpointHook)
import rv_plugins.openmmlab.amp  # noqa: F401  (registers BF16AutocastOptimWrapper)
from rv_plugins.engine import lock
from rv_plugins.openmmlab.checkpoints import allow_mmengine_checkpoints
from rv_plugins.openmmlab.preparation import init_cpu_process_group, prepare_run

__all__ = ["PreparedRunner"]

_RUNNER_ARGS = inspect.signature(Runner.__init__)


@RUNNERS.register_module()
class PreparedRunner(Runner):
    """mmengine's ``Runner`` (same arguments), prepared by rv_plugins; see the module docstring."""

    def __init__(self, *args, **kwargs):
        bound = _RUNNER_ARGS.bind(self, *args, **kwargs)
        bound.apply_defaults()
        run = dict(bound.arguments)
        del run["self"]
        notes = []
        prepare_run(run, log=notes.append)
        cfg = run.get("cfg")
        if cfg is not None:  # the dumped config and runner.cfg say what the run does
            for key in ("resume", "load_from", "default_hooks"):
                cfg[key] = run[key]
        allow_mmengine_checkpoints()  # torch >= 2.6 weights-only loading of mmengine's checkpoints (resume)
        super().__init__(**run)
        self.cfg["resume"], self.cfg["load_from"] = run["resume"], run["load_from"]
        for note in notes:
            self.logger.info(note)

    @classmethod
    def from_cfg(cls, cfg) -> "PreparedRunner":
        import torch

        launcher = cfg.get("launcher", "none")
        init_cpu_process_group(launcher)
        if launcher != "none" and not torch.cuda.is_available():
            wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
            cfg["model_wrapper_cfg"] = dict(wrapper, device_ids=None)
        return super().from_cfg(cfg)

    def train(self):
        """mmengine's ``train`` with the work dir locked by the main process (see the module docstring)."""
        if not is_main_process() or lock.holds_work_dir_lock(self.work_dir):
            return super().train()
        lock.acquire_work_dir_lock(self.work_dir, log=self.logger.warning)
        try:
            return super().train()
        finally:
            lock.release_work_dir_lock(self.work_dir)
