"""Evaluate a checkpoint with an mmengine config (mmsegmentation or mmpretrain).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

CONFIG may be rv_plugins::<name>.py (a config shipped with the package). The run is built as rv_plugins'
PreparedRunner: a missing, truncated or corrupted CHECKPOINT is refused with the reason.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "rv_plugins")):
    sys.path.insert(0, _ROOT)  # run from a checkout

from mmengine.config import DictAction  # noqa: E402

from rv_plugins.openmmlab import runner as mr  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, or rv_plugins::<name>.py")
    p.add_argument("checkpoint")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "://" not in args.checkpoint and not os.path.isfile(args.checkpoint):
        what = "is a folder, not a checkpoint file" if os.path.isdir(args.checkpoint) else "does not exist"
        raise FileNotFoundError(f"checkpoint {args.checkpoint!r} {what}")
    mr.setup_launcher_env(args.launcher, args.local_rank)
    cfg = mr.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or mr.default_work_dir(args.config)
    cfg.resume, cfg.load_from = False, args.checkpoint  # a test never resumes a training run
    mr.check_datasets(cfg, ("test_dataloader",))
    try:
        runner = mr.build_runner(cfg)
    except mr.RUN_ERRORS as e:
        sys.exit(f"error: {e}")
    return runner.test()


if __name__ == "__main__":
    main()
