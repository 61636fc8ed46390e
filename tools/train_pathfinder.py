"""Train the hGRU Pathfinder model (C-RBP paper, section 2.1) on a scaled-down Pathfinder; CPU-sized.

Trains on contours of ``--length`` dashes and reports the IoU of the target class on held-out
images of every ``--eval-lengths`` (the paper trains on 14 and tests on 14, 20, 25 dashes; by
default those are scaled by ``--length-scale`` to fit small images), the peak memory of training
and the wall time. For context it also reports the IoU of the trivial rule "every bright pixel is
target" (a model must beat it to have traced anything).

    PYTHONPATH=. python tools/train_pathfinder.py --mode crbp --steps 8 --iters 150 --out crbp.json
"""
import argparse
import json
import os
import resource
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from rv_plugins.datasets.pathfinder import PathfinderConfig, PathfinderDataset
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
from rv_plugins.solvers.fixed_point import MODES

PAPER_LENGTHS = (14, 20, 25)


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _batch(dataset: PathfinderDataset, start: int, size: int) -> Dict[str, torch.Tensor]:
    items = [dataset[(start + offset) % len(dataset)] for offset in range(size)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


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
    args = parser.parse_args(argv)
    scaled = [max(2, round(args.length_scale * length)) for length in PAPER_LENGTHS]
    args.length = args.length or scaled[0]
    args.eval_lengths = ([int(v) for v in args.eval_lengths.split(",")] if args.eval_lengths
                         else scaled)
    args.eval_steps = ([int(v) for v in args.eval_steps.split(",")] if args.eval_steps
                       else [args.steps])
    return args


def train(args, model: PathfinderHGRU) -> Dict:
    """Adam on per-pixel cross-entropy (+ LCP in the contractor modes); returns the log."""
    config = PathfinderConfig(image_size=args.image_size, length=args.length,
                              num_distractors=args.num_distractors)
    data = PathfinderDataset(args.iters * args.batch_size, config, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iters)
                 if args.lr_schedule == "cosine" else None)
    class_weight = torch.tensor([1.0, args.target_weight])
    model.train()
    losses, lcps, residuals, neumann = [], [], [], []
    rss_before, start = _rss_mib(), time.perf_counter()
    for iteration in range(args.iters):
        batch = _batch(data, iteration * args.batch_size, args.batch_size)
        logits, info = model(batch["img"])
        loss = F.cross_entropy(logits, batch["mask"], weight=class_weight)
        total = loss if info.weighted_lcp is None else loss + info.weighted_lcp
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
        residuals.append(info.fixed_point_residual)
        if info.lcp is not None:
            lcps.append(float(info.lcp.detach()))
        if info.neumann_terms is not None:
            neumann.append(info.neumann_terms)
        if iteration % max(1, args.iters // 10) == 0 or iteration == args.iters - 1:
            print(f"iter {iteration:4d} loss {loss.item():.4f} lcp {lcps[-1] if lcps else '-'} "
                  f"fp-res {info.fixed_point_residual:.3g} neumann {info.neumann_terms} "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
        if args.eval_every and (iteration + 1) % args.eval_every == 0:
            probe, = evaluate(args, model, args.length, samples=max(1, args.eval_samples // 4))
            print(f"iter {iteration:4d} probe IoU {probe['iou']:.3f} (trivial "
                  f"{probe['all_bright_iou']:.3f})", file=sys.stderr, flush=True)
            model.train()
    return dict(train_time_s=round(time.perf_counter() - start, 1),
                train_peak_rss_increase_mib=round(_peak_rss_mib() - rss_before, 1),
                final_loss=round(sum(losses[-10:]) / len(losses[-10:]), 4),
                final_lcp=round(sum(lcps[-10:]) / len(lcps[-10:]), 4) if lcps else None,
                final_fixed_point_residual=round(sum(residuals[-10:]) / len(residuals[-10:]), 4),
                mean_neumann_terms=round(sum(neumann) / len(neumann), 2) if neumann else None)


@torch.no_grad()
def evaluate(args, model: PathfinderHGRU, length: int, samples: Optional[int] = None,
             steps: Optional[List[int]] = None) -> List[Dict]:
    """IoU of the target class over ``samples`` (default ``--eval-samples``) held-out images of
    ``length`` dashes after each of ``steps`` (default ``[--steps]``) recurrent steps; one pass
    over the images reads every step count off the same run (``PathfinderHGRU.step_logits``)."""
    steps = steps or [args.steps]
    config = PathfinderConfig(image_size=args.image_size, length=length,
                              num_distractors=args.num_distractors)
    data = PathfinderDataset(samples or args.eval_samples, config, seed=args.seed + 10_000)
    model.eval()
    inter, union = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0)
    bright_inter = bright_union = 0
    for start in range(0, len(data), args.batch_size):
        batch = _batch(data, start, min(args.batch_size, len(data) - start))
        per_step = model.step_logits(batch["img"], max(steps))
        target = batch["mask"] == 1
        for count in steps:
            pred = per_step[count - 1].argmax(1) == 1
            inter[count] += int((pred & target).sum())
            union[count] += int((pred | target).sum())
        bright = batch["img"][:, 0] > 0
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
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = PathfinderHGRU(channels=args.channels, kernel_size=args.kernel_size, mode=args.mode,
                           steps=args.steps, lcp_lambda=args.lcp_lambda, lcp_weight=args.lcp_weight,
                           lcp_reduction=args.lcp_reduction, input_scale=args.input_scale, target_prior=args.target_prior)
    wall = time.perf_counter()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        log = dict(loaded_from=args.load)
    else:
        log = train(args, model)
    per_length = [evaluate(args, model, length, steps=args.eval_steps)
                  for length in args.eval_lengths]
    results = [row for by_steps in zip(*per_length) for row in by_steps]  # steps-major order
    if args.save:
        torch.save(dict(state_dict=model.state_dict(), args=vars(args)), args.save)
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
