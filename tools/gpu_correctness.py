"""Our Triton scan kernels and VisionGRU's GPU path against independent oracles, on the device present.

Under ``TRITON_INTERPRET=1`` programs run one after another; only a GPU runs a line's chunks at once, so
only a GPU tests the decoupled look-back (spinning on flags, release/acquire ordering). This check is the
first thing ``tools/gpu_check.py`` runs, in a child process with a time limit (a hung look-back costs that
limit, not the whole run); it can also be run on its own on any GPU::

    python tools/gpu_correctness.py --out /tmp/correct.json          # exit status 1 on a mismatch
    TRITON_INTERPRET=1 python tools/gpu_correctness.py --tiny --out /tmp/correct.json   # CPU rehearsal

Checks (each a row with its error and tolerance; ``ok`` is every row's verdict):

- ``linear``: ``linear_scan(backend="triton")`` forward and gradients (``a``, ``b``, ``h0``) against
  ``backend="chunked"`` in float64 on the same (upcast) inputs: long lines of many chunks (2 x 65536 x 144),
  odd sizes, both directions, with and without ``h0``, float32 / bfloat16 / float16, decays of both signs.
- ``mingru``: the fused minGRU op (uni- and bidirectional, both candidate activations, ``h0``) likewise.
- ``special``: ±inf, NaN and 1e30 inside long lines against ``backend="reference"`` in the same dtype: the
  same non-finite positions, the finite values within tolerance.
- ``oracle``: ``chunked`` float64 against the step-by-step ``reference`` (so the oracle is itself checked).
- ``model``: VisionGRU-Ti logits on this device (float32 with TF32 off; bfloat16 autocast) against the CPU
  in float32; at 1024^2 its row-chunked inference (``"auto"``) against the unchunked one on this device.

Errors are ``max|x - oracle| / max|oracle|`` over positions finite in both.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float64: 1e-10}
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# (shape, dtypes): every dtype meets a long line of many chunks; fewer cases, fewer kernel compilations
FULL = dict(linear=[((2, 65536, 144), (F32, BF16)), ((3, 5001, 37), (F32, F16)), ((1, 300, 8), (F32, BF16))],
            mingru=[((2, 16384, 96), (BF16,)), ((1, 4099, 33), (F32,))],
            special_len=8192, oracle=(2, 2048, 16), model_res=(224, 1024), forced=None)
TINY = dict(linear=[((2, 40, 6), (F32, BF16, F16)), ((1, 13, 5), (F32,))], mingru=[((1, 24, 4), (BF16, F32))],
            special_len=40, oracle=(1, 40, 3), model_res=(32, 64),
            forced=(8, 4, 1, 2))   # many chunks at interpreter-friendly lengths


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """``max|x - ref| / max|ref|`` where both are finite, and how many positions differ in being NaN / ±inf."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    nan_diff = int((x.isnan() != ref.isnan()).sum())
    inf_diff = int(((x == float("inf")) != (ref == float("inf"))).sum() + ((x == -float("inf")) != (ref == -float(
        "inf"))).sum())
    both = x.isfinite() & ref.isfinite()
    scale = ref[both].abs().max().item() if both.any() else 0.0
    err = (x[both] - ref[both]).abs().max().item() / scale if scale > 0 else float((x[both] != ref[both]).any())
    return dict(error=err, nonfinite_mismatch=nan_diff + inf_diff)


def _row(check, case, dtype, results, tol):
    worst = max(r["error"] for r in results.values())
    bad = sum(r["nonfinite_mismatch"] for r in results.values())
    return dict(check=check, case=case, dtype=str(dtype)[6:], errors={k: r["error"] for k, r in results.items()},
                nonfinite_mismatch=bad, tolerance=tol, ok=bool(worst <= tol and bad == 0))


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    return out, [t.grad for t in leaves if t is not None]


def _compare(fn_ours, fn_oracle, inputs, grad_out, oracle_dtype, names=("a", "b", "h0")):
    """Errors of the output and of the gradient of each input (``None`` inputs skipped), named ``grad_<name>``."""
    out, grads = _grads(fn_ours, inputs, grad_out)
    up = [None if t is None else t.to(oracle_dtype) for t in inputs]
    ref, ref_grads = _grads(fn_oracle, up, grad_out.to(oracle_dtype))
    keys = ["out"] + [f"grad_{n}" for n, t in zip(names, inputs) if t is not None]
    return {k: rel_error(x, r) for k, x, r in zip(keys, [out] + grads, [ref] + ref_grads)}


