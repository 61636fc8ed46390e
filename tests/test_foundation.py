"""The environment and the package glue: toolkits import, adapters register, configs resolve."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, env_extra=None, cwd=None):
    """Run ``code`` in a fresh interpreter (start-up hooks and import-time behaviour included)."""
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)


def test_toolkits_import_and_mmcv_ops_are_compiled():
    import mmcv
    import mmengine
    import mmpretrain
    import mmseg
    from mmcv.utils import ext_loader

    assert (mmcv.__version__, mmengine.__version__) == ("2.1.0", "0.10.7")
    assert (mmseg.__version__, mmpretrain.__version__) == ("1.2.2", "1.2.0")
    ext = ext_loader.load_ext("_ext", ["nms", "roi_align_forward"])
    assert callable(ext.nms)
    import torch
    from mmcv.ops import nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


@pytest.mark.detectron2
def test_detectron2_and_panopticapi_import():
    import detectron2
    from panopticapi.evaluation import pq_compute  # noqa: F401
    assert detectron2.__version__.startswith("0.6")


@pytest.mark.detectron2
def test_adapters_import_together():
    res = run_python("import rv_plugins.mmseg, rv_plugins.mmpretrain, rv_plugins.detectron2; print('ok')")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_rv_plugins_scope_from_a_config_outside_the_repo(tmp_path):
    """A downstream project inherits our config with the 'rv_plugins::' scope, in a fresh interpreter
    that has not imported rv_plugins (the .pth start-up hook must do the work)."""
    (tmp_path / "my_cfg.py").write_text(
        "_base_ = ['rv_plugins::upernet_visiongru_ti_synthetic.py']\n"
        "train_cfg = dict(max_iters=7)\n")
    res = run_python(f"""
        import sys
        from mmengine.config import Config
        assert 'rv_plugins.mmseg' not in sys.modules
        cfg = Config.fromfile({str(tmp_path / 'my_cfg.py')!r}, import_custom_modules=False)
        print(cfg.model.backbone.type, cfg.train_cfg.max_iters, cfg.custom_imports['imports'])
        """, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["VisionGRU", "7", "['rv_plugins.mmseg',", "'rv_plugins.openmmlab.prepared_runner']"]


def test_rv_plugins_scope_as_the_config_path_itself():
    """``Config.fromfile('rv_plugins::x.py')`` (what a toolkit's tools/train.py does with its config argument)
    in a fresh interpreter where only the .pth start-up hook has run."""
    res = run_python("""
        import sys
        from mmengine.config import Config
        cfg = Config.fromfile('rv_plugins::pathfinder/hgru_crbp_pathfinder32.py', import_custom_modules=False)
        print(cfg.filename.replace('\\\\', '/').split('/configs/')[-1], cfg.runner_type)
        """, cwd="/")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["pathfinder/hgru_crbp_pathfinder32.py", "PreparedRunner"]


def test_unknown_rv_plugins_config_names_the_available_ones(tmp_path):
    (tmp_path / "bad.py").write_text("_base_ = ['rv_plugins::no_such_config.py']\n")
    from mmengine.config import Config

    from rv_plugins.openmmlab import scope
    scope.patch_now()
    with pytest.raises(FileNotFoundError, match="no config 'no_such_config.py'.*upernet_visiongru_ti_ade20k.py"):
        Config.fromfile(str(tmp_path / "bad.py"))
    with pytest.raises(FileNotFoundError, match="no config 'nope.py'.*upernet_visiongru_ti_ade20k.py"):
        Config.fromfile("rv_plugins::nope.py")


@pytest.mark.parametrize("where", ["_base_", "config path"])
def test_misspelt_scope_names_the_known_scopes(tmp_path, where):
    from mmengine.config import Config

    from rv_plugins.openmmlab import scope
    scope.patch_now()
    path = "rv_plugin::upernet_visiongru_ti_synthetic.py"
    if where == "_base_":
        (tmp_path / "typo.py").write_text(f"_base_ = [{path!r}]\n")
        path = str(tmp_path / "typo.py")
    with pytest.raises(ValueError, match=r"unknown config scope 'rv_plugin::' in 'rv_plugin::upernet_visiongru_ti_"
                                         r"synthetic.py'; did you mean 'rv_plugins::'\? The known scopes are .*mmseg::"):
        Config.fromfile(path)


def test_syntax_error_in_a_base_file_names_the_file(tmp_path):
    from mmengine.config import Config

    from rv_plugins.openmmlab import scope
    scope.patch_now()
    (tmp_path / "base.py").write_text("a = 1\nb = dict(\n")
    (tmp_path / "child.py").write_text("_base_ = ['./base.py']\nc = 2\n")
    with pytest.raises(SyntaxError, match=r"in the config file \S*base\.py") as err:
        Config.fromfile(str(tmp_path / "child.py"))
    assert os.path.normpath(err.value.filename) == str(tmp_path / "base.py") and err.value.lineno == 2


def test_custom_imports_registers_the_adapter(tmp_path):
    (tmp_path / "cfg.py").write_text(
        "custom_imports = dict(imports=['rv_plugins.mmseg'], allow_failed_imports=False)\n")
    res = run_python(f"""
        from mmengine.config import Config
        Config.fromfile({str(tmp_path / 'cfg.py')!r})
        from mmseg.registry import MODELS, DATASETS
        print(MODELS.get('VisionGRU') is not None, DATASETS.get('SyntheticScenesDataset') is not None)
        """, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True"]


def test_mmseg_adapter_explains_mmcv_without_ops(tmp_path):
    """mmcv-lite (or mmcv built without MMCV_WITH_OPS) must give an error that says how to fix it."""
    fake = tmp_path / "mmcv"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.1.0'\n")
    res = run_python("import rv_plugins.mmseg", env_extra={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert res.returncode != 0
    assert "mmcv 2.1.0 has none (mmcv-lite, or built without MMCV_WITH_OPS=1)" in res.stderr
    assert "bash tools/setup_env.sh" in res.stderr


@pytest.mark.detectron2
def test_detectron2_stand_in_only_when_ops_are_missing():
    res = run_python("""
        import importlib.util, logging
        logging.basicConfig()
        real = importlib.util.find_spec('detectron2._C') is not None
        import rv_plugins.detectron2 as rd
        import detectron2._C as C
        assert rd.has_compiled_ops() == real
        if not real:
            try:
                C.deform_conv_forward(1, 2)
            except RuntimeError as err:
                assert 'not installed' in str(err) and 'deformable' in str(err)
            else:
                raise AssertionError('stand-in op did not raise')
        print('real' if real else 'stand-in')
        """)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "stand-in":
        assert res.stderr.count("detectron2._C (Detectron2's compiled C++/CUDA ops) is not installed") == 1


@pytest.mark.detectron2
def test_detectron2_real_ops_are_left_untouched():
    res = run_python("""
        import sys, types
        real = types.ModuleType('detectron2._C'); real.marker = 42
        sys.modules['detectron2._C'] = real
        import rv_plugins.detectron2 as rd
        assert sys.modules['detectron2._C'] is real and rd.has_compiled_ops()
        print('untouched')
        """)
    assert res.returncode == 0, res.stderr
    assert "untouched" in res.stdout and "Using a stand-in" not in res.stderr
