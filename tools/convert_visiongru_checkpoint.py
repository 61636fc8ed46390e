"""Convert the VisionGRU authors' checkpoint (github.com/YangLiu9208/VisionGRU) to rv_plugins' layout.

    python tools/convert_visiongru_checkpoint.py their_visiongru_ti.pth checkpoints/visiongru_ti_released.pth
    python tools/convert_visiongru_checkpoint.py SRC DST --format mmpretrain      # backbone.* + head.fc.*
    python tools/convert_visiongru_checkpoint.py SRC DST --verify --authors-code /path/to/VisionGRU/vig

The source may carry torch.compile's ``_orig_mod.`` and DDP's ``module.`` prefixes, or sit under
``state_dict`` / ``model``. Renames every key (see ``rv_plugins.utils.visiongru_authors``), swaps the
minGRU input projection's rows ([candidate; gate] -> our [gate; candidate]) and checks that the result
loads with ``strict=True`` into ``VisionGRU(arch, preset='released', num_classes=N)`` (the released
model: minGRU candidate through g, no positional embedding). A source that lacks a tensor of that model
is refused with the missing tensors named (in the authors' names). The output is ``{'state_dict': ...,
'meta': {...}}``, written atomically (a temporary file in the destination's folder, fsync, rename: a
full disk or a kill leaves an earlier output intact), its state dict carrying the weights record of
``preset='released'`` (``rv_plugins.utils.weights_record``: a load into a 'paper' model is refused):
plain keys (``stem.*``, ``stages.*``, ``head.*``) for ``init_cfg=dict(type='Pretrained',
...)`` in our configs or ``VisionGRU(...).load_pretrained``; ``--format mmpretrain`` writes
``backbone.*`` and ``head.fc.*`` so mmpretrain's tools (and ``configs/visiongru_ti_in1k.py``) evaluate it
as it is.

``--verify`` imports the authors' model definition (``visionGRU.py`` of their ``vig/`` folder, which
needs ``minGRU_pytorch``; give the folder with ``--authors-code``), loads the source into it and ours
into ours, and prints the largest logit difference on a random batch (their code fixes 224x224 input).
"""
import argparse
import importlib
import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from rv_plugins.backbones.visiongru import ARCH_SETTINGS, VisionGRU  # noqa: E402
from rv_plugins.engine.atomic import atomic_write  # noqa: E402
from rv_plugins.utils.checkpoint import extract_state_dict, read_checkpoint  # noqa: E402
from rv_plugins.utils.visiongru_authors import _strip, authors_key, convert_authors_state_dict  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the authors' checkpoint (.pth)")
    p.add_argument("dst", help="where to write ours")
    p.add_argument("--format", choices=["plain", "mmpretrain"], default="plain",
                   help="plain: VisionGRU keys (stem.*, stages.*, head.*); mmpretrain: backbone.* + head.fc.*")
    p.add_argument("--verify", action="store_true",
                   help="compare logits with the authors' model code (needs it importable; see --authors-code)")
    p.add_argument("--authors-code", help="folder holding the authors' visionGRU.py (their vig/ folder)")
    p.add_argument("--batch", type=int, default=2, help="--verify: random images per batch")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_ours(state, arch, source: str = "the checkpoint"):
    """Our released-preset model with ``state`` loaded strictly -> (model in eval mode, num_classes).
    Raises ``ValueError`` naming the authors' tensors that ``state`` lacks."""
    head = state.get("head.weight", state.get("head.bias"))
    num_classes = head.shape[0] if head is not None else 0
    _check_depths(arch, source)
    model = VisionGRU(arch=arch, preset="released", img_size=None, num_classes=num_classes,
                      drop_path_rate=0.0, out_indices=(3,))
    missing = [authors_key(k) for k in model.state_dict() if k not in state]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} tensor(s) of the authors' VisionGRU with embed_dims "
                         f"{arch['embed_dims']}, depths {arch['depths']}: {', '.join(missing[:8])}"
                         f"{', ...' if len(missing) > 8 else ''}; the file is incomplete or from other code: "
                         "download or save it again")
    model.load_state_dict(state, strict=True)
    return model.eval(), num_classes


