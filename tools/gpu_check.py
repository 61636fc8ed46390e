"""One prepared GPU check: the scan kernels against the copy rate and their peers, VisionGRU-Ti against DeiT-S.

On a lent H200 (the `run` tool of the device machine; from the repository root, the peers' wheels in the
ignored folder ``.whl`` — download them here first, see docs/gpu.md):

    run(carry=[".whl"], timeout_s=560, command="python3 -m pip install -q --no-index --no-deps --no-compile
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
        PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out $OUT")

then copy the four files from ``$OUT`` into ``docs/benchmarks/gpu_h200/``. On the CPU at tiny sizes (what
``tests/test_gpu_check.py`` runs, so that the GPU run cannot fail on a typo)::

    TRITON_INTERPRET=1 python tools/gpu_check.py --tiny --out /tmp/gpu_check

Sections (each guarded: a failing peer or model is recorded under ``failed`` and the rest still runs; the
JSON is rewritten after every section): ``copy`` (device-to-device clone rate: the ceiling), ``correct``
(``tools/gpu_correctness.py`` in a child process with a time limit: our kernels and VisionGRU's GPU path
against independent oracles; if it hangs, the sections that run our kernels are skipped), ``scan``
(``linear_scan`` 8x65536x144, forward and forward+backward, float32 and bfloat16, as fractions of the copy
rate for the bytes the op must move: 3 passes forward, 8 forward+backward), ``fused`` (``mingru_scan``
against gate ops + ``linear_scan``), ``peers`` (fla's ``chunk_hgrn`` / ``fused_recurrent_hgrn`` with
``g = log a`` and accelerated-scan's Triton scan on the same shapes and dtypes), ``models`` (VisionGRU-Ti and
timm's DeiT-S in bfloat16: img/s and peak memory at 224/512/1024, a training step at 512), ``profile``
(torch.profiler's top ops of VisionGRU-Ti inference at 1024^2), ``sweep`` (the scan forward at other tile
configurations), ``warp`` (accelerated-scan's CUDA scan, built with nvcc on first use).

Ratios in ``summary.json`` are ours over the peer's: speed (the peer's time / ours; img/s ours / theirs)
and memory (ours / theirs); > 1 means faster, or more memory.
"""
import argparse
import datetime
import faulthandler
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch  # noqa: E402

from gpu_correctness import run_in_child  # noqa: E402
from rv_plugins.utils import measure as rvm  # noqa: E402

SECTIONS = ("copy", "correct", "scan", "fused", "peers", "models", "profile", "sweep", "warp")
FULL = dict(copy_mib=2048, scan=(8, 65536, 144), shapes=[(8, 3136, 144), (1, 65536, 144), (8, 65536, 144)],
            infer_res=[224, 512, 1024], train_res=[512], profile_res=1024, repeats=10, warmup=2, correct_s=240,
            sweep=[(64, 32, 4, 4), (64, 32, 8, 2), (32, 32, 2, 4), (64, 16, 2, 4), (128, 32, 8, 4), (64, 64, 8, 2),
                   (128, 32, 8, 2)])
TINY = dict(copy_mib=1, scan=(1, 40, 16), shapes=[(1, 40, 16)], infer_res=[32], train_res=[32], profile_res=32,
            repeats=1, warmup=0, sweep=[(16, 16, 1, 4)], correct_s=600)
USES_OUR_KERNELS = ("scan", "fused", "peers", "models", "profile", "sweep")
PASSES = {"fwd": 3, "fwd_bwd": 8}   # tensors of B*L*D the scan must read or write: a, b, h; + a, h, grad_h, grad_a, grad_b


