"""Per-step predictions of the Pathfinder hGRU (the C-RBP paper's Fig. 3c): image, target, then the
read-out's P(contour) after every recurrent step t = 1..T (and past the training horizon).

The read-out (BatchNorm + 1x1 conv) is applied to the hGRU state ``h_t`` of every step; ``h_t`` is
computed with ``model.cell(drive, h_{t-1})``, the same transition the model's ``FixedPointSolver``
iterates. Without ``--checkpoint`` the model is randomly initialised (said in the figure title).

    PYTHONPATH=. .venv/bin/python tools/analysis/hgru_steps.py --out docs/analysis/hgru_steps.png
    PYTHONPATH=. .venv/bin/python tools/analysis/hgru_steps.py --checkpoint work_dirs/pf.pth --steps 8 \
        --show-steps 1 2 4 8 16 32
"""
import argparse
import os

import torch

from rv_plugins.datasets.pathfinder import PathfinderConfig, PathfinderDataset
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU


def load_model(args) -> PathfinderHGRU:
    model = PathfinderHGRU(channels=args.channels, kernel_size=args.kernel_size, steps=args.steps)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def step_predictions(model: PathfinderHGRU, img: torch.Tensor, max_steps: int):
    """img ``(1, C, H, W)`` -> list of ``(H, W)`` P(contour) maps after steps 1..max_steps, and the
    per-step residual ``||h_t - h_{t-1}|| / ||h_t||``."""
    drive = model.input_layer(img)
    h = torch.zeros_like(drive)
    probs, residuals = [], []
    for _ in range(max_steps):
        h_next = model.cell(drive, h)
        residuals.append(float((h_next - h).norm() / h_next.norm().clamp_min(1e-12)))
        h = h_next
        probs.append(model.readout(h).softmax(1)[0, 1])
    return probs, residuals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="PathfinderHGRU state_dict (default: random init)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=14)
    parser.add_argument("--channels", type=int, default=25)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="training horizon N of the model")
    parser.add_argument("--show-steps", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16, 24])
    parser.add_argument("--index", type=int, default=0, help="dataset sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--absolute-scale", action="store_true",
                        help="colour scale 0..1 (default: the shown maps' min..max, shared by all steps)")
    parser.add_argument("--out", default="docs/analysis/hgru_steps.png")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = PathfinderDataset(args.index + 1, PathfinderConfig(image_size=args.image_size, length=args.length),
                             seed=args.seed)
    sample = data[args.index]
    model = load_model(args)
    probs, residuals = step_predictions(model, sample["img"][None], max(args.show_steps))

    cols = 2 + len(args.show_steps)
    fig, axes = plt.subplots(1, cols, figsize=(1.9 * cols, 2.4))
    axes[0].imshow(sample["img"][0], cmap="gray")
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(sample["mask"], cmap="gray")
    axes[1].set_title("target", fontsize=8)
    shown = torch.stack([probs[t - 1] for t in args.show_steps])
    lo, hi = (0.0, 1.0) if args.absolute_scale else (float(shown.min()), float(shown.max()))
    for ax, t in zip(axes[2:], args.show_steps):
        ax.imshow(probs[t - 1], cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(f"t={t}{' (N)' if t == args.steps else ''}\nres {residuals[t - 1]:.1e}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    origin = f"checkpoint {os.path.basename(args.checkpoint)}" if args.checkpoint else \
        "RANDOM INIT (no trained checkpoint: shows the dynamics only)"
    fig.suptitle(f"hGRU per-step P(contour) (colour {lo:.3f}..{hi:.3f}), Pathfinder {args.image_size}px "
                 f"length {args.length}; {origin}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}; residual per step: " + " ".join(f"{r:.2e}" for r in residuals))


if __name__ == "__main__":
    main()
