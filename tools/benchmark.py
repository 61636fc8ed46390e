"""Resolution sweep of our backbones against mmpretrain's peers: params, FLOPs, CPU speed, peak memory.

Models (image -> 1000 logits, random init): ours ``visiongru-ti``, ``visiongru-b``, ``sequencer2d-s``,
``sequencer2d-m``, ``sequencer2d-l``, ``sequencer2d-s-mingru``; peers built from mmpretrain's own
implementations (``ImageClassifier`` from ``mmpretrain.registry.MODELS``): ``deit-s``
(``VisionTransformer(arch='deit-small')`` + ``VisionTransformerClsHead``), ``swin-t``, ``convnext-t``.

Modes, every (model, resolution, mode) in its own subprocess so that memory peaks do not mix:

* ``flops``: parameters and MACs of one forward (``rv_plugins.utils.flops.count_flops``; MACs are what
  papers call FLOPs), with the attention / scan / RNN share from ``by_op``.
* ``infer``: batch-1 forward under ``torch.inference_mode`` -> images/s (median of the timed runs).
* ``train``: batch-1 training step (forward + cross-entropy + backward, no optimizer step) -> images/s.

Peak memory: the peak RSS increase of the worker over its RSS after the model and input were built
(``/proc/self/clear_refs`` resets the kernel's high-water mark, ``VmHWM`` is read after the runs;
without it, ``ru_maxrss`` minus the baseline). A point is time-boxed: after ``--warmup`` calls the
timed runs stop once ``--point-budget-s`` is spent (at least one), a point whose first call takes longer
than ``--max-step-s`` is reported with its peak memory and that single time only, and a worker that
runs past ``--timeout`` is killed and reported as skipped.

Resolutions: DeiT-S is built with ``img_size`` = the resolution (a ``(res/16)^2`` positional embedding,
what interpolating a 224 one gives; weights are random anyway). Swin-T keeps window 7 and
mmpretrain's own padding of every stage map to a multiple of 7 (no ``pad_small_map``); at 1024 and
1248 the stage maps (256/128/64/32 and 312/156/78/39) are padded, so Swin computes on a few padded
tokens there (1248 = 224*5.57 is not a multiple of window*32 = 224).

    PYTHONPATH=. .venv/bin/python tools/benchmark.py --modes flops --json
    PYTHONPATH=. .venv/bin/python tools/benchmark.py --models visiongru-ti deit-s --resolutions 224 1024 \
        --modes infer --merge docs/benchmarks/results.json --out docs/benchmarks
    PYTHONPATH=. .venv/bin/python tools/benchmark.py --fidelity --merge docs/benchmarks/results.json

Figures are taken with ``--threads`` (default 1) CPU threads; on a shared machine compare rows of one run.
"""
import argparse
import gc
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTIONS = [224, 448, 672, 896, 1024, 1248]
MODES = ["flops", "infer", "train"]

# ----------------------------------------------------------------------------- paper figures (cited)
# Params in M, FLOPs (MACs) in G; every entry: (model, resolution, params, gflops, source).
PAPER_FIGURES = [
    ("visiongru-ti", 224, 30.0, None, "VisionGRU (arXiv:2412.18178), model table: 30M"),
    ("visiongru-b", 224, 86.0, None, "VisionGRU (arXiv:2412.18178), model table: 86M"),
    ("visiongru-ti", 1248, None, 151.9, "VisionGRU (arXiv:2412.18178) Fig. 1: 151.9 GFLOPs at 1248^2"),
    ("deit-s", 1248, None, 432.3, "VisionGRU (arXiv:2412.18178) Fig. 1: DeiT-S 432.3 GFLOPs at 1248^2"),
    ("sequencer2d-s", 224, 28.0, 8.4, "Sequencer (NeurIPS 2022) Table 1"),
    ("sequencer2d-m", 224, 38.0, 11.1, "Sequencer (NeurIPS 2022) Table 1"),
    ("sequencer2d-l", 224, 54.0, 16.6, "Sequencer (NeurIPS 2022) Table 1"),
    ("deit-s", 224, 22.0, 4.6, "Sequencer (NeurIPS 2022) Table 1"),
    ("swin-t", 224, 28.0, 4.5, "Sequencer (NeurIPS 2022) Table 1"),
    ("convnext-t", 224, 29.0, 4.5, "Sequencer (NeurIPS 2022) Table 1"),
]


