"""Nothing lost on a kill: atomic checkpoint files, resume from the newest complete one, one run per work dir.

Fast tests exercise ``rv_plugins.engine.checkpointing`` directly (torch only); the slow test trains the
synthetic config with ``tools/train.py``, SIGKILLs it at random instants (some while a checkpoint is
being written), resumes, and checks that no completed checkpoint is ever lost and the run ends at
``max_iters``.
"""
import os
import os.path as osp
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch

from rv_plugins.engine import checkpointing as ck

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _save(path, step):
    torch.save({"meta": {"iter": step}, "state_dict": {"w": torch.full((64,), float(step))}}, path)


# ------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last_checkpoint"
    ck.atomic_write(str(target), "first", mode="w")
    ck.atomic_write(str(target), "second", mode="w")
    assert target.read_text() == "second"
    assert os.listdir(tmp_path) == ["last_checkpoint"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    target = tmp_path / "f.bin"
    ck.atomic_write(str(target), b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.atomic_write(str(target), boom)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------------- checking checkpoints

def test_checkpoint_problem_names_each_defect(tmp_path):
    good = tmp_path / "iter_2.pth"
    _save(good, 2)
    assert ck.checkpoint_problem(str(good)) is None
    data = good.read_bytes()

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in ck.checkpoint_problem(str(empty))

    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in ck.checkpoint_problem(str(truncated))

    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    assert "not a torch checkpoint" in ck.checkpoint_problem(str(text))

    # flip one byte inside the stored tensor data: the archive is intact, the CRC is not
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    corrupt = bytearray(data)
    h = info.header_offset  # local header: name and extra lengths at bytes 26..29
    offset = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little") + 8
    corrupt[offset] ^= 0xFF
    bad = tmp_path / "crc.pth"
    bad.write_bytes(bytes(corrupt))
    assert "CRC" in ck.checkpoint_problem(str(bad))
    assert "does not exist" in ck.checkpoint_problem(str(tmp_path / "nope.pth"))


def test_resume_picks_newest_complete_and_names_skipped(tmp_path):
    for s in (2, 4):
        _save(tmp_path / f"iter_{s}.pth", s)
    (tmp_path / "iter_6.pth").write_bytes((tmp_path / "iter_4.pth").read_bytes()[:100])  # killed mid-write
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))             # not yet updated
    logs = []
    path = ck.find_resume_checkpoint(str(tmp_path), log=logs.append)
    assert path == str(tmp_path / "iter_4.pth")
    assert any("skipped" in m and "iter_6.pth" in m and "truncated" in m for m in logs), logs


def test_resume_empty_last_checkpoint_and_nothing_to_resume(tmp_path):
    (tmp_path / "last_checkpoint").write_text("")
    logs = []
    assert ck.find_resume_checkpoint(str(tmp_path), log=logs.append) is None
    assert any("last_checkpoint is empty" in m for m in logs), logs
    assert any("nothing to resume" in m and "from scratch" in m for m in logs), logs


def test_resume_refuses_when_no_checkpoint_is_complete(tmp_path):
    (tmp_path / "iter_4.pth").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))
    with pytest.raises(ck.NoCompleteCheckpoint, match=r"iter_4\.pth.*Move them out"):
        ck.find_resume_checkpoint(str(tmp_path), log=lambda m: None)


def test_resume_ignores_dangling_last_checkpoint(tmp_path):
    _save(tmp_path / "iter_2.pth", 2)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_8.pth"))
    logs = []
    assert ck.find_resume_checkpoint(str(tmp_path), log=logs.append) == str(tmp_path / "iter_2.pth")
    assert any("does not exist" in m for m in logs)


# ------------------------------------------------------------------------------------ work-dir lock

_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from rv_plugins.engine import checkpointing as ck
    ck.acquire_work_dir_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
