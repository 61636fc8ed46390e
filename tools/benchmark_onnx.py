"""ONNX export benchmark: export time, graph size, onnxruntime's error and CPU time against eager PyTorch.

    PYTHONPATH=. python tools/benchmark_onnx.py [--models visiongru-ti sequencer2d-s hgru-head]
        [--sizes 224 512] [--exporters dynamo legacy] [--repeats 5] [--json FILE] [--md FILE]

For every model, image size and exporter, in one process: build the model (random weights, seed 0; the
backbones with their 1000-class classifier, so the output is logits), export it with
:func:`rv_plugins.export.export_onnx` (static shape, batch 1), run the file in onnxruntime with one thread,
and compare: ``max|onnx - eager| / max|eager|`` of the output, and the CPU time (``time.process_time``) of
one inference, eager (``torch.no_grad``, one intra-op thread, the model's own inference path: compiled scan
kernel, oneDNN GEMMs, row-chunked maps) against onnxruntime, interleaved call by call; medians of
``--repeats``. ``hgru-head`` is the C-RBP COCO mask head (256 channels, 20 steps) on ROI features
``(8, 256, 14, 14)`` (its size does not follow ``--sizes``); ``upernet-visiongru-ti`` and ``fpn-sequencer2d-s`` are
the mmseg segmentors of the ADE20K configs (``mode='tensor'``: seg logits). Prints the command, a table, and writes
``--json`` / ``--md`` when given.
"""
import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rv_plugins.export import compare_with_eager, export_onnx, onnxruntime_session, run_onnx  # noqa: E402
from rv_plugins.utils.measure import command_line, environment  # noqa: E402

# the mmseg segmentors (mode='tensor': seg logits at 1/4 of the input), their ADE20K configs, random weights
SEGMENTORS = {"upernet-visiongru-ti": "configs/upernet_visiongru_ti_ade20k.py",
              "fpn-sequencer2d-s": "configs/fpn_sequencer2d_s_ade20k.py"}
MODELS = ("visiongru-ti", "sequencer2d-s", "hgru-head") + tuple(SEGMENTORS)


@functools.lru_cache(maxsize=None)
def export_tool():
    """``tools/export_onnx.py`` as a module: its builders and wrappers are what ``rv-export-onnx`` exports."""
    spec = importlib.util.spec_from_file_location("export_onnx_tool", os.path.join(ROOT, "tools", "export_onnx.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def build(name: str, size: int):
    """(model in eval mode, input) for a benchmark entry."""
    tool = export_tool()
    torch.manual_seed(0)
    if name == "hgru-head":
        from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
        head = HGRUMaskPredictor(in_channels=256, channels=256, num_classes=80, cell="coco", steps=20)
        return tool.MaskPredictor(head).eval(), torch.randn(8, 256, 14, 14)
    if name in SEGMENTORS:
        model, _ = tool.build_mm(os.path.join(ROOT, SEGMENTORS[name]), None, None, {},
                                 {"model.backbone.init_cfg": None})
        return model.eval(), torch.randn(1, 3, size, size)
    from rv_plugins.backbones.registry import create_backbone
    model = tool.Classifier(create_backbone(name, num_classes=1000)).eval()
    if name.startswith("sequencer2d"):  # timm-style zero classifier: give it weights, so logits differ
        nn.init.normal_(model.backbone.head.weight, std=0.02)
    return model, torch.randn(1, 3, size, size)


def cpu_times(eager, session, x, repeats: int):
    """Interleaved CPU seconds per call of ``eager(x)`` and of the onnxruntime session: medians."""
    eager_t, ort_t = [], []
    with torch.no_grad():
        eager(x)
        run_onnx(session, x)
        for _ in range(repeats):
            start = time.process_time()
            eager(x)
            eager_t.append(time.process_time() - start)
            start = time.process_time()
            run_onnx(session, x)
            ort_t.append(time.process_time() - start)
    return statistics.median(eager_t), statistics.median(ort_t)


def run_point(name: str, size: int, exporter: str, repeats: int, folder: str) -> dict:
    model, x = build(name, size)
    path = os.path.join(folder, f"{name}_{size}_{exporter}.onnx")
    result = export_onnx(model, x, path, legacy=exporter == "legacy")
    session = onnxruntime_session(path, threads=1)
    error = max(compare_with_eager(model, session, x))
    eager_s, ort_s = cpu_times(model, session, x, repeats)
    size_mib = os.path.getsize(path) / 2 ** 20
    os.remove(path)
    return dict(model=name, input=list(x.shape), exporter=exporter, export_s=round(result.seconds, 1),
                nodes=result.nodes, file_mib=round(size_mib, 1), max_rel_error=float(f"{error:.3g}"),
                eager_cpu_ms=round(eager_s * 1e3, 1), ort_cpu_ms=round(ort_s * 1e3, 1),
                ort_over_eager=round(ort_s / eager_s, 2))


def markdown(rows, env) -> str:
    head = ("| model | input | exporter | export s | nodes | max rel. error | eager CPU ms | onnxruntime CPU ms "
            "| onnxruntime / eager |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['exporter']} | {r['export_s']} | "
                   f"{r['nodes']} | {r['max_rel_error']:.1e} | {r['eager_cpu_ms']} | {r['ort_cpu_ms']} | "
                   f"{r['ort_over_eager']} |\n" if "error" not in r else
                   f"| {r['model']} | {r.get('size')} | {r['exporter']} | failed: {r['error']} | | | | | |\n"
                   for r in rows)
    return (f"Command: `{env['command']}`\n\ntorch {env['torch']}, onnxruntime {env['onnxruntime']}, "
            f"{env['cpu_count']} CPUs, load average {env['load_average_1min']} at the start, {env['time']}; one "
            "thread for both, CPU time per inference (median, interleaved).\n\n" + head + body)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    p.add_argument("--exporters", nargs="+", default=["dynamo", "legacy"], choices=["dynamo", "legacy"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    import onnxruntime
    torch.set_num_threads(1)
    env = environment(command_line(argv, root=ROOT))
    env["onnxruntime"] = onnxruntime.__version__
    print(env["command"], flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for size in (args.sizes if name != "hgru-head" else args.sizes[:1]):
                for exporter in args.exporters:
                    try:
                        row = run_point(name, size, exporter, args.repeats, folder)
                    except Exception as err:  # noqa: BLE001 - one failed point is a row of the table
                        row = dict(model=name, size=size, exporter=exporter, error=f"{type(err).__name__}: {err}"[:300])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, rows=rows), f, indent=1)
    text = markdown(rows, env)
    if args.md:
        with open(args.md, "w") as f:
            f.write("# ONNX export: time, error, onnxruntime vs eager (CPU)\n\n"
                    "Written by `tools/benchmark_onnx.py` (one run; see docs/deployment.md).\n\n" + text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
