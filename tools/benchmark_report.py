"""Tables, plots and target checks from ``tools/benchmark.py``'s JSON records (measures nothing).

Reads one or more JSON files (``{"meta": ..., "results": [records]}`` as ``tools/benchmark.py --merge`` /
``--json`` write them, or a bare list of records); a record of a later file replaces the equal
(model, resolution, mode) record of an earlier one. Prints the resolution table, the paper-fidelity table
(``--fidelity``) and the target lines; with ``--out DIR`` writes ``DIR/README.md`` (method, fidelity,
targets, sweep table, plots and the hand-written ``DIR/notes.md`` appended), ``DIR/results.json`` (the
merged records the tables came from) and the PNG plots.

    PYTHONPATH=. .venv/bin/python tools/benchmark_report.py docs/benchmarks/results.json --fidelity
    PYTHONPATH=. .venv/bin/python tools/benchmark_report.py docs/benchmarks/results.json --out docs/benchmarks

Record (one per model, resolution and mode; ``status`` ``ok``/``failed``/``skipped``, ``note``):
``flops``: ``params macs by_op attention scan rnn``; ``infer``/``train``: ``median_s best_s first_s n_runs
images_per_s [cpu_median_s cpu_images_per_s] peak_mem_mib mem_method``; every record ``model res mode
threads`` and, once measured, ``wall_s load_average_1min``.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["flops", "infer", "train"]
PLOT_TICKS = [224, 448, 672, 896, 1024, 1248]  # the default sweep of tools/benchmark.py

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
    "it runs its memory-lean chunked path (the default `'auto'` chunk on the CPU: row chunks of 2^18 map "
    "elements up to a 2^21-element first-stage map, 2^16 above it; until 2026-11-26 2^16 at every size) "
    "and, since 2026-11-26, its linear layers through oneDNN (`rv_plugins.ops.linear`; the peers keep "
    "ATen's MKL GEMMs as mmpretrain runs them, except `deit-s-onednn`, DeiT-S on the same oneDNN GEMMs); its FLOPs are counted with chunking off "
    "(`set_infer_chunk(model, None)`), i.e. the model's MACs without the recomputed conv rows.",
]


# ----------------------------------------------------------------------------- records
def key(record: dict) -> Tuple[str, int, str]:
    return (record["model"], record["res"], record["mode"])


def merge(records: List[dict], new: Sequence[dict]) -> List[dict]:
    """``records`` with each of ``new`` replacing its equal (model, res, mode) record in place, or
    appended when there is none."""
    out = list(records)
    index = {key(r): i for i, r in enumerate(out)}
    for rec in new:
        if key(rec) in index:
            out[index[key(rec)]] = rec
        else:
            index[key(rec)] = len(out)
            out.append(rec)
    return out


def load(paths: Sequence[str], missing_ok: bool = False) -> Tuple[List[dict], dict]:
    """Merged records of ``paths`` (later files win) and the meta of the last file that has one.

    A missing file is an error naming the command that writes one, unless ``missing_ok``.
    """
    records: List[dict] = []
    meta: dict = {}
    for path in paths:
        if not os.path.exists(path):
            if missing_ok:
                continue
            raise SystemExit(f"benchmark_report: {path} does not exist; write one with "
                             f"`PYTHONPATH=. python tools/benchmark.py --merge {path}` "
                             "(the sweep's commands: docs/benchmarks/run_timing.sh)")
        with open(path) as handle:
            loaded = json.load(handle)
        if isinstance(loaded, dict):
            if "results" not in loaded:
                raise SystemExit(f"benchmark_report: {path} has no 'results' list; not a tools/benchmark.py file")
            meta = {**meta, **loaded.get("meta", {})}
            loaded = loaded["results"]
        records = merge(records, loaded)
    return records, meta


def find(records: List[dict], model: str, res: int, mode: str) -> Optional[dict]:
    """The ``status == 'ok'`` record of (model, res, mode), or None."""
    for r in records:
        if key(r) == (model, res, mode) and r.get("status") == "ok":
            return r
    return None


def model_order(records: List[dict], order: Sequence[str] = ()) -> List[str]:
    """The models of ``records``: those in ``order`` first (in that order), then by first appearance."""
    present = list(dict.fromkeys(r["model"] for r in records))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def _fmt(v, spec, empty="-"):
    return empty if v is None else format(v, spec)


# ----------------------------------------------------------------------------- tables
def op_share(by_op: Dict[str, int]) -> Dict[str, int]:
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


def _share(f: dict) -> str:
    """``attn/scan/rnn`` GMACs of a flops record, from its ``by_op`` (records measured before a kernel
    was classified carry stale share fields; ``by_op`` is the raw count)."""
    return "/".join(f"{v / 1e9:.2f}" for v in op_share(f["by_op"]).values())


def resolution_table(records: List[dict], order: Sequence[str] = ()) -> str:
    """Markdown: one row per (model, resolution) with params, MACs, speed and memory of each mode."""
    resolutions = sorted({r["res"] for r in records})
    lines = ["| model | res | params (M) | GMACs | attn/scan/RNN GMACs | infer img/s | infer peak MiB "
             "| train img/s | train peak MiB | load avg i/t |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for m in model_order(records, order):
        for res in resolutions:
            f, i, t = (find(records, m, res, mode) for mode in MODES)
            if not (f or i or t):
                continue

            def speed(r):
                if r is None:
                    return "-"
                return f"{r['images_per_s']:.3f}" + ("*" if r.get("note") else "")
            lines.append(f"| {m} | {res} | {_fmt(f and f['params'] / 1e6, '.2f')} | "
                         f"{_fmt(f and f['macs'] / 1e9, '.2f')} | {'-' if f is None else _share(f)} | {speed(i)} | "
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


def paper_points() -> List[Tuple[str, int]]:
    """(model, resolution) of every cited paper figure: the FLOP points ``--fidelity`` needs."""
    return [(m, r) for m, r, *_ in PAPER_FIGURES]


def fidelity_rows(records: List[dict]) -> List[dict]:
    rows = []
    for model, res, p_params, p_gflops, source in PAPER_FIGURES:
        f = find(records, model, res, "flops")
        ours_params = f and f["params"] / 1e6
        ours_g = f and f["macs"] / 1e9
        rows.append(dict(model=model, res=res, source=source,
                         paper_params_m=p_params, ours_params_m=ours_params if p_params else None,
                         params_diff_pct=(100 * (ours_params - p_params) / p_params) if (f and p_params) else None,
                         paper_gflops=p_gflops, ours_gmacs=ours_g if p_gflops else None,
                         gflops_diff_pct=(100 * (ours_g - p_gflops) / p_gflops) if (f and p_gflops) else None))
    return rows


def fidelity_table(records: List[dict]) -> str:
    """Markdown: every cited paper figure against our count (``-`` where the point was not measured)."""
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
    """The issues' targets (8 and 12), checked against what was measured (reported, never asserted)."""
    out = []
    vf, df = find(records, "visiongru-ti", 1248, "flops"), find(records, "deit-s", 1248, "flops")
    if vf and df:
        g, ratio = vf["macs"] / 1e9, vf["macs"] / df["macs"]
        out.append(f"VisionGRU-Ti GMACs at 1248: {g:.1f} (target <= 151.9): {'met' if g <= 151.9 else 'MISSED'}; "
                   f"ratio to DeiT-S {ratio:.2f} (target <= 0.4): {'met' if ratio <= 0.4 else 'MISSED'}")
    vi, di = find(records, "visiongru-ti", 1024, "infer"), find(records, "deit-s", 1024, "infer")
    if vi and di:
        ratio = vi["peak_mem_mib"] / di["peak_mem_mib"]
        verdict = "met, stretch met" if ratio <= 0.5 else "met, stretch MISSED" if ratio <= 1.0 else "MISSED"
        out.append(f"Peak inference memory at 1024: VisionGRU-Ti {vi['peak_mem_mib']:.0f} MiB vs DeiT-S "
                   f"{di['peak_mem_mib']:.0f} MiB, ratio {ratio:.2f} (issue 12 target <= 1.0, stretch <= 0.5): {verdict}")
        de = find(records, "deit-s-eager", 1024, "infer")
        if de:
            ratio = vi["peak_mem_mib"] / de["peak_mem_mib"]
            out.append(f"Peak inference memory at 1024 against DeiT-S with eager (materialised) attention: {de['peak_mem_mib']:.0f} MiB, ratio "
                       f"{ratio:.2f} ({'met' if ratio <= 0.5 else 'MISSED'} against that baseline)")
    vt, dt = find(records, "visiongru-ti", 1024, "train"), find(records, "deit-s", 1024, "train")
    if vt and dt:
        ratio = vt["peak_mem_mib"] / dt["peak_mem_mib"]
        out.append(f"Training-step peak memory at 1024: VisionGRU-Ti {vt['peak_mem_mib']:.0f} MiB vs DeiT-S "
                   f"{dt['peak_mem_mib']:.0f} MiB, ratio {ratio:.2f} (issue 12 target <= 1.5): "
                   f"{'met' if ratio <= 1.5 else 'MISSED'}")
    resolutions = sorted({r["res"] for r in records if r.get("model") == "visiongru-ti" and r.get("mode") == "infer"})
    for res in resolutions:
        vi, di = find(records, "visiongru-ti", res, "infer"), find(records, "deit-s", res, "infer")
        if vi and di:
            # the CPU-time figure (this thread's CPU time per call) where both have it: the wall time of a
            # shared machine varies by tens of percent between two runs of the same point
            field = "cpu_images_per_s" if "cpu_images_per_s" in vi and "cpu_images_per_s" in di else "images_per_s"
            faster = vi[field] > di[field]
            goal = " (issue 12 target: faster from 448 up)" if res >= 448 else ""
            if not field.startswith("cpu"):  # a point of the sweeps before issue 12 (wall time, old code)
                out.append(f"Inference at {res}: VisionGRU-Ti {vi[field]:.3f} vs DeiT-S {di[field]:.3f} img/s -> "
                           f"{'faster' if faster else 'slower'} (measured before issue 12)")
                continue
            out.append(f"Inference at {res}: VisionGRU-Ti {vi[field]:.3f} vs DeiT-S {di[field]:.3f} "
                       f"img/s (CPU time) -> {'faster' if faster else 'slower'}{goal}"
                       + (": " + ("met" if faster else "MISSED") if res >= 448 else ""))
            do = find(records, "deit-s-onednn", res, "infer")
            if do and field in do:  # the peer on the same GEMM backend: information, not the target
                out.append(f"Inference at {res} against DeiT-S on our oneDNN GEMMs too: {do[field]:.3f} img/s, "
                           f"VisionGRU-Ti {vi[field] / do[field]:.2f}x")
    worst = [r for r in fidelity_rows(records) if r["gflops_diff_pct"] is not None]
    if worst:
        bad = [r for r in worst if abs(r["gflops_diff_pct"]) > 10]
        out.append("FLOPs within +-10% of every paper figure: " + ("met" if not bad else "MISSED for " + ", ".join(
            f"{r['model']}@{r['res']} ({r['gflops_diff_pct']:+.1f}%)" for r in bad)))
    return out


