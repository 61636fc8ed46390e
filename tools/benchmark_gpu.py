"""VisionGRU-Ti against DeiT-S on a GPU: images/s and peak memory, inference and one training step.

    python tools/benchmark_gpu.py --json gpu.json                       # CUDA, 224/512/1024/1248
    python tools/benchmark_gpu.py --device cpu --resolutions 32 --batch 1 --repeats 1   # smoke run
    python tools/benchmark_gpu.py --models visiongru-b sequencer2d-s deit-s      # any registry model name

The peer is timm's ``deit_small_patch16_224`` built at each resolution (``img_size=res``; its attention
runs through ``scaled_dot_product_attention``, fused on CUDA), because mmpretrain (our CPU benchmark's
peer, ``tools/benchmark.py``) is not on the GPU machine; the architecture is the same (22.05M params).
VisionGRU-Ti is ``preset='paper'`` with a 1000-class classifier, as in ``tools/benchmark.py``.

Per model and resolution: inference in ``torch.no_grad`` and eval mode, and a training step
(forward, cross-entropy, backward) in train mode; each timed with CUDA events after warm-up (median of
``--repeats``; ``rv_plugins.utils.measure.time_call``), peak memory from
``torch.cuda.max_memory_allocated`` over the timed calls minus the memory held before (weights, inputs;
``measure.CudaPeak``). ``--dtype bfloat16`` runs both under autocast.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rv_plugins.utils import measure as rvm  # noqa: E402  (this tool has its own measure())


def build(name: str, res: int, infer_chunk="auto") -> torch.nn.Module:
    """``deit-s`` (timm) or a registry model name (``rv_plugins.backbones.model_names()``; VisionGRU with
    ``preset='paper'`` and ``img_size=res``, as in ``tools/benchmark.py``), 1000 classes."""
    if name == "deit-s":
        import timm
        return timm.create_model("deit_small_patch16_224", img_size=res, num_classes=1000)
    from rv_plugins.backbones import create_backbone, model_names
    from rv_plugins.backbones.visiongru import set_infer_chunk
    if name not in model_names():
        raise ValueError(f"benchmark_gpu: unknown model {name!r}; use deit-s or one of {model_names()}")
    extra = dict(img_size=res, preset="paper") if name.startswith("visiongru") else {}
    return set_infer_chunk(create_backbone(name, num_classes=1000, **extra), infer_chunk)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return model.forward_head(out) if isinstance(out, tuple) else out


def measure(name: str, res: int, batch: int, mode: str, device: torch.device, dtype: torch.dtype,
            repeats: int, warmup: int, infer_chunk="auto") -> dict:
    torch.manual_seed(0)
    model = build(name, res, infer_chunk).to(device)
    x = torch.randn(batch, 3, res, res, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def infer():
        with torch.no_grad(), autocast:
            logits(model, x)

    def train_step():
        with autocast:
            loss = F.cross_entropy(logits(model, x).float(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    fn = infer if mode == "infer" else train_step
    model.train(mode == "train")
    for _ in range(warmup):
        fn()
    with rvm.CudaPeak(device) as peak:  # over the timed calls only
        times = [rvm.time_call(fn, device) for _ in range(repeats)]
    timing = rvm.Timing(first_s=times[0], times=times)
    row = dict(model=name, res=res, batch=batch, mode=mode, dtype=str(dtype).replace("torch.", ""),
               infer_chunk=infer_chunk if name.startswith("visiongru") else None,
               median_s=timing.median_s, img_per_s=batch / timing.median_s)
    if peak.mib is not None:
        row["peak_mib"] = peak.mib
    del model, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["visiongru-ti", "deit-s"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[224, 512, 1024, 1248])
    p.add_argument("--batch", type=int, default=0, help="images per call (0: 64 at 224, scaled by area, >= 1)")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--infer-chunks", nargs="+", default=["auto"],
                   help="VisionGRU inference chunk(s) in map elements (set_infer_chunk): 'auto', 'none' or a number")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    command = "python tools/benchmark_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    print(f"device: {desc}, torch {torch.__version__}, {args.dtype}; command: {command}")
    chunks = [None if c == "none" else c if c == "auto" else float(c) for c in args.infer_chunks]
    print("| model | res | batch | mode | infer chunk | img/s | peak MiB |\n|---|---|---|---|---|---|---|")
    for res in args.resolutions:
        batch = args.batch or max(1, round(64 * (224 / res) ** 2))
        for mode in args.modes:
            for name in args.models:
                for chunk in (chunks if name.startswith("visiongru") and mode == "infer" else ["auto"]):
                    row = measure(name, res, batch, mode, device, dtype, args.repeats, args.warmup, chunk)
                    rows.append(row)
                    peak = f"{row['peak_mib']:.0f}" if "peak_mib" in row else "-"
                    shown = chunk if name.startswith("visiongru") else "-"
                    print(f"| {name} | {res} | {batch} | {mode} | {shown} | {row['img_per_s']:.1f} | {peak} |",
                          flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=desc, torch=torch.__version__, command=command, rows=rows), handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
