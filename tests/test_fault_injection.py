"""Nothing lost on a kill: atomic checkpoint files, resume from the newest usable one, one run per work dir.

Fast tests exercise ``rv_plugins.engine`` directly (torch only) and the run preparation on a toy mmengine
model (``PreparedRunner``, and a plain ``Runner`` as a toolkit's own script builds it); the slow test
trains the synthetic config with ``tools/train.py``, SIGKILLs it at random instants (some while a
checkpoint is being written), resumes, and checks that no completed checkpoint is ever lost and the run
ends at ``max_iters``. Detectron2's ``tools/train_net.py`` has its own: ``test_fault_injection_detectron2.py``.
"""
import os
import os.path as osp
import random
import re
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from run_helpers import sigkill_after_progress, start_lock_holder

from rv_plugins import engine as ck
from rv_plugins.engine import atomic, resume

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _save(path, step):
    torch.save({"meta": {"iter": step, "epoch": 0}, "state_dict": {"w": torch.full((64,), float(step))},
                "message_hub": {}}, path)


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


def test_resume_skips_unloadable_and_weights_only_newest_files(tmp_path):
    """Files that pass the zip/CRC check (or have torch's legacy header) but are not loadable training
    checkpoints are skipped with the reason; the newest usable one is chosen."""
    _save(tmp_path / "iter_2.pth", 2)
    torch.save({"w": torch.ones(3)}, tmp_path / "iter_4.pth")                       # weights only
    (tmp_path / "iter_6.pth").write_bytes(b"\x80\x02" + bytes(range(256)) * 4)    # legacy header, garbage
    with zipfile.ZipFile(tmp_path / "iter_8.pth", "w") as z:                          # intact zip, garbage pickle
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x04\x00\x00\x00meta" + b"\xff" * 64)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_8.pth"))
    logs = []
    chosen = ck.find_resume_checkpoint(str(tmp_path), log=logs.append, required=resume.MMENGINE_RESUME_KEYS)
    assert chosen == str(tmp_path / "iter_2.pth"), logs
    text = "\n".join(logs)
    assert re.search(r"skipped \S*iter_8\.pth: not loadable: its data\.pkl does not unpickle", text), text
    assert re.search(r"skipped \S*iter_6\.pth: not loadable: the file \(torch's legacy format\)", text), text
    assert re.search(r"skipped \S*iter_4\.pth: not a training checkpoint: it has no 'meta', it is a "
                     r"weights-only file", text), text
    # a legacy-format training checkpoint is usable; the checks read no tensor data and run no code
    torch.save({"meta": {"iter": 10, "epoch": 0}, "state_dict": {"w": torch.ones(2)}, "message_hub": {}},
               tmp_path / "iter_10.pth", _use_new_zipfile_serialization=False)
    assert ck.checkpoint_problem(str(tmp_path / "iter_10.pth"), resume.MMENGINE_RESUME_KEYS) is None


def test_checking_a_checkpoint_runs_no_code_from_it(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"meta": {"iter": 1, "epoch": 0}, "state_dict": {}, "message_hub": Boom()}, tmp_path / "iter_1.pth")
    assert ck.checkpoint_problem(str(tmp_path / "iter_1.pth"), resume.MMENGINE_RESUME_KEYS) is None
    assert not (tmp_path / "pwned").exists()


def test_detectron2_names_order_final_last(tmp_path):
    for name in ("model_0000099.pth", "model_0000199.pth", "model_final.pth"):
        torch.save({"model": {}, "trainer": {"iteration": 1}}, tmp_path / name)
    names, _ = resume.checkpoint_candidates(str(tmp_path), names=resume.DETECTRON2_NAMES)
    assert [os.path.basename(n) for n in names] == ["model_final.pth", "model_0000199.pth", "model_0000099.pth"]


# ------------------------------------------------------------------------------------ work-dir lock

def test_second_run_refused_naming_the_first_then_stale_lock_taken_over(tmp_path):
    work_dir = tmp_path / "wd"
    proc = start_lock_holder(tmp_path, work_dir)
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


# -------------------------------------------------------------------------- the kill-and-resume test

def _complete_checkpoints(work_dir):
    out = {}
    for name in os.listdir(work_dir):
        m = re.match(r"^iter_(\d+)\.pth$", name)
        if m and ck.checkpoint_problem(osp.join(work_dir, name)) is None:
            out[int(m.group(1))] = name
    return out


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
               **{atomic.SAVE_DELAY_ENV: "0.4"})  # a save stays in its temporary file for 0.4 s
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
            progressed = lambda: re.search(r"checkpoint complete: \S*iter_(\d+)\.pth", text()) is not None  # noqa: E731
            sigkill_after_progress(proc, progressed, kills[run], work_dir, rng, text, progress_s=240, save_s=120,
                                   max_sleep_s=1.5)
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
