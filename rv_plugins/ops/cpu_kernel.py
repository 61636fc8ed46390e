"""Compiled CPU kernel for the scan (the fast path of the ``"torch"`` backend on the CPU).

A small C++ extension (``csrc/scan_cpu.cpp``). :func:`load` takes, in this order: (a) this checkout's JIT
build, tuned to the running CPU (AVX-512 where it has it), if it is already in ``$TORCH_EXTENSIONS_DIR``
under its key of source, flags, torch version and path (:func:`build_key`); (b) the packaged build that
``setup.py`` compiled into the wheel or editable install (``-march=x86-64-v3``), if it was built against
the running torch, this CPU has its instructions and the installed source is the one it was built from
(otherwise one log line says why it is skipped); (c) a JIT build with ``torch.utils.cpp_extension``
(about a minute, cached as in (a)). Build details: :mod:`.cpu_kernel_build`. (a) and (b) import the
library directly, without torch's extension builder. If nothing can be built (no C++ compiler),
``available()`` returns ``False`` (with one warning) and the chunked pure-PyTorch path is used instead.

Forward and backward are each one sequential pass over ``L`` with the
``D`` channels of a step in a contiguous, vectorisable inner loop, parallel over ``B`` and blocks of
``D`` with ``at::parallel_for``: memory traffic is one read of the inputs and one write of the
outputs, which is the floor for this op.

The fused minGRU kernels (``mingru_forward``/``mingru_backward``) compute the gates in float32 inside
the scan and visit each row in 16-lane blocks in the direction the walk goes through memory (from the
top on walks down: a reverse scan, the backward of a forward scan), prefetch ``proj`` a few steps
ahead, and write outputs of 8 MiB and more with streaming stores (``RV_MINGRU_CPU_STREAM=0``/``1``
overrides). Knobs for tests and measurements: ``RV_MINGRU_CPU_BLOCK`` (channels per parallel job).
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import sys
import warnings
from typing import Dict, Optional, Tuple

import torch

from . import cpu_kernel_build as build
from . import envvars
from .adjoint import accumulation_dtype

logger = logging.getLogger(__name__)

_MODULE = None
_LOADED_FROM: Optional[str] = None
_FAILED = False
_SOURCE = build.SOURCE


def build_key(cflags=None) -> str:
    """12 hex digits naming one JIT build: the source's bytes, the compiler flags, torch's version and the
    source's path. Each key has its own extension name and build folder in torch's extension cache, so
    two checkouts (or a wheel and a checkout) on one machine keep one build each instead of rebuilding
    each other's, and an edited source or another torch gets a fresh build instead of a stale one."""
    cflags = build.CFLAGS + build.simd_flags() if cflags is None else cflags
    digest = hashlib.sha256()
    with open(_SOURCE, "rb") as f:
        digest.update(f.read())
    for part in (" ".join(cflags), " ".join(build.LDFLAGS), torch.__version__, os.path.realpath(_SOURCE)):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:12]


def build_directory(key: Optional[str] = None) -> str:
    """The folder of the build ``key`` (default: this checkout's) in torch's extension cache."""
    from torch.utils.cpp_extension import _get_build_directory
    return _get_build_directory(f"rv_plugins_scan_cpu_{key or build_key()}", verbose=False)


