"""The one run preparation (``rv_plugins.openmmlab.preparation`` / ``PreparedRunner``) on a toy mmengine model.

Runs are built as the scripts build them: ``RUNNERS.build(cfg)`` for a config with a ``runner_type`` (what
mmsegmentation's and mmpretrain's own ``tools/train.py`` do), ``Runner.from_cfg(cfg)`` without one, and a
hand-built ``PreparedRunner(...)``. Each test gets its own work dir and experiment name (mmengine keys
loggers by name).
"""
import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch
from run_helpers import start_lock_holder

pytest.importorskip("mmengine")
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DATASETS, MODELS, RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from rv_plugins import engine as ck  # noqa: E402
from rv_plugins.openmmlab.preparation import RunPreparationError, prepare_run  # noqa: E402
from rv_plugins.openmmlab.prepared_runner import PreparedRunner  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@MODELS.register_module(name="RVTestToyRegressor", force=True)
class Toy(BaseModel):
    def __init__(self, outputs=1):
        super().__init__()
        self.lin = torch.nn.Linear(4, outputs)

    def forward(self, x, y=None, mode="tensor"):
        out = self.lin(x).mean(-1)  # default_collate stacks the samples
        return dict(loss=((out - y) ** 2).mean()) if mode == "loss" else out


@DATASETS.register_module(name="RVTestToyData", force=True)
class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return dict(x=torch.full((4,), float(i)), y=torch.tensor(1.0))


_COUNT = [0]


def _cfg(work_dir, max_iters, resume=False, load_from=None, max_keep=2, runner_type="PreparedRunner", **extra):
    _COUNT[0] += 1
    cfg = dict(
        model=dict(type="RVTestToyRegressor"), work_dir=str(work_dir), resume=resume, load_from=load_from,
        experiment_name=f"prep_{os.getpid()}_{_COUNT[0]}", default_scope="mmengine",
        train_dataloader=dict(dataset=dict(type="RVTestToyData"), batch_size=4, collate_fn=dict(type="default_collate"),
                              sampler=dict(type="InfiniteSampler", shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=1e-3)), train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=2,
                                           max_keep_ckpts=max_keep)))
    if runner_type:
        cfg["runner_type"] = runner_type
    cfg.update(extra)
    return Config(cfg)


def _toolkit_build(cfg):
    """What mmseg's / mmpretrain's own tools/train.py do with a config."""
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_toolkit_script_resume_skips_truncated_and_weights_only_newest(tmp_path, capsys):
    _toolkit_build(_cfg(tmp_path, 6, max_keep=3)).train()
    _truncate(tmp_path / "iter_6.pth")                                   # a non-atomic writer killed
    torch.save(Toy().state_dict(), tmp_path / "iter_4.pth")              # a weights-only file
    runner = _toolkit_build(_cfg(tmp_path, 8, resume=True, max_keep=3))
    assert isinstance(runner, PreparedRunner)
    assert runner.cfg.load_from == str(tmp_path / "iter_2.pth") and runner.cfg.resume
    runner.train()
    out = capsys.readouterr().out
    assert re.search(r"skipped \S*iter_6\.pth: truncated", out), out[-3000:]
    assert re.search(r"skipped \S*iter_4\.pth: not a training checkpoint: it has no 'meta', it is a weights-only",
                     out), out[-3000:]
    assert "resumed epoch: 0, iter: 2" in out
    assert ck.checkpoint_problem(str(tmp_path / "iter_8.pth")) is None
    assert not (tmp_path / ck.LOCK_NAME).exists()  # released when training ended


def test_nothing_to_resume_trains_from_scratch(tmp_path, capsys):
    runner = _toolkit_build(_cfg(tmp_path, 2, resume=True))
    assert runner.cfg.resume is False and runner.cfg.load_from is None
    runner.train()
    out = capsys.readouterr().out
    assert "nothing to resume" in out and "from scratch" in out and "resumed" not in out


