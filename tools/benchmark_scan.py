"""Benchmark ``rv_plugins.ops.linear_scan`` and ``mingru_scan`` against the alternatives and the memory floor.

    python tools/benchmark_scan.py --threads 1     # this CPU, one thread (the figures in docs/scan_ops.md)
    python tools/benchmark_scan.py --device cuda   # same code on a GPU (adds the Triton backend)
    python tools/benchmark_scan.py --json out.json --repeats 7 --kernels main
    python tools/benchmark_scan.py --threads 1 --clock cpu --shapes none --repeats 11   # fused table alone

For each shape it times the forward and the forward+backward of every method and prints medians (ms)
and ratios to the memory floor (cloning ``a`` and ``b`` once). Methods:
``torch`` (our default path: the compiled CPU kernel on the CPU), ``chunked`` (our pure-PyTorch
fallback), ``triton`` (CUDA only), ``loop`` (step-by-step, autograd through every step) and
``logspace`` (Heinsen's ``logcumsumexp`` formulation used by popular minGRU code; needs ``a, b > 0``).

Second table (``--fused-shapes``, ``B×L×H``): the fused minGRU op ``mingru_scan(proj)`` against the
unfused path it replaces (``sigmoid(-gate)``, ``sigmoid(gate) * cand``, ``linear_scan``), both on
the default backend; its floor is cloning the op's own inputs and outputs once (forward: ``proj``
and ``h``; forward+backward: ``proj``, ``h``, ``grad_h`` and ``grad_proj``).

``--kernels main|all``: the sm_90 compile report of the Triton kernels (``rv_plugins.ops.triton_compile``; no
GPU needed): registers, spills, shared memory, 16-byte vector loads, asynchronous copies and the programs
and bytes of loads an SM can hold, at the configuration of ``L = 65536, D = 144`` (``main``) or at every
configuration the launchers can pick (``all``, a few minutes).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from rv_plugins.ops import backend_name, linear_scan, mingru_scan  # noqa: E402
from rv_plugins.ops import chunked  # noqa: E402
from rv_plugins.utils import measure  # noqa: E402

SHAPES = [(8, 3136, 96), (8, 784, 192), (8, 196, 384), (8, 49, 768), (2, 16384, 96)]
FUSED_SHAPES = [(8, 3136, 144)]


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
        h = chunked.scan_chunked(a, b, None, False).to(a.dtype)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        grad_a, grad_b, _ = chunked.scan_backward(a, h, None, grad_h, False)
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


CPU_CLOCK = False  # --clock cpu: report this thread's CPU time instead of the wall time (see --help)


def time_call(fn, device, repeats, budget_s):
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up (fewer once the runs exceed
    ``budget_s``): :func:`rv_plugins.utils.measure.time_calls`, wall or CPU-time median per ``--clock``."""
    timing = measure.time_calls(fn, warmup=1, repeats=repeats, budget_s=budget_s, device=device)
    return timing.cpu_median_s if CPU_CLOCK else timing.median_s


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


def unfused_mingru(proj):
    """What MinGRU.forward ran before the fused op: separate gate ops, then the scan."""
    gate, cand = proj.chunk(2, dim=-1)
    return linear_scan(torch.sigmoid(-gate), torch.sigmoid(gate) * cand)


def bench_fused(shape, device, dtype, repeats, budget_s):
    """Forward and forward+backward times of the fused op, the unfused path and the copy floor."""
    B, L, H = shape
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(B, L, 2 * H, generator=g).to(device, dtype)
    grad = torch.randn(B, L, H, generator=g).to(device, dtype)
    h = torch.empty(B, L, H, device=device, dtype=dtype)
    row = {}
    fwd = time_call(lambda: (proj.clone(), h.clone()), device, repeats, budget_s)
    row["floor"] = {"fwd": fwd, "fwd_bwd": time_call(lambda: (proj.clone(), h.clone(), grad.clone(), proj.clone()),
                                                     device, repeats, budget_s)}
    methods = {"fused": lambda p: mingru_scan(p), "unfused": unfused_mingru}
    for name, fn in methods.items():
        fwd = time_call(lambda: fn(proj), device, repeats, budget_s)
        p_ = proj.clone().requires_grad_(True)

        def fwd_bwd():
            p_.grad = None
            fn(p_).backward(grad)

        row[name] = {"fwd": fwd, "fwd_bwd": time_call(fwd_bwd, device, repeats, budget_s)}
    return row