""")


def _holder(tmp_path, work_dir):
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER.format(root=ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_refused_naming_the_first_then_stale_lock_taken_over(tmp_path):
    work_dir = tmp_path / "wd"
    proc = _holder(tmp_path, work_dir)
    try:
        with pytest.raises(ck.WorkDirLocked, match=rf"pid {proc.pid} on host .*holder\.py"):
            ck.WorkDirLock(str(work_dir)).acquire()
    finally:
        proc.kill()
        proc.wait()
    # the killed holder left its lock file behind: taken over, and the log says from whom
    assert (work_dir / ck.LOCK_NAME).exists()
    logs = []
    lock = ck.acquire_work_dir_lock(str(work_dir), log=logs.append)
    try:
        assert lock.took_over["pid"] == proc.pid
        assert any(f"pid {proc.pid}" in m and "no longer running" in m for m in logs), logs
        assert f'"pid": {os.getpid()}' in (work_dir / ck.LOCK_NAME).read_text()
    finally:
        ck.release_work_dir_lock(str(work_dir))
    assert not (work_dir / ck.LOCK_NAME).exists()


# --------------------------------------------------------------- the hook in an mmengine Runner (toy)

def _toy_runner(work_dir, max_iters, name, resume=False, max_keep=1):
    pytest.importorskip("mmengine")
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import rv_plugins.engine.hooks  # noqa: F401
    from rv_plugins.utils.checkpoint import allow_mmengine_checkpoints

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x, y=None, mode="tensor"):
            out = self.lin(x).squeeze(-1)  # default_collate stacks the samples
            return dict(loss=((out - y) ** 2).mean()) if mode == "loss" else out

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return dict(x=torch.full((4,), float(i)), y=torch.tensor(1.0))

    runner = Runner(
        model=Toy(), work_dir=str(work_dir), experiment_name=name, resume=resume, load_from=None,
        train_dataloader=dict(dataset=Data(), sampler=dict(type="InfiniteSampler", shuffle=False), batch_size=4,
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=1e-3)), train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=2,
                                           max_keep_ckpts=max_keep)))
    allow_mmengine_checkpoints()
    return runner


def test_hook_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    runner = _toy_runner(tmp_path, 4, f"fail_{os.getpid()}")
    real_save, calls = runner.save_checkpoint, []

    def failing_save(out_dir, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the second save dies half-way through writing its file
            with open(osp.join(out_dir, filename), "wb") as f:
                f.write(b"PK\x03\x04partial")
            raise OSError(28, "No space left on device")
        return real_save(out_dir, filename, *args, **kwargs)

    runner.save_checkpoint = failing_save
    with pytest.raises(OSError, match="No space left"):
        runner.train()
    assert all(ck.is_temporary(f) for f in calls)  # written under a temporary name, renamed after
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth") or n.startswith("."))
    assert names == ["iter_2.pth"], names
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_2.pth")
    assert ck.checkpoint_problem(str(tmp_path / "iter_2.pth")) is None
    ck.release_work_dir_lock(str(tmp_path))


def test_hook_resume_skips_corrupted_newest_and_says_nothing_to_resume(tmp_path, capsys):
    fresh = _toy_runner(tmp_path / "empty", 2, f"fresh_{os.getpid()}", resume=True)
    fresh.train()
    assert "nothing to resume" in capsys.readouterr().out
    _toy_runner(tmp_path, 4, f"first_{os.getpid()}", max_keep=2).train()
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == ["iter_2.pth", "iter_4.pth"]
    data = (tmp_path / "iter_4.pth").read_bytes()
    (tmp_path / "iter_4.pth").write_bytes(data[:len(data) // 2])
    second = _toy_runner(tmp_path, 6, f"second_{os.getpid()}", resume=True, max_keep=2)
    second.train()
    out = capsys.readouterr().out
    assert re.search(r"skipped \S*iter_4\.pth: truncated", out), out[-2000:]
    assert "resumed epoch: 0, iter: 2" in out
    assert ck.checkpoint_problem(str(tmp_path / "iter_6.pth")) is None
    assert not (tmp_path / ck.LOCK_NAME).exists()  # released at the end of the run


# -------------------------------------------------------------------------- the kill-and-resume test

def _complete_checkpoints(work_dir):
    out = {}
    for name in os.listdir(work_dir):
        m = re.match(r"^iter_(\d+)\.pth$", name)
        if m and ck.checkpoint_problem(osp.join(work_dir, name)) is None:
            out[int(m.group(1))] = name
    return out


def _wait_for(predicate, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_at_random_instants_loses_no_checkpoint(tmp_path):
    """4 SIGKILLs (two while a checkpoint exists only as its temporary file, two at random instants of
    training), each followed by ``--resume``; the 5th run must finish at max_iters."""
    pytest.importorskip("mmseg")
    max_iters, kills = 12, ["save", "random", "save", "random"]
    work_dir = tmp_path / "run"
    log_path = tmp_path / "train.log"
    rng = random.Random(int(os.environ.get("RV_FAULT_SEED", "15")))
    dims = [8, 16, 32, 64]
    cmd = [sys.executable, osp.join(ROOT, "tools", "train.py"),
           osp.join(ROOT, "configs", "upernet_visiongru_ti_synthetic.py"),
           "--work-dir", str(work_dir), "--resume", "--cfg-options",
           f"train_cfg.max_iters={max_iters}", "train_cfg.val_interval=1000",
           "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1",
           "train_dataloader.batch_size=2", "model.backbone.arch._delete_=True",
           f"model.backbone.arch.embed_dims={dims}".replace(" ", ""), "model.backbone.arch.depths=[1,1,1,1]",
           f"model.decode_head.in_channels={dims}".replace(" ", ""), "model.decode_head.channels=16",
           f"model.auxiliary_head.in_channels={dims[2]}", "model.auxiliary_head.channels=8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               **{ck.SAVE_DELAY_ENV: "0.4"})  # a save stays in its temporary file for 0.4 s
    t0 = time.time()
    saved = 0  # highest step whose save a run reported complete
    resumed_at = []
    for run in range(len(kills) + 1):
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
        start_saved = saved

        def text():
            return log_path.read_text(errors="replace")

        if run < len(kills):
            # kill only after this run has gone past where it started, so every run makes progress
            progressed = _wait_for(lambda: re.search(r"checkpoint complete: \S*iter_(\d+)\.pth", text())
                                   is not None, proc, 240)
            assert progressed, f"run {run} made no progress:\n{text()[-3000:]}"
            if kills[run] == "save":
                hit = _wait_for(lambda: any(ck.is_temporary(n) for n in os.listdir(work_dir)), proc, 120)
                assert hit, f"run {run}: no save observed:\n{text()[-3000:]}"
            else:
                time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            assert proc.wait(timeout=300) == 0, text()[-5000:]
        out = text()
        m = re.search(r"resumed epoch: \d+, iter: (\d+)", out)
        resumed_at.append(int(m.group(1)) if m else 0)
        if run > 0:
            assert m, f"run {run} did not resume:\n{out[-3000:]}"
            assert resumed_at[-1] >= start_saved, (resumed_at, start_saved)  # no completed save lost
            assert "took over" in out  # the killed run's lock
        steps = [int(s) for s in re.findall(r"checkpoint complete: \S*iter_(\d+)\.pth", out)]
        saved = max([saved] + steps)
        complete = _complete_checkpoints(work_dir)
        assert complete and max(complete) >= saved, (complete, saved, out[-3000:])
        marker = work_dir / "last_checkpoint"
        if marker.exists():  # names a complete file whenever it exists
            assert ck.checkpoint_problem(marker.read_text().strip()) is None
    elapsed = time.time() - t0
    final = torch.load(work_dir / f"iter_{max_iters}.pth", map_location="cpu", weights_only=False)
    assert final["meta"]["iter"] == max_iters
    # the last run trained to the end, or a kill came after the final save and it had nothing left to do
    assert f"Iter(train) [{max_iters}/{max_iters}]" in out or resumed_at[-1] == max_iters, out[-3000:]
    assert (work_dir / "last_checkpoint").read_text().strip().endswith(f"iter_{max_iters}.pth")
    leftovers = [n for n in os.listdir(work_dir) if ck.is_temporary(n) or n == ck.LOCK_NAME]
    assert not leftovers
    assert sorted(_complete_checkpoints(work_dir)) == [max_iters]  # max_keep_ckpts=1, no orphans
    print(f"\n{len(kills)} kills ({kills}), resumed at {resumed_at[1:]}, {elapsed:.0f} s in all")
