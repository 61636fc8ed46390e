"""Train a model from an mmengine config (mmsegmentation or mmpretrain: the config's default_scope decides).

    python tools/train.py configs/upernet_visiongru_ti_synthetic.py
    python tools/train.py CONFIG --work-dir DIR --resume [CKPT] --amp --cfg-options k=v ...
    python -m torch.distributed.run --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch
    srun ... python tools/train.py CONFIG --launcher slurm

Multi-GPU and multi-node runs go through mmengine's distributed runner.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from mmengine.config import DictAction  # noqa: E402

from rv_plugins.openmmlab import runner as mr  # noqa: E402
from rv_plugins.engine import checkpointing as ck  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", type=str, const="auto",
                   help="resume from CKPT, or from the latest checkpoint in the work dir if no path is given")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value ...")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    mr.setup_launcher_env(args.launcher, args.local_rank)
    cfg = mr.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or mr.default_work_dir(args.config)
    if args.amp:
        if cfg.optim_wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
            print("AMP is already enabled in the config")
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    ours = mr.use_atomic_checkpoints(cfg)
    if args.resume is not None and args.resume != "auto" and "://" not in args.resume \
            and not os.path.isfile(args.resume):
        sys.exit(f"error: --resume {args.resume}: no such file (give --resume without a path to resume "
                 f"from the newest complete checkpoint of {cfg.work_dir})")
    mr.check_datasets(cfg, ("train_dataloader", "val_dataloader"))
    if mr.is_main_rank():  # before the runner writes anything into the work dir
        try:
            ck.acquire_work_dir_lock(cfg.work_dir)
        except ck.WorkDirLocked as e:
            sys.exit(f"error: {e}")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
        if not ours:  # AtomicCheckpointHook chooses the checkpoint itself (and logs it)
            cfg.load_from = ck.find_resume_checkpoint(cfg.work_dir)
            cfg.resume = cfg.load_from is not None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    try:
        runner = mr.build_runner(cfg)
        runner.train()
    finally:
        ck.release_work_dir_lock(cfg.work_dir)


if __name__ == "__main__":
    main()
