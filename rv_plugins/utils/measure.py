"""Measurement helpers shared by the benchmark tools (plain Python + torch, no toolkit import).

One copy of what ``tools/benchmark.py``, ``tools/benchmark_sequencer.py``, ``tools/benchmark_crbp.py``
and ``tools/benchmark_gpu.py`` each measure:

* time: :func:`time_call` (one call; CUDA events on a CUDA device), :func:`time_calls` (a timed first
  call, warm-up, then timed repeats within a time budget -> :class:`Timing`: median, best, the thread's
  CPU time per call);
* memory: :class:`PeakRSS` (the peak resident-set increase of this process over a block: the kernel's
  high-water mark ``VmHWM`` reset through ``/proc/self/clear_refs``, else ``ru_maxrss``),
  :class:`CudaPeak` (``torch.cuda.max_memory_allocated`` over a block minus what was held before),
  :func:`rss_mib` (the current resident set);
* processes: :func:`pin_threads` (this process) and :func:`thread_env` (a child's environment),
  :func:`run_json_child` (run a command, take the JSON it printed behind :data:`RESULT_MARKER`, with
  a timeout) and :func:`emit_result` (the child's side);
* context: :func:`environment` (torch version, CPUs, load average, time) and :func:`command_line`.

Peak memory is measured one configuration per process (a child per point): a process's high-water
mark cannot be lowered without ``clear_refs``, and allocator caches of one point would leak into the
next. Example (in a child process)::

    pin_threads(1)
    with PeakRSS() as peak:
        timing = time_calls(lambda: model(x), warmup=1, repeats=5, budget_s=30.0)
    emit_result(dict(median_s=timing.median_s, peak_mem_mib=peak.mib, mem_method=peak.method))
"""
import gc
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

RESULT_MARKER = "RESULT "


# ----------------------------------------------------------------------------- threads
def pin_threads(threads: int) -> int:
    """Run this process's torch intra-op work on ``threads`` threads (``torch.set_num_threads``).

    Returns ``threads``. Set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` before torch starts (in a child:
    :func:`thread_env`) for the OpenMP pools of libraries that read only the environment.
    """
    if threads < 1:
        raise ValueError(f"pin_threads: threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def thread_env(threads: int, pythonpath: Sequence[str] = (), base: Optional[Mapping[str, str]] = None
               ) -> Dict[str, str]:
    """Environment for a child process pinned to ``threads`` threads, ``pythonpath`` entries prepended."""
    env = dict(os.environ if base is None else base)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def import_before_baseline() -> None:
    """Import what the first call of our ``torch.library`` custom ops (the scans) would import lazily.

    That first call imports ``torch._dynamo`` (and Triton's shared library where installed): a
    one-time, input-size-independent ~100 MiB of resident memory that is not activation memory. A
    worker calls this before taking its memory baseline so that it does not land in the first point.
    """
    import torch._dynamo  # noqa: F401


# ----------------------------------------------------------------------------- time
def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: Optional[torch.device] = None) -> float:
    """Seconds of one ``fn()``: CUDA events around it on a CUDA device, ``perf_counter`` elsewhere."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _sync(device)
    begin.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / 1e3


@dataclass
class Timing:
    """Times of :func:`time_calls`, in seconds.

    ``times``: the timed calls (``[first_s]`` alone when the first call exceeded ``max_first_s``);
    ``cpu_times``: this thread's CPU time of each timed call (empty on a CUDA device, where the host
    thread waits; on a shared CPU it is far less sensitive to other jobs than the wall time);
    ``note``: why there were no timed runs, else ``""``.
    """
    first_s: float
    times: List[float]
    cpu_times: List[float] = field(default_factory=list)
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def best_s(self) -> float:
        return min(self.times)

    @property
    def cpu_median_s(self) -> Optional[float]:
        return statistics.median(self.cpu_times) if self.cpu_times else None

    def summary(self, per_call: int = 1) -> dict:
        """JSON-ready fields: ``median_s best_s first_s n_runs images_per_s`` (``per_call`` images a
        call), plus ``cpu_median_s cpu_images_per_s`` when CPU times were taken, and ``note``."""
        out = dict(median_s=self.median_s, best_s=self.best_s, first_s=self.first_s, n_runs=len(self.times))
        if self.cpu_times:
            out.update(cpu_median_s=self.cpu_median_s, cpu_images_per_s=per_call / self.cpu_median_s)
        out.update(images_per_s=per_call / self.median_s, note=self.note)
        return out


def time_calls(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, budget_s: float = float("inf"),
               max_first_s: float = float("inf"), device: Optional[torch.device] = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed-for-the-median calls, then up to ``repeats`` timed ones.

    The first call is always made and timed (``first_s``; it is warm-up call 1, so ``warmup=0`` still
    runs it). If it took longer than ``max_first_s`` nothing more is run and the result holds that one
    time (with a ``note``). Timed repeats stop once their total exceeds ``budget_s`` (at least one is
    kept). On a CUDA ``device`` every time comes from CUDA events.
    """
    if repeats < 1:
        raise ValueError(f"time_calls: repeats must be >= 1, got {repeats}")
    device = torch.device(device) if device is not None else None
    on_cuda = device is not None and device.type == "cuda"
    first = time_call(fn, device)
    if first > max_first_s:
        return Timing(first, [first], note=f"first call {first:.1f}s > {max_first_s:g}s: no timed runs, "
                                           "speed from that call")
    for _ in range(warmup - 1):
        fn()
    times: List[float] = []
    cpu_times: List[float] = []
    for _ in range(repeats):
        cpu0 = time.thread_time()
        times.append(time_call(fn, device))
        if not on_cuda:
            cpu_times.append(time.thread_time() - cpu0)
        if sum(times) > budget_s:
            break
    return Timing(first, times, cpu_times)