def _cached_build_directory(name: str) -> str:
    """Where ``torch.utils.cpp_extension`` keeps the build ``name`` (its rule: ``$TORCH_EXTENSIONS_DIR``, else
    ``<user cache>/torch_extensions``, then ``py<ver><abiflags>_<cu...|cpu>``), without importing that module
    (it imports hipify, about a second). :func:`build_directory` asks torch itself; a test keeps them equal."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch._appdirs import user_cache_dir
        root = os.path.realpath(user_cache_dir(appname="torch_extensions"))
        cuda = torch.version.cuda
        root = os.path.join(root, f"py{sys.version_info.major}{sys.version_info.minor}{sys.abiflags}_"
                                  f"{'cpu' if cuda is None else 'cu' + cuda.replace('.', '')}")
    return os.path.join(root, name)


def _exec_extension(name: str, path: str):
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
    loader.exec_module(module)
    return module


def _import_built(name: str):
    """The already built extension ``name`` from torch's cache, or ``None`` when it is not built. The build
    key names exactly this source, these flags, this torch and this path, so a present library is the one
    :func:`load` would build."""
    path = os.path.join(_cached_build_directory(name), f"{name}.so")
    return _exec_extension(name, path) if os.path.isfile(path) else None


def packaged_build_info() -> Optional[Dict]:
    """The packaged build's record (torch version, ISA level, the CPU flags it needs, ...), or ``None`` when
    this install has no packaged build (a plain checkout, another architecture, a pure-Python wheel)."""
    path = _packaged_path()
    if path is None or not os.path.isfile(build.build_info_path(path)):
        return None
    with open(build.build_info_path(path)) as f:
        return dict(json.load(f), path=path)


def _packaged_path() -> Optional[str]:
    """The packaged extension's file for this interpreter (``_scan_cpu.cpython-3XY-<platform>.so`` next to
    this module), or ``None``."""
    spec = importlib.util.find_spec(f"{__package__}.{build.PACKAGED_NAME}")
    return spec.origin if spec is not None and spec.origin else None


def _import_packaged() -> Tuple[Optional[object], Optional[str]]:
    """``(module, None)``, or ``(None, why it was skipped)``; ``(None, None)`` when there is none. Its build
    record is checked before the library is loaded: a library for another torch or a richer CPU can crash
    the process instead of raising."""
    try:
        info = packaged_build_info()
    except (OSError, ValueError) as err:
        return None, f"its build record does not read ({err!r:.200})"
    if info is None:
        return None, None
    why = build.packaged_mismatch(info, torch.__version__, build.cpu_flags(), platform.machine(),
                                  build.source_digest(_SOURCE))
    if why is not None:
        return None, why
    try:
        module = _exec_extension(info["module"], info["path"])
    except (ImportError, OSError) as err:
        return None, f"it does not load ({err!r:.200})"
    module.build_info = info
    return module, None


def _jit_build(name: str, cflags, verbose: bool):
    from torch.utils.cpp_extension import load as _load
    return _load(name=name, sources=[_SOURCE], verbose=verbose, extra_cflags=cflags, extra_ldflags=build.LDFLAGS)


def load(verbose: bool = False, tuned: bool = False):
    """Import the extension: this checkout's cached JIT build, else the packaged build where it fits this
    torch and CPU, else a JIT build for this source, flags, torch and path; raises if that build fails.
    ``tuned=True`` skips the packaged build (building the JIT build once if it is not cached, and switching
    to it if the packaged one is loaded): on an AVX-512 CPU it runs the fused minGRU scans faster
    (docs/installation.md). The module's ``build_info`` says which build it is (``"isa"``, ``"torch"``,
    ``"cflags"``)."""
    global _MODULE, _LOADED_FROM
    if _MODULE is None or (tuned and _LOADED_FROM == "packaged"):
        cflags = build.CFLAGS + build.simd_flags()
        name = f"rv_plugins_scan_cpu_{build_key(cflags)}"
        module, origin = _import_built(name), "cached"
        if module is None and not tuned:
            module, why = _import_packaged()
            origin = "packaged"
            if why is not None:
                logger.warning("rv_plugins.ops: not using the packaged CPU scan kernel: %s; compiling one for "
                               "this machine instead (about a minute, once; cached in torch's extension cache)", why)
        if module is None:
            module, origin = _jit_build(name, cflags, verbose), "built"
        if origin != "packaged":
            module.build_info = {"module": name, "torch": torch.__version__, "isa": "this CPU", "cflags": cflags}
        _MODULE, _LOADED_FROM = module, origin
    return _MODULE


def loaded_from() -> Optional[str]:
    """Which build :func:`load` took: ``"cached"`` (this checkout's JIT build, found in the cache),
    ``"packaged"`` (the wheel's or editable install's), ``"built"`` (compiled by this process), or ``None``
    before it loaded one."""
    return _LOADED_FROM


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    global _FAILED
    if _MODULE is not None:
        return True
    if _FAILED:
        return False
    try:
        load()
        return True
    except Exception as err:  # no compiler, no headers, ...
        _FAILED = True
        warnings.warn(f"rv_plugins.ops: the compiled CPU scan kernel could not be built ({err!r:.300}); "
                      "falling back to the slower chunked PyTorch scan. Install a C++ compiler "
                      "(e.g. apt-get install g++) and re-run tools/setup_env.sh to get the fast path.")
        return False


def check_device(device: torch.device) -> None:
    if device.type != "cpu":
        raise RuntimeError(f"scan backend 'cpu-kernel' runs on CPU tensors, got tensors on {device}; pass "
                           "backend=None for the device's default")


def _state(h0: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``h0`` as the kernels take it: contiguous in the accumulation dtype (empty when absent)."""
    return torch.empty(0) if h0 is None else h0.to(accumulation_dtype(dtype)).contiguous()


def scan_forward(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """(B, L, D) inputs -> h (B, L, D) in the inputs' dtype (float32 accumulation; h0 taken in float32)."""
    return load().forward(a.contiguous(), b.contiguous(), _state(h0, a.dtype), bool(reverse))


def scan_backward(a, h, h0, grad_h, reverse):
    """Returns ``(grad_a, grad_b, grad_h0 or None)`` (``grad_h0`` in the accumulation dtype)."""
    has_h0 = h0 is not None
    h0_ = _state(h0, a.dtype)
    grad_a, grad_b, grad_h0 = load().backward(a.contiguous(), h.contiguous(), h0_,
                                              grad_h.to(a.dtype).contiguous(), bool(reverse))
    return grad_a, grad_b, (grad_h0 if has_h0 else None)


def _mingru_block(proj: torch.Tensor, bidirectional: bool) -> int:
    """Channels per parallel job of the fused minGRU kernels: whole rows (one direction's H, up to 512)
    when there are at least two (batch, direction) jobs per thread, else blocks of 64 for parallelism.
    Whole rows keep every memory stream sequential."""
    H = proj.shape[-1] // (4 if bidirectional else 2)
    override = envvars.int_var("RV_MINGRU_CPU_BLOCK", 0, 0, 512, "0 or unset: chosen by shape")
    if override:
        return override
    jobs = proj.shape[0] * (2 if bidirectional else 1)
    return max(1, min(H, 512)) if jobs >= 2 * torch.get_num_threads() else 64


STREAM_MIN_BYTES = 8 << 20


def _stream(numel: int, dtype: torch.dtype) -> bool:
    """Whether the fused minGRU kernels write an output of ``numel`` elements with streaming stores (they
    bypass the cache: an output this large leaves it before anyone reads it, and streaming saves reading
    each line in first). ``RV_MINGRU_CPU_STREAM=0``/``1`` forces it off/on (on: wherever the output is float
    and its rows are 64-byte aligned; otherwise the kernel uses ordinary stores either way)."""
    override = envvars.choice("RV_MINGRU_CPU_STREAM", ("0", "1"), None,
                              "0: ordinary stores, 1: streaming stores, unset: streaming for outputs of 8 MiB and more")
    if override is not None:
        return override == "1"
    return dtype == torch.float32 and numel * 4 >= STREAM_MIN_BYTES


def mingru_forward(proj: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool, bidirectional: bool,
                   candidate_act: str) -> torch.Tensor:
    """Fused minGRU scan: ``proj`` (B, L, 2H or 4H), any batch/time strides -> ``h`` (B, L, H or 2H)."""
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    return load().mingru_forward(proj, _state(h0, proj.dtype), bool(reverse), bool(bidirectional), candidate_act == "g",
                                 _mingru_block(proj, bidirectional), _stream(proj.numel() // 2, proj.dtype))


def mingru_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act):
    """Returns ``(grad_proj (contiguous, proj's shape), grad_h0 or None)``; gates recomputed from ``proj``."""
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    has_h0 = h0 is not None
    grad_proj, grad_h0 = load().mingru_backward(proj, h.contiguous(), _state(h0, proj.dtype), grad_h.to(proj.dtype).contiguous(),
                                                bool(reverse), bool(bidirectional), candidate_act == "g",
                                                _mingru_block(proj, bidirectional), _stream(proj.numel(), proj.dtype))
    return grad_proj, (grad_h0 if has_h0 else None)
