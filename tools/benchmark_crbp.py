"""Peak memory and time of one hGRU training step: BPTT vs C-RBP over the number of steps.

Every (mode, steps) runs in a fresh subprocess, so the process's peak resident set size
belongs to that configuration alone. The child loads everything with a tiny warm-up (2 steps on a
4x smaller map), runs one training step (forward, loss, backward) and reports the peak RSS increase
over its RSS before the step (``rv_plugins.utils.measure.PeakRSS``: the high-water mark reset at the
step's start); it also counts the bytes autograd saves for the backward (exact and
allocator-independent). Time is the median of ``--repeats`` further steps.

    PYTHONPATH=. python tools/benchmark_crbp.py                         # markdown table
    PYTHONPATH=. python tools/benchmark_crbp.py --json out.json --plot docs/crbp_memory.png
"""
import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

from rv_plugins.layers.hgru import HGRUCell
from rv_plugins.solvers.fixed_point import FixedPointSolver
from rv_plugins.utils import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _training_step(cell, readout, solver, x, target, steps):
    """Forward through the solver, cross-entropy (+ LCP), backward. Returns the loss."""
    h, info = solver(cell, x, torch.zeros_like(x), steps=steps)
    loss = F.cross_entropy(readout(h), target)
    if info.weighted_lcp is not None:
        loss = loss + info.weighted_lcp
    loss.backward()
    return float(loss.detach())


def run_child(args) -> Dict:
    """One configuration in this process; returns its measurements."""
    torch.manual_seed(0)
    measure.pin_threads(args.threads)
    cell = HGRUCell(args.channels, args.kernel_size)
    readout = torch.nn.Conv2d(args.channels, 2, 1)
    solver = FixedPointSolver(args.child_mode, steps=max(2, args.child_steps))
    small = max(4, args.size // 4)
    _training_step(cell, readout, solver, torch.rand(args.batch, args.channels, small, small),
                   torch.randint(0, 2, (args.batch, small, small)), 2)
    x = torch.rand(args.batch, args.channels, args.size, args.size)
    target = torch.randint(0, 2, (args.batch, args.size, args.size))
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def step():
        _training_step(cell, readout, solver, x, target, args.child_steps)

    with measure.PeakRSS() as peak, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        first = measure.time_call(step)
    times = [first] + [measure.time_call(step) for _ in range(args.repeats)]
    return dict(mode=args.child_mode, steps=args.child_steps, peak_rss_mib=round(peak.mib, 1),
                autograd_saved_mib=round(saved[0] / 2 ** 20, 1),
                step_time_s=round(statistics.median(times[1:] or times), 3))


def run_all(args) -> List[Dict]:
    results = []
    for mode in args.modes.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            command = [sys.executable, os.path.abspath(__file__), "--child-mode", mode,
                       "--child-steps", str(steps)] + _shared_flags(args)
            child = measure.run_json_child(command, env=measure.thread_env(args.threads, [ROOT]))
            results.append(child.unwrap(f"benchmark child {mode}/{steps}"))
            print(f"  done {mode} steps={steps}: {results[-1]}", file=sys.stderr, flush=True)
    return results


def _shared_flags(args) -> List[str]:
    return ["--batch", str(args.batch), "--channels", str(args.channels), "--size", str(args.size),
            "--kernel-size", str(args.kernel_size), "--repeats", str(args.repeats),
            "--threads", str(args.threads)]


def markdown_table(results: List[Dict]) -> str:
    lines = ["| mode | steps | peak RSS increase (MiB) | autograd saved, per save (MiB) | step time (s) |",
             "|---|---:|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['mode']} | {row['steps']} | {row['peak_rss_mib']} | "
                     f"{row['autograd_saved_mib']} | {row['step_time_s']} |")
    return "\n".join(lines)


def plot(results: List[Dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for mode in dict.fromkeys(row["mode"] for row in results):
        rows = [row for row in results if row["mode"] == mode]
        steps = [row["steps"] for row in rows]
        axes[0].plot(steps, [row["peak_rss_mib"] for row in rows], "o-", label=mode)
        axes[1].plot(steps, [row["step_time_s"] for row in rows], "o-", label=mode)
    axes[0].set_ylabel("peak RSS increase of one step (MiB)")
    axes[1].set_ylabel("time of one training step (s)")
    for axis in axes:
        axis.set_xlabel("recurrent steps")
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="bptt,crbp")
    parser.add_argument("--steps", default="5,10,20,40")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the measured one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--plot", help="write a PNG plot (memory and time vs steps) here")
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_mode:
        measure.emit_result(run_child(args))
        return
    results = run_all(args)
    setting = (f"HGRUCell(C={args.channels}, k={args.kernel_size}), batch {args.batch}, "
               f"{args.size}x{args.size}, float32 CPU, {args.threads} thread(s)")
    command = "PYTHONPATH=. python tools/benchmark_crbp.py " + " ".join(argv or sys.argv[1:])
    print(f"Command: `{command.strip()}`\n\nSetting: {setting}\n")
    print(markdown_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(setting=setting, command=command, results=results), handle, indent=2)
    if args.plot:
        plot(results, args.plot, setting)


if __name__ == "__main__":
    main()
