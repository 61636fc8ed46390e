"""What a model's weights mean, written into every checkpoint of it and checked when one is loaded.

Some settings change what the same tensors compute without changing a state-dict key or shape
(VisionGRU's preset: the minGRU candidate through ``g`` or linear; an hGRU's BatchNorm or GroupNorm;
an input scale). A model that mixes in :class:`RecordsWeights` states them in :meth:`weights_record`;
a state-dict hook writes that record into the state dict's metadata (``state_dict._metadata[path]``,
next to torch's ``version``), which ``torch.save`` keeps, and so do mmengine 0.10.7's checkpoints
(``get_state_dict`` runs the hooks, ``weights_to_cpu`` keeps ``_metadata``) and Detectron2's
``Checkpointer`` (``model.state_dict()``). State-dict keys do not change.

On load the record is compared with the model's own: a setting that differs raises ``ValueError``
naming both values, in every loader (``load_state_dict`` of torch, mmengine's ``load_checkpoint`` and
resume, Detectron2's ``Checkpointer``: they all call ``_load_from_state_dict`` with the metadata);
:func:`rv_plugins.utils.checkpoint.load_pretrained` checks it too and, with ``partial=True``, loads
anyway and says so. Fields in ``weights_record_informative`` (e.g. the arch, the preset's name) are
shown but not compared: the tensors' names and shapes already tell an arch apart. A checkpoint
without a record (older files, other code) loads as before: nothing to check.
"""
import numbers
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

__all__ = ["RECORD_KEY", "RecordsWeights", "records_in", "record_mismatch", "plain"]

RECORD_KEY = "rv_plugins"  # the key of the record in a module's metadata entry


def plain(value: Any) -> Any:
    """``value`` as plain Python data (lists, dicts of str, str, bool, int, float, None): what a record
    holds, so that a checkpoint stays loadable with ``torch.load(weights_only=True)``."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return repr(value)


def _write_record(module: nn.Module, state_dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: put the module's record into its metadata entry."""
    local_metadata[RECORD_KEY] = dict(model=type(module).__name__, **plain(module.weights_record()))


def _describe(record: Mapping) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in record.items() if k not in ("model", "arch"))
    return f"{record.get('model', '?')}({fields})"


def record_mismatch(module: nn.Module, saved: Optional[Mapping], where: str = "") -> Optional[str]:
    """The differences between a checkpoint's ``saved`` record and ``module``'s own, as a sentence, or
    None when they agree on every compared field (or there is nothing to compare)."""
    if not isinstance(saved, Mapping) or not isinstance(module, RecordsWeights):
        return None
    own = dict(model=type(module).__name__, **plain(module.weights_record()))
    if saved.get("model") not in {cls.__name__ for cls in type(module).__mro__}:
        return None  # written by another model (its keys will not fit) or by a subclass we cannot judge
    skip = set(module.weights_record_informative) | {"model"}
    differ = [f"{k} {saved[k]!r} vs {own[k]!r}" for k in own if k not in skip and k in saved and saved[k] != own[k]]
    if not differ:
        return None
    return (f"{where or own['model']}: the checkpoint's weights were written by {_describe(saved)} and this "
            f"model is {_describe(own)} ({'; '.join(differ)}, checkpoint vs model): the same tensors would "
            "compute something else here")


class RecordsWeights:
    """Mixin for an ``nn.Module`` (put it before ``nn.Module`` in the bases): writes
    :meth:`weights_record` into every state dict of the module and refuses a state dict whose record
    differs. Subclasses override :meth:`weights_record` and may set ``weights_record_informative``."""

    weights_record_informative: Tuple[str, ...] = ("arch",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_state_dict_post_hook(_write_record)

    def weights_record(self) -> Dict[str, Any]:
        """The settings that give this model's weights their meaning but that the state-dict keys and
        shapes do not show (plain data). Default: none."""
        return {}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        problem = record_mismatch(self, local_metadata.get(RECORD_KEY), where=prefix[:-1] or None)
        if problem:
            raise ValueError(f"{problem}. Build the model with the checkpoint's settings; to start from these "
                             "weights on purpose, load them with rv_plugins.utils.checkpoint.load_pretrained("
                             "model, checkpoint, partial=True) (init_cfg: partial=True), or delete the record "
                             f"(del state_dict._metadata[{prefix[:-1]!r}][{RECORD_KEY!r}])")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def records_in(state_dict, normalise: Callable[[str], str] = lambda key: key) -> Dict[str, Mapping]:
    """``{module path: record}`` of a state dict's metadata (``{}`` without metadata). ``normalise`` maps
    a tensor key to the model's (e.g. strips wrapper prefixes); it is applied to ``path + '.'`` so that
    the paths follow the keys (the root is ``''``)."""
    metadata = getattr(state_dict, "_metadata", None)
    if not isinstance(metadata, Mapping):
        return {}
    found = {}
    for path, entry in metadata.items():
        if isinstance(path, str) and isinstance(entry, Mapping) and isinstance(entry.get(RECORD_KEY), Mapping):
            key = normalise(f"{path}.") if path else ""
            found[key[:-1] if key.endswith(".") else key] = entry[RECORD_KEY]
    return found