def test_hand_built_prepared_runner_failed_save_keeps_previous_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, 4, max_keep=1)
    runner = PreparedRunner(**{k: cfg[k] for k in ("model", "work_dir", "experiment_name", "train_dataloader",
                                                    "optim_wrapper", "train_cfg", "default_hooks")})
    real_save, calls = runner.save_checkpoint, []

    def failing_save(out_dir, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the second save dies half-way through writing its file
            with open(os.path.join(out_dir, filename), "wb") as f:
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
    assert not (tmp_path / ck.LOCK_NAME).exists()  # released although training failed


class _SeesTheLock(Hook):
    def __init__(self, path):
        self.path, self.seen = path, []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen.append(os.path.exists(self.path))


def test_plain_runner_with_the_hook_refuses_a_blind_resume_and_is_locked(tmp_path):
    """A config that names the hook but no runner_type: mmengine's Runner follows last_checkpoint; the
    hook stops the run when that is not the newest usable checkpoint, and takes the lock itself."""
    _toolkit_build(_cfg(tmp_path, 4, runner_type=None)).train()
    _truncate(tmp_path / "iter_4.pth")                                     # last_checkpoint names it
    runner = _toolkit_build(_cfg(tmp_path, 6, resume=True, runner_type=None))
    assert type(runner) is Runner
    with pytest.raises(RuntimeError, match=r"mmengine would resume from '\S*iter_4\.pth'.*newest usable checkpoint "
                                           r"of \S+ is \S*iter_2\.pth.*runner_type='PreparedRunner'"):
        runner.train()
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))  # now it names the right one
    runner = _toolkit_build(_cfg(tmp_path, 6, resume=True, runner_type=None))
    sees = _SeesTheLock(str(tmp_path / ck.LOCK_NAME))
    runner.register_hook(sees)
    runner.train()
    assert runner.iter == 6 and sees.seen and all(sees.seen)
    assert not (tmp_path / ck.LOCK_NAME).exists()


@pytest.mark.parametrize("change, message", [
    (dict(model=dict(type="RVTestToyRegressor", outputs=3)), r"its weights are not this model's \(0 of the model's 2 "
                                                             r"tensors missing, 0 unexpected, 2 of another shape"),
    (dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=1e-3),
                             paramwise_cfg=dict(custom_keys={"lin.bias": dict(lr_mult=0.1)}))),
     r"its optimizer has parameter groups of sizes \[\[2\]\], this run's \[\[1, 1\]\]"),
])
def test_resume_with_another_runs_checkpoint_names_what_differs(tmp_path, change, message):
    _toolkit_build(_cfg(tmp_path / "a", 2)).train()
    runner = _toolkit_build(_cfg(tmp_path / "b", 4, resume=True, load_from=str(tmp_path / "a" / "iter_2.pth"),
                                 **change))
    with pytest.raises(ValueError, match=r"--resume \S*iter_2\.pth: this checkpoint was not saved by a run of this "
                                         r"config: " + message + r".*load_from=\S*iter_2\.pth\) without --resume"):
        runner.train()


