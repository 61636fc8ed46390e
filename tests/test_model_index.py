"""mmpretrain's own entry points on our models: the model index (``list_models`` / ``get_model`` by name, its
figures) and ``inference_model`` by name, config path and model object."""
import os
import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("mmpretrain")

import rv_plugins.mmpretrain  # noqa: E402,F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    """mmpretrain's inferencers build their pipelines in the current default scope; other test modules leave
    mmseg's set (a process that uses both toolkits has to choose, as here)."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope("mmpretrain"):
        yield


def _write_image(path, height, width):
    import cv2
    img = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


def tiny_visiongru():
    """get_model keyword arguments for a VisionGRU-Ti config shrunk to 4 blocks of width 8..64 (a fresh dict:
    mmengine's merge consumes ``_delete_``)."""
    return dict(backbone=dict(arch=dict(_delete_=True, embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])),
                head=dict(in_channels=64))


def test_list_models_knows_visiongru_and_sequencer2d():
    import mmpretrain
    from rv_plugins.mmpretrain.model_index import model_index_names, register_model_index
    assert mmpretrain.list_models("*gru*") == ["visiongru-b_8xb128_in1k", "visiongru-ti_8xb128_in1k"]
    assert mmpretrain.list_models("sequencer2d") == ["sequencer2d-l_8xb128_in1k", "sequencer2d-m_8xb192_in1k",
                                                     "sequencer2d-s_8xb256_in1k"]
    assert set(model_index_names()) <= set(mmpretrain.list_models(task="Image Classification"))
    assert register_model_index() == model_index_names()  # a second registration changes nothing
    assert "resnet18_8xb32_in1k" in mmpretrain.list_models("resnet18")  # mmpretrain's own index still there


def test_get_model_by_name_builds_the_config_randomly_initialised():
    import mmpretrain
    from mmpretrain.apis import ModelHub
    meta = ModelHub.get("visiongru-ti_8xb128_in1k")
    assert meta.weights is None and os.path.samefile(meta.config.filename, os.path.join(REPO, "configs",
                                                                                         "visiongru_ti_in1k.py"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mmpretrain.get_model("visiongru-ti_8xb128_in1k", pretrained=True, **tiny_visiongru())
    assert any("Unable to find pre-defined checkpoint" in str(w.message) for w in caught)
    assert type(model.backbone).__name__ == "VisionGRU" and model.backbone.embed_dims == [8, 16, 32, 64]
    assert model._metainfo.name == "visiongru-ti_8xb128_in1k"


@pytest.mark.parametrize("name, config", [("visiongru-ti_8xb128_in1k", "visiongru_ti_in1k.py"),
                                          ("sequencer2d-s_8xb256_in1k", "sequencer2d_s_in1k.py")])
def test_model_index_figures_are_the_models(name, config):
    import mmpretrain
    from mmpretrain.apis import ModelHub

    from rv_plugins.utils.flops import count_flops
    meta = ModelHub.get(name)
    model = mmpretrain.get_model(os.path.join(REPO, "configs", config))
    assert meta.metadata.parameters == sum(p.numel() for p in model.parameters())
    assert meta.metadata.flops == count_flops(model, (1, 3, 224, 224))["total"]


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [("visiongru-b_8xb128_in1k", "visiongru_b_in1k.py"),
                                          ("sequencer2d-m_8xb192_in1k", "sequencer2d_m_in1k.py"),
                                          ("sequencer2d-l_8xb128_in1k", "sequencer2d_l_in1k.py")])
def test_model_index_figures_of_the_larger_models(name, config):
    test_model_index_figures_are_the_models(name, config)


def test_inference_model_takes_a_name_a_config_path_and_a_model(tmp_path):
    import mmpretrain
    image = _write_image(tmp_path / "image.png", 48, 64)
    config = os.path.join(REPO, "configs", "visiongru_ti_in1k.py")
    torch.manual_seed(0)
    by_name = mmpretrain.get_model("visiongru-ti_8xb128_in1k", **tiny_visiongru())
    ckpt = str(tmp_path / "tiny.pth")
    torch.save(dict(state_dict=by_name.state_dict()), ckpt)
    from_config = mmpretrain.get_model(config, pretrained=ckpt, **tiny_visiongru())  # no model-hub metadata
    assert from_config._metainfo is None

    results = [mmpretrain.inference_model(by_name, image), mmpretrain.inference_model(from_config, image)]
    for result in results:
        assert 0 <= result["pred_label"] < 1000 and result["pred_scores"].shape == (1000,)
        assert isinstance(result["pred_class"], str)
    np.testing.assert_allclose(results[0]["pred_scores"], results[1]["pred_scores"], rtol=1e-5, atol=1e-7)

    for path in (os.path.join(REPO, "configs", "sequencer2d_s_in1k.py"), "rv_plugins::sequencer2d_s_in1k.py"):
        assert mmpretrain.inference_model(path, image, pretrained=False)["pred_scores"].shape == (1000,)
    by_index_name = mmpretrain.inference_model("sequencer2d-s_8xb256_in1k", image, pretrained=False)
    assert by_index_name["pred_scores"].shape == (1000,)


def test_inference_model_leaves_other_models_to_mmpretrain():
    import mmpretrain
    from mmengine.utils import get_installed_path

    from rv_plugins.mmpretrain.model_index import _task_of_ours
    resnet = os.path.join(get_installed_path("mmpretrain"), ".mim", "configs", "resnet", "resnet18_8xb32_in1k.py")
    assert _task_of_ours(resnet) is None
    with pytest.raises(ValueError, match="Failed to find model"):
        mmpretrain.inference_model(resnet, np.zeros((8, 8, 3), np.uint8))  # mmpretrain's own behaviour
    assert mmpretrain.inference_model is mmpretrain.apis.inference_model
    assert mmpretrain.inference_model.__wrapped__ is not mmpretrain.inference_model
