"""Per-step predictions of trained Pathfinder hGRUs (the C-RBP paper's Fig. 1a): one row per model,
the image and its target, then the read-out's P(contour) after chosen steps t, before and past the
training horizon N, with the IoU of the target class over a test batch at each shown step.

The read-out (BatchNorm + 1x1 conv) is applied to every state ``h_t`` the model's solver iterates
(``PathfinderHGRU.step_logits``). Models are ``tools/train_pathfinder.py --save`` files, built with
the settings saved in them; without any, one randomly initialised model is shown (said in its row).

    PYTHONPATH=. .venv/bin/python tools/analysis/hgru_steps.py --checkpoints bptt.pth crbp.pth \\
        --show-steps 1 2 4 8 16 32 --out docs/analysis/hgru_steps.png
"""
import argparse
import json
import os
from typing import List, Tuple

import torch

from rv_plugins.datasets.pathfinder import PathfinderConfig, PathfinderDataset
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU


def regenerate_hint(path: str) -> str:
    """How to make the missing model ``path``: the command recorded in the run's report next to it
    (``crbp_N8.pth`` -> ``crbp_N8.json``'s ``command``; the trained models are not kept in the repository),
    else the general recipe."""
    report = os.path.splitext(path)[0] + ".json"
    try:
        with open(report) as handle:
            recorded = json.load(handle)
        command = recorded.get("command")
    except (OSError, ValueError, AttributeError):
        recorded, command = {}, None
    if command and "--lcp-reduction" not in command:
        # reports written before the penalty's scale was a setting ran the then-default: summed, weight 1;
        # today's defaults (mean x 10) would train a different model
        command += f" --lcp-reduction sum --lcp-weight {recorded.get('lcp_weight', 1.0):g}"
    if command:
        # the same run, its report written to work_dirs/ (the committed one backs the docs' tables)
        folder = os.path.basename(os.path.dirname(os.path.abspath(report)))
        rerun = command.replace(f"--out {report}", f"--out work_dirs/{folder}_{os.path.basename(report)}")
        return f"re-train it with the command its report {report} records:\n    mkdir -p work_dirs && {rerun}"
    return ("train one with `PYTHONPATH=. python tools/train_pathfinder.py ... --save " + path + "` "
            "(the recipes: docs/pathfinder.md)")


def load_model(path: str) -> Tuple[PathfinderHGRU, dict]:
    """A ``train_pathfinder.py --save`` file -> the model in eval mode and its saved settings."""
    if not os.path.isfile(path):
        raise SystemExit(f"hgru_steps: {path} does not exist; {regenerate_hint(path)}")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or "args" not in saved:
        raise ValueError(f"{path}: not a tools/train_pathfinder.py --save file (needs 'args' and "
                         "'state_dict'); re-train with --save")
    a = saved["args"]
    model = PathfinderHGRU(channels=a["channels"], kernel_size=a["kernel_size"], mode=a["mode"],
                           steps=a["steps"], input_scale=a["input_scale"],
                           target_prior=a["target_prior"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), a


def iou(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """IoU of class 1 over a batch: logits ``(B, 2, H, W)``, mask ``(B, H, W)``."""
    pred, target = logits.argmax(1) == 1, mask == 1
    return float((pred & target).sum()) / max(1, int((pred | target).sum()))


def main(argv: List[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="train_pathfinder.py --save files, one row each")
    parser.add_argument("--length", type=int, help="contour length (default: the training length)")
    parser.add_argument("--show-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch", type=int, default=16, help="test images (IoU; BatchNorm statistics)")
    parser.add_argument("--index", type=int, default=0, help="which of the test images to draw")
    parser.add_argument("--seed", type=int, default=10_000, help="test stream (train_pathfinder's)")
    parser.add_argument("--out", default="docs/analysis/hgru_steps.png")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.checkpoints:
        rows = [(os.path.basename(path),) + load_model(path) for path in args.checkpoints]
    else:
        rows = [("RANDOM INIT", PathfinderHGRU(kernel_size=5, steps=8).eval(),
                 dict(mode="none", steps=8, image_size=32, length=4))]
    cols = 2 + len(args.show_steps)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 2.3 * len(rows) + 0.3), squeeze=False)
    for row, (name, model, saved) in enumerate(rows):
        length = args.length or saved["length"]
        data = PathfinderDataset(args.batch, PathfinderConfig(image_size=saved["image_size"],
                                                              length=length), seed=args.seed)
        batch = [data[i] for i in range(len(data))]
        img = torch.stack([item["img"] for item in batch])
        mask = torch.stack([item["mask"] for item in batch])
        per_step = model.step_logits(img, max(args.show_steps))
        axes[row, 0].imshow(img[args.index, 0], cmap="gray")
        axes[row, 0].set_title(f"{saved['mode']} (N={saved['steps']})\n{name}", fontsize=7)
        axes[row, 1].imshow(mask[args.index], cmap="gray")
        axes[row, 1].set_title(f"target, {length} dashes", fontsize=7)
        for ax, t in zip(axes[row, 2:], args.show_steps):
            logits = per_step[t - 1]
            ax.imshow(logits.softmax(1)[args.index, 1], cmap="magma", vmin=0.0, vmax=1.0)
            ax.set_title(f"t={t}{' (N)' if t == saved['steps'] else ''}\nIoU {iou(logits, mask):.2f}",
                         fontsize=7)
        summary = " ".join(f"t={t}:{iou(per_step[t - 1], mask):.3f}" for t in args.show_steps)
        print(f"{name} ({saved['mode']}, N={saved['steps']}, length {length}) IoU per step: {summary}")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"hGRU P(contour) after t steps (IoU over {args.batch} test images)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
