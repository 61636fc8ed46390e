"""Ahead-of-time compilation of every Triton kernel of ``rv_plugins.ops.triton_kernels``, without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))`` runs the
whole pipeline (Triton IR -> TTGIR -> LLVM -> PTX -> ``ptxas`` -> cubin) on a CPU-only machine. To report
what really runs, each kernel is compiled as the runtime JIT would compile it (``triton/runtime/jit.py``
``specialize_impl`` + ``backends/compiler.py`` ``get_arg_specialization``): pointers aligned to 16 bytes
and integer arguments that are multiples of 16 carry ``tt.divisibility = 16`` (what lets the compiler
emit 16-byte vector loads). The launchers copy any tensor whose data does not start on 16 bytes, so
every pointer is divisible; of the integers, only the row strides decide the addresses' alignment
(``D``, ``H``, the projection's strides): ``aligned`` marks those divisible (e.g. ``D = 144``; the
launchers pick an ``aligned`` configuration exactly then), ``unaligned`` marks none (e.g. ``D = 3``).
The other integers (``L``, grid sizes) carry no mark: a launch where they are multiples of 16 gets
the mark, which only adds facts; an integer equal to 1 becomes a constant, which only removes code.

Every ``(configuration, aligned)`` the launchers can pick (``configs.all_configs``) is compiled, with
every optional feature on (``h0``, reversed, both directions, the ``g`` candidate). :func:`resource_usage` reports
registers, spill (stack) bytes and shared memory read from the cubin with the ``cuobjdump`` that ships
with Triton, and from the TTGIR/PTX: the tile layout (whether each thread holds its group's steps, so
the in-group scan needs no shuffle), 16-byte vector loads, and asynchronous copies (``cp.async``/TMA;
none: each program loads one tile up front, there is no loop to pipeline — loads of the programs
resident on an SM are in flight together, see :func:`bytes_in_flight`).

Must run where ``TRITON_INTERPRET`` is unset when the kernels are imported (under the interpreter the
kernels are not compilable objects): :func:`compile_all_in_subprocess` does that.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

import torch

KERNEL_MODULES = ("linear_scan", "mingru")
_INT_ARGS = {"L", "D", "H", "n_lines", "n_chunks", "n_dblk", "stride_pb", "stride_pt"}
_ROW_STRIDES = {"D", "H", "stride_pb", "stride_pt"}   # divisible by 16 in an aligned launch
_POINTERS = {"A", "X", "P", "H0", "OUT", "DH", "DOUT", "DA", "DB", "DP", "DH0", "FLAGS", "VALS"}
_FLAGS = {"HAS_H0": True, "REVERSE": True, "ACT_G": True, "NDIR": 2}  # every optional feature on
_TL_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
SPECIALIZATIONS = ("aligned", "unaligned")
# H100/H200 (sm_90) per-SM limits used by bytes_in_flight
SM90 = dict(registers=65536, max_warps=64, max_blocks=32, shared_bytes=228 * 1024)


def kernels(compilable: bool = True) -> Dict[str, object]:
    """Every ``@triton.jit`` kernel (name ending in ``_kernel``) of the kernel modules, by name
    (``compilable=False``: also the interpreter's stand-ins, for their argument names)."""
    import importlib
    from triton.runtime.jit import JITFunction
    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"rv_plugins.ops.triton_kernels.{module_name}")
        for name, obj in vars(module).items():
            if name.endswith("_kernel"):
                if compilable and not isinstance(obj, JITFunction):
                    raise RuntimeError(f"{name} is a {type(obj).__name__}, not a compilable JITFunction: import the "
                                       "kernels with TRITON_INTERPRET unset (see compile_all_in_subprocess)")
                found[name] = obj
    return found