def markdown_fused(results, device_desc):
    lines = ["", f"Fused minGRU scan, {device_desc}. Medians in ms; ×floor: ratio to cloning the op's inputs "
             "and outputs once; speed-up: unfused / fused.", "",
             "| B×L×H | pass | floor ms | fused ms (×floor) | unfused ms (×floor) | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in results:
        t = r["times"]
        for pass_ in ("fwd", "fwd_bwd"):
            floor = t["floor"][pass_]
            fused, unfused = t["fused"][pass_], t["unfused"][pass_]
            lines.append(f"| {r['shape']} | {pass_.replace('_', '+')} | {floor * 1e3:.2f} | "
                         f"{fused * 1e3:.2f} ({fused / floor:.2f}×) | {unfused * 1e3:.2f} ({unfused / floor:.2f}×) | "
                         f"{unfused / fused:.2f}× |")
    lines.append("")
    for r in results:  # the fused op's targets for forward+backward
        t = r["times"]
        speedup = t["unfused"]["fwd_bwd"] / t["fused"]["fwd_bwd"]
        floor = t["fused"]["fwd_bwd"] / t["floor"]["fwd_bwd"]
        lines.append(f"Targets at {r['shape']}, fwd+bwd: {speedup:.2f}× faster than unfused (≥ 3×: "
                     f"{'met' if speedup >= 3 else 'missed'}), {floor:.2f}× the copy floor (≤ 2×: "
                     f"{'met' if floor <= 2 else 'missed'}).")
    return "\n".join(lines)


def markdown_kernels(rows):
    lines = ["", "Triton kernels compiled for sm_90 as the runtime JIT specialises them (`rv_plugins/ops/triton_compile.py`): "
             "registers per thread, spill (stack) bytes, shared memory, 16-byte vector loads, cp.async/TMA copies, "
             "programs per SM by registers/warps/shared memory and the tile loads they hold in flight.", "",
             "| kernel | dtype | tile (L×D, steps) | warps | alignment | registers | spill B | shared B | vector loads | "
             "async copies | programs/SM | KiB in flight/SM |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['kernel']}` | {r['dtype']} | {r['block_l']}×{r['block_d']}, {r['steps']} | {r['num_warps']} | "
                     f"{r['specialization']} | {r['registers']} | {r['stack_bytes'] + r['local_bytes']} | "
                     f"{r['shared_bytes']} | {r['vector_loads']} | {r['async_copies']} | {r['programs_per_sm']} | "
                     f"{r['bytes_in_flight_per_sm'] // 1024} |")
    return "\n".join(lines)


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


def _parse_shapes(text, default):
    """``"8x3136x96,2x16384x96"`` -> ``[(8, 3136, 96), (2, 16384, 96)]``; ``default`` when empty."""
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")] if text else default


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=3.0, help="stop repeating a timing after this many seconds")
    p.add_argument("--skip", default="", help="comma-separated methods to skip, e.g. loop")
    p.add_argument("--shapes", default="", help="e.g. 8x3136x96,2x16384x96 (default: the VisionGRU set; 'none' "
                   "for the fused table alone)")
    p.add_argument("--fused-shapes", default="", help="B×L×H shapes of the fused minGRU table, e.g. 8x3136x144 "
                   "(default: 8x3136x144; 'none' to skip)")
    p.add_argument("--kernels", choices=["main", "all"], help="also compile the Triton kernels for sm_90 and report "
                   "their resources: at the main configuration or at every one the launchers can pick")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: CPU time of the calling thread (with --threads 1 on the CPU all "
                        "work runs in that thread, and time spent waiting for a core on a busy machine is excluded)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CPU_CLOCK
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        p.error("--clock cpu measures one thread: use it with --device cpu --threads 1")
    CPU_CLOCK = args.clock == "cpu"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = [] if args.shapes == "none" else _parse_shapes(args.shapes, SHAPES)
    skip = set(filter(None, args.skip.split(",")))
    desc = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads") + f", {args.dtype}, torch backend = {backend_name(device)}" \
        + (", CPU-time clock" if args.clock == "cpu" else "")
    results = []
    for shape in shapes:
        times = bench_shape(shape, device, dtype, args.repeats, args.budget, skip)
        results.append({"shape": "×".join(map(str, shape)), "times": times})
        print(f"done {shape}", file=sys.stderr, flush=True)
    fused_shapes = [] if args.fused_shapes == "none" else _parse_shapes(args.fused_shapes, FUSED_SHAPES)
    fused = []
    for shape in fused_shapes:
        fused.append({"shape": "×".join(map(str, shape)), "times": bench_fused(shape, device, dtype, args.repeats,
                                                                                args.budget)})
        print(f"done fused {shape}", file=sys.stderr, flush=True)
    kernels = []
    if args.kernels:
        from rv_plugins.ops.triton_compile import compile_all_in_subprocess
        kernels = compile_all_in_subprocess(main_only=args.kernels == "main")
    command = "python tools/benchmark_scan.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if results:
        print(markdown(results, desc, command.strip()))
    else:
        print(f"Command: `{command.strip()}`")
    if fused:
        print(markdown_fused(fused, desc))
    if kernels:
        print(markdown_kernels(kernels))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": desc, "command": command, "results": results, "fused": fused, "kernels": kernels},
                      f, indent=2)


if __name__ == "__main__":
    main()