def linear_checks(device, cfg):
    from rv_plugins.ops import linear_scan
    rows = []
    for i, ((B, L, D), dtypes) in enumerate(cfg["linear"]):
        for dtype in dtypes:
            for reverse, with_h0 in ((False, True), (True, False)) if i else ((False, False), (True, True)):
                g = torch.Generator().manual_seed(10 * i + (1 if reverse else 0))
                sign = torch.where(torch.rand(B, L, D, generator=g) < 0.3, -1.0, 1.0)
                a = (sign * (0.5 + 0.5 * torch.rand(B, L, D, generator=g))).to(device, dtype)
                b = torch.randn(B, L, D, generator=g).to(device, dtype)
                h0 = torch.randn(B, D, generator=g).to(device, dtype) if with_h0 else None
                grad = torch.randn(B, L, D, generator=g).to(device, dtype)
                res = _compare(lambda a_, b_, h_: linear_scan(a_, b_, h_, reverse, backend="triton"),
                               lambda a_, b_, h_: linear_scan(a_, b_, h_, reverse, backend="chunked"),
                               (a, b, h0), grad, torch.float64)
                rows.append(_row("linear", f"{B}x{L}x{D} reverse={reverse} h0={with_h0}", dtype, res, TOL[dtype]))
    return rows