def test_preparation_errors_name_the_setting_and_the_fix(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for work_dir, where in ((a_file, "is a file"), (a_file / "sub", f"lies under {a_file}, which is a file")):
        with pytest.raises(RunPreparationError, match=rf"--work-dir {re.escape(str(work_dir))}: the path {where}"):
            prepare_run(dict(work_dir=str(work_dir), resume=False, load_from=None, default_hooks=None))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02" + bytes(range(200)))
    with pytest.raises(RunPreparationError, match=r"--resume \S*garbage\.pth: cannot use this file: not loadable"):
        prepare_run(dict(work_dir=str(tmp_path / "wd"), resume=True, load_from=str(garbage), default_hooks=None))
    with pytest.raises(RunPreparationError, match=r"load_from \S*nope\.pth: no such file"):
        prepare_run(dict(work_dir=str(tmp_path / "wd"), resume=False, load_from=str(tmp_path / "nope.pth"),
                         default_hooks=None))
    run = dict(work_dir=str(tmp_path / "wd"), resume=False, load_from=None, default_hooks=None)
    prepare_run(run)  # mmengine's default checkpoint hook, made atomic
    assert run["default_hooks"] == {"checkpoint": {"type": "AtomicCheckpointHook", "interval": 1}}


def test_resume_looks_where_the_checkpoint_hook_saves(tmp_path):
    """CheckpointHook(out_dir=D) saves into D/<work dir's folder name>: the resume choice looks there too."""
    saved = tmp_path / "elsewhere" / "wd"
    saved.mkdir(parents=True)
    torch.save({"meta": {"iter": 2, "epoch": 0}, "state_dict": {}, "message_hub": {}}, saved / "iter_2.pth")
    run = dict(work_dir=str(tmp_path / "wd"), resume=True, load_from=None, default_hooks=dict(
        checkpoint=dict(type="CheckpointHook", interval=2, out_dir=str(tmp_path / "elsewhere"))))
    prepare_run(run, log=lambda m: None)
    assert run["load_from"] == str(saved / "iter_2.pth") and run["resume"]
    assert run["default_hooks"]["checkpoint"]["type"] == "AtomicCheckpointHook"

def test_a_second_training_run_is_refused_naming_the_first(tmp_path):
    work_dir = tmp_path / "wd"
    holder = start_lock_holder(tmp_path, work_dir)
    try:
        runner = _toolkit_build(_cfg(work_dir, 2))
        with pytest.raises(ck.WorkDirLocked, match=rf"pid {holder.pid} on host .*another --work-dir"):
            runner.train()
    finally:
        holder.kill()
        holder.wait()
    assert not (work_dir / "iter_2.pth").exists()



def test_tools_print_the_preparation_errors(tmp_path):
    """tools/train.py and tools/test.py stop with ``error: <what and the fix>`` (no traceback) for a bad
    --work-dir, --resume or checkpoint."""
    from tool_loader import load_tool

    config = tmp_path / "toy.py"
    _cfg(tmp_path / "unused", 2).dump(str(config))
    a_file, garbage = tmp_path / "a_file", tmp_path / "garbage.pth"
    a_file.write_text("x")
    garbage.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    train = load_tool("train").main
    cases = [(["--work-dir", str(a_file)], rf"error: --work-dir {re.escape(str(a_file))}: the path is a file"),
             (["--work-dir", str(tmp_path / "wd"), "--resume", str(garbage)],
              r"error: --resume \S*garbage\.pth: cannot use this file: truncated or corrupted zip archive"),
             (["--work-dir", str(tmp_path / "wd"), "--resume", str(tmp_path / "nope.pth")],
              r"error: --resume \S*nope\.pth: no such file \(give --resume without a path")]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            train([str(config), *args])
    test = load_tool("test").main
    with pytest.raises(SystemExit, match=r"error: load_from \S*garbage\.pth: cannot use this file: truncated"):
        test([str(config), str(garbage), "--work-dir", str(tmp_path / "wd")])
    with pytest.raises(FileNotFoundError, match=r"checkpoint \S+ is a folder, not a checkpoint file"):
        test([str(config), str(tmp_path), "--work-dir", str(tmp_path / "wd")])


# ----------------------------------------------------------------- the real model: toolkit script, --amp
_TINY = ["train_cfg.val_interval=1000", "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1",
         "train_dataloader.batch_size=2", "model.data_preprocessor.size=(32,32)",
         "train_dataloader.dataset.img_size=(32,32)", "model.backbone.img_size=32", "model.backbone.arch._delete_=True",
         "model.backbone.arch.embed_dims=[8,16,32,64]", "model.backbone.arch.depths=[1,1,1,1]",
         "model.decode_head.in_channels=[8,16,32,64]", "model.decode_head.channels=16",
         "model.auxiliary_head.in_channels=32", "model.auxiliary_head.channels=8"]


def _mmseg_script(name):
    mmseg = pytest.importorskip("mmseg")
    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", f"{name}.py")
    assert os.path.isfile(path), f"mmsegmentation ships no {path}"
    return path


@pytest.mark.slow
def test_mmseg_own_train_script_resumes_our_config_with_the_same_guarantees(tmp_path):
    """mmsegmentation's own tools/train.py, our config named by its scope: the run is a PreparedRunner, so
    --resume skips a truncated newest checkpoint (logged) and the work dir is locked while it trains."""
    script = _mmseg_script("train")

    def train(max_iters, *extra):
        return subprocess.run([sys.executable, script, "rv_plugins::upernet_visiongru_ti_synthetic.py", "--work-dir",
                               str(tmp_path), *extra, "--cfg-options", f"train_cfg.max_iters={max_iters}",
                               "default_hooks.checkpoint.max_keep_ckpts=3", *_TINY],
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))

    first = train(4)
    assert first.returncode == 0, first.stderr[-3000:]
    _truncate(tmp_path / "iter_4.pth")
    second = train(6, "--resume")
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert re.search(r"skipped \S*iter_4\.pth: truncated", log) and "resumed epoch: 0, iter: 2" in log, log[-3000:]
    assert ck.checkpoint_problem(str(tmp_path / "iter_6.pth")) is None and not (tmp_path / ck.LOCK_NAME).exists()


def test_amp_on_a_cpu_trains_in_bfloat16_autocast(tmp_path, monkeypatch):
    pytest.importorskip("mmseg")
    from tool_loader import load_tool

    from rv_plugins.openmmlab.amp import BF16AutocastOptimWrapper

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU route, also on a GPU machine
    seen = []
    original = BF16AutocastOptimWrapper.optim_context

    @contextlib.contextmanager
    def spy(self, model):  # every training forward runs inside optim_context
        with original(self, model):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            yield

    monkeypatch.setattr(BF16AutocastOptimWrapper, "optim_context", spy)
    load_tool("train").main([os.path.join(ROOT, "configs", "upernet_visiongru_ti_synthetic.py"), "--work-dir",
                             str(tmp_path), "--amp", "--cfg-options", "train_cfg.max_iters=2",
                             f"experiment_name=amp_{os.getpid()}", *_TINY])
    assert seen == [(True, torch.bfloat16)] * 2, seen
    dumped = (tmp_path / "upernet_visiongru_ti_synthetic.py").read_text()
    assert "BF16AutocastOptimWrapper" in dumped and "loss_scale" not in dumped
