"""Resolution sweep of our backbones against mmpretrain's peers: params, FLOPs, CPU speed, peak memory.

This tool measures and writes JSON records; ``tools/benchmark_report.py`` turns them into the tables,
plots and target checks (``--out``/``--fidelity``/``--report-only`` here call it).

Models (image -> 1000 logits, random init, drop path 0):

* ours: every model name of the backbone registry (``rv_plugins.backbones.model_names()``:
  ``visiongru-ti``, ``visiongru-b``, ``sequencer2d-s``, ``-m``, ``-l``), the variants of
  :data:`OUR_VARIANTS` (``sequencer2d-s-mingru``) and ``test-<family>`` (the registry's tiny test arch
  of a family, e.g. ``test-visiongru``; not in the default list). VisionGRU is built with
  ``preset='paper'`` (learned positional embedding, linear candidate) and ``img_size`` = the resolution,
  as in every sweep so far, so that the figures stay comparable with the papers' and earlier runs;
* peers (:data:`PEERS`), built from mmpretrain's own implementations (``ImageClassifier`` from
  ``mmpretrain.registry.MODELS``): ``deit-s`` (``VisionTransformer(arch='deit-small')`` +
  ``VisionTransformerClsHead``), ``deit-s-eager`` (the same with the ``(N, N)`` attention matrix
  materialised; on request), ``deit-s-onednn`` (the same on our oneDNN CPU inference GEMMs, GELU fused,
  as our models run theirs; on request), ``swin-t``, ``convnext-t``.

Modes, every (model, resolution, mode) in its own subprocess so that memory peaks do not mix:

* ``flops``: parameters and MACs of one forward (``rv_plugins.utils.flops.count_flops``; MACs are what
  papers call FLOPs), with the attention / scan / RNN share from ``by_op``.
* ``infer``: batch-1 forward under ``torch.inference_mode`` -> images/s (median of the timed runs).
* ``train``: batch-1 training step (forward + cross-entropy + backward, no optimizer step) -> images/s.

Peak memory: the peak RSS increase of the worker over its RSS after the model and input were built
(``rv_plugins.utils.measure.PeakRSS``). A point is time-boxed: after ``--warmup`` calls the timed runs
stop once ``--point-budget-s`` is spent (at least one), a point whose first call takes longer than
``--max-step-s`` is reported with its peak memory and that single time only, and a worker that runs
past ``--timeout`` is killed and reported as skipped.

Resolutions: DeiT-S is built with ``img_size`` = the resolution (a ``(res/16)^2`` positional embedding,
what interpolating a 224 one gives; weights are random anyway). Swin-T keeps window 7 and
mmpretrain's own padding of every stage map to a multiple of 7 (no ``pad_small_map``); at 1024 and
1248 the stage maps (256/128/64/32 and 312/156/78/39) are padded, so Swin computes on a few padded
tokens there (1248 = 224*5.57 is not a multiple of window*32 = 224).

    PYTHONPATH=. .venv/bin/python tools/benchmark.py --modes flops --json
    PYTHONPATH=. .venv/bin/python tools/benchmark.py --models visiongru-ti deit-s --resolutions 224 1024 \
        --modes infer --merge docs/benchmarks/results.json --out docs/benchmarks
    PYTHONPATH=. .venv/bin/python tools/benchmark.py --fidelity --merge docs/benchmarks/results.json
    PYTHONPATH=. .venv/bin/python tools/benchmark.py --list

Figures are taken with ``--threads`` (default 1) CPU threads; on a shared machine compare rows of one run.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # rv_plugins without an install

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rv_plugins.ops.linear import linear  # noqa: E402
from rv_plugins.utils import measure  # noqa: E402

RESOLUTIONS = [224, 448, 672, 896, 1024, 1248]
MODES = ["flops", "infer", "train"]


def report_module():
    """``tools/benchmark_report.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("rv_tool_benchmark_report",
                                                  os.path.join(ROOT, "tools", "benchmark_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- models
class _OursClassifier(nn.Module):
    """Our backbone + its ``forward_head``: image ``(B, 3, H, W)`` -> logits ``(B, 1000)``."""

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


# Benchmark variants of registry models: name -> (registry model name, extra constructor arguments).
OUR_VARIANTS: Dict[str, tuple] = {
    "sequencer2d-s-mingru": ("sequencer2d-s", dict(rnn_type="mingru")),
}


def _family_kwargs(family: str, res: int) -> dict:
    """Constructor arguments of a family in the sweep (besides ``num_classes=1000, drop_path_rate=0``).

    VisionGRU: ``preset='paper'`` (the paper's model: positional embedding, linear candidate; 30.44M
    parameters at 224^2 with the classifier, as measured since the first sweep) and ``img_size=res``
    (the positional embedding made for the resolution).
    """
    if family == "visiongru":
        return dict(preset="paper", img_size=res)
    return {}


def our_model_names() -> List[str]:
    """Our default models: every registry model name, then the variants of :data:`OUR_VARIANTS`."""
    return _registry_names() + list(OUR_VARIANTS)


def build_ours(name: str, res: int) -> Optional[nn.Module]:
    """Our classifier for ``name`` at resolution ``res``, or None when ``name`` is not ours."""
    extra = {}
    if name in OUR_VARIANTS:
        name, extra = OUR_VARIANTS[name][0], dict(OUR_VARIANTS[name][1])
    test = name.startswith("test-")
    family = name[len("test-"):] if test else name.split("-")[0]
    if family not in _registry_families() or not (test or name in _registry_names()):
        return None
    from rv_plugins.backbones import create_backbone, create_test_backbone
    kwargs = dict(num_classes=1000, drop_path_rate=0.0, **_family_kwargs(family, res), **extra)
    return _OursClassifier(create_test_backbone(family, **kwargs) if test else create_backbone(name, **kwargs))


# The backbone registry (rv_plugins.backbones.registry) is the list of our models.
def _registry_families() -> List[str]:
    from rv_plugins.backbones import list_backbones
    return list_backbones()


def _registry_names() -> List[str]:
    from rv_plugins.backbones import model_names
    return model_names()


# ----------------------------------------------------------------------------- peers (mmpretrain)
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


class _OneDNNLinear(nn.Module):
    """An ``nn.Linear`` (same parameters) run through :func:`rv_plugins.ops.linear.linear`, optionally with the
    GELU that followed it fused (the GEMM path our models take in CPU inference)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.weight, self.bias, self.activation = lin.weight, lin.bias, None

    def forward(self, x):
        return linear(x, self.weight, self.bias, activation=self.activation)


def _deit_s_onednn(res):
    """DeiT-S with every linear layer through our oneDNN CPU inference GEMM (``rv_plugins.ops.linear``) and
    the FFN's GELU fused into its first GEMM, as VisionGRU and Sequencer2D run theirs: the peer on the same
    GEMM backend (on request)."""
    model = _deit_s(res)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):  # mmcv's Linear wrapper included
                setattr(parent, name, _OneDNNLinear(child))
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if (isinstance(seq[i], _OneDNNLinear) and type(seq[i + 1]) is nn.GELU
                        and seq[i + 1].approximate == "none"):
                    seq[i].activation, seq[i + 1] = "gelu", nn.Identity()
    return model


def _swin_t(res):
    return _MMPretrainClassifier(
        dict(type="SwinTransformer", arch="tiny", img_size=res, window_size=7, drop_path_rate=0.0),
        dict(type="GlobalAveragePooling"), dict(type="LinearClsHead", num_classes=1000, in_channels=768))


def _convnext_t(res):
    return _MMPretrainClassifier(
        dict(type="ConvNeXt", arch="tiny", drop_path_rate=0.0, gap_before_final_norm=True),
        None, dict(type="LinearClsHead", num_classes=1000, in_channels=768))


PEERS: Dict[str, Callable[[int], nn.Module]] = {
    "deit-s": _deit_s,
    "deit-s-eager": _deit_s_eager,
    "deit-s-onednn": _deit_s_onednn,
    "swin-t": _swin_t,
    "convnext-t": _convnext_t,
}
_ON_REQUEST = ("deit-s-eager", "deit-s-onednn")  # measured only when named


def default_models() -> List[str]:
    """The sweep's models: ours (:func:`our_model_names`), then the peers (without the on-request ones)."""
    return our_model_names() + [p for p in PEERS if p not in _ON_REQUEST]


def known_models() -> List[str]:
    """Every name ``--models`` takes besides ``test-<family>``, in table order."""
    return our_model_names() + list(PEERS)


def build_model(name: str, res: int) -> nn.Module:
    """The classifier ``name`` at resolution ``res``: image ``(B, 3, res, res)`` -> ``(B, 1000)`` logits."""
    if name in PEERS:
        return PEERS[name](res)
    model = build_ours(name, res)
    if model is None:
        tests = [f"test-{f}" for f in _registry_families()]
        raise SystemExit(f"unknown model {name!r}; choose from {known_models()} or a tiny test model {tests}")
    return model


# ----------------------------------------------------------------------------- one point
def measure_flops(name: str, res: int) -> dict:
    """``params``, ``macs`` (one batch-1 forward), ``by_op`` and its ``attention scan rnn`` shares
    (``benchmark_report.op_share``)."""
    from rv_plugins.utils.flops import count_flops
    model = build_model(name, res)
    # VisionGRU: count the model's MACs, not the row halos and per-direction conv recomputation of the
    # memory-lean chunked inference path (count_flops runs eval + no_grad)
    from rv_plugins.backbones.visiongru import set_infer_chunk
    set_infer_chunk(model, None)  # a no-op for models without chunked inference
    params = sum(p.numel() for p in model.parameters())
    result = count_flops(model, (1, 3, res, res))
    share = report_module().op_share(result["by_op"])
    return dict(params=params, macs=result["total"], by_op=result["by_op"], **share)


def measure_speed(name: str, res: int, mode: str, runs: int, warmup: int, point_budget_s: float,
                  max_step_s: float) -> dict:
    """Batch-1 ``infer`` (inference mode) or ``train`` step (forward, cross-entropy, backward) of ``name``
    at ``res``: the :meth:`rv_plugins.utils.measure.Timing.summary` fields plus ``peak_mem_mib`` (peak
    RSS increase over the block) and ``mem_method``."""
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
    with measure.PeakRSS() as peak:
        timing = measure.time_calls(step, warmup=warmup, repeats=runs, budget_s=point_budget_s,
                                    max_first_s=max_step_s)
    if timing.note:  # the first call exceeded max_step_s: name the flag
        timing.note = (f"first call {timing.first_s:.1f}s > --max-step-s {max_step_s:g}: no timed runs, "
                       "speed from that call")
    return dict(timing.summary(), peak_mem_mib=peak.mib, mem_method=peak.method)


def _worker(args) -> None:
    measure.pin_threads(args.threads)
    measure.import_before_baseline()
    name, res, mode = args.worker[0], int(args.worker[1]), args.worker[2]
    if mode == "flops":
        out = measure_flops(name, res)
    else:
        out = measure_speed(name, res, mode, args.runs or default_runs(res), args.warmup,
                            args.point_budget_s, args.max_step_s)
    measure.emit_result(out)


def default_runs(res: int) -> int:
    return 5 if res <= 448 else 3 if res <= 896 else 2


def run_point(name: str, res: int, mode: str, args) -> dict:
    """Run one (model, resolution, mode) in a fresh subprocess; returns its record."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(res), mode,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--point-budget-s", str(args.point_budget_s), "--max-step-s", str(args.max_step_s)]
    record = dict(model=name, res=res, mode=mode, threads=args.threads)
    child = measure.run_json_child(cmd, env=measure.thread_env(args.threads, [ROOT]), timeout=args.timeout)
    if child.status == "timeout":
        record.update(status="skipped", note=f"worker ran past --timeout {args.timeout}s")
    elif child.status != "ok":
        record.update(status="failed", note=child.note)
    else:
        record.update(child.result, status="ok", wall_s=child.wall_s, load_average_1min=measure.load_average())
    return record


# ----------------------------------------------------------------------------- store
def save(path: str, records: List[dict], command: str, order: List[str]) -> None:
    """Write ``{"meta": ..., "results": records}`` to ``path`` atomically (the format ``--merge`` and the
    report read); ``meta["models"]`` = ``order``, the row order of the report's tables."""
    from rv_plugins.engine.atomic import atomic_write
    meta = dict(measure.environment(command), models=list(order), peers=list(PEERS))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, json.dumps(dict(meta=meta, results=records), indent=1), mode="w")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: every registry model, the variants and the peers (see --list)")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
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
    parser.add_argument("--report-only", action="store_true", help="measure nothing; report the --merge files "
                        "(the same as tools/benchmark_report.py FILES)")
    parser.add_argument("--fidelity", action="store_true", help="print the paper-fidelity table (measuring "
                                                                "the FLOP points it needs that are missing)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", help="write README.md (tables), results.json and PNG plots here "
                                      "(tools/benchmark_report.py --out)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "RES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.list:
        print("ours:", " ".join(our_model_names()))
        print("peers:", " ".join(PEERS))
        print("tiny test models:", " ".join(f"test-{f}" for f in _registry_families()))
        return None
    models = args.models or default_models()

    report = report_module()
    command = measure.command_line(argv, ROOT, script=__file__)
    records, stored = report.load(args.merge or [], missing_ok=True)
    order = list(dict.fromkeys(stored.get("models", []) + known_models()))  # a store keeps its row order
    points = [] if args.report_only else \
        [(m, r, mode) for mode in MODES if mode in args.modes for r in args.resolutions for m in models]
    if args.fidelity and not args.report_only:
        points += [(m, r, "flops") for m, r in report.paper_points()
                   if (m, r, "flops") not in points and report.find(records, m, r, "flops") is None]
    for name, res, mode in points:
        rec = run_point(name, res, mode, args)
        records = report.merge(records, [rec])
        msg = {k: rec.get(k) for k in ("status", "params", "macs", "images_per_s", "peak_mem_mib", "note") if k in rec}
        print(f"[{time.strftime('%H:%M:%S')}] {name} {res} {mode}: {msg}", file=sys.stderr, flush=True)
        if args.merge:  # keep partial progress (in the first --merge file)
            save(args.merge[0], records, command, order)
    if args.out:
        report.write_report(records, args.out, command, order, list(PEERS))
    if args.json:
        print(json.dumps(dict(meta=measure.environment(command), results=records), indent=1))
    else:
        report.print_report(records, command, args.fidelity, order)
    return records


if __name__ == "__main__":
    main()
