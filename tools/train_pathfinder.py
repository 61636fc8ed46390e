"""Train the hGRU Pathfinder model (C-RBP paper, section 2.1) on a scaled-down Pathfinder; CPU-sized.

A thin caller of the mmengine configs: the run is ``configs/pathfinder/hgru_pathfinder32_base.py``
with the keys this script's flags name set by :func:`cfg_options`, trained by mmengine's runner
(as ``tools/train.py`` does). What the script adds is the report: the IoU of the target class on
held-out images of every ``--eval-lengths`` after each of ``--eval-steps`` recurrent steps (the
paper trains on 14 dashes and tests on 14, 20, 25; by default those are scaled by
``--length-scale`` to fit small images), the IoU of the trivial rule "every bright pixel is target"
(a model must beat it to have traced anything), the fixed-point residual, the peak memory of
training and the wall time, as JSON (``--out``; ``tools/pathfinder_table.py`` makes the tables).

    PYTHONPATH=. python tools/train_pathfinder.py --mode crbp --steps 8 --iters 150 --out crbp.json

Against ``tools/train.py CONFIG`` the run differs only where the flags say so and in: training
images in order (``train_dataloader.sampler.shuffle=False``, the runs behind the published table),
the cross-entropy weight ``[1, --target-weight]``, no validation loop (``--eval-every`` probes
instead), the log every ``--iters // 10`` iterations on stderr, and checkpoints only with
``--work-dir`` (else the runner works in a temporary folder that is deleted afterwards).
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout

from rv_plugins.layers.hgru import GATE_BIAS_RULES  # noqa: E402
from rv_plugins.openmmlab import runner as mr  # noqa: E402
from rv_plugins.solvers.fixed_point import MODES  # noqa: E402
from rv_plugins.utils.measure import PeakRSS  # noqa: E402

PAPER_LENGTHS = (14, 20, 25)
BASE_CONFIG = os.path.join(REPO, "configs", "pathfinder", "hgru_pathfinder32_base.py")
EVAL_SEED_OFFSET = 10_000  # held-out images: a seed stream disjoint from training (the configs' val/test seed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, default="crbp")
    parser.add_argument("--steps", type=int, default=8, help="recurrent steps while training")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--length-scale", type=float, default=0.5,
                        help="default lengths = round(scale * (14, 20, 25))")
    parser.add_argument("--length", type=int, help="training contour length in dashes")
    parser.add_argument("--eval-lengths", help="comma list of test lengths (default: scaled 14,20,25)")
    parser.add_argument("--num-distractors", type=int, default=2)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="cosine: decay the learning rate to 0 over --iters")
    parser.add_argument("--channels", type=int, default=25)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--gate-bias-rule", choices=GATE_BIAS_RULES, default="log_uniform",
                        help="hGRU gate-bias init: log U(1, 7) (the authors' documented intent, default) or "
                             "U(1, 7) (what their Pathfinder code runs)")
    parser.add_argument("--lcp-lambda", type=float, default=0.9)
    parser.add_argument("--lcp-weight", type=float, default=10.0,
                        help="LCP weight; 10 with --lcp-reduction mean is the authors' Pathfinder "
                             "training (c-rbp/pathfinder_experiments, mainclean.py: penalty.mean() * 10)")
    parser.add_argument("--lcp-reduction", choices=("mean", "sum"), default="mean",
                        help="reduce the LCP over the state's elements by mean (the authors' "
                             "Pathfinder code) or sum (their COCO code; our runs before 2026-11-25)")
    parser.add_argument("--target-weight", type=float, default=1.0,
                        help="cross-entropy weight of the target class (the paper: 1)")
    parser.add_argument("--input-scale", type=float, default=1.0,
                        help="image multiplier before the Gabor layer (PathfinderHGRU.input_scale)")
    parser.add_argument("--target-prior", type=float,
                        help="initialise the read-out bias to this target-class frequency")
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--eval-steps", help="comma list of step counts at test time (default: "
                        "--steps; e.g. 8,40 also tests the dynamics past the trained N = 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="every N iterations log the IoU on --eval-samples // 4 images of the "
                             "training length (0: only at the end)")
    parser.add_argument("--save", help="save the trained model's state_dict here (.pth)")
    parser.add_argument("--load", help="evaluate this --save file instead of training (the "
                        "model settings are taken from it)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--work-dir", help="keep the runner's log and checkpoints (every 250 iterations, "
                        "kill-safe) here; default: a temporary folder, deleted at the end")
    args = parser.parse_args(argv)
    scaled = [max(2, round(args.length_scale * length)) for length in PAPER_LENGTHS]
    args.length = args.length or scaled[0]
    args.eval_lengths = ([int(v) for v in args.eval_lengths.split(",")] if args.eval_lengths
                         else scaled)
    args.eval_steps = ([int(v) for v in args.eval_steps.split(",")] if args.eval_steps
                       else [args.steps])
    return args


def cfg_options(args) -> Dict:
    """The base config's keys this script's flags set (``Config.merge_from_dict`` form)."""
    dataset = dict(image_size=args.image_size, num_distractors=args.num_distractors)
    options = {
        "model.backbone.mode": args.mode, "model.backbone.steps": args.steps,
        "model.backbone.channels": args.channels, "model.backbone.kernel_size": args.kernel_size,
        "model.backbone.lcp_lambda": args.lcp_lambda, "model.backbone.lcp_weight": args.lcp_weight,
        "model.backbone.lcp_reduction": args.lcp_reduction, "model.backbone.input_scale": args.input_scale,
        "model.backbone.target_prior": args.target_prior, "model.backbone.gate_bias_rule": args.gate_bias_rule,
        "model.class_weight": [1.0, args.target_weight],
        "train_dataloader.batch_size": args.batch_size,
        "train_dataloader.sampler.shuffle": False,
        "train_dataloader.dataset": dict(dataset, length=args.length, seed=args.seed,
                                         num_samples=args.iters * args.batch_size),
        "test_dataloader.batch_size": args.batch_size,
        "test_dataloader.dataset": dict(dataset, seed=args.seed + EVAL_SEED_OFFSET,
                                        num_samples=args.eval_samples),
        "optim_wrapper.optimizer.lr": args.lr,
        "param_scheduler": ([dict(type="CosineAnnealingLR", T_max=args.iters, eta_min=0.0, by_epoch=False)]
                            if args.lr_schedule == "cosine" else []),
        "train_cfg.max_iters": args.iters,
        "val_dataloader": None, "val_cfg": None, "val_evaluator": None,
        "default_hooks.logger.interval": max(1, args.iters // 10),
        "randomness.seed": args.seed,
    }
    if not args.work_dir:
        options["default_hooks.checkpoint"] = None
    return options


def build_config(args):
    """The base config with :func:`cfg_options` applied (an mmengine ``Config``)."""
    cfg = mr.load_config(BASE_CONFIG, cfg_options(args))
    cfg.launcher = "none"
    return cfg


def _import_config_modules(cfg) -> None:
    """The config's registries, as the runner would set them up (for building without a runner)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)


