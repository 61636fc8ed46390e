"""Kernel-launching ops per VisionGRU forward, and its row-chunking decisions, without running a kernel.

    python tools/count_visiongru_ops.py                          # VisionGRU-Ti, 1024^2, batch 1 and 3, GPU code path
    python tools/count_visiongru_ops.py --res 448 --batch 1 --device cpu --chunks auto

The model runs on the ``meta`` device by default: no values, the code path a GPU takes (the accelerator
chunk rule, no oneDNN, the output projection without concatenated weights). A ``TorchDispatchMode``
counts every ATen and custom op a forward dispatches, leaving out the ones that launch no kernel (views,
permutes, empty allocations); ``rv_plugins::mingru_scan`` counts as one op (its own kernels are inside).
Inference in eval mode without autograd, for each ``--chunks`` setting (``auto``: the default rule,
``none``: one call per map, or a number: ``set_infer_chunk``). ``--decisions`` also prints
:func:`rv_plugins.layers.row_chunked.describe_infer_chunking`'s report (what ``tools/gpu_check.py``
records at 1024^2 on the GPU).
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from rv_plugins.backbones import create_backbone  # noqa: E402
from rv_plugins.layers.row_chunked import describe_infer_chunking, set_infer_chunk  # noqa: E402

NO_KERNEL = {"view", "_unsafe_view", "permute", "t", "transpose", "expand", "slice", "select", "as_strided",
             "detach", "alias", "unsqueeze", "squeeze", "split", "split_with_sizes", "chunk", "unbind", "narrow",
             "lift_fresh", "reshape", "empty", "new_empty", "empty_strided", "empty_like"}


class OpCounter(TorchDispatchMode):
    """Counts the dispatched ops that launch a kernel, by name (``aten::mm``, ``rv_plugins::mingru_scan``)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.name().split(".")[0]
        if name.split("::")[-1] not in NO_KERNEL:
            self.ops[name] += 1
        return out


def count_ops(model: torch.nn.Module, x: torch.Tensor) -> collections.Counter:
    """Ops of one ``model(x)`` in eval mode without autograd."""
    with torch.no_grad(), OpCounter() as counter:
        model.eval()(x)
    return counter.ops


def parse_chunk(text: str):
    """``'auto'``, ``'none'`` (no chunking) or a number of map elements -> ``set_infer_chunk``'s argument."""
    low = text.lower()
    return "auto" if low == "auto" else None if low == "none" else float(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="visiongru-ti")
    p.add_argument("--preset", default="released")
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 3])
    p.add_argument("--device", default="meta", help="meta (the GPU code path without a GPU), cpu or cuda")
    p.add_argument("--chunks", nargs="+", default=["auto", "none"])
    p.add_argument("--decisions", action="store_true", help="print each module's chunking decision too")
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with torch.device(device):
        model = create_backbone(args.model, preset=args.preset, img_size=None).eval()
    print(f"command: python tools/count_visiongru_ops.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    rows = []
    for batch in args.batch:
        x = torch.zeros(batch, 3, args.res, args.res, device=device)
        for chunk in args.chunks:
            ops = count_ops(set_infer_chunk(model, parse_chunk(chunk)), x)
            row = dict(model=args.model, res=args.res, batch=batch, device=args.device, chunk=chunk,
                       ops=sum(ops.values()), scans=ops["rv_plugins::mingru_scan"], cat=ops["aten::cat"],
                       top=ops.most_common(6))
            rows.append(row)
            print(f"{args.model} {args.res}^2 batch {batch} chunk={chunk} on {args.device}: {row['ops']} ops, "
                  f"{row['scans']} scan calls, {row['cat']} cat; most: {row['top']}")
        if args.decisions:
            set_infer_chunk(model, "auto")
            for entry in describe_infer_chunking(model, batch, args.res, args.res):
                print("   ", entry)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return dict(rows=rows)


if __name__ == "__main__":
    main()
