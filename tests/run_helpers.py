"""Helpers of the run-safety tests: a process that holds a work-dir lock, waiting on a child process."""
import os
import signal
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from rv_plugins import engine
    engine.acquire_work_dir_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def start_lock_holder(folder, work_dir) -> subprocess.Popen:
    """A child process (``<folder>/holder.py``) that holds ``work_dir``'s lock; kill it to end it."""
    script = os.path.join(str(folder), "holder.py")
    with open(script, "w") as f:
        f.write(_HOLDER.format(root=ROOT))
    proc = subprocess.Popen([sys.executable, script, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def wait_for(predicate, proc, timeout) -> bool:
    """Poll ``predicate`` until it holds (True), ``proc`` exits or ``timeout`` seconds pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.02)
    return False


def sigkill_after_progress(proc, progressed, kind, folder, rng, log, progress_s, save_s, max_sleep_s) -> None:
    """SIGKILL a training run once ``progressed()`` holds (its own save completed), either while a save of
    it exists only as a temporary file in ``folder`` (``kind == "save"``) or at a random instant up to
    ``max_sleep_s`` later; ``log()`` gives the run's output for the failure messages."""
    from rv_plugins.engine import is_temporary
    assert wait_for(progressed, proc, progress_s), f"the run made no progress:\n{log()[-3000:]}"
    if kind == "save":
        hit = wait_for(lambda: any(is_temporary(n) for n in os.listdir(folder)), proc, save_s)
        assert hit, f"no save observed:\n{log()[-3000:]}"
    else:
        time.sleep(rng.uniform(0.0, max_sleep_s))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