def compile_spec(fn, dtype: torch.dtype, config, specialization: str):
    """``(signature, constexprs, attrs, options)`` for ``triton.compile``, as the runtime JIT specialises
    a launch of ``fn`` on ``dtype`` tensors with ``config``."""
    import triton.language as tl
    from rv_plugins.ops.triton_kernels import launch
    if specialization not in SPECIALIZATIONS:
        raise ValueError(f"specialization={specialization!r}; choose one of {SPECIALIZATIONS}")
    constants = launch.kernel_constants(dtype, config)
    options = {k: constants.pop(k) for k in ("num_warps", "maxnreg") if k in constants}
    acc = "fp64" if constants["ACC"] == tl.float64 else "fp32"
    signature, constexprs, attrs = {}, {}, {}
    for index, arg in enumerate(fn.arg_names):
        if arg in constants or arg in _FLAGS:
            signature[arg] = "constexpr"
            constexprs[arg] = constants[arg] if arg in constants else _FLAGS[arg]
            continue
        if arg in _INT_ARGS:
            signature[arg] = "i32"
            divisible = specialization == "aligned" and arg in _ROW_STRIDES
        elif arg in _POINTERS:
            signature[arg] = {"FLAGS": "*i32", "VALS": f"*{acc}"}.get(arg, f"*{_TL_NAMES[dtype]}")
            divisible = True
        else:
            raise KeyError(f"no compile spec for argument {arg!r} of Triton kernel {fn.__name__}; add it to "
                           f"_INT_ARGS or _POINTERS in {__file__}")
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def compile_kernel(fn, dtype: torch.dtype, config, specialization: str = "aligned", capability: int = 90):
    """Compile ``fn`` for ``sm_<capability>``; returns Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature, constexprs, attrs, options = compile_spec(fn, dtype, config, specialization)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", capability, 32),
                          options=options)


def _cuobjdump_usage(cubin: bytes) -> Dict[str, int]:
    from triton import knobs  # Triton >= 3.4; get_ptxas() changed its signature in 3.6
    cuobjdump = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}
    if "reg" not in found:
        raise RuntimeError(f"cuobjdump -res-usage printed no register count:\n{text}")
    return dict(registers=found["reg"], stack_bytes=found.get("stack", 0), local_bytes=found.get("local", 0))


def tile_layout_in_thread(ttgir: str) -> bool:
    """Whether every 3-D (group, step, channel) layout keeps the step axis inside one thread and warp."""
    layouts = re.findall(r"#ttg\.blocked<\{sizePerThread = \[\d+, \d+, \d+\], threadsPerWarp = \[(\d+), (\d+), "
                         r"(\d+)\], warpsPerCTA = \[(\d+), (\d+), (\d+)\]", ttgir)
    return bool(layouts) and all(int(lanes[1]) == 1 and int(lanes[4]) == 1 for lanes in layouts)


def resource_usage(compiled) -> Dict[str, object]:
    """Registers per thread, spill (stack/local) bytes, shared memory, warps, and what the loads look like."""
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    out = dict(shared_bytes=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps),
               **_cuobjdump_usage(compiled.asm["cubin"]))
    out["vector_loads"] = len(re.findall(r"\bld\.global(?:\.\w+)*\.v[248]\.", ptx))
    out["scalar_loads"] = len(re.findall(r"\bld\.global(?:\.\w+)*\.(?:b|u|f|s)\d+\s", ptx))
    out["async_copies"] = len(re.findall(r"\bcp\.async|\bcp\.reduce\.async|\bcp\.async\.bulk", ptx))
    out["steps_in_thread"] = tile_layout_in_thread(ttgir)
    return out


def bytes_in_flight(row: dict, tile_bytes: int) -> dict:
    """Programs resident per sm_90 SM (registers, warps, blocks, shared memory) and the bytes of tile
    loads they can have in flight together (each program issues its whole tile at its start)."""
    threads = 32 * row["num_warps"]
    by_regs = SM90["registers"] // (max(row["registers"], 1) * threads)
    by_shared = SM90["shared_bytes"] // max(row["shared_bytes"], 1)
    resident = max(0, min(by_regs, SM90["max_warps"] // row["num_warps"], SM90["max_blocks"], by_shared))
    return dict(programs_per_sm=resident, tile_load_bytes=tile_bytes, bytes_in_flight_per_sm=resident * tile_bytes)


def _tile_load_bytes(kernel: str, dtype: torch.dtype, config) -> int:
    """Bytes a program loads from its tile's operands: a, x (forward scan); a, grad_h, h (backward);
    gate, cand (minGRU forward); gate twice, cand, grad_h, h (minGRU backward)."""
    operands = {"_linear_scan_fwd_kernel": 2, "_linear_scan_bwd_kernel": 3, "_mingru_fwd_kernel": 2,
                "_mingru_bwd_kernel": 5}[kernel]
    return operands * config.block_l * config.block_d * dtype.itemsize


def compile_all(dtypes: Sequence[torch.dtype] = DTYPES, capability: int = 90, names: Sequence[str] = (),
                main_only: bool = False) -> List[dict]:
    """Compile every kernel (or ``names``) at every ``(configuration, aligned)`` the launchers can pick for
    each dtype (``main_only``: the one VisionGRU's long sequences get, ``L = 65536, D = 144``); one row
    per compilation."""
    from rv_plugins.ops.triton_kernels import configs
    rows = []
    for name, fn in sorted(kernels().items()):
        if names and name not in names:
            continue
        for dtype in dtypes:
            chosen = [(configs.choose(65536, 144, dtype), True)] if main_only else configs.all_configs(dtype)
            for config, aligned in chosen:
                specialization = "aligned" if aligned else "unaligned"
                usage = resource_usage(compile_kernel(fn, dtype, config, specialization, capability))
                row = dict(kernel=name, sm=capability, dtype=_TL_NAMES[dtype], block_l=config.block_l,
                           block_d=config.block_d, steps=config.steps, maxnreg=config.maxnreg,
                           specialization=specialization, **usage)
                row.update(bytes_in_flight(row, _tile_load_bytes(name, dtype, config)))
                rows.append(row)
    return rows


def compile_all_in_subprocess(dtypes: Sequence[str] = ("float32", "bfloat16", "float16", "float64"),
                              capability: int = 90, names: Sequence[str] = (), main_only: bool = False,
                              timeout: float = 1800, workers: int = 0) -> List[dict]:
    """:func:`compile_all` in fresh interpreters with ``TRITON_INTERPRET`` unset (safe from tests), the
    dtypes split over ``workers`` processes (0: one per CPU core, at most 4); ``dtypes`` by name."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    workers = max(1, min(workers or os.cpu_count() or 1, 4, len(dtypes)))
    procs = []
    for part in (list(dtypes)[i::workers] for i in range(workers)):
        args = json.dumps(dict(dtypes=part, capability=capability, names=list(names), main_only=main_only))
        code = ("import json, sys, torch; from rv_plugins.ops.triton_compile import compile_all; "
                f"a = json.loads({args!r}); a['dtypes'] = [getattr(torch, d) for d in a['dtypes']]; "
                "print('RESULT' + json.dumps(compile_all(**a)))")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the Triton kernels failed:\n{err[-4000:]}")
        rows += json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    return rows


def spills(rows: Sequence[dict]) -> List[dict]:
    """The rows whose kernel spills registers to local memory (stack or local bytes)."""
    return [r for r in rows if r["stack_bytes"] or r["local_bytes"]]
