"""Benchmark ``rv_plugins.ops.linear_scan`` against the step loop, the log-space scan and the memory floor.

    python tools/benchmark_scan.py                 # this CPU
    python tools/benchmark_scan.py --device cuda   # same code on a GPU (adds the Triton backend)
    python tools/benchmark_scan.py --json out.json --repeats 7

For each shape it times the forward and the forward+backward of every method and prints medians (ms)
and ratios to the memory floor (cloning ``a`` and ``b`` once). Methods:
``torch`` (our default path: the compiled CPU kernel on the CPU), ``chunked`` (our pure-PyTorch
fallback), ``triton`` (CUDA only), ``loop`` (step-by-step, autograd through every step) and
``logspace`` (Heinsen's ``logcumsumexp`` formulation used by popular minGRU code; needs ``a, b > 0``).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from rv_plugins.ops import backend_name, linear_scan  # noqa: E402
from rv_plugins.ops import scan as scan_mod  # noqa: E402

SHAPES = [(8, 3136, 96), (8, 784, 192), (8, 196, 384), (8, 49, 768), (2, 16384, 96)]


def logspace_scan(a, b):
    """Heinsen (2023): h_t = exp(a*_t + logcumsumexp(log b - a*)), a* = cumsum(log a); a, b > 0."""
    a_star = torch.cumsum(torch.log(a), dim=1)
    return torch.exp(a_star + torch.logcumsumexp(torch.log(b) - a_star, dim=1))


def loop_scan(a, b):
    return linear_scan(a, b, backend="reference")


def chunked_scan(a, b):
    """Our pure-PyTorch fallback, forced (what the torch backend runs without a compiler); the op
    reads ``RV_SCAN_DISABLE_CPU_KERNEL`` when it runs, forward and backward."""
    return _ChunkedOnly.apply(a, b)


class _ChunkedOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        h = scan_mod._chunked_forward(a, b, None, False).to(a.dtype)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        grad_a, grad_b, _ = scan_mod._chunked_backward(a, h, None, grad_h, False)
        return grad_a.to(a.dtype), grad_b.to(a.dtype)


def methods(device):
    out = {"floor": lambda a, b: (a.clone(), b.clone()),
           "torch": lambda a, b: linear_scan(a, b, backend="torch"),
           "chunked": chunked_scan}
    if device.type == "cuda":
        out["triton"] = lambda a, b: linear_scan(a, b, backend="triton")
    out["loop"] = loop_scan
    out["logspace"] = logspace_scan
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats, budget_s):
    """Median seconds of ``fn()`` over ``repeats`` runs (fewer if one run exceeds ``budget_s``)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        if sum(times) > budget_s and len(times) >= 1:
            break
    return statistics.median(times)


def bench_shape(shape, device, dtype, repeats, budget_s, skip):
    B, L, D = shape
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, L, D, generator=g).mul_(0.9).add_(0.05).to(device, dtype)  # decays in (0.05, 0.95)
    b = torch.rand(B, L, D, generator=g).add_(0.01).to(device, dtype)            # > 0 for the log-space scan
    grad = torch.randn(B, L, D, generator=g).to(device, dtype)
    row = {}
    for name, fn in methods(device).items():
        if name in skip:
            continue
        fwd = time_call(lambda: fn(a, b), device, repeats, budget_s)
        if name == "floor":
            row[name] = {"fwd": fwd, "fwd_bwd": fwd}
            continue
        a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)

        def fwd_bwd():
            a_.grad = b_.grad = None
            fn(a_, b_).backward(grad)

        row[name] = {"fwd": fwd, "fwd_bwd": time_call(fwd_bwd, device, repeats, budget_s)}
    return row


def markdown(results, device_desc, command):
    names = [n for n in results[0]["times"] if n != "floor"]
    lines = [f"Device: {device_desc}. Medians in ms; ×: ratio to the memory floor (cloning a and b once).",
             f"Command: `{command}`", "",
             "| B×L×D | pass | floor ms | " + " | ".join(f"{n} ms (×)" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for r in results:
        t = r["times"]
        floor = t["floor"]["fwd"]
        for pass_ in ("fwd", "fwd_bwd"):
            cells = [f"{t[n][pass_] * 1e3:.2f} ({t[n][pass_] / floor:.1f}×)" for n in names]
            lines.append(f"| {r['shape']} | {pass_.replace('_', '+')} | {floor * 1e3:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=3.0, help="stop repeating a timing after this many seconds")
    p.add_argument("--skip", default="", help="comma-separated methods to skip, e.g. loop")
    p.add_argument("--shapes", default="", help="e.g. 8x3136x96,2x16384x96 (default: the VisionGRU set)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    skip = set(filter(None, args.skip.split(",")))
    desc = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads") + f", {args.dtype}, torch backend = {backend_name(device)}"
    results = []
    for shape in shapes:
        times = bench_shape(shape, device, dtype, args.repeats, args.budget, skip)
        results.append({"shape": "×".join(map(str, shape)), "times": times})
        print(f"done {shape}", file=sys.stderr, flush=True)
    command = "python tools/benchmark_scan.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(results, desc, command.strip()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": desc, "command": command, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
