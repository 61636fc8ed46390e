"""Bad inputs a real user gives: each one gets an error that names the problem and the fix, or a correct
result, never a crash deep inside a library or a silently wrong run (issue 15).

Checkpoint files given as ``checkpoint=``, the scan op's edge cases and the solver's arguments have their
own tests (test_weights / test_ops_scan / test_hgru_crbp); the kill-and-resume machinery is in
test_fault_injection.py.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

from rv_plugins.openmmlab import runner as mr
from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU
from rv_plugins import engine as ck
from run_helpers import start_lock_holder

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    Sequencer2D: dict(arch=dict(depths=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32], patch_sizes=[7, 2, 1, 1])),
    VisionGRU: dict(arch=dict(embed_dims=[8, 16, 16, 32], depths=[1, 1, 1, 1])),
}


# ------------------------------------------------------------------------------------------ backbones

@pytest.mark.parametrize("cls", [Sequencer2D, VisionGRU])
@pytest.mark.parametrize("training", [False, True])
def test_empty_batch_gives_empty_outputs(cls, training):
    model = cls(out_indices=(0, 1, 2, 3), **SMALL[cls]).train(training)
    outs = model(torch.zeros(0, 3, 28, 28))
    full = model.eval()(torch.zeros(1, 3, 28, 28))
    assert [tuple(o.shape) for o in outs] == [(0,) + tuple(f.shape[1:]) for f in full]


@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "mingru"])
@pytest.mark.parametrize("impl", ["native", "fused"])
def test_sequencer_empty_batch_every_rnn_path(rnn_type, impl):
    model = Sequencer2D(rnn_type=rnn_type, rnn_impl=impl, out_indices=(1,), **SMALL[Sequencer2D]).eval()
    with torch.no_grad():
        (out,) = model(torch.zeros(0, 3, 28, 28))
    assert out.shape == (0, 16, 2, 2)


@pytest.mark.parametrize("cls", [Sequencer2D, VisionGRU])
@pytest.mark.parametrize("rate", [1.5, 1.0, -0.1, float("nan")])
def test_drop_path_rate_outside_unit_interval(cls, rate):
    with pytest.raises(ValueError, match=r"drop_path_rate.*\[0, 1\)"):
        cls(drop_path_rate=rate, **SMALL[cls])


@pytest.mark.parametrize("cls", [Sequencer2D, VisionGRU])
@pytest.mark.parametrize("bad", [1.5, "0123", True, (0, 1.0), None])
def test_out_indices_of_wrong_type(cls, bad):
    with pytest.raises(TypeError, match=rf"{cls.__name__}: out_indices must be") as err:
        cls(out_indices=bad, **SMALL[cls])
    assert f"got {bad!r}" in str(err.value) and "out_indices=(0, 1, 2, 3)" in str(err.value)


def test_out_indices_accepted_forms():
    kw = SMALL[VisionGRU]
    assert VisionGRU(out_indices=2, **kw).out_indices == (2,)
    assert VisionGRU(out_indices=[0, -1], **kw).out_indices == (0, 3)
    with pytest.raises(ValueError, match="out of range"):
        VisionGRU(out_indices=(4,), **kw)


def test_public_imports_are_light():
    code = ("import sys\n"
            "from rv_plugins.backbones import VisionGRU, Sequencer2D\n"
            "from rv_plugins.solvers import FixedPointSolver\n"
            "from rv_plugins.engine import find_resume_checkpoint, WorkDirLock\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mmengine', 'mmcv', 'mmseg', 'mmpretrain', 'detectron2'))\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------- datasets

def _ade_cfg(root):
    return {"train_dataloader": {"dataset": {
        "type": "ADE20KDataset", "data_root": str(root),
        "data_prefix": {"img_path": "images/training", "seg_map_path": "annotations/training"}}}}


def test_dataset_root_with_empty_image_folder(tmp_path):
    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"images/training' exists but holds no files.*ADEChallengeData2016"):
        mr.check_datasets(_ade_cfg(tmp_path), ("train_dataloader",))


def test_dataset_root_without_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"exists but has no folder 'images/training'.*data_root="):
        mr.check_datasets(_ade_cfg(tmp_path), ("train_dataloader",))


def test_dataset_root_with_images_passes(tmp_path):
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "a.png").write_bytes(b"x")
    mr.check_datasets(_ade_cfg(tmp_path), ("train_dataloader",))


def test_imagenet_split_folder_empty(tmp_path):
    (tmp_path / "train").mkdir()
    cfg = {"train_dataloader": {"dataset": {"type": "ImageNet", "data_root": str(tmp_path), "split": "train"}}}
    with pytest.raises(FileNotFoundError, match=r"train' exists but holds no files.*ImageNet-1k"):
        mr.check_datasets(cfg, ("train_dataloader",))


# ------------------------------------------------------------------------------- Pathfinder generator

_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("name,value,expected", [
    ("dash_width", -1, "dash_width=-1; need an integer >= 1"), ("dash_width", 0, "dash_width=0; need an integer >= 1"),
    ("dash_width", 1.5, "dash_width=1.5; need an integer >= 1"),
    ("dash_length", -3.0, "dash_length=-3.0; need a finite number > 0"), ("dash_length", 0, "dash_length=0"),
    ("dash_length", _NAN, "dash_length=nan"), ("dash_gap", -1.0, "dash_gap=-1.0; need a finite number >= 0"),
    ("dash_gap", _NAN, "dash_gap=nan"), ("dash_gap", _INF, "dash_gap=inf"),
    ("marker_radius", -2.0, "marker_radius=-2.0; need a finite number >= 0"),
    ("min_separation", -1, "min_separation=-1; need a finite number >= 0"),
    ("num_distractors", -1, "num_distractors=-1; need an integer >= 0"),
    ("num_distractors", 1.5, "num_distractors=1.5; need an integer >= 0"),
    ("clutter_dashes", -4, "clutter_dashes=-4; need an integer >= 0"),
    ("image_size", 32.5, "image_size=32.5; need an integer >= 8"), ("image_size", -64, "image_size=-64"),
    ("image_size", True, "image_size=True"), ("length", 0, "length=0; need an integer >= 1"),
    ("length", 6.0, "length=6.0; need an integer >= 1"),
    ("max_turn_deg", _NAN, "max_turn_deg=nan; need a finite number >= 0 .*180"),
    ("max_turn_deg", -10.0, "max_turn_deg=-10.0"), ("max_turn_deg", 270.0, "max_turn_deg=270.0"),
    ("max_attempts", 0, "max_attempts=0; need an integer >= 1"), ("max_attempts", "3", "max_attempts='3'"),
])
def test_pathfinder_arguments_name_the_argument_and_the_range(name, value, expected):
    from rv_plugins.datasets.pathfinder import PathfinderConfig
    with pytest.raises(ValueError, match=f"PathfinderConfig: {expected}"):
        PathfinderConfig(**{"image_size": 32, "length": 4, name: value})


def test_pathfinder_seeds_counts_and_indices():
    from rv_plugins.datasets.pathfinder import PathfinderConfig, PathfinderDataset, pathfinder_sample
    cfg = PathfinderConfig(image_size=16, length=3, num_distractors=0)
    for kwargs, expected in ((dict(seed=-1), "seed=-1; need an integer >= 0"),
                             (dict(seed=1.5), "seed=1.5"), (dict(num_samples=-2), "num_samples=-2"),
                             (dict(num_samples=2.5), "num_samples=2.5; need an integer >= 0")):
        with pytest.raises(ValueError, match=f"PathfinderDataset: {expected}"):
            PathfinderDataset(**{"num_samples": 2, "config": cfg, **kwargs})
    with pytest.raises(ValueError, match="pathfinder_sample: seed=-3"):
        pathfinder_sample(cfg, -3, 0)
    with pytest.raises(ValueError, match="pathfinder_sample: index=-1"):
        pathfinder_sample(cfg, 0, -1)
    assert len(PathfinderDataset(0, cfg)) == 0  # an empty dataset is allowed
    sample = pathfinder_sample(PathfinderConfig(image_size=16, length=3, num_distractors=0, max_turn_deg=0,
                                                dash_gap=0, marker_radius=0, min_separation=0), 0, 0)
    assert sample.mask.sum() > 0  # the edges of every range render


def test_pathfinder_impossible_layout_blames_the_right_settings():
    from rv_plugins.datasets.pathfinder import PathfinderConfig, pathfinder_sample
    with pytest.raises(RuntimeError, match="in 1 attempts.*max_attempts.*dash_length / dash_gap"):
        pathfinder_sample(PathfinderConfig(image_size=8, length=30, dash_length=6.0, max_attempts=1), 0, 0)


def test_pathfinder_mmseg_dataset_checks_its_arguments():
    pytest.importorskip("mmseg")
    from rv_plugins.mmseg.pathfinder import PathfinderSegDataset
    for kwargs, expected in ((dict(image_size=32.5), "image_size=32.5"), (dict(num_distractors=-1), "num_distractors"),
                             (dict(seed=-1), "PathfinderSegDataset: seed=-1"),
                             (dict(num_samples=2.5), "PathfinderSegDataset: num_samples=2.5"),
                             (dict(pathfinder_cfg=dict(dash_width=-2)), "dash_width=-2")):
        with pytest.raises(ValueError, match=expected):
            PathfinderSegDataset(**{"num_samples": 4, "image_size": 32, "length": 4, **kwargs})


# -------------------------------------------------------------------------------- resume and the lock

def test_resume_cases_name_the_file_and_the_reason(tmp_path):
    logs = []
    assert ck.find_resume_checkpoint(str(tmp_path), log=logs.append) is None
    assert "nothing to resume" in logs[-1]
    (tmp_path / "last_checkpoint").write_text("")
    torch.save({"meta": {"iter": 2}}, tmp_path / "iter_2.pth")
    (tmp_path / "iter_4.pth").write_bytes(b"PK\x03\x04" + b"\0" * 100)   # corrupted zip
    logs.clear()
    assert ck.find_resume_checkpoint(str(tmp_path), log=logs.append) == str(tmp_path / "iter_2.pth")
    text = "\n".join(logs)
    assert "last_checkpoint is empty" in text and "skipped" in text and "iter_4.pth" in text


def _run_train(args, timeout=600, env=None):
    return subprocess.run([sys.executable, osp.join(ROOT, "tools", "train.py")] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def test_second_training_run_in_same_work_dir_is_refused(tmp_path):
    pytest.importorskip("mmseg")
    work_dir = tmp_path / "wd"
    holder = start_lock_holder(tmp_path, work_dir)  # checks that it printed 'locked'
    try:
        out = _run_train([osp.join(ROOT, "configs", "upernet_visiongru_ti_synthetic.py"),
                          "--work-dir", str(work_dir)])
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode != 0
    assert f"pid {holder.pid}" in out.stderr and "another --work-dir" in out.stderr, out.stderr[-2000:]
    assert not (work_dir / "last_checkpoint").exists()


@pytest.mark.slow
def test_resume_skips_corrupted_latest_checkpoint_via_tools(tmp_path):
    """tools/train.py --resume with a corrupted newest checkpoint: resumes from the previous one, names
    the skipped file and why, and ends at max_iters."""
    pytest.importorskip("mmseg")
    work_dir = tmp_path / "wd"
    dims = "[8,16,32,64]"
    common = [osp.join(ROOT, "configs", "upernet_visiongru_ti_synthetic.py"), "--work-dir", str(work_dir),
              "--cfg-options", "train_cfg.val_interval=1000", "default_hooks.checkpoint.interval=2",
              "default_hooks.checkpoint.max_keep_ckpts=3", "train_dataloader.batch_size=2",
              "model.backbone.arch._delete_=True", f"model.backbone.arch.embed_dims={dims}",
              "model.backbone.arch.depths=[1,1,1,1]", f"model.decode_head.in_channels={dims}",
              "model.decode_head.channels=16", "model.auxiliary_head.in_channels=32",
              "model.auxiliary_head.channels=8"]
    first = _run_train(common + ["train_cfg.max_iters=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    data = (work_dir / "iter_4.pth").read_bytes()
    (work_dir / "iter_4.pth").write_bytes(data[: len(data) // 3])      # as a non-atomic writer would leave it
    second = _run_train(common + ["train_cfg.max_iters=6", "--resume"])
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "skipped" in log and "iter_4.pth" in log and "truncated" in log
    assert "resumed epoch: 0, iter: 2" in log
    assert ck.checkpoint_problem(str(work_dir / "iter_6.pth")) is None


# ------------------------------------------------------------------------------------------ Detectron2

def _run_python(code, *flags, timeout=600):
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.detectron2
def test_detectron2_zoo_configs_without_pkg_resources():
    """setuptools >= 82 has no pkg_resources, which Detectron2's model_zoo module imports."""
    pytest.importorskip("detectron2")
    out = _run_python("""
        import sys
        sys.modules['pkg_resources'] = None          # import pkg_resources -> ImportError
        import rv_plugins.detectron2 as rd
        cfg = rd.get_cfg('configs/detectron2/panoptic_fpn_R_50_synthetic_hgru_crbp.yaml')
        print(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.ROI_MASK_HEAD.NAME)
        try:
            rd.config.zoo_config_file('COCO-PanopticSegmentation/nope.yaml')
        except FileNotFoundError as e:
            print('missing:', e)
        """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PanopticFPN HGRUMaskHead" in out.stdout
    assert "missing: _BASE_ detectron2://COCO-PanopticSegmentation/nope.yaml: no such file" in out.stdout


@pytest.mark.detectron2
@pytest.mark.parametrize("layout", ["as installed", "with a real _C"])
def test_detectron2_broken_C_file_is_not_real_ops(tmp_path, layout):
    """A ``_C`` file that does not load, found first where Detectron2 looks for its ops, is not taken for
    real ops: on v0.6 (no ``_C``, as installed here) and on a build with a working ``_C`` (Detectron2
    main from source: simulated by a package folder with an importable ``_C`` ahead of the installed
    one). The broken file goes *first* on ``detectron2.__path__`` so it shadows a real one."""
    pytest.importorskip("detectron2")
    import importlib.machinery
    import importlib.util
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")
    real = tmp_path / "real"
    real.mkdir()
    (real / "_C.py").write_text("def get_compiler_version():\n    return 'simulated'\n")
    folders = [str(real)] if layout == "with a real _C" else []
    probe = f"""
        import logging, sys
        logging.basicConfig()
        import detectron2
        detectron2.__path__[:0] = {folders!r}   # the simulated build's own _C, ahead of the installed package
        BROKEN
        import rv_plugins.detectron2 as rd
        from rv_plugins.detectron2.compat import STAND_IN_FLAG
        print('real' if rd.has_compiled_ops() else 'not real',
              getattr(sys.modules.get('detectron2._C'), STAND_IN_FLAG, False))
        """
    if folders:  # the simulation works: its _C is found before the installed package's and imports
        import detectron2
        spec = importlib.machinery.PathFinder.find_spec("detectron2._C", folders + list(detectron2.__path__))
        assert spec.origin == str(real / "_C.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.get_compiler_version() == "simulated"
    out = _run_python(probe.replace("BROKEN", f"detectron2.__path__.insert(0, {str(broken)!r})"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:2] == ["not", "real"]
    assert "exists but does not import" in out.stderr


@pytest.mark.detectron2
def test_detectron2_event_storage_check_under_python_O():
    pytest.importorskip("detectron2")
    out = _run_python("""
        import rv_plugins.detectron2.mask_head as mh
        from detectron2.utils.events import EventStorage
        assert mh._active_storage() is None
        with EventStorage(0) as storage:
            assert mh._active_storage() is storage
        assert mh._active_storage() is None
        print('ok')
        """, "-O")
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.detectron2
def test_panoptic_evaluation_of_a_split_without_things():
    pytest.importorskip("detectron2")
    evaluation = pytest.importorskip("panopticapi.evaluation")
    from rv_plugins.detectron2.datasets import PanopticEvaluator, _empty_groups_are_nan

    original = evaluation.PQStat.pq_average
    stat = evaluation.PQStat()
    stat[1].tp, stat[1].iou = 2, 1.6                   # a stuff class, matched twice
    categories = {1: {"isthing": 0}, 2: {"isthing": 1}}  # a thing class that never occurs
    with pytest.raises(ZeroDivisionError):
        stat.pq_average(categories, isthing=True)      # what panopticapi does on its own
    with _empty_groups_are_nan("synth_val"):
        things, _ = stat.pq_average(categories, isthing=True)
        stuff, _ = stat.pq_average(categories, isthing=False)
    assert things["n"] == 0 and torch.isnan(torch.tensor(things["pq"]))
    assert stuff["n"] == 1 and stuff["pq"] == pytest.approx(0.8)
    assert evaluation.PQStat.pq_average is original   # restored after the evaluation

    # tools/train_net.py evaluates panoptic datasets with it
    from detectron2.data import MetadataCatalog
    from tool_loader import load_tool
    MetadataCatalog.get("rv_test_pan_no_things").set(
        evaluator_type="coco_panoptic_seg", panoptic_root="/nonexistent", panoptic_json="/nonexistent.json",
        thing_dataset_id_to_contiguous_id={}, stuff_dataset_id_to_contiguous_id={1: 0})
    train_net = load_tool("train_net")
    cfg = train_net.get_cfg()
    cfg.MODEL.MASK_ON = False
    assert isinstance(train_net.Trainer.build_evaluator(cfg, "rv_test_pan_no_things", "/tmp"),
                      PanopticEvaluator)