class _TrainingLog:
    """What the report needs of every training iteration, as numbers: the cross-entropy (the runner's
    ``loss_ce``) and the backbone's ``SolverInfo`` fields (the RBP ones are filled in by the backward
    pass). No ``SolverInfo`` is kept past its iteration: it holds tensors of the step."""

    def __init__(self, segmentor):
        self.losses: List[float] = []
        self.lcps: List[float] = []
        self.residuals: List[float] = []
        self.neumann: List[float] = []
        self._pending = None
        segmentor.backbone.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if module.training:
            self._pending = output[1]

    def add(self, loss_ce: float, info) -> str:
        """Record one iteration; returns its progress line."""
        self.losses.append(loss_ce)
        self.residuals.append(info.fixed_point_residual)
        if info.lcp is not None:
            self.lcps.append(float(info.lcp.detach()))
        if info.neumann_terms is not None:
            self.neumann.append(info.neumann_terms)
        return (f"loss {loss_ce:.4f} lcp {self.lcps[-1] if info.lcp is not None else '-'} "
                f"fp-res {info.fixed_point_residual:.3g} neumann {info.neumann_terms}")

    def hook(self, args, probe):
        """An mmengine hook object: records each iteration, prints progress, runs the probe."""
        from mmengine.hooks import Hook

        log, start = self, time.perf_counter()

        class PathfinderReportHook(Hook):
            priority = "LOWEST"

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                info, log._pending = log._pending, None
                line = log.add(float(torch.as_tensor(outputs["loss_ce"]).detach()), info)
                iteration = runner.iter  # mmengine increments it after this hook
                if iteration % max(1, args.iters // 10) == 0 or iteration == args.iters - 1:
                    print(f"iter {iteration:4d} {line} ({time.perf_counter() - start:.0f}s)",
                          file=sys.stderr, flush=True)
                if args.eval_every and (iteration + 1) % args.eval_every == 0:
                    result, = probe()
                    print(f"iter {iteration:4d} probe IoU {result['iou']:.3f} (trivial "
                          f"{result['all_bright_iou']:.3f})", file=sys.stderr, flush=True)
                    runner.model.train()

        return PathfinderReportHook()

    def summary(self) -> Dict:
        """Means over the last 10 iterations (the Neumann terms: over all)."""
        last = lambda values: round(sum(values[-10:]) / len(values[-10:]), 4) if values else None  # noqa: E731
        return dict(final_loss=last(self.losses), final_lcp=last(self.lcps),
                    final_fixed_point_residual=last(self.residuals),
                    mean_neumann_terms=round(sum(self.neumann) / len(self.neumann), 2) if self.neumann else None)


def train(args, cfg):
    """Train with mmengine's runner on ``cfg``; returns ``(segmentor, log)``."""
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="train_pathfinder_")
    cfg.work_dir = work_dir
    # mmengine keeps loggers and visualizers by name for the whole process: names of this run's own, so
    # that another runner in the same process neither reuses nor writes into this run's (deleted) work dir
    cfg.experiment_name = cfg.visualizer.name = f"train_pathfinder_{time.time_ns()}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the runner's log on stderr, the report on stdout
            runner = mr.build_runner(cfg)  # a PreparedRunner: kill-safe checkpoints in any work dir
            segmentor = runner.model
            log = _TrainingLog(segmentor)
            probe = lambda: evaluate(args, cfg, segmentor, args.length,  # noqa: E731
                                     samples=max(1, args.eval_samples // 4))
            runner.register_hook(log.hook(args, probe))
            start = time.perf_counter()
            with PeakRSS() as peak:
                runner.train()
            train_time = time.perf_counter() - start
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return segmentor, dict(train_time_s=round(train_time, 1), train_peak_rss_increase_mib=round(peak.mib, 1),
                           **log.summary())


@torch.no_grad()
def evaluate(args, cfg, segmentor, length: int, samples: Optional[int] = None,
             steps: Optional[List[int]] = None) -> List[Dict]:
    """IoU of the target class over ``samples`` (default ``--eval-samples``) images of the config's
    test set at ``length`` dashes after each of ``steps`` (default ``[--steps]``) recurrent steps; one
    pass over the images reads every step count off the same run (``PathfinderHGRU.step_logits``)."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    steps = steps or [args.steps]
    dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, length=length,
                                  num_samples=samples or args.eval_samples))
    segmentor.eval()
    inter, union = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0)
    bright_inter = bright_union = 0
    for start in range(0, len(dataset), args.batch_size):
        items = [dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))]
        batch = segmentor.data_preprocessor(pseudo_collate(items), False)
        img = batch["inputs"]                                                   # (B, 1, H, W) in [0, 1]
        target = torch.cat([s.gt_sem_seg.data for s in batch["data_samples"]]) == 1   # (B, H, W)
        per_step = segmentor.backbone.step_logits(img, max(steps))
        for count in steps:
            pred = per_step[count - 1].argmax(1) == 1
            inter[count] += int((pred & target).sum())
            union[count] += int((pred | target).sum())
        bright = img[:, 0] > 0
        bright_inter += int((bright & target).sum())
        bright_union += int((bright | target).sum())
    all_bright = round(bright_inter / max(bright_union, 1), 4)
    return [dict(length=length, steps=count, iou=round(inter[count] / max(union[count], 1), 4),
                 all_bright_iou=all_bright) for count in steps]


# what a --save file fixes: the model, its training data and the training schedule
SAVED_SETTINGS = ("mode", "steps", "image_size", "length", "num_distractors", "iters", "batch_size",
                  "lr", "lr_schedule", "channels", "kernel_size", "lcp_lambda", "lcp_weight",
                  "lcp_reduction", "target_weight", "input_scale", "target_prior", "seed")


def _apply_saved_settings(args, saved: Dict, argv: Optional[List[str]]) -> None:
    """Take the model / data settings of a ``--save`` file; the test lengths too unless given."""
    legacy = dict(lcp_reduction="sum", lcp_weight=1.0)  # saves made before these were settings
    for key in SAVED_SETTINGS:
        setattr(args, key, saved[key] if key in saved else legacy[key])
    given = argv if argv is not None else sys.argv[1:]
    if not any(arg.startswith("--eval-lengths") for arg in given):
        args.eval_lengths = list(saved["eval_lengths"])
    if not any(arg.startswith("--eval-steps") for arg in given):
        args.eval_steps = [args.steps]


def main(argv: List[str] = None) -> Dict:
    args = parse_args(argv)
    checkpoint = torch.load(args.load, map_location="cpu", weights_only=False) if args.load else None
    if checkpoint is not None:
        _apply_saved_settings(args, checkpoint["args"], argv)
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    wall = time.perf_counter()
    if checkpoint is not None:
        _import_config_modules(cfg)
        from mmseg.registry import MODELS
        segmentor = MODELS.build(cfg.model)
        segmentor.backbone.load_state_dict(checkpoint["state_dict"])
        log = dict(loaded_from=args.load)
    else:
        segmentor, log = train(args, cfg)
    per_length = [evaluate(args, cfg, segmentor, length, steps=args.eval_steps)
                  for length in args.eval_lengths]
    results = [row for by_steps in zip(*per_length) for row in by_steps]  # steps-major order
    if args.save:
        torch.save(dict(state_dict=segmentor.backbone.state_dict(), args=vars(args)), args.save)
    report = dict(mode=args.mode, steps=args.steps, eval_steps=args.eval_steps,
                  image_size=args.image_size, train_length=args.length, iters=args.iters,
                  batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed,
                  kernel_size=args.kernel_size, channels=args.channels,
                  num_distractors=args.num_distractors, target_weight=args.target_weight,
                  input_scale=args.input_scale, target_prior=args.target_prior,
                  lcp_lambda=args.lcp_lambda, lcp_weight=args.lcp_weight,
                  lcp_reduction=args.lcp_reduction, **log,
                  wall_time_s=round(time.perf_counter() - wall, 1), eval=results,
                  command="PYTHONPATH=. python tools/train_pathfinder.py " + " ".join(
                      argv if argv is not None else sys.argv[1:]))
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