class Report:
    """Raw results, written after every section (JSON, a markdown table and summary.json)."""

    def __init__(self, out_dir, args, device):
        self.out_dir, self.device = out_dir, device
        desc = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (tiny sizes, Triton interpreted)"
        self.raw = dict(date=datetime.date.today().isoformat(), device=desc, torch=torch.__version__,
                        command="python tools/gpu_check.py " + " ".join(args), sections={}, failed={}, seconds={})
        try:
            import triton
            self.raw["triton"] = triton.__version__
        except ImportError:
            self.raw["triton"] = None

    def run(self, name, fn):
        start = time.perf_counter()
        try:
            self.raw["sections"][name] = fn()
        except Exception as exc:   # one failing peer or model must not lose the rest
            self.raw["failed"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
        self.raw["seconds"][name] = round(time.perf_counter() - start, 1)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.write()

    def write(self):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "gpu_check.json"), "w") as f:
            json.dump(self.raw, f, indent=1)
        with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
            json.dump(summary(self.raw), f, indent=1)
        with open(os.path.join(self.out_dir, "gpu_check.md"), "w") as f:
            f.write(markdown(self.raw))


def _time(fn, device, cfg):
    return rvm.time_calls(fn, warmup=cfg["warmup"], repeats=cfg["repeats"], device=device).median_s


def _fwd_bwd(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]

    def step():
        for t in leaves:
            t.grad = None
        out = fn(*leaves)
        (out[0] if isinstance(out, tuple) else out).backward(grad)
    return step


def copy_rate(device, cfg):
    x = torch.randn(cfg["copy_mib"] * 2 ** 18, device=device)
    t = _time(lambda: x.clone(), device, cfg)
    return dict(bytes=2 * x.numel() * 4, seconds=t, bytes_per_s=2 * x.numel() * 4 / t)


def _scan_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (0.05 + 0.9 * torch.rand(shape, generator=g)).to(device, dtype)   # decays in (0.05, 0.95)
    b = torch.randn(shape, generator=g).to(device, dtype)
    return a, b, torch.randn(shape, generator=g).to(device, dtype)


def scan_section(device, cfg, copy):
    from rv_plugins.ops import linear_scan
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b, grad = _scan_inputs(cfg["scan"], dtype, device)
        run = lambda a_, b_: linear_scan(a_, b_, backend="triton")   # noqa: E731
        with torch.no_grad():
            fwd = _time(lambda: run(a, b), device, cfg)
        fwd_bwd = _time(_fwd_bwd(run, (a, b), grad), device, cfg)
        row = dict(shape=list(cfg["scan"]), dtype=str(dtype)[6:], fwd_s=fwd, fwd_bwd_s=fwd_bwd)
        if copy:
            nbytes = a.numel() * a.element_size()
            for key, t in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                row[f"{key}_frac_of_copy"] = PASSES[key] * nbytes / t / copy["bytes_per_s"]
        rows.append(row)
    return rows


def fused_section(device, cfg):
    from benchmark_scan import unfused_mingru
    from rv_plugins.ops import mingru_scan
    rows = []
    for B, L, H in cfg["shapes"]:
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator().manual_seed(1)
            proj = torch.randn(B, L, 2 * H, generator=g).to(device, dtype)
            grad = torch.randn(B, L, H, generator=g).to(device, dtype)
            times = {name: _time(_fwd_bwd(fn, (proj,), grad), device, cfg)
                     for name, fn in (("fused", lambda p: mingru_scan(p, backend="triton")),
                                      ("unfused", unfused_mingru))}
            rows.append(dict(shape=[B, L, H], dtype=str(dtype)[6:], fused_fwd_bwd_s=times["fused"],
                             unfused_fwd_bwd_s=times["unfused"], speedup=times["unfused"] / times["fused"]))
    return rows


def peer_fns():
    """Each peer as ``fn(a, b) -> h`` on our (B, L, D) inputs, with its own input layout prepared outside
    the timed call by ``prep(a, b) -> args``: ``{name: (prep, fn)}`` (import errors propagate)."""
    peers = {}
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
        log_a = lambda a, b: (b, torch.log(a.float()).to(a.dtype))   # noqa: E731  h = exp(g) h + x
        peers["fla_chunk_hgrn"] = (log_a, lambda x, g: chunk_hgrn(x, g)[0])
        peers["fla_fused_recurrent_hgrn"] = (log_a, lambda x, g: fused_recurrent_hgrn(x, g)[0])
    except ImportError as exc:
        peers["fla"] = exc
    try:
        from accelerated_scan.scalar import scan as accel_scan
        to_bct = lambda a, b: (a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous())  # noqa: E731
        peers["accelerated_scan_triton"] = (to_bct, accel_scan)
    except ImportError as exc:
        peers["accelerated_scan"] = exc
    return peers


