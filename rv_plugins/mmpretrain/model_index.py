"""Our classifiers in mmpretrain's own entry points: ``list_models``, ``get_model``, ``inference_model``.

Importing ``rv_plugins.mmpretrain`` calls both functions below:

* :func:`register_model_index` registers ``configs/model-index.yaml`` (OpenMMLab metafiles: VisionGRU-Ti/B,
  Sequencer2D-S/M/L) with mmpretrain's ``ModelHub``, so ``mmpretrain.list_models('*gru*')``,
  ``get_model('visiongru-ti_8xb128_in1k')`` and ``inference_model('<name>', img)`` know them. No weights are
  published for these entries: ``get_model(name)`` builds a randomly initialised model,
  ``pretrained='file.pth'`` loads a checkpoint.
* :func:`install_inference_model`: mmpretrain's ``inference_model`` takes the task from model-hub metadata, so
  for a config file path it raises "Failed to find model" and for a model built from a config (``get_model(path)``,
  ``init_model``) "No available inferencer". Wrapped, it answers those two cases itself when the classifier
  runs one of our backbones (the task is image classification: ``ImageClassificationInferencer``); every other
  call goes to mmpretrain's function unchanged. The wrapper replaces ``inference_model`` in ``mmpretrain``,
  ``mmpretrain.apis`` and ``mmpretrain.apis.model``: a reference taken before ``import rv_plugins.mmpretrain``
  (``from mmpretrain import inference_model`` earlier) stays mmpretrain's.
"""
import functools
import os
from inspect import signature
from os import PathLike
from typing import List, Optional

from mmengine.config import Config

from rv_plugins.backbones.registry import BACKBONES
from rv_plugins.openmmlab import scope
from rv_plugins.openmmlab.scope import configs_dir

__all__ = ["MODEL_INDEX", "register_model_index", "install_inference_model", "model_index_names"]

MODEL_INDEX = "model-index.yaml"  # in the configs folder (the repository's configs/ or the installed .mim/configs)
CLASSIFICATION = "Image Classification"


def _index_path() -> str:
    return os.path.join(configs_dir(), MODEL_INDEX)


def model_index_names() -> List[str]:
    """The model names of our index, lower case as ``ModelHub`` keys them."""
    from modelindex.load_model_index import load
    index = load(_index_path())
    index.build_models_with_collections()
    return [m.name.lower() for m in index.models]


def register_model_index() -> List[str]:
    """Register our model index with mmpretrain's ``ModelHub`` (once per process); returns our model names."""
    from mmpretrain.apis.model import ModelHub
    names = model_index_names()
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(_index_path(), config_prefix=configs_dir())
    return names


def _runs_our_backbone(backbone_type) -> bool:
    ours = {entry.class_name for entry in BACKBONES.entries()}
    name = backbone_type if isinstance(backbone_type, str) else getattr(backbone_type, "__name__", "")
    return name.split(".")[-1] in ours


def _task_of_ours(model) -> Optional[str]:
    """``'Image Classification'`` for a classifier (object, config file or ``Config``) that runs one of our
    backbones and that mmpretrain's ``inference_model`` cannot place; ``None`` otherwise."""
    from mmengine.model import BaseModel
    if isinstance(model, BaseModel):
        if getattr(model, "_metainfo", None) is not None:
            return None  # built from the model hub: mmpretrain knows its task
        from mmpretrain.models import ImageClassifier
        ours = isinstance(model, ImageClassifier) and _runs_our_backbone(type(getattr(model, "backbone", None)))
        return CLASSIFICATION if ours else None
    if isinstance(model, (str, PathLike)) and str(model).endswith(".py") and (
            os.path.isfile(model) or str(model).startswith(scope.PREFIX)):
        model = Config.fromfile(model)  # a file, or one of ours as 'rv_plugins::<config>.py'
    if isinstance(model, Config):
        spec = model.get("model", {})
        kind = str(spec.get("type", "")).split(".")[-1]
        ours = kind == "ImageClassifier" and _runs_our_backbone(spec.get("backbone", {}).get("type", ""))
        return CLASSIFICATION if ours else None
    return None


def install_inference_model() -> None:
    """Wrap mmpretrain's ``inference_model`` (see the module docstring); calling this again changes nothing."""
    import mmpretrain
    import mmpretrain.apis
    import mmpretrain.apis.model as hub
    original = hub.inference_model
    if getattr(original, "_rv_plugins_wrapper", False):
        return

    @functools.wraps(original)
    def inference_model(model, *args, **kwargs):
        if _task_of_ours(model) is None:
            return original(model, *args, **kwargs)
        from mmpretrain.apis import ImageClassificationInferencer
        accepted = signature(ImageClassificationInferencer).parameters
        init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted}
        return ImageClassificationInferencer(model, **init_kwargs)(*args, **kwargs)[0]

    inference_model._rv_plugins_wrapper = True
    for namespace in (hub, mmpretrain.apis, mmpretrain):
        namespace.inference_model = inference_model
