"""Effective receptive field (Luo et al. 2016; the Sequencer paper's Fig. 5 method).

For each model: the gradient of the central pixel of the last stage's map (summed over channels)
w.r.t. the input image, absolute value summed over the colour channels, averaged over ``--images``
random images, then rescaled to [0, 1] per model (as the Sequencer paper does). Weights are a
random init unless ``--checkpoint name=path`` is given (said in the figure title): a random init shows
the architecture's wiring (cross shape of the 2-D scans, locality of convolutions), not what
training learns.

    PYTHONPATH=. .venv/bin/python tools/analysis/erf.py --out docs/analysis/erf.png
    PYTHONPATH=. .venv/bin/python tools/analysis/erf.py --models sequencer2d-s convnext-t --size 448
"""
import argparse
import os
from typing import Dict

import torch
from torch import nn

PEERS = ("convnext-t", "deit-s")  # mmpretrain's own implementations, for comparison


def build_backbone(name: str, size: int) -> nn.Module:
    """A backbone whose ``forward`` returns the last stage's ``(B, C, h, w)`` map (first of a tuple): one of
    ours by its registry name (``rv_plugins.backbones.model_names()``, no drop path, positional embedding
    made for ``size`` where the model has one) or an mmpretrain peer (``PEERS``)."""
    from rv_plugins.backbones import BACKBONES, create_backbone, model_names
    if name in model_names():
        entry, _ = BACKBONES.split(name)
        kwargs = dict(drop_path_rate=0.0)
        if "img_size" in entry.constructor_defaults():
            kwargs["img_size"] = size
        return create_backbone(name, **kwargs)
    if name == "convnext-t":
        import mmpretrain.models  # noqa: F401
        from mmpretrain.registry import MODELS
        model = MODELS.build(dict(type="ConvNeXt", arch="tiny", gap_before_final_norm=False, out_indices=(3,)))
        model.init_weights()
        return model
    if name == "deit-s":
        import mmpretrain.models  # noqa: F401
        from mmpretrain.registry import MODELS
        model = MODELS.build(dict(type="VisionTransformer", arch="deit-small", img_size=size,
                                  out_type="featmap"))
        model.init_weights()
        return model
    raise SystemExit(f"unknown model {name!r}; choose from {model_names() + list(PEERS)}")


def erf(model: nn.Module, size: int, images: int, seed: int) -> torch.Tensor:
    """``(size, size)`` mean |d out[center] / d input| over ``images`` random images, in [0, 1]."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(size, size)
    for _ in range(images):
        x = torch.randn(1, 3, size, size, generator=gen).requires_grad_(True)
        out = model(x)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        h, w = out.shape[-2:]
        out[0, :, h // 2, w // 2].sum().backward()
        acc += x.grad[0].abs().sum(0)
    acc /= images
    return (acc - acc.min()) / (acc.max() - acc.min()).clamp_min(1e-12)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sequencer2d-s", "visiongru-ti", "convnext-t"],
                        help="our registry names (rv_plugins.backbones.model_names(): visiongru-ti, "
                             "sequencer2d-s, ...) and the peers convnext-t, deit-s")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--checkpoint", nargs="*", default=[], help="name=path (backbone state_dict)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/analysis/erf.png")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    ckpts: Dict[str, str] = dict(c.split("=", 1) for c in args.checkpoint)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.models), figsize=(3.2 * len(args.models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], args.models):
        model = build_backbone(name, args.size)
        if name in ckpts:
            state = torch.load(ckpts[name], map_location="cpu")
            model.load_state_dict(state.get("state_dict", state), strict=False)
        field = erf(model, args.size, args.images, args.seed)
        # share of the gradient mass within the central 25% x 25% square: a locality number
        c, r = args.size // 2, args.size // 8
        raw_share = float(field[c - r:c + r, c - r:c + r].sum() / field.sum().clamp_min(1e-12))
        ax.imshow(field, cmap="viridis")
        ax.set_title(f"{name} / last stage\n{'trained: ' + os.path.basename(ckpts[name]) if name in ckpts else 'random init'}"
                     f", mass in centre 1/4-side square {raw_share:.2f}", fontsize=8)
        ax.axis("off")
        print(f"{name}: centre 1/4-side square holds {raw_share:.2f} of the rescaled ERF mass")
    fig.suptitle(f"ERF at {args.size}^2, |grad| of the central last-stage pixel, mean of {args.images} "
                 "random images, rescaled to [0, 1]", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
