"""What a user's process pays: the first forward's cost and the whole process's peak memory.

Each (model, case) runs in a fresh process (1 thread), so imports, kernel loading and allocator growth of
the first call are counted as a user meets them:

* ``first``: build the model (batch 1, 1000 classes, eval), then the first and the second inference forward
  at ``--small`` (64²): time and resident-set increase of each, and which compiler modules got imported
  (``torch._dynamo``, ``sympy``, ``torch._inductor``, ``triton``, ``torch.utils.cpp_extension``);
* ``peak``: build the model and run ONE inference forward at ``--large`` (1024²): the process's resident
  high-water mark (``VmHWM``: everything since start, imports included) and the forward's time.

Models: ``visiongru-ti`` (rv_plugins, plain PyTorch) and ``deit-s`` (timm's ``deit_small_patch16_224`` at the
same input size; mmpretrain's would add mmengine's and mmcv's imports). The table also gives each process's
resident set after its imports and model (``baseline``) and the forward's own rise above it (``peak -
baseline``), so the process peak can be read as what is loaded plus what the forward needs.

    python tools/benchmark_first_call.py [--models visiongru-ti deit-s] [--small 64] [--large 1024] [--json OUT]
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rv_plugins.utils import measure  # noqa: E402  (standard library and torch only)

COMPILER_MODULES = ("torch._dynamo", "sympy", "torch._inductor", "triton", "torch.utils.cpp_extension")


def _peak_mib() -> float:
    kib = measure._status_kib("VmHWM")
    if kib is None:
        raise RuntimeError("/proc/self/status has no VmHWM (this benchmark needs Linux)")
    return kib / 1024


def _build(name: str, res: int):
    if name == "visiongru-ti":
        from rv_plugins.backbones import create_backbone
        return create_backbone(name, num_classes=1000, img_size=res)
    if name == "deit-s":
        import timm
        return timm.create_model("deit_small_patch16_224", img_size=res, num_classes=1000)
    raise ValueError(f"unknown model {name!r}; choose visiongru-ti or deit-s")


def _forward(model, name: str, x):
    import torch
    with torch.no_grad():
        out = model(x)
        return model.forward_head(out) if name == "visiongru-ti" else out


def worker(name: str, case: str, small: int, large: int) -> dict:
    import torch
    torch.set_num_threads(1)
    res = small if case == "first" else large
    model = _build(name, res).eval()
    x = torch.randn(1, 3, res, res)
    rss0, t0 = measure.rss_mib(), time.perf_counter()
    _forward(model, name, x)
    t1, rss1 = time.perf_counter(), measure.rss_mib()
    out = dict(model=name, case=case, res=res, baseline_mib=rss0, first_s=t1 - t0, first_rss_mib=rss1 - rss0)
    if case == "first":
        _forward(model, name, x)
        out.update(second_s=time.perf_counter() - t1, second_rss_mib=measure.rss_mib() - rss1)
    out.update(process_peak_mib=_peak_mib(), imported=[m for m in COMPILER_MODULES if m in sys.modules])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["visiongru-ti", "deit-s"])
    p.add_argument("--small", type=int, default=64)
    p.add_argument("--large", type=int, default=1024)
    p.add_argument("--json", help="also write the records here")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        measure.emit_result(worker(*args.worker, args.small, args.large))
        return 0
    env = measure.thread_env(1, [ROOT])
    records = []
    for case in ("first", "peak"):
        for name in args.models:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, case,
                   "--small", str(args.small), "--large", str(args.large)]
            records.append(measure.run_json_child(cmd, env=env).unwrap(f"{name} {case}"))
    command = "python tools/benchmark_first_call.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# {command.strip()}  (1 thread, one process per model and case)")
    print(f"| model | first forward {args.small}² | second | first-call RSS | compiler modules imported |"
          f" process peak, one forward at {args.large}² | baseline | peak - baseline |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    by = {(r["model"], r["case"]): r for r in records}
    for name in args.models:
        f, k = by[(name, "first")], by[(name, "peak")]
        print(f"| {name} | {f['first_s']:.3f} s | {f['second_s']:.3f} s | +{f['first_rss_mib']:.1f} MiB | "
              f"{', '.join(f['imported']) or 'none'} | {k['process_peak_mib']:.0f} MiB | {k['baseline_mib']:.0f} MiB | "
              f"{k['process_peak_mib'] - k['baseline_mib']:.0f} MiB |")
    if {"visiongru-ti", "deit-s"} <= set(args.models):
        ratio = by[("visiongru-ti", "peak")]["process_peak_mib"] / by[("deit-s", "peak")]["process_peak_mib"]
        ours, peer = by[("visiongru-ti", "peak")], by[("deit-s", "peak")]
        rise = (ours["process_peak_mib"] - ours["baseline_mib"]) / (peer["process_peak_mib"] - peer["baseline_mib"])
        print(f"\nprocess peak at {args.large}², VisionGRU-Ti / DeiT-S: {ratio:.2f}x (the forward's rise alone: {rise:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=command.strip(), records=records), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
