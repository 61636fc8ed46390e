#!/usr/bin/env python
"""Train / evaluate Panoptic FPN (optionally with the hGRU mask head) with Detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/detectron2/panoptic_fpn_R_50_1x_hgru_crbp.yaml \
        --num-gpus 8
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS <output>/model_final.pth
    python tools/train_net.py --config-file <cfg> --resume          # continue from the newest usable checkpoint

Configs are read with ``rv_plugins.detectron2.config.get_cfg`` (our keys + ``detectron2://``
bases). ``DATASETS.SYNTHETIC_PANOPTIC_ROOT`` registers the synthetic dataset of
``tools/make_synthetic_coco_panoptic.py``. Multi-GPU / multi-machine runs go through Detectron2's
``launch`` (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``).

Checkpoints survive a kill (``rv_plugins.detectron2.checkpointer.AtomicDetectionCheckpointer``: written to
a temporary file and renamed, ``last_checkpoint`` replaced after; ``--resume`` continues from the newest
usable checkpoint, naming each file it skips and why), and one training run holds ``OUTPUT_DIR``
(``train.lock``).

Evaluation: ``COCOPanopticEvaluator`` (PQ via panopticapi; ours reports NaN, not a crash, for a split
without "thing" or "stuff" segments) for panoptic datasets, plus
``COCOEvaluator`` for the things (its fast C++ implementation only when ``detectron2._C`` exists).
"""
import logging
import os
import sys
import weakref

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "rv_plugins")):
    sys.path.insert(0, _ROOT)  # run from a checkout

import rv_plugins.detectron2 as rv_d2  # noqa: E402  (stand-in for a missing detectron2._C first)
import detectron2.utils.comm as comm  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator, verify_results  # noqa: E402
from rv_plugins.detectron2.checkpointer import AtomicDetectionCheckpointer  # noqa: E402
from rv_plugins.detectron2.config import get_cfg  # noqa: E402
from rv_plugins.detectron2.datasets import PanopticEvaluator  # noqa: E402
from rv_plugins.engine import NoCompleteCheckpoint, WorkDirLocked, acquire_work_dir_lock, check_work_dir  # noqa: E402


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with kill-safe checkpoints and the evaluators of Detectron2's panoptic / instance /
    semantic datasets."""

    def build_hooks(self):
        # DefaultTrainer made its DetectionCheckpointer just before; its PeriodicCheckpointer takes ours
        self.checkpointer = AtomicDetectionCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                        trainer=weakref.proxy(self))
        if comm.is_main_process():
            self.checkpointer.remove_temporaries()  # a killed save's; OUTPUT_DIR is locked (setup)
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        fast = rv_d2.has_compiled_ops()
        evaluators = []
        if evaluator_type == "coco_panoptic_seg":
            evaluators.append(PanopticEvaluator(dataset_name, output_folder))  # NaN, not a crash, without things
            if cfg.MODEL.MASK_ON:
                evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=fast))
        elif evaluator_type == "coco":
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=fast))
        elif evaluator_type == "sem_seg":
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if not evaluators:
            raise NotImplementedError(f"no evaluator for dataset {dataset_name!r} of type {evaluator_type!r}; "
                                      "register it with an evaluator_type of coco_panoptic_seg, coco or sem_seg")
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def setup(args):
    cfg = get_cfg(args.config_file, args.opts)
    if cfg.DATASETS.SYNTHETIC_PANOPTIC_ROOT:
        rv_d2.register_synthetic_coco_panoptic(cfg.DATASETS.SYNTHETIC_PANOPTIC_ROOT)
    cfg.freeze()
    try:
        check_work_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
        if not args.eval_only and comm.is_main_process():  # one training run per OUTPUT_DIR
            acquire_work_dir_lock(cfg.OUTPUT_DIR, log=logging.getLogger(__name__).warning)
    except (OSError, WorkDirLocked) as e:
        sys.exit(f"error: {e} (OUTPUT_DIR)")
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                   resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    try:
        trainer.resume_or_load(resume=args.resume)
    except NoCompleteCheckpoint as e:
        sys.exit(f"error: {e}")
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