# ----------------------------------------------------------------------------- plots and the README
PANELS = [("flops", "macs", 1e-9, "GMACs (\"FLOPs\")", "flops.png"),
          ("infer", "peak_mem_mib", 1.0, "peak RSS increase, inference bs1 (MiB)", "memory_infer.png"),
          ("infer", "images_per_s", 1.0, "inference images/s (bs1, CPU)", "throughput_infer.png"),
          ("train", "peak_mem_mib", 1.0, "peak RSS increase, train step bs1 (MiB)", "memory_train.png"),
          ("train", "images_per_s", 1.0, "train-step images/s (bs1, CPU)", "throughput_train.png")]


def plots(records: List[dict], out_dir: str, order: Sequence[str] = (), peers: Sequence[str] = ()) -> List[str]:
    """One log-scale PNG per panel of :data:`PANELS` that has points; ``peers`` are drawn dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    threads = sorted({r.get("threads", 1) for r in records})
    for mode, field, scale, ylabel, fname in PANELS:
        pts = [r for r in records if r["mode"] == mode and r.get("status") == "ok"]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in model_order(pts, order):
            xs = sorted((r["res"], r[field] * scale) for r in pts if r["model"] == m)
            ax.plot([p[0] for p in xs], [p[1] for p in xs], marker="o", label=m,
                    linestyle="--" if m in peers else "-")
        ax.set_xlabel("input resolution (square)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_xticks(PLOT_TICKS)
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


def write_report(records: List[dict], out_dir: str, command: str, order: Sequence[str] = (),
                 peers: Sequence[str] = ()) -> None:
    """``out_dir/README.md`` + PNGs from ``records``, and ``out_dir/results.json`` holding them."""
    from rv_plugins.utils.measure import environment
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(environment(command), models=list(model_order(records, order)), peers=list(peers))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta=meta, results=records), f, indent=1)
    pngs = plots(records, out_dir, order, peers)
    threads = ", ".join(str(t) for t in sorted({r.get("threads", 1) for r in records if r["mode"] != "flops"})) or "1"
    text = ["# Benchmarks: resolution sweep", "",
            f"Produced by `tools/benchmark.py` and `tools/benchmark_report.py` (last command: `{command}`). "
            f"Random-init models, batch 1, "
            f"CPU with {threads} thread(s) on a **shared machine** (2 cores, other jobs running): "
            "compare rows of one run; absolute speeds are noisy. GMACs are `count_flops` MACs (what papers "
            "call FLOPs). Peak memory = peak RSS increase of the worker process over its RSS after building "
            "the model. `-`: not measured (time budget) - see the skipped list. `load avg i/t`: the machine's "
            "1-minute load average when the inference / training point finished (2 cores): speeds taken at "
            "a high load are slower by up to several times. The records are in `results.json`; "
            "`run_timing.sh` holds the commands that measure them.", "",
            "## Method", "", *[f"- {n}" for n in METHOD_NOTES], "",
            "## Paper fidelity", "", fidelity_table(records), "",
            "## Targets (issues 8 and 12; reported, not asserted)", "", *[f"- {t}" for t in targets(records)], "",
            "## Resolution sweep", "", resolution_table(records, order), "",
            "## Plots", "", *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs], ""]
    notes = os.path.join(out_dir, "notes.md")  # hand-written analysis kept next to the generated tables
    if os.path.exists(notes):
        with open(notes) as f:
            text += ["## Notes (docs/benchmarks/notes.md)", "", f.read()]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(text))


def print_report(records: List[dict], command: str, fidelity: bool = False, order: Sequence[str] = ()) -> None:
    """The tables and target lines on stdout."""
    if fidelity:
        print("## Paper fidelity\n\n" + fidelity_table(records) + "\n")
    print(resolution_table(records, order))
    for t in targets(records):
        print("- " + t)
    threads = sorted({r.get("threads", 1) for r in records if r["mode"] != "flops"})
    print(f"\nMeasured with {','.join(map(str, threads)) or '-'} CPU thread(s) on a shared machine; `{command}`")


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="tools/benchmark.py JSON files; later ones win")
    parser.add_argument("--fidelity", action="store_true", help="also print the paper-fidelity table")
    parser.add_argument("--out", help="write README.md, results.json (the merged records) and PNG plots here")
    args = parser.parse_args(argv)
    from rv_plugins.utils.measure import command_line
    records, meta = load(args.files)
    order, peers = meta.get("models", []), meta.get("peers", [])
    command = command_line(argv, ROOT, script=__file__)
    if args.out:
        write_report(records, args.out, command, order, peers)
    print_report(records, command, args.fidelity, order)
    return dict(meta=meta, results=records)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # rv_plugins without an install
    main()
