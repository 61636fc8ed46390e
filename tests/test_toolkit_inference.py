"""mmseg's own entry points on our models, as a new user calls them: every shipped config works with
``MMSegInferencer(model=CONFIG, weights=CKPT)`` and ``mmseg.apis.inference_model(init_model(CONFIG, CKPT),
'image.png')``; the procedural configs' test sets still render their samples."""
import glob
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("mmseg")

import rv_plugins.mmseg  # noqa: E402,F401
from rv_plugins.openmmlab import runner as mr  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_CONFIGS = [p for p in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))
               if not p.endswith("_base.py") and mr.load_config(p).default_scope == "mmseg"]
SMALL = ("_synthetic", "pathfinder")  # the rest run ADE20K's 512-px test pipeline: slow on a CPU


def _write_image(path, height=40, width=56):
    import cv2
    img = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


def _checkpoint(config, path):
    """A checkpoint as mmengine's runner writes it (weights + the dataset's metainfo) of a fresh model."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS
    cfg = mr.load_config(config)
    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    meta = dict(dataset_meta=dict(DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO))
    if "_synthetic" in config or "pathfinder" in config:  # procedural: the classes the config asks for
        meta["dataset_meta"] = dict(DATASETS.build(dict(cfg.test_dataloader.dataset, num_samples=1)).metainfo)
    torch.save(dict(state_dict=model.state_dict(), meta=meta), str(path))
    return str(path)


@pytest.mark.parametrize("config", [pytest.param(p, marks=() if any(s in p for s in SMALL) else pytest.mark.slow)
                                    for p in SEG_CONFIGS], ids=[os.path.relpath(p, REPO) for p in SEG_CONFIGS])
def test_mmseg_inferencer_and_inference_model_take_every_config(config, tmp_path):
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    ckpt, image = _checkpoint(config, tmp_path / "ckpt.pth"), _write_image(tmp_path / "image.png")
    inferencer = MMSegInferencer(model=config, weights=ckpt, device="cpu")
    result = inferencer(image, out_dir=str(tmp_path / "out"), return_datasamples=True)
    assert result.pred_sem_seg.data.shape == (1, 40, 56)
    assert os.listdir(tmp_path / "out" / "vis")  # the visualisation was drawn and written

    model = init_model(config, ckpt, device="cpu")
    sample = inference_model(model, image)
    num_classes = len(model.dataset_meta["classes"])
    assert sample.pred_sem_seg.data.shape == (1, 40, 56) and sample.seg_logits.data.shape[0] == num_classes
    # both entry points ran the same weights on the same pixels
    torch.testing.assert_close(sample.seg_logits.data, result.seg_logits.data)


@pytest.mark.parametrize("config", [p for p in SEG_CONFIGS if any(s in p for s in SMALL)],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_procedural_test_sets_still_render_their_samples(config):
    """The test pipeline reads image files, yet the procedural test set renders what validation renders."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope("mmseg")
    cfg = mr.load_config(config)
    test = dict(cfg.test_dataloader.dataset, num_samples=2)
    assert [t["type"] for t in test["pipeline"]][0] == "LoadImageFromFile" == cfg.test_pipeline[0]["type"]
    rendered = DATASETS.build(test)
    val_pipeline = cfg.val_dataloader.dataset.pipeline
    reference = DATASETS.build(dict(test, pipeline=val_pipeline))
    assert [t["type"] for t in val_pipeline][0].startswith("Load") and len(val_pipeline) == 2
    for i in range(2):
        a, b = rendered[i], reference[i]
        assert torch.equal(a["inputs"], b["inputs"])
        assert torch.equal(a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data)


def test_procedural_dataset_without_a_loader_names_the_fix():
    from rv_plugins.mmseg.datasets import ProceduralSegDataset

    class NoLoader(ProceduralSegDataset):
        SPEC_KEY = "x"

        def sample_spec(self, index):
            return {}

        def sample_path(self, index):
            return f"{index}.png"

    with pytest.raises(TypeError, match="needs the dataset's LOADER"):
        NoLoader(num_samples=1, pipeline=[dict(type="LoadImageFromFile")])


def test_recurrent_segmentor_refuses_a_pretrained_path():
    from rv_plugins.mmseg.segmentors import RecurrentSegmentor
    with pytest.raises(ValueError, match="pretrained='x.pth' is not supported.*load_from"):
        RecurrentSegmentor(backbone=dict(type="PathfinderHGRU"), pretrained="x.pth")