METHOD_NOTES = [
    "Models: random init, 1000-class classifier, drop path 0. Ours: `VisionGRU(img_size=res)` + "
    "`forward_head` (the positional embedding is made for `res`, so its parameters grow with `res`), "
    "`Sequencer2D` + `forward_head`. Peers: mmpretrain 1.2 `ImageClassifier` (`mode='tensor'`).",
    "DeiT-S: `VisionTransformer(arch='deit-small', img_size=res)`: a `(res/16)^2` positional embedding, "
    "what interpolating the 224 one gives; its attention runs through `F.scaled_dot_product_attention` "
    "(`aten._scaled_dot_product_flash_attention_for_cpu`, counted by `count_flops`).",
    "Swin-T: window 7 at every resolution; mmpretrain pads each stage map up to a multiple of 7 "
    "(1024: 256/128/64/32 -> 259/133/70/35; 1248: 312/156/78/39 -> 315/161/84/42), so the counts and "
    "times include those padded tokens; 1248 is not a multiple of window x 32 = 224 and no other size "
    "was substituted. Window attention is `bmm` (counted as matmul, listed under attention here).",
    "FLOPs: `rv_plugins.utils.flops.count_flops` (MACs, = the papers' 'FLOPs'); element-wise ops "
    "(activations, norms, gates) are not counted, for every model alike.",
    "Speed: batch 1, `torch.set_num_threads(1)` + `OMP_NUM_THREADS=1`, one subprocess per (model, "
    "resolution, mode); median of the timed runs after 1 warm-up (5 runs <= 448, 3 <= 896, 2 above; "
    "timed runs stop after 40 s). Train = forward + cross-entropy + backward (no optimizer step). A "
    "point whose first call took > 60 s gets that single call as its time (`*`). Points measured since issue 12 "
    "also record the worker thread's CPU time per call (`cpu_images_per_s`), which the target lines use when "
    "both models have it: on the shared machine wall times of one point varied by up to 1.7x between runs.",
    "Memory: peak RSS increase of the worker over its RSS after model + input were built "
    "(`/proc/self/clear_refs` reset of VmHWM); includes allocator caching, not the weights. Every worker "
    "imports `torch._dynamo` before the baseline (our scans are `torch.library` custom ops, whose first "
    "call imports it: a one-time ~100 MiB of modules and Triton's shared library, not activation memory).",
    "VisionGRU: `preset='paper'` (positional embedding, linear candidate). Without autograd in eval mode "
    "it runs its memory-lean chunked path (row chunks of 2^18 map elements); its FLOPs are counted with "
    "chunking off (`set_infer_chunk(model, None)`), i.e. the model's MACs without the recomputed conv rows.",
]