def mingru_checks(device, cfg):
    from rv_plugins.ops import mingru_scan
    rows = []
    for i, ((B, L, H), dtypes) in enumerate(cfg["mingru"]):
        for dtype in dtypes:
            for bidirectional, act in ((True, "identity"), (False, "g")):
                g = torch.Generator().manual_seed(100 + i)
                width = 4 * H if bidirectional else 2 * H
                proj = torch.randn(B, L, width, generator=g).to(device, dtype)
                h0 = torch.randn(B, width // 2, generator=g).to(device, dtype)
                grad = torch.randn(B, L, width // 2, generator=g).to(device, dtype)
                kw = dict(reverse=not bidirectional, bidirectional=bidirectional, candidate_act=act)
                res = _compare(lambda p, h: mingru_scan(p, h, backend="triton", **kw),
                               lambda p, h: mingru_scan(p, h, backend="chunked", **kw), (proj, h0), grad,
                               torch.float64, names=("proj", "h0"))
                rows.append(_row("mingru", f"{B}x{L}x{H} bidirectional={bidirectional} act={act}", dtype, res,
                                 TOL[dtype]))
    return rows


def special_checks(device, cfg):
    from rv_plugins.ops import linear_scan
    rows, L = [], cfg["special_len"]
    for value in (float("inf"), float("nan"), 1e30):
        for reverse in (False, True):
            g = torch.Generator().manual_seed(7)
            a = (0.5 + 0.5 * torch.rand(2, L, 3, generator=g)).to(device)
            b = torch.randn(2, L, 3, generator=g).to(device)
            a[0, L // 2, 1] = value
            b[1, L // 3, 2] = value
            res = _compare(lambda a_, b_: linear_scan(a_, b_, None, reverse, backend="triton"),
                           lambda a_, b_: linear_scan(a_, b_, None, reverse, backend="reference"),
                           (a, b), torch.randn(2, L, 3, generator=g).to(device), torch.float32)
            rows.append(_row("special", f"2x{L}x3 value={value} reverse={reverse}", torch.float32, res, 1e-5))
    return rows


def oracle_checks(device, cfg):
    from rv_plugins.ops import linear_scan
    g = torch.Generator().manual_seed(3)
    a = (0.5 + 0.5 * torch.rand(*cfg["oracle"], generator=g, dtype=torch.float64)).to(device)
    b = torch.randn(*cfg["oracle"], generator=g, dtype=torch.float64).to(device)
    res = _compare(lambda a_, b_: linear_scan(a_, b_, backend="chunked"),
                   lambda a_, b_: linear_scan(a_, b_, backend="reference"), (a, b), torch.randn_like(b), torch.float64)
    return [_row("oracle", "chunked vs reference " + "x".join(map(str, cfg["oracle"])), torch.float64, res,
                 TOL[torch.float64])]


def model_checks(device, cfg):
    from rv_plugins.backbones import create_backbone
    from rv_plugins.backbones.visiongru import set_infer_chunk
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    small, big = cfg["model_res"]
    torch.manual_seed(0)
    model = create_backbone("visiongru-ti", num_classes=1000, img_size=small, preset="paper").eval()
    x = torch.randn(2, 3, small, small)
    with torch.no_grad():
        ref = model.forward_head(model(x))
        model.to(device)
        fp32 = model.forward_head(model(x.to(device)))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = model.forward_head(model(x.to(device)))
    rows = [_row("model", f"visiongru-ti {small}^2 vs CPU float32", torch.float32, dict(logits=rel_error(fp32, ref)),
                 1e-4),
            _row("model", f"visiongru-ti {small}^2 bf16 autocast vs CPU float32", torch.bfloat16,
                 dict(logits=rel_error(bf16, ref)), 5e-2)]
    torch.manual_seed(0)
    model = create_backbone("visiongru-ti", num_classes=1000, img_size=big, preset="paper").eval().to(device)
    x = torch.randn(1, 3, big, big, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        whole = model.forward_head(set_infer_chunk(model, None)(x))
        chunked = model.forward_head(set_infer_chunk(model, "auto")(x))
    rows.append(_row("model", f"visiongru-ti {big}^2 bf16 row-chunked ('auto') vs whole", torch.bfloat16,
                     dict(logits=rel_error(chunked, whole)), 2e-2))
    return rows


CHECKS = dict(oracle=oracle_checks, linear=linear_checks, mingru=mingru_checks, special=special_checks,
              model=model_checks)


def run(device: torch.device, tiny: bool) -> dict:
    """Every check; a check that raises is a failed row (its error message kept)."""
    cfg = TINY if tiny else FULL
    from rv_plugins.ops.triton_kernels import configs
    rows, seconds = [], {}
    for name, check in CHECKS.items():
        print(f"[{name}] ...", flush=True)   # the parent shows the last of these if this process hangs
        start = time.perf_counter()
        try:
            if cfg["forced"] and name != "model":
                with configs.forced(*cfg["forced"]):
                    rows += check(device, cfg)
            else:
                rows += check(device, cfg)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed row
            rows.append(dict(check=name, case="raised", ok=False, error=f"{type(exc).__name__}: {exc}"[:500]))
        seconds[name] = round(time.perf_counter() - start, 1)
    return dict(ok=all(r["ok"] for r in rows), rows=rows, seconds=seconds,
                failed=[f"{r['check']} {r['case']} {r.get('dtype', '')}" for r in rows if not r["ok"]])


class KernelsHung(RuntimeError):
    """The check did not finish in its time: our kernels hang on this device."""


def run_in_child(path: str, tiny: bool, timeout_s: float) -> dict:
    """This check in a child process writing ``path``, killed after ``timeout_s`` seconds (then
    :class:`KernelsHung`); returns what it wrote. ``tools/gpu_check.py`` runs it so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)
    cmd = [sys.executable, os.path.abspath(__file__), "--out", path] + (["--tiny"] if tiny else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-1500:]
        raise KernelsHung(f"tools/gpu_correctness.py did not finish in {timeout_s:.0f} s (a look-back that never "
                          f"sees its predecessor?); its last output: {tail!r}") from None
    if not os.path.exists(path):
        raise RuntimeError(f"tools/gpu_correctness.py exited with {proc.returncode}: {proc.stderr[-3000:]}")
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU rehearsal; Triton interpreted off CUDA)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        p.error("no CUDA device: run with --tiny (and TRITON_INTERPRET=1) for the CPU rehearsal")
    if device.type == "cuda":   # the CPU logits of the model check: no C++ kernel build on a GPU machine
        os.environ.setdefault("RV_SCAN_DISABLE_CPU_KERNEL", "1")
    result = run(device, args.tiny)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for r in result["rows"]:
        print(("ok  " if r["ok"] else "BAD ") + json.dumps(r), flush=True)
    print("all match" if result["ok"] else f"MISMATCH: {result['failed']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