# ----------------------------------------------------------------------------- memory
def _status_kib(name: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size of this process in MiB (``VmRSS``; ``ru_maxrss`` where unavailable)."""
    kib = _status_kib("VmRSS")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (``VmHWM``) to its current RSS.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Returns False where that is not possible
    (then only ``ru_maxrss``, the lifetime peak, is available).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident-set increase of this process over a ``with`` block, in MiB (``.mib``).

    Entering collects garbage, resets the high-water mark (:func:`reset_peak_rss`) and records the RSS
    as the baseline; leaving reads ``VmHWM - baseline``. Without ``clear_refs`` it falls back on
    ``ru_maxrss - baseline`` and says so in ``.method`` (an underestimate when the lifetime peak came
    before the block and the block did not exceed it). The figure includes what the allocators keep
    resident, not only live tensors.
    """

    def __init__(self):
        self.mib: Optional[float] = None
        self.method = ""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self._reset = reset_peak_rss()
        self._base_kib = _status_kib("VmRSS") or 0
        self._base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM")
        if self._reset and hwm is not None:
            peak_kib, self.method = hwm - self._base_kib, "VmHWM after clear_refs"
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_kib = maxrss - self._base_kib
            self.method = "ru_maxrss" + ("" if maxrss > self._base_maxrss
                                         else " (did not rise above the earlier peak: underestimate)")
        self.mib = peak_kib / 1024


class CudaPeak:
    """Peak CUDA memory allocated over a ``with`` block beyond what was allocated before it, in MiB.

    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (synchronising on both
    sides), minus ``memory_allocated`` at entry (weights, inputs). ``.mib`` stays None off CUDA.
    """

    def __init__(self, device: Optional[torch.device] = None):
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self.mib: Optional[float] = None

    def __enter__(self) -> "CudaPeak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20


# ----------------------------------------------------------------------------- child processes
@dataclass
class ChildResult:
    """What :func:`run_json_child` got: ``status`` ``'ok'`` (``result`` holds the JSON), ``'failed'``
    (non-zero exit or no result line; ``note`` has the exit code and the last lines of its output) or
    ``'timeout'``; ``wall_s`` the child's wall time."""
    status: str
    result: Optional[dict]
    note: str
    wall_s: float

    def unwrap(self, what: str = "benchmark child") -> dict:
        """The result, or RuntimeError naming ``what`` and why there is none."""
        if self.status != "ok":
            raise RuntimeError(f"{what} {self.status}: {self.note}")
        return self.result


def emit_result(result: dict, marker: str = RESULT_MARKER) -> None:
    """The child's side of :func:`run_json_child`: print ``marker`` + the JSON on one line."""
    print(marker + json.dumps(result), flush=True)


def run_json_child(cmd: Sequence[str], *, env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                   marker: str = RESULT_MARKER, cwd: Optional[str] = None) -> ChildResult:
    """Run ``cmd`` and parse the last stdout line that starts with ``marker`` as JSON.

    Never raises for the child's own failure: a non-zero exit, a missing result line or running past
    ``timeout`` seconds (the child is killed) come back as the status (:meth:`ChildResult.unwrap`
    raises instead).
    """
    start = time.time()
    try:
        proc = subprocess.run(list(cmd), env=None if env is None else dict(env), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ChildResult("timeout", None, f"ran past the {timeout:g}s timeout and was killed",
                           round(time.time() - start, 1))
    wall = round(time.time() - start, 1)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        why = f"rc {proc.returncode}" if proc.returncode != 0 else f"no {marker.strip()!r} line"
        return ChildResult("failed", None, f"{why}: " + " | ".join(tail), wall)
    return ChildResult("ok", json.loads(lines[-1][len(marker):]), "", wall)


# ----------------------------------------------------------------------------- context
def environment(command: Optional[str] = None) -> dict:
    """``torch``, ``cpu_count``, ``load_average_1min``, ``time`` (UTC) and ``command`` if given."""
    out = dict(command=command) if command is not None else {}
    out.update(torch=torch.__version__, cpu_count=os.cpu_count(), load_average_1min=load_average(),
               time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    return out


def load_average() -> Optional[float]:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def command_line(argv: Optional[Sequence[str]] = None, root: Optional[str] = None, script: Optional[str] = None
                 ) -> str:
    """The shell command that reproduces this run: ``PYTHONPATH=. <python> <script> <args>``.

    ``argv``: the arguments (default ``sys.argv[1:]``); ``script``: the script path (default
    ``sys.argv[0]``); paths under ``root`` (the repository) are written relative to it.
    """
    def rel(path):
        return os.path.relpath(path, root) if root and os.path.abspath(path).startswith(root + os.sep) else path
    argv = sys.argv[1:] if argv is None else list(argv)
    script = sys.argv[0] if script is None else script
    words = [rel(sys.executable), rel(os.path.abspath(script)) if script else None, *argv]
    return "PYTHONPATH=. " + " ".join(shlex.quote(w) for w in words if w)