def peers_section(device, cfg, peers=None):
    from rv_plugins.ops import linear_scan
    peers = peer_fns() if peers is None else peers
    rows, missing = [], {k: repr(v) for k, v in peers.items() if isinstance(v, Exception)}
    for shape in cfg["shapes"]:
        for dtype in (torch.float32, torch.bfloat16):
            a, b, grad = _scan_inputs(shape, dtype, device)
            ours = lambda a_, b_: linear_scan(a_, b_, backend="triton")   # noqa: E731
            base = dict(fwd_s=_time(lambda: ours(a, b), device, cfg),
                        fwd_bwd_s=_time(_fwd_bwd(ours, (a, b), grad), device, cfg))
            row = dict(shape=list(shape), dtype=str(dtype)[6:], ours=base)
            for name, peer in peers.items():
                if isinstance(peer, Exception):
                    continue
                prep, fn = peer
                try:
                    args = prep(a, b)
                    peer_grad = grad if args[0].shape == grad.shape else grad.transpose(1, 2).contiguous()
                    t = dict(fwd_s=_time(lambda: fn(*args), device, cfg),
                             fwd_bwd_s=_time(_fwd_bwd(fn, args, peer_grad), device, cfg))
                    t.update({f"ours_speed_ratio_{k}": t[f"{k}_s"] / base[f"{k}_s"] for k in ("fwd", "fwd_bwd")})
                    row[name] = t
                except Exception as exc:
                    row[name] = dict(failed=f"{type(exc).__name__}: {exc}")
            rows.append(row)
    return dict(rows=rows, missing=missing)


def models_section(device, cfg):
    from benchmark_gpu import measure
    dtype = torch.bfloat16
    rows = []
    for mode, resolutions in (("infer", cfg["infer_res"]), ("train", cfg["train_res"])):
        for res in resolutions:
            batch = max(1, round(64 * (224 / res) ** 2)) if device.type == "cuda" else 1
            for name in ("visiongru-ti", "deit-s"):
                rows.append(measure(name, res, batch, mode, device, dtype, cfg["repeats"], max(1, cfg["warmup"])))
    return rows