def _check_depths(arch, source: str) -> None:
    """The width of one of the authors' models with other depths: whole blocks are missing (or extra)."""
    for name, published in ARCH_SETTINGS.items():
        if published["embed_dims"] != arch["embed_dims"] or published["depths"] == arch["depths"]:
            continue
        pairs = list(enumerate(zip(arch["depths"], published["depths"])))
        missing = [f"snake_gru.layers.{i}.{b}.*" for i, (have, want) in pairs for b in range(have, want)]
        extra = [f"snake_gru.layers.{i}.{b}.*" for i, (have, want) in pairs for b in range(want, have)]
        raise ValueError(f"{source} has the width of VisionGRU-{name} but depths {arch['depths']} instead of "
                         f"{published['depths']} (missing: {', '.join(missing[:6]) or 'none'}; extra: "
                         f"{', '.join(extra[:6]) or 'none'}); the file is incomplete or from other code")


def converted_state_dict(model: VisionGRU, fmt: str):
    """``model``'s state dict (with its weights record) in the layout of ``fmt`` ('plain' or 'mmpretrain':
    ``backbone.*`` and ``head.fc.*``, the metadata moved along)."""
    state = model.state_dict()
    if fmt == "plain":
        return state

    def rename(key: str) -> str:
        return key.replace("head", "head.fc", 1) if key.split(".")[0] == "head" else (
            f"backbone.{key}" if key else "backbone")

    out = OrderedDict((rename(k), v) for k, v in state.items())
    out._metadata = OrderedDict((rename(k), v) for k, v in state._metadata.items())
    return out


def verify(src_state, ours, num_classes, args) -> dict:
    """Authors' model (imported) vs ours on ``args.batch`` random 224x224 images -> figures dict."""
    if args.authors_code:
        sys.path.insert(0, os.path.abspath(args.authors_code))
    try:
        authors = importlib.import_module("visionGRU")
        theirs = authors.VisionGRU(num_classes=num_classes)
    except Exception as err:  # noqa: BLE001 - report any import/build failure the same way
        raise SystemExit(f"--verify: cannot import/build the authors' model ({type(err).__name__}: {err}); "
                         "pass --authors-code pointing at their vig/ folder (with minGRU-pytorch installed)")
    theirs.load_state_dict(_strip(src_state), strict=True)
    theirs.eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 224, 224, generator=gen)
    with torch.no_grad():
        a, b = theirs(x), ours.forward_head(ours(x))
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    top1 = (a.argmax(1) == b.argmax(1)).float().mean().item()
    return dict(max_abs_diff=diff, max_rel_diff=diff / max(scale, 1e-12), top1_agreement=top1)


def main(argv=None):
    args = parse_args(argv)
    src_state = extract_state_dict(read_checkpoint(args.src), args.src)
    try:
        ours_state, arch = convert_authors_state_dict(src_state)
        ours, num_classes = build_ours(ours_state, arch, args.src)
    except ValueError as err:
        raise SystemExit(f"convert_visiongru_checkpoint: {args.src}: {err}") from None
    print(f"converted {len(ours_state)} tensors, arch {arch}, {num_classes} classes; loads strictly into "
          "VisionGRU(preset='released')")
    out = converted_state_dict(ours, args.format)
    meta = dict(arch=arch, preset="released", num_classes=num_classes, source=os.path.abspath(args.src),
                format=args.format, converter="tools/convert_visiongru_checkpoint.py")
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    atomic_write(args.dst, lambda f: torch.save({"state_dict": out, "meta": meta}, f))
    print(f"wrote {args.dst}")
    if args.verify:
        figures = verify(src_state, ours, num_classes, args)
        print(f"verify: max |logit diff| {figures['max_abs_diff']:.3e}, relative to max |logit| "
              f"{figures['max_rel_diff']:.3e}, top-1 agreement {figures['top1_agreement']:.3f}")
        return figures
    return None


if __name__ == "__main__":
    main()
