"""``AtomicDetectionCheckpointer``: Detectron2's checkpointer with the guarantees of our mmengine runs.

Detectron2 v0.6 (through fvcore) writes ``model_<iter>.pth`` / ``model_final.pth`` in place and names the
newest in ``<OUTPUT_DIR>/last_checkpoint``; ``--resume`` loads whatever that file names. A kill during a
save leaves a truncated file that the next ``--resume`` stops on (an unpickler error), and an empty
``last_checkpoint`` makes it look for the folder itself. This subclass of ``DetectionCheckpointer``
(same arguments) changes, for local folders:

* :meth:`save`: the checkpoint is written to a hidden temporary file in ``OUTPUT_DIR``, fsynced and
  renamed (:mod:`rv_plugins.engine.atomic`); ``last_checkpoint`` is replaced the same way, after the
  checkpoint is complete, and so only ever names a complete file;
* :meth:`resume_or_load` with ``resume=True``: resumes from the newest usable checkpoint of
  ``OUTPUT_DIR`` (:func:`rv_plugins.engine.resume.find_resume_checkpoint` with Detectron2's file names
  and the keys its resume reads: the model and the trainer's iteration), whatever ``last_checkpoint``
  says, logging every file it skips and why; with no checkpoint at all it loads ``path``
  (``MODEL.WEIGHTS``) as Detectron2 does; checkpoints that exist but are all unusable stop the run with
  the list of files and reasons;
* :meth:`remove_temporaries`: what a killed save left, removed when training starts;
* :meth:`has_checkpoint`: whether there is a usable checkpoint to resume from (``DefaultTrainer`` asks
  it to set the start iteration).

``tools/train_net.py`` uses it for training (its ``Trainer.build_hooks``) and for ``--eval-only``.
"""
import os.path as osp
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from rv_plugins.engine.atomic import atomic_write, remove_temporaries
from rv_plugins.engine.resume import DETECTRON2_NAMES, DETECTRON2_RESUME_KEYS, find_resume_checkpoint

__all__ = ["AtomicDetectionCheckpointer"]

_UNCHOSEN = object()


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files are always complete; see the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_from = _UNCHOSEN

    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``Checkpointer.save`` (the model, every checkpointable, ``kwargs``), written atomically."""
        if not self._local():
            return super().save(name, **kwargs)
        if not self.save_to_disk:
            return None
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = osp.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(osp.basename(path))
        return None

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(osp.join(self.save_dir, "last_checkpoint"), last_filename_basename, mode="w")
        return None

    def resume_checkpoint(self) -> Optional[str]:
        """The checkpoint a resume continues from (chosen and logged once), or None."""
        if self._resume_from is _UNCHOSEN:
            self._resume_from = find_resume_checkpoint(
                self.save_dir, log=self.logger.info, names=DETECTRON2_NAMES, required=DETECTRON2_RESUME_KEYS,
                fix="or start from a good checkpoint's weights: MODEL.WEIGHTS PATH without --resume")
        return self._resume_from

    def has_checkpoint(self) -> bool:
        if not self._local():
            return super().has_checkpoint()
        return self.resume_checkpoint() is not None

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self._local()):
            return super().resume_or_load(path, resume=resume)
        chosen = self.resume_checkpoint()
        if chosen is not None:
            return self.load(chosen)
        return self.load(path, checkpointables=[])

    def remove_temporaries(self) -> None:
        """Remove the temporary files of a killed run's save (never resumed from). Call it when training
        starts with the work dir locked: an evaluation beside a live run must not delete its save."""
        if self._local():
            remove_temporaries(self.save_dir, self.logger.info)
