"""Helpers of the run-safety tests: a process that holds a work-dir lock, waiting on a child process."""
import os
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