# ----------------------------------------------------------------------------- models
class _OursClassifier(nn.Module):
    """Our backbone + its ``forward_head``: image -> logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.forward_head(self.backbone(x))


class _MMPretrainClassifier(nn.Module):
    """mmpretrain ``ImageClassifier`` in ``mode='tensor'``: image -> logits."""

    def __init__(self, backbone: dict, neck: Optional[dict], head: dict):
        super().__init__()
        import mmpretrain.models  # noqa: F401  (registers the modules)
        from mmpretrain.registry import MODELS
        self.classifier = MODELS.build(dict(type="ImageClassifier", backbone=backbone, neck=neck, head=head))
        self.classifier.init_weights()

    def forward(self, x):
        return self.classifier(x, mode="tensor")


def _visiongru(arch):
    def build(res):
        from rv_plugins.backbones.visiongru import VisionGRU
        # preset='paper': the paper's model (learned positional embedding, linear candidate), as measured
        # since the first sweep (30.44M parameters at 224^2 with the 1000-class classifier).
        return _OursClassifier(VisionGRU(arch=arch, img_size=res, drop_path_rate=0.0, num_classes=1000,
                                         preset="paper"))
    return build


def _sequencer(arch, rnn_type="lstm"):
    def build(res):
        from rv_plugins.backbones.sequencer2d import Sequencer2D
        return _OursClassifier(Sequencer2D(arch=arch, rnn_type=rnn_type, num_classes=1000))
    return build


def _deit_s(res):
    return _MMPretrainClassifier(
        dict(type="VisionTransformer", arch="deit-small", img_size=res, patch_size=16, drop_path_rate=0.0),
        None, dict(type="VisionTransformerClsHead", num_classes=1000, in_channels=384))


def _deit_s_eager(res):
    """DeiT-S with mmpretrain's own eager attention (``scaled_dot_product_attention_pyimpl``: the
    ``(N, N)`` attention matrix is materialised, as in timm/DeiT code before fused SDPA kernels)."""
    from functools import partial

    from mmpretrain.models.utils.attention import MultiheadAttention, scaled_dot_product_attention_pyimpl
    model = _deit_s(res)
    for m in model.modules():
        if isinstance(m, MultiheadAttention):
            m.scaled_dot_product_attention = partial(scaled_dot_product_attention_pyimpl, scale=m.head_dims ** -0.5)
    return model


def _swin_t(res):
    return _MMPretrainClassifier(
        dict(type="SwinTransformer", arch="tiny", img_size=res, window_size=7, drop_path_rate=0.0),
        dict(type="GlobalAveragePooling"), dict(type="LinearClsHead", num_classes=1000, in_channels=768))


def _convnext_t(res):
    return _MMPretrainClassifier(
        dict(type="ConvNeXt", arch="tiny", drop_path_rate=0.0, gap_before_final_norm=True),
        None, dict(type="LinearClsHead", num_classes=1000, in_channels=768))


# Tiny archs for the test (not in the default list).
_TINY_VGRU = dict(embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1])
_TINY_SEQ = dict(depths=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], patch_sizes=[4, 2, 1, 1],
                 hidden_dims=[4, 4, 4, 4], mlp_ratios=[1.0, 1.0, 1.0, 1.0])

MODELS: Dict[str, Callable[[int], nn.Module]] = {
    "visiongru-ti": _visiongru("tiny"),
    "visiongru-b": _visiongru("base"),
    "sequencer2d-s": _sequencer("s"),
    "sequencer2d-m": _sequencer("m"),
    "sequencer2d-l": _sequencer("l"),
    "sequencer2d-s-mingru": _sequencer("s", "mingru"),
    "deit-s": _deit_s,
    "deit-s-eager": _deit_s_eager,
    "swin-t": _swin_t,
    "convnext-t": _convnext_t,
}
TEST_MODELS: Dict[str, Callable[[int], nn.Module]] = {
    "test-visiongru": _visiongru(_TINY_VGRU),
    "test-sequencer": _sequencer(_TINY_SEQ),
}
DEFAULT_MODELS = [m for m in MODELS if m != "deit-s-eager"]  # the eager variant: on request


def build_model(name: str, res: int) -> nn.Module:
    table = {**MODELS, **TEST_MODELS}
    if name not in table:
        raise SystemExit(f"unknown model {name!r}; choose from {sorted(table)}")
    return table[name](res)


# ----------------------------------------------------------------------------- one point
def _op_share(by_op: Dict[str, int]) -> Dict[str, int]:
    """MACs of attention, our scan and RNN kernels, from ``count_flops``'s by_op.

    Attention: the SDPA kernels (DeiT-S: mmpretrain calls ``F.scaled_dot_product_attention``) and
    ``aten.bmm`` (of these models only Swin's window attention, ``q @ k^T`` and ``attn @ v``, uses it).
    """
    share = dict(attention=0, scan=0, rnn=0)
    for op, macs in by_op.items():
        if "attention" in op or op == "aten.bmm":
            share["attention"] += macs
        elif "linear_scan" in op:
            share["scan"] += macs
        elif "rnn" in op or op.startswith(("aten.lstm", "aten.gru")):
            share["rnn"] += macs
    return share


def measure_flops(name: str, res: int) -> dict:
    from rv_plugins.utils.flops import count_flops
    model = build_model(name, res)
    if name.startswith(("visiongru", "test-visiongru")):
        # count the model's MACs, not the row halos and per-direction conv recomputation of the
        # memory-lean chunked inference path (count_flops runs eval + no_grad)
        from rv_plugins.backbones.visiongru import set_infer_chunk
        set_infer_chunk(model, None)
    params = sum(p.numel() for p in model.parameters())
    result = count_flops(model, (1, 3, res, res))
    return dict(params=params, macs=result["total"], by_op=result["by_op"], **_op_share(result["by_op"]))


def _rss_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_speed(name: str, res: int, mode: str, runs: int, warmup: int, point_budget_s: float,
                  max_step_s: float) -> dict:
    torch.manual_seed(0)
    model = build_model(name, res)
    x = torch.randn(1, 3, res, res)
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        target = torch.zeros(1, dtype=torch.long)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), target).backward()
    gc.collect()
    reset_ok = _reset_peak()
    base_kib = _rss_kib("VmRSS") or 0
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: List[float] = []
    cpu_times: List[float] = []  # this thread's CPU time per call: far less sensitive to other jobs' load
    note = ""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    if first > max_step_s:
        note = f"first call {first:.1f}s > --max-step-s {max_step_s:g}: no timed runs, speed from that call"
        times = [first]
    else:
        for _ in range(warmup - 1):
            step()
        spent = 0.0
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.thread_time() - c0)
            spent += times[-1]
            if spent > point_budget_s:
                break
    if reset_ok and _rss_kib("VmHWM") is not None:
        peak_kib = _rss_kib("VmHWM") - base_kib
        method = "VmHWM after clear_refs"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(base_kib, 0)
        method = "ru_maxrss" + ("" if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > base_maxrss
                                else " (did not rise above the build peak: underestimate)")
    median = statistics.median(times)
    cpu = dict(cpu_median_s=statistics.median(cpu_times),
               cpu_images_per_s=1.0 / statistics.median(cpu_times)) if cpu_times else {}
    return dict(median_s=median, best_s=min(times), first_s=first, n_runs=len(times), **cpu,
                images_per_s=1.0 / median, peak_mem_mib=peak_kib / 1024, mem_method=method, note=note)


def _worker(args) -> None:
    torch.set_num_threads(args.threads)
    # Imported before the baseline for every model: the first call of a torch.library custom op (our
    # scans) imports torch._dynamo (and Triton's library when installed), a one-time, size-independent
    # cost of ~100 MiB RSS that would otherwise land in our first step's peak.
    import torch._dynamo as _dynamo  # noqa: F401
    name, res, mode = args.worker[0], int(args.worker[1]), args.worker[2]
    if mode == "flops":
        out = measure_flops(name, res)
    else:
        out = measure_speed(name, res, mode, args.runs or _default_runs(res), args.warmup,
                            args.point_budget_s, args.max_step_s)
    print("RESULT " + json.dumps(out))


def _default_runs(res: int) -> int:
    return 5 if res <= 448 else 3 if res <= 896 else 2


def run_point(name: str, res: int, mode: str, args) -> dict:
    """Run one (model, resolution, mode) in a fresh subprocess; returns its record."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(res), mode,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--point-budget-s", str(args.point_budget_s), "--max-step-s", str(args.max_step_s)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    record = dict(model=name, res=res, mode=mode, threads=args.threads)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        record.update(status="skipped", note=f"worker ran past --timeout {args.timeout}s")
        return record
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        record.update(status="failed", note=f"rc {proc.returncode}: " + " | ".join(tail))
        return record
    record.update(json.loads(lines[-1][len("RESULT "):]), status="ok", wall_s=round(time.time() - t0, 1),
                  load_average_1min=os.getloadavg()[0])
    return record


# ----------------------------------------------------------------------------- reports
def _key(r):
    return (r["model"], r["res"], r["mode"])


def _find(records, model, res, mode):
    for r in records:
        if _key(r) == (model, res, mode) and r.get("status") == "ok":
            return r
    return None


def _fmt(v, spec, empty="-"):
    return empty if v is None else format(v, spec)


def resolution_table(records: List[dict]) -> str:
    models = [m for m in {**MODELS, **TEST_MODELS} if any(r["model"] == m for r in records)]
    resolutions = sorted({r["res"] for r in records})
    lines = ["| model | res | params (M) | GMACs | attn/scan/RNN GMACs | infer img/s | infer peak MiB "
             "| train img/s | train peak MiB | load avg i/t |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for m in models:
        for res in resolutions:
            f, i, t = (_find(records, m, res, mode) for mode in MODES)
            if not (f or i or t):
                continue
            share = "-" if f is None else "/".join(f"{v / 1e9:.2f}" for v in _op_share(f["by_op"]).values())

            def speed(r):
                if r is None:
                    return "-"
                return f"{r['images_per_s']:.3f}" + ("*" if r.get("note") else "")
            lines.append(f"| {m} | {res} | {_fmt(f and f['params'] / 1e6, '.2f')} | "
                         f"{_fmt(f and f['macs'] / 1e9, '.2f')} | {share} | {speed(i)} | "
                         f"{_fmt(i and i['peak_mem_mib'], '.0f')} | {speed(t)} | {_fmt(t and t['peak_mem_mib'], '.0f')} | "
                         f"{_fmt(i and i.get('load_average_1min'), '.1f')}/{_fmt(t and t.get('load_average_1min'), '.1f')} |")
    skipped = [r for r in records if r.get("status") != "ok"]
    notes = [r for r in records if r.get("status") == "ok" and r.get("note")]
    out = "\n".join(lines)
    if notes:
        out += "\n\n`*`: " + "; ".join(f"{r['model']} {r['res']} {r['mode']}: {r['note']}" for r in notes)
    if skipped:
        out += "\n\nSkipped / failed: " + "; ".join(f"{r['model']} {r['res']} {r['mode']}: {r.get('note', '')}"
                                                   for r in skipped)
    return out


def fidelity_rows(records: List[dict]) -> List[dict]:
    rows = []
    for model, res, p_params, p_gflops, source in PAPER_FIGURES:
        f = _find(records, model, res, "flops")
        ours_params = f and f["params"] / 1e6
        ours_g = f and f["macs"] / 1e9
        rows.append(dict(model=model, res=res, source=source,
                         paper_params_m=p_params, ours_params_m=ours_params if p_params else None,
                         params_diff_pct=(100 * (ours_params - p_params) / p_params) if (f and p_params) else None,
                         paper_gflops=p_gflops, ours_gmacs=ours_g if p_gflops else None,
                         gflops_diff_pct=(100 * (ours_g - p_gflops) / p_gflops) if (f and p_gflops) else None))
    return rows


def fidelity_table(records: List[dict]) -> str:
    lines = ["| model | res | paper params (M) | ours (M) | diff | paper GFLOPs | ours GMACs | diff | source |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in fidelity_rows(records):
        lines.append(f"| {r['model']} | {r['res']} | {_fmt(r['paper_params_m'], 'g')} | {_fmt(r['ours_params_m'], '.2f')} "
                     f"| {_fmt(r['params_diff_pct'], '+.1f')}{'%' if r['params_diff_pct'] is not None else ''} "
                     f"| {_fmt(r['paper_gflops'], 'g')} | {_fmt(r['ours_gmacs'], '.2f')} "
                     f"| {_fmt(r['gflops_diff_pct'], '+.1f')}{'%' if r['gflops_diff_pct'] is not None else ''} "
                     f"| {r['source']} |")
    return "\n".join(lines)


def targets(records: List[dict]) -> List[str]:
    """The issue's targets, checked against what was measured (reported, never asserted)."""
    out = []
    vf, df = _find(records, "visiongru-ti", 1248, "flops"), _find(records, "deit-s", 1248, "flops")
    if vf and df:
        g, ratio = vf["macs"] / 1e9, vf["macs"] / df["macs"]
        out.append(f"VisionGRU-Ti GMACs at 1248: {g:.1f} (target <= 151.9): {'met' if g <= 151.9 else 'MISSED'}; "
                   f"ratio to DeiT-S {ratio:.2f} (target <= 0.4): {'met' if ratio <= 0.4 else 'MISSED'}")
    vi, di = _find(records, "visiongru-ti", 1024, "infer"), _find(records, "deit-s", 1024, "infer")
    if vi and di:
        ratio = vi["peak_mem_mib"] / di["peak_mem_mib"]
        verdict = "met, stretch met" if ratio <= 0.5 else "met, stretch MISSED" if ratio <= 1.0 else "MISSED"
        out.append(f"Peak inference memory at 1024: VisionGRU-Ti {vi['peak_mem_mib']:.0f} MiB vs DeiT-S "
                   f"{di['peak_mem_mib']:.0f} MiB, ratio {ratio:.2f} (issue 12 target <= 1.0, stretch <= 0.5): {verdict}")
        de = _find(records, "deit-s-eager", 1024, "infer")
        if de:
            ratio = vi["peak_mem_mib"] / de["peak_mem_mib"]
            out.append(f"Peak inference memory at 1024 against DeiT-S with eager (materialised) attention: {de['peak_mem_mib']:.0f} MiB, ratio "
                       f"{ratio:.2f} ({'met' if ratio <= 0.5 else 'MISSED'} against that baseline)")
    vt, dt = _find(records, "visiongru-ti", 1024, "train"), _find(records, "deit-s", 1024, "train")
    if vt and dt:
        ratio = vt["peak_mem_mib"] / dt["peak_mem_mib"]
        out.append(f"Training-step peak memory at 1024: VisionGRU-Ti {vt['peak_mem_mib']:.0f} MiB vs DeiT-S "
                   f"{dt['peak_mem_mib']:.0f} MiB, ratio {ratio:.2f} (issue 12 target <= 1.5): "
                   f"{'met' if ratio <= 1.5 else 'MISSED'}")
    resolutions = sorted({r["res"] for r in records if r.get("model") == "visiongru-ti" and r.get("mode") == "infer"})
    for res in resolutions:
        vi, di = _find(records, "visiongru-ti", res, "infer"), _find(records, "deit-s", res, "infer")
        if vi and di:
            # the CPU-time figure (this thread's CPU time per call) where both have it: the wall time of a
            # shared machine varies by tens of percent between two runs of the same point
            key = "cpu_images_per_s" if "cpu_images_per_s" in vi and "cpu_images_per_s" in di else "images_per_s"
            faster = vi[key] > di[key]
            goal = " (issue 12 target: faster from 448 up)" if res >= 448 else ""
            if not key.startswith("cpu"):  # a point of the sweeps before issue 12 (wall time, old code)
                out.append(f"Inference at {res}: VisionGRU-Ti {vi[key]:.3f} vs DeiT-S {di[key]:.3f} img/s -> "
                           f"{'faster' if faster else 'slower'} (measured before issue 12)")
                continue
            out.append(f"Inference at {res}: VisionGRU-Ti {vi[key]:.3f} vs DeiT-S {di[key]:.3f} "
                       f"img/s (CPU time) -> {'faster' if faster else 'slower'}{goal}"
                       + (": " + ("met" if faster else "MISSED") if res >= 448 else ""))
    worst = [r for r in fidelity_rows(records) if r["gflops_diff_pct"] is not None]
    if worst:
        bad = [r for r in worst if abs(r["gflops_diff_pct"]) > 10]
        out.append("FLOPs within +-10% of every paper figure: " + ("met" if not bad else "MISSED for " + ", ".join(
            f"{r['model']}@{r['res']} ({r['gflops_diff_pct']:+.1f}%)" for r in bad)))
    return out


def plots(records: List[dict], out_dir: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    panels = [("flops", "macs", 1e-9, "GMACs (\"FLOPs\")", "flops.png"),
              ("infer", "peak_mem_mib", 1.0, "peak RSS increase, inference bs1 (MiB)", "memory_infer.png"),
              ("infer", "images_per_s", 1.0, "inference images/s (bs1, CPU)", "throughput_infer.png"),
              ("train", "peak_mem_mib", 1.0, "peak RSS increase, train step bs1 (MiB)", "memory_train.png"),
              ("train", "images_per_s", 1.0, "train-step images/s (bs1, CPU)", "throughput_train.png")]
    threads = sorted({r.get("threads", 1) for r in records})
    for mode, field, scale, ylabel, fname in panels:
        pts = [r for r in records if r["mode"] == mode and r.get("status") == "ok"]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in [m for m in {**MODELS, **TEST_MODELS} if any(r["model"] == m for r in pts)]:
            xs = sorted((r["res"], r[field] * scale) for r in pts if r["model"] == m)
            ax.plot([p[0] for p in xs], [p[1] for p in xs], marker="o", label=m,
                    linestyle="-" if m.startswith(("visiongru", "sequencer", "test")) else "--")
        ax.set_xlabel("input resolution (square)")
        ax.set_ylabel(ylabel)
        if field != "images_per_s":
            ax.set_yscale("log")
        else:
            ax.set_yscale("log")
        ax.set_xticks(RESOLUTIONS)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        extra = "" if mode == "flops" else f", {','.join(map(str, threads))} CPU thread(s), shared machine"
        ax.set_title(f"{ylabel}{extra}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write_report(records: List[dict], out_dir: str, command: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta=_meta(command), results=records), f, indent=1)
    pngs = plots(records, out_dir)
    threads = ", ".join(str(t) for t in sorted({r.get("threads", 1) for r in records if r["mode"] != "flops"})) or "1"
    text = ["# Benchmarks: resolution sweep", "",
            f"Produced by `tools/benchmark.py` (last command: `{command}`). Random-init models, batch 1, "
            f"CPU with {threads} thread(s) on a **shared machine** (2 cores, other jobs running): "
            "compare rows of one run; absolute speeds are noisy. GMACs are `count_flops` MACs (what papers "
            "call FLOPs). Peak memory = peak RSS increase of the worker process over its RSS after building "
            "the model. `-`: not measured (time budget) - see the skipped list. `load avg i/t`: the machine's "
            "1-minute load average when the inference / training point finished (2 cores): speeds taken at "
            "a high load are slower by up to several times.", "",
            "## Method", "", *[f"- {n}" for n in METHOD_NOTES], "",
            "## Paper fidelity", "", fidelity_table(records), "",
            "## Targets (issues 8 and 12; reported, not asserted)", "", *[f"- {t}" for t in targets(records)], "",
            "## Resolution sweep", "", resolution_table(records), "",
            "## Plots", "", *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs], ""]
    notes = os.path.join(out_dir, "notes.md")  # hand-written analysis kept next to the generated tables
    if os.path.exists(notes):
        with open(notes) as f:
            text += ["## Notes (docs/benchmarks/notes.md)", "", f.read()]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(text))


def _meta(command):
    return dict(command=command, torch=torch.__version__, cpu_count=os.cpu_count(),
                load_average_1min=os.getloadavg()[0], time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help=f"from {DEFAULT_MODELS}")
    parser.add_argument("--resolutions", nargs="+", type=int, default=RESOLUTIONS)
    parser.add_argument("--modes", nargs="+", default=["flops", "infer"], choices=MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=0, help="timed runs per point (0: 5 / 3 / 2 by resolution)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--point-budget-s", type=float, default=60.0, help="stop timed runs after this")
    parser.add_argument("--max-step-s", type=float, default=60.0, help="first call slower: no timed runs")
    parser.add_argument("--timeout", type=float, default=600.0, help="kill a worker after this (s)")
    parser.add_argument("--merge", nargs="+", help="JSON files of earlier results (this tool's --json / "
                        "results.json), later ones win; new points replace equal ones, the merged set is reported "
                        "and saved after every point to the first file")
    parser.add_argument("--report-only", action="store_true", help="measure nothing; report the --merge files")
    parser.add_argument("--fidelity", action="store_true", help="print the paper-fidelity table (measuring "
                                                                "the FLOP points it needs that are missing)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", help="write README.md (tables), results.json and PNG plots here")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "RES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    command = "PYTHONPATH=. " + " ".join([shlex.quote(os.path.relpath(sys.executable, ROOT))
                                          if sys.executable.startswith(ROOT) else sys.executable]
                                         + [shlex.quote(a) for a in (argv if argv is not None else sys.argv)])
    records: List[dict] = []
    for path in args.merge or []:
        if os.path.exists(path):
            with open(path) as f:
                loaded = json.load(f)
            for rec in loaded["results"] if isinstance(loaded, dict) else loaded:
                records = [r for r in records if _key(r) != _key(rec)] + [rec]
    points = [] if args.report_only else \
        [(m, r, mode) for mode in MODES if mode in args.modes for r in args.resolutions for m in args.models]
    if args.fidelity and not args.report_only:
        points += [(m, r, "flops") for m, r, *_ in PAPER_FIGURES
                   if (m, r, "flops") not in points and _find(records, m, r, "flops") is None]
    for name, res, mode in points:
        rec = run_point(name, res, mode, args)
        records = [r for r in records if _key(r) != _key(rec)] + [rec]
        msg = {k: rec.get(k) for k in ("status", "params", "macs", "images_per_s", "peak_mem_mib", "note") if k in rec}
        print(f"[{time.strftime('%H:%M:%S')}] {name} {res} {mode}: {msg}", file=sys.stderr, flush=True)
        if args.merge:  # keep partial progress (in the first --merge file)
            with open(args.merge[0], "w") as f:
                json.dump(dict(meta=_meta(command), results=records), f, indent=1)
    if args.out:
        write_report(records, args.out, command)
    if args.json:
        print(json.dumps(dict(meta=_meta(command), results=records), indent=1))
    else:
        if args.fidelity:
            print("## Paper fidelity\n\n" + fidelity_table(records) + "\n")
        print(resolution_table(records))
        for t in targets(records):
            print("- " + t)
        print(f"\nMeasured with {args.threads} CPU thread(s) on a shared machine; `{command}`")


if __name__ == "__main__":
    main()
