"""Ahead-of-time compilation of every Triton kernel in ``rv_plugins.ops`` for a chosen GPU, without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", capability, 32))`` runs
the whole pipeline (Triton IR -> LLVM -> PTX -> ``ptxas`` -> cubin) on a CPU-only machine. The tests
compile every kernel for sm_80 and sm_90 in float32 and bfloat16; the scan benchmark reports each
kernel's registers, spills and shared memory (``resource_usage``, read from the cubin with the
``cuobjdump`` that ships with Triton, or from a loaded kernel when a GPU is present).

Must run where ``TRITON_INTERPRET`` is unset when ``rv_plugins.ops.triton_scan`` is imported (under the
interpreter the kernels are not compilable objects): :func:`compile_all_in_subprocess` does that.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List

# Argument kinds per kernel: "p" pointer (to the data dtype), "i32", "i64"; constexprs with the
# values compiled (the largest tiles the launchers use, every optional feature switched on).
_INT_TYPES = {"stride_pb": "i64", "stride_pt": "i64"}  # every other integer argument is i32
KERNEL_INTS = {
    "_scan_fwd_kernel": ("L", "D"),
    "_scan_bwd_kernel": ("L", "D"),
    "_mingru_fwd_kernel": ("L", "H", "stride_pb", "stride_pt"),
    "_mingru_bwd_kernel": ("L", "H", "stride_pb", "stride_pt"),
    "_chunk_summary_kernel": ("L", "D", "n_chunks"),
    "_chunk_carry_kernel": ("D", "n_chunks"),
    "_chunk_replay_kernel": ("L", "D", "n_chunks"),
}
KERNEL_CONSTEXPRS = {
    "_scan_fwd_kernel": dict(HAS_H0=True, REVERSE=True, BLOCK_L=64, BLOCK_D=32),
    "_scan_bwd_kernel": dict(HAS_H0=True, REVERSE=True, BLOCK_L=64, BLOCK_D=32),
    "_mingru_fwd_kernel": dict(NDIR=2, REVERSE=False, ACT_G=True, HAS_H0=True, BLOCK_L=32, BLOCK_D=32),
    "_mingru_bwd_kernel": dict(NDIR=2, REVERSE=False, ACT_G=True, HAS_H0=True, BLOCK_L=32, BLOCK_D=32),
    "_chunk_summary_kernel": dict(REVERSE=True, CHUNK=256, BLOCK_L=64, BLOCK_D=64),
    "_chunk_carry_kernel": dict(HAS_H0=True, BLOCK_D=64),
    "_chunk_replay_kernel": dict(REVERSE=True, CHUNK=256, BLOCK_L=64, BLOCK_D=64),
}
_TL_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def kernels() -> Dict[str, object]:
    """Every ``@triton.jit`` kernel (name ending in ``_kernel``) of ``rv_plugins.ops.triton_scan``."""
    from triton.runtime.jit import JITFunction
    from . import triton_scan
    found = {name: obj for name, obj in vars(triton_scan).items() if name.endswith("_kernel")}
    for name, obj in found.items():
        if not isinstance(obj, JITFunction):
            raise RuntimeError(f"{name} is a {type(obj).__name__}, not a compilable JITFunction: import "
                               "rv_plugins.ops.triton_scan with TRITON_INTERPRET unset (see compile_all_in_subprocess)")
    return found


def signature(fn, dtype: str):
    """``(signature, constexprs)`` for ``triton.compile``: ``{arg: "*bf16" | "i32" | "constexpr"}``."""
    import triton.language as tl
    name = fn.__name__
    if name not in KERNEL_CONSTEXPRS:
        raise KeyError(f"no compile spec for Triton kernel {name}; add it to KERNEL_CONSTEXPRS in {__file__}")
    constexprs = dict(KERNEL_CONSTEXPRS[name], ACC=tl.float32)
    sig = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in KERNEL_INTS[name]:
            sig[arg] = _INT_TYPES.get(arg, "i32")
        else:
            sig[arg] = f"*{_TL_DTYPES[dtype]}"
    # state/carry buffers of the chunked scan are float32 whatever the data dtype
    for arg in ("S_A", "S_B", "CARRY"):
        if arg in sig:
            sig[arg] = "*fp32"
    return sig, {k: v for k, v in constexprs.items() if k in sig}


def compile_kernel(fn, dtype: str, capability: int):
    """Compile ``fn`` for ``sm_<capability>`` (80, 90, ...); returns Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig, constexprs = signature(fn, dtype)
    return triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", capability, 32))


def resource_usage(compiled) -> Dict[str, int]:
    """``registers`` (per thread), ``spill_bytes`` and ``shared_bytes`` of a compiled kernel (cubin)."""
    shared = int(compiled.metadata.shared)
    out = {"shared_bytes": shared, "num_warps": int(compiled.metadata.num_warps)}
    cubin = compiled.asm.get("cubin")
    if cubin is None:
        return out
    from triton.backends.nvidia.compiler import get_ptxas
    cuobjdump = os.path.join(os.path.dirname(get_ptxas().path), "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", text)
    if m:
        out["registers"] = int(m.group(1))
    m = re.search(r"STACK:(\d+)", text)
    if m:
        out["stack_bytes"] = int(m.group(1))
    return out


def compile_all(capabilities=(80, 90), dtypes=("float32", "bfloat16")) -> List[dict]:
    """Compile every kernel for every capability and dtype; one row per compilation with its resources."""
    rows = []
    for name, fn in sorted(kernels().items()):
        for cap in capabilities:
            for dtype in dtypes:
                compiled = compile_kernel(fn, dtype, cap)
                rows.append(dict(kernel=name, sm=cap, dtype=dtype, **resource_usage(compiled)))
    return rows


def compile_all_in_subprocess(capabilities=(80, 90), dtypes=("float32", "bfloat16"), timeout=600) -> List[dict]:
    """:func:`compile_all` in a fresh interpreter with ``TRITON_INTERPRET`` unset (safe from tests)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import json, sys; from rv_plugins.ops.triton_compile import compile_all; "
            f"print('RESULT' + json.dumps(compile_all({tuple(capabilities)!r}, {tuple(dtypes)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the Triton kernels failed:\n{proc.stderr[-4000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