def profile_section(device, cfg, top=25):
    from benchmark_gpu import build, logits
    from torch.profiler import ProfilerActivity, profile
    res = cfg["profile_res"]
    model = build("visiongru-ti", res).to(device).eval()
    x = torch.randn(1, 3, res, res, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        logits(model, x)                                   # compile and warm up outside the trace
        with profile(activities=activities) as prof:
            logits(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return dict(resolution=res, sorted_by=key, top=[dict(name=e.key, calls=e.count, self_us=getattr(e, key, 0),
                                                         cpu_total_us=e.cpu_time_total) for e in events])


def sweep_section(device, cfg):
    from rv_plugins.ops.triton_kernels import configs, linear_scan as kernels
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b, _ = _scan_inputs(cfg["scan"], dtype, device)
        for block_l, block_d, warps, steps in cfg["sweep"]:
            with configs.forced(block_l, block_d, warps, steps):
                t = _time(lambda: kernels.scan_forward(a, b, None, False), device, cfg)
            rows.append(dict(dtype=str(dtype)[6:], block_l=block_l, block_d=block_d, num_warps=warps, steps=steps,
                             fwd_s=t))
    return rows


def warp_section(device, cfg):
    from accelerated_scan.warp import scan as warp_scan   # builds its CUDA extension with nvcc
    rows = []
    for B, L, D in cfg["shapes"]:
        if L & (L - 1):
            continue   # its sequences must be a power of two long
        a, b, _ = _scan_inputs((B, L, D), torch.float32, device)
        a_t, b_t = a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()
        rows.append(dict(shape=[B, L, D], dtype="float32", fwd_s=_time(lambda: warp_scan(a_t, b_t), device, cfg)))
    return rows


def _best(rows, key):
    rows = [r for r in rows if isinstance(r.get(key), (int, float))]
    return max(rows, key=lambda r: r[key]) if rows else None


def _model_ratio(rows, mode, res, key):
    got = {r["model"]: r.get(key) for r in rows if r["mode"] == mode and r["res"] == res}
    ours, theirs = got.get("visiongru-ti"), got.get("deit-s")
    return ours / theirs if ours and theirs else None


def summary(raw):
    """The headline GPU figures, from this run only (None where the section failed or did not run)."""
    s, sec = dict(date=raw["date"], device=raw["device"]), raw["sections"]
    hung = str(raw["failed"].get("correct", "")).startswith("KernelsHung")
    s["kernels_match_reference"] = "hung" if hung else (sec.get("correct") or {}).get("ok")
    for key, field in (("scan_fwd_frac_of_copy", "fwd_frac_of_copy"), ("scan_fwdbwd_frac_of_copy", "fwd_bwd_frac_of_copy")):
        best = _best(sec.get("scan") or [], field)
        s[key] = None if best is None else dict(value=best[field], dtype=best["dtype"], shape=best["shape"])
    fused = [r for r in sec.get("fused") or [] if isinstance(r.get("speedup"), float)]
    worst = min(fused, key=lambda r: r["speedup"]) if fused else None
    s["fused_vs_unfused_fwdbwd"] = None if worst is None else dict(value=worst["speedup"], worst_shape=worst["shape"],
                                                                   dtype=worst["dtype"])
    fla = [(r["fla_chunk_hgrn"]["ours_speed_ratio_fwd_bwd"], r) for r in (sec.get("peers") or {}).get("rows", [])
           if "ours_speed_ratio_fwd_bwd" in r.get("fla_chunk_hgrn", {})]
    worst = min(fla, key=lambda p: p[0]) if fla else None
    s["scan_vs_fla_chunk_hgrn"] = None if worst is None else dict(value=worst[0], worst_shape=worst[1]["shape"],
                                                                  dtype=worst[1]["dtype"], passes="fwd+bwd")
    models = sec.get("models") or []
    big = max([r["res"] for r in models if r["mode"] == "infer"] or [0])
    train = max([r["res"] for r in models if r["mode"] == "train"] or [0])
    s["visiongru_vs_deit_img_s_1024_bf16"] = _model_ratio(models, "infer", big, "img_per_s")
    s["visiongru_vs_deit_peak_mem_1024_bf16"] = _model_ratio(models, "infer", big, "peak_mib")
    s["visiongru_vs_deit_train_512_bf16"] = _model_ratio(models, "train", train, "img_per_s")
    s["resolutions"] = dict(infer=big, train=train)
    s["failed"] = sorted(raw["failed"])
    s["meaning"] = "speed ratios: peer time / our time (img/s: ours / theirs); memory: ours / theirs"
    return s


def _fmt(x):
    return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def markdown(raw):
    sec, lines = raw["sections"], [f"# GPU check, {raw['date']}: {raw['device']}", "",
                                   f"torch {raw['torch']}, triton {raw['triton']}; command: `{raw['command']}`", ""]
    if "copy" in sec:
        lines += [f"Copy rate (clone, read + write): {sec['copy']['bytes_per_s'] / 1e12:.2f} TB/s", ""]
    if "correct" in sec:
        verdict = "all match" if sec["correct"]["ok"] else "MISMATCH: " + ", ".join(sec["correct"]["failed"])
        lines += [f"Our kernels against the oracles (tools/gpu_correctness.py): {verdict}", ""]
    lines += ["| scan | dtype | fwd ms | fwd+bwd ms | fwd / copy | fwd+bwd / copy |", "|---|---|---|---|---|---|"]
    for r in sec.get("scan") or []:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['fwd_s'] * 1e3:.3f} | {r['fwd_bwd_s'] * 1e3:.3f} | "
                     f"{_fmt(r.get('fwd_frac_of_copy'))} | {_fmt(r.get('fwd_bwd_frac_of_copy'))} |")
    lines += ["", "| fused minGRU | dtype | fused ms | unfused ms | speed-up |", "|---|---|---|---|---|"]
    for r in sec.get("fused") or []:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['fused_fwd_bwd_s'] * 1e3:.3f} | "
                     f"{r['unfused_fwd_bwd_s'] * 1e3:.3f} | {r['speedup']:.2f} |")
    lines += ["", "| peers (fwd+bwd ms; ours' speed ratio) | dtype | ours | peer | ratio |", "|---|---|---|---|---|"]
    for r in (sec.get("peers") or {}).get("rows", []):
        for name, t in r.items():
            if isinstance(t, dict) and name != "ours":
                lines.append(f"| {r['shape']} {name} | {r['dtype']} | {r['ours']['fwd_bwd_s'] * 1e3:.3f} | "
                             f"{_fmt(t.get('fwd_bwd_s', 0) * 1e3 if 'fwd_bwd_s' in t else t.get('failed'))} | "
                             f"{_fmt(t.get('ours_speed_ratio_fwd_bwd'))} |")
    lines += ["", "| model | res | batch | mode | img/s | peak MiB |", "|---|---|---|---|---|---|"]
    for r in sec.get("models") or []:
        lines.append(f"| {r['model']} | {r['res']} | {r['batch']} | {r['mode']} | {r['img_per_s']:.1f} | "
                     f"{_fmt(r.get('peak_mib'))} |")
    lines += ["", "Summary (ratios: ours over the peer's): `" + json.dumps(summary(raw)) + "`", ""]
    if raw["failed"]:
        lines += ["Failed sections: " + ", ".join(f"{k} ({v.splitlines()[0]})" for k, v in raw["failed"].items()), ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "gpu_h200"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU rehearsal; Triton interpreted off CUDA)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the sections left once this much time passed")
    p.add_argument("--hang-s", type=float, default=540.0,
                   help="print every thread's traceback and exit after this long (the files keep what finished)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        p.error("no CUDA device: run with --tiny (and TRITON_INTERPRET=1) for the CPU rehearsal")
    cfg = TINY if args.tiny else FULL
    report = Report(args.out, sys.argv[1:] if argv is None else argv, device)
    start = time.perf_counter()
    faulthandler.dump_traceback_later(args.hang_s, exit=True, file=sys.__stderr__)
    copy = {}
    steps = dict(copy=lambda: copy.update(copy_rate(device, cfg)) or copy,
                 correct=lambda: run_in_child(os.path.join(args.out, "correctness.json"), args.tiny, cfg["correct_s"]),
                 scan=lambda: scan_section(device, cfg, copy), fused=lambda: fused_section(device, cfg),
                 peers=lambda: peers_section(device, cfg), models=lambda: models_section(device, cfg),
                 profile=lambda: profile_section(device, cfg), sweep=lambda: sweep_section(device, cfg),
                 warp=lambda: warp_section(device, cfg))
    for name in SECTIONS:
        if name not in args.sections:
            continue
        if time.perf_counter() - start > args.budget_s:
            report.raw["failed"][name] = f"skipped: the {args.budget_s:.0f} s budget was spent"
            continue
        if name in USES_OUR_KERNELS and str(report.raw["failed"].get("correct", "")).startswith("KernelsHung"):
            report.raw["failed"][name] = "skipped: our kernels hung in the correctness check"
            continue
        print(f"[{name}] ...", flush=True)
        report.run(name, steps[name])
    faulthandler.cancel_dump_traceback_later()
    report.write()
    print(markdown(report.raw))
    return report.raw


if __name__ == "__main__":
    main()
