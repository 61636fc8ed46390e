"""CPU inference throughput of Sequencer2D: ours (LSTM, minGRU, ...) against timm's reference.

Every model runs ``--runs`` timed batches after ``--warmup`` untimed ones (oneDNN builds its RNN
kernels on the first call of a shape); models take turns batch by batch, so background load hits
them alike. Reported: parameters, MACs at the input size (``rv_plugins.utils.flops``), median and
best batch time, images/s from the median. The 1-minute load average is printed: on a shared
machine compare only rows of one run.

    PYTHONPATH=. .venv/bin/python tools/benchmark_sequencer.py --batch 8 --size 224 --threads 2
    PYTHONPATH=. .venv/bin/python tools/benchmark_sequencer.py --models timm ours:lstm ours:mingru --json
"""
import argparse
import json
import os
import statistics

import torch

from rv_plugins.backbones import Sequencer2D, create_backbone
from rv_plugins.utils import measure
from rv_plugins.utils.flops import count_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(spec: str, arch: str) -> torch.nn.Module:
    """``'timm'`` or ``'ours:<rnn_type>[:<impl>]'`` -> a classifier in eval mode (1000 classes)."""
    if spec == "timm":
        import timm
        return timm.create_model(f"sequencer2d_{arch}", pretrained=False).eval()
    parts = spec.split(":")
    if parts[0] != "ours" or len(parts) not in (2, 3):
        raise SystemExit(f"unknown model {spec!r}: use 'timm' or 'ours:<rnn_type>[:<impl>]', "
                         "e.g. ours:lstm:native")
    impl = parts[2] if len(parts) == 3 else "auto"
    backbone = create_backbone(f"sequencer2d-{arch}", rnn_type=parts[1], rnn_impl=impl, num_classes=1000)
    return _Classifier(backbone).eval()


class _Classifier(torch.nn.Module):
    """Image -> logits, so that ours and timm's run the same work (classifier included)."""

    def __init__(self, backbone: Sequencer2D):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.forward_head(self.backbone(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["timm", "ours:lstm", "ours:mingru"],
                        help="'timm' and/or 'ours:<lstm|gru|rnn|mingru>[:<auto|native|fused>]'")
    parser.add_argument("--arch", default="s", choices=["s", "m", "l"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    measure.pin_threads(args.threads)
    shape = (args.batch, 3, args.size, args.size)
    x = torch.randn(*shape)
    models = {spec: build(spec, args.arch) for spec in args.models}
    rows = {spec: dict(model=spec, params=sum(p.numel() for p in m.parameters()),
                       macs=count_flops(m, (1, 3, args.size, args.size))["total"], times=[])
            for spec, m in models.items()}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for m in models.values():
                m(x)
        for _ in range(args.runs):  # models take turns, so that background load hits them alike
            for spec, m in models.items():
                rows[spec]["times"].append(measure.time_call(lambda: m(x)))
    for row in rows.values():
        row["median_s"] = statistics.median(row["times"])
        row["best_s"] = min(row["times"])
        row["images_per_s"] = args.batch / row["median_s"]
    base = rows[args.models[0]]["images_per_s"]
    env = measure.environment()
    meta = dict(arch=args.arch, input=list(shape), threads=args.threads, runs=args.runs, warmup=args.warmup,
                torch=env["torch"], load_average_1min=env["load_average_1min"], cpu_count=env["cpu_count"],
                command=measure.command_line(argv, ROOT, script=__file__))
    if args.json:
        print(json.dumps(dict(meta=meta, results=list(rows.values())), indent=2))
        return
    print(f"Sequencer2D-{args.arch.upper()} CPU inference, batch {args.batch} at {args.size}x{args.size}, "
          f"{args.threads} threads, median of {args.runs} (load average {meta['load_average_1min']:.1f} "
          f"on {meta['cpu_count']} CPUs)\n")
    print("| model | params (M) | GMACs | median batch (s) | best batch (s) | images/s "
          f"| vs {args.models[0]} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows.values():
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.2f} | {r['median_s']:.3f} | "
              f"{r['best_s']:.3f} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x |")
    print(f"\n`{meta['command']}`")


if __name__ == "__main__":
    main()
