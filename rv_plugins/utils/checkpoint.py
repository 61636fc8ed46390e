"""One checkpoint loader for every entry point (plain classes, mm adapters, Detectron2 backbones).

:func:`load_pretrained` reads a checkpoint (local file, URL, or an in-memory state dict), finds the
model's tensors in it (strips ``module.`` / ``_orig_mod.`` and, when it fits, ``backbone.`` or a given
prefix; unpacks ``state_dict`` / ``model`` containers), bicubic-resizes positional embeddings to the
model's grid (as the models' ``forward`` does), loads, and reports in one line how many tensors were
loaded, resized, missing, unexpected and shape-mismatched, and whether the checkpoint's weights record
(:mod:`rv_plugins.utils.weights_record`: the preset and the like) was checked. It raises when none of
the model's tensors matched, so a wrong file, arch or prefix never passes as "loaded"; and, unless
``partial=True`` asks for it, when most of the model is not in the checkpoint (fewer than half of its
tensors, or of its values, loaded) or the checkpoint's record says its weights mean something else
here (e.g. VisionGRU 'paper' weights in a 'released' model).

:func:`read_checkpoint` turns torch's errors for empty, truncated and non-checkpoint files into ones
that name the problem. :func:`allow_mmengine_checkpoints` makes mmengine's own checkpoints (which
pickle the message hub: ``HistoryBuffer``, numpy arrays and ``getattr(HistoryBuffer, 'min')``-style
references to its statistics methods) loadable under torch >= 2.6's ``weights_only=True`` default,
with the narrowest allow-list that works: the classes themselves and, in place of ``builtins.getattr``,
a function that only resolves ``HistoryBuffer``'s statistics methods. The mm adapters call it on import.
"""
import logging
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.utils.weights_record import RecordsWeights, record_mismatch, records_in

__all__ = ["LoadReport", "read_checkpoint", "extract_state_dict", "load_pretrained",
           "allow_mmengine_checkpoints", "mmengine_checkpoint_globals", "resize_pos_embed",
           "is_pretrained_cfg", "check_pretrained_cfg"]

logger = logging.getLogger("rv_plugins")

KNOWN_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")


# --------------------------------------------------------------------------- torch >= 2.6 allow-list
_ALLOWED = False


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while weights-only unpickling: resolves only
    ``HistoryBuffer.<statistics method>`` (mmengine pickles its ``_statistics_methods`` that way)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and isinstance(name, str) and not name.startswith("_") \
            and callable(getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({owner!r}, {name!r}); rv_plugins allows getattr only "
                       "for mmengine HistoryBuffer's statistics methods")


def mmengine_checkpoint_globals() -> list:
    """What an mmengine 0.10.7 checkpoint pickles besides tensors and builtins: the message hub's
    ``HistoryBuffer``, numpy arrays/scalars/dtypes (data only), and the restricted ``getattr``."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    dtypes = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
              "uint8", "uint16", "uint32", "uint64", "bool")
    found = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    found += [type(np.dtype(t)) for t in dtypes]
    # pickle protocol 2 writes builtins as __builtin__; torch maps both spellings to one full path
    found += [(_history_buffer_statistic, "builtins.getattr"), (_history_buffer_statistic, "__builtin__.getattr")]
    if hasattr(np, "_core"):  # numpy 2 checkpoints name numpy._core, numpy 1 ones numpy.core
        found.append((multiarray._reconstruct, "numpy.core.multiarray._reconstruct"))
        found.append((multiarray.scalar, "numpy.core.multiarray.scalar"))
    return found


def allow_mmengine_checkpoints() -> bool:
    """Register :func:`mmengine_checkpoint_globals` with torch's weights-only unpickler (once per
    process). Returns False when there is nothing to do (torch < 2.4 or mmengine not installed)."""
    global _ALLOWED
    if _ALLOWED:
        return True
    if not hasattr(torch.serialization, "add_safe_globals"):
        return False
    try:
        items = mmengine_checkpoint_globals()
    except ImportError:
        return False
    torch.serialization.add_safe_globals(items)
    _ALLOWED = True
    return True


# --------------------------------------------------------------------------- reading
def _is_url(path: str) -> bool:
    return "://" in path


def read_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """``torch.load`` a checkpoint (weights-only) with errors that say what is wrong with the file.

    Local paths are read here; URLs (``http(s)://``, ``open-mmlab://``, ...) through mmengine's
    ``CheckpointLoader`` when installed, else ``torch.hub``. Returns the loaded dict.
    """
    if "mmengine" in sys.modules or _is_url(path):
        allow_mmengine_checkpoints()
    if _is_url(path):
        try:
            from mmengine.runner.checkpoint import CheckpointLoader
            obj = CheckpointLoader.load_checkpoint(path, map_location=map_location)
        except ImportError:
            obj = torch.hub.load_state_dict_from_url(path, map_location=map_location, weights_only=True)
        return _check_loaded(obj, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; check the path (relative paths are "
                                f"read from {os.getcwd()!r})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a folder; name the .pth file inside it")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes): the save or download was interrupted; "
                         "save or download it again")
    try:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:  # an mmengine checkpoint read before any adapter was imported
            if _ALLOWED or "mmengine" not in str(err) or not allow_mmengine_checkpoints():
                raise
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path!r} ({size} bytes) is not a complete PyTorch checkpoint: it is "
                         f"truncated or was not written by torch.save ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'end of file'}); save or download "
                         "it again") from err
    except Exception as err:  # pickle.UnpicklingError and friends
        text = str(err)
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsupported or "allowlisted" in text or "Unsupported class" in text:
            what = f"the Python object {unsupported.group(1)}" if unsupported else "Python objects"
            raise ValueError(
                f"checkpoint {path!r} pickles {what}, which torch's safe (weights_only) loading refuses. "
                "A whole pickled model (torch.save(model)) must be re-saved as model.state_dict(); other "
                "objects: if you trust the file, load it yourself with torch.load(path, weights_only=False) "
                "and pass the state dict (a dict of tensors) instead of the path") from err
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        detail = detail.group(1).strip() if detail else (text.splitlines()[0] if text else "")
        raise ValueError(f"{path!r} ({size} bytes) is not a PyTorch checkpoint ({type(err).__name__}: "
                         f"{detail}); expected a file written by torch.save (an HTML error page or a "
                         "partial download looks like this)") from err
    return _check_loaded(obj, path)


def _check_loaded(obj, source: str) -> dict:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, torch.Tensor):
        raise ValueError(f"checkpoint {source!r} holds a single Tensor of shape {tuple(obj.shape)}, not a "
                         "state dict; save a dict of tensors (model.state_dict())")
    raise ValueError(f"checkpoint {source!r} holds a {type(obj).__name__}, not a state dict; save a dict "
                     "of tensors (model.state_dict())")


def _state_container(ckpt: Mapping) -> Mapping:
    """The mapping that holds the tensors: ``ckpt`` or its ``state_dict`` / ``model`` / ... entry."""
    state = ckpt
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = inner
    return state


def _strip_wrappers(key: str) -> str:
    """A key without the ``module.`` / ``_orig_mod.`` prefixes of DDP and torch.compile wrappers."""
    changed = True
    while changed:
        changed = False
        for p in KNOWN_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
        key = key.replace("._orig_mod.", ".")
    return key


def extract_state_dict(ckpt: Mapping, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Unpack ``{'state_dict': ...}`` / ``{'model': ...}`` containers -> ``{name: tensor}``
    (``module.`` / ``_orig_mod.`` wrapper prefixes stripped; non-tensor entries dropped)."""
    state = _state_container(ckpt)
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and isinstance(key, str):
            tensors[_strip_wrappers(key)] = value
    if not tensors:
        raise ValueError(f"{source} holds no tensors (top-level keys: {sorted(map(str, ckpt))[:8]}); "
                         "expected a state dict or a dict with one under 'state_dict' or 'model'")
    return tensors


def _select_prefix(state: Dict[str, torch.Tensor], model_keys, prefix: Optional[str],
                   source: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Keep the keys under ``prefix`` (stripped). ``prefix=None``: ``backbone.`` or
    ``backbone.bottom_up.body.`` when that matches more of the model's keys than the keys as they are.
    A given prefix that no key has is an error unless
    the keys match the model without it (e.g. ``prefix='backbone.'`` on a plain backbone checkpoint)."""
    def under(p):
        return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}

    def hits(d):
        return sum(k in model_keys for k in d)

    if prefix:
        p = prefix if prefix.endswith(".") else prefix + "."
        sub = under(p)
        if sub:
            return sub, p
        if hits(state):
            return state, ""
        raise ValueError(f"no key of {source} starts with prefix {p!r} (its keys begin "
                         f"{sorted(state)[:4]}); fix init_cfg's prefix, or leave it out to detect it")
    best, best_prefix = state, ""
    for p in ("backbone.", "backbone.bottom_up.body."):  # mm models; Detectron2's FPN around our body
        sub = under(p)
        if sub and hits(sub) > hits(best):
            best, best_prefix = sub, p
    return best, best_prefix


def resize_pos_embed(pe: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(1, C, h, w)`` -> ``(1, C, *size)``, bicubic, ``align_corners=False`` (as the models' forward)."""
    return F.interpolate(pe.float(), size=tuple(size), mode="bicubic", align_corners=False).to(pe.dtype)


# --------------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; ``str(report)`` is the one-line summary."""
    source: str
    prefix: str
    loaded: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)
    total: int = 0
    record: str = ""  # what the weights-record check found (see rv_plugins.utils.weights_record)

    def __str__(self) -> str:
        def few(names):
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        pre = f", prefix {self.prefix!r}" if self.prefix else ""
        return (f"loaded {len(self.loaded)}/{self.total} tensors from {self.source}{pre}: "
                f"resized {len(self.resized)}{few(self.resized)}, missing {len(self.missing)}{few(self.missing)}, "
                f"unexpected {len(self.unexpected)}{few(self.unexpected)}, "
                f"shape-mismatched {len(self.mismatched)}{few(self.mismatched)}"
                + (f"; {self.record}" if self.record else ""))


def _log(msg: str, warn: bool) -> None:
    level = logging.WARNING if warn else logging.INFO
    if "mmengine" in sys.modules:
        try:
            from mmengine.logging import print_log
            print_log(msg, logger="current", level=level)
            return
        except Exception:  # noqa: BLE001 - logging must never break loading
            pass
    logger.log(level, msg)


def load_pretrained(model: nn.Module, checkpoint: Union[str, Mapping], prefix: Optional[str] = None,
                    map_location: Union[str, torch.device] = "cpu", strict: bool = False,
                    name: Optional[str] = None, partial: bool = False) -> LoadReport:
    """Load ``checkpoint`` (path, URL, or a checkpoint/state dict) into ``model``.

    Positional embeddings (``*pos_embed`` of shape ``(1, C, h, w)``) of another grid are resized
    bicubically; other tensors of another shape are skipped and reported. Raises ``ValueError`` when
    no tensor of the model matched; with ``strict=True``, when anything is missing, unexpected or
    mismatched; and, unless ``partial=True``, when fewer than half of the model's tensors (or of its
    values) load, or when the checkpoint's weights record differs from the model's (see
    :mod:`rv_plugins.utils.weights_record`). ``partial=True`` is the explicit request to load whatever
    fits, e.g. to start a changed model from these weights. Logs one line (warning level when
    something is missing or mismatched, or when a record differed).
    """
    if strict and partial:
        raise ValueError("load_pretrained: strict=True asks for every tensor, partial=True for whatever fits; "
                         "pass one of them")
    name = name or type(model).__name__
    source = checkpoint if isinstance(checkpoint, str) else "the given state dict"
    ckpt = read_checkpoint(checkpoint, map_location) if isinstance(checkpoint, str) else checkpoint
    state = extract_state_dict(ckpt, source)
    own = model.state_dict()
    state, used_prefix = _select_prefix(state, set(own), prefix, source)
    report = LoadReport(source=source, prefix=used_prefix, total=len(own))
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            if key.endswith("pos_embed") and value.dim() == 4 and target.dim() == 4 \
                    and value.shape[:2] == target.shape[:2]:
                value = resize_pos_embed(value, target.shape[2:])
                report.resized.append(key)
            else:
                report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(target.shape)}")
                continue
        to_load[key] = value
        report.loaded.append(key)
    report.missing = [k for k in own if k not in to_load]
    if not report.loaded:
        raise ValueError(
            f"{name}: none of its {len(own)} tensors found in {source} (checkpoint keys begin "
            f"{sorted(state)[:4]}, the model's {sorted(own)[:4]}; {len(report.mismatched)} matched by "
            "name but not shape). Wrong arch or file? Authors' VisionGRU weights: convert them with "
            "tools/convert_visiongru_checkpoint.py; a prefix: set init_cfg's prefix (e.g. 'backbone.')")
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ValueError(f"{name}: strict load failed: {report}")
    differs = _check_records(model, _state_container(ckpt), used_prefix, name, source, partial, report)
    if not partial:
        _refuse_mostly_unmatched(own, report, name, source)
    model.load_state_dict(to_load, strict=False)
    _log(f"{name}: {report}", warn=bool(report.missing or report.mismatched or differs))
    return report


_PARTIAL_HINT = ("to load what fits on purpose (e.g. to start a changed model from these weights), pass "
                 "partial=True (init_cfg: dict(type='Pretrained', checkpoint=..., partial=True))")


def _check_records(model: nn.Module, container: Mapping, used_prefix: str, name: str, source: str,
                   partial: bool, report: LoadReport) -> bool:
    """Compare the checkpoint's weights records with the model's; fill ``report.record``. Raises on a
    difference unless ``partial``; returns whether one was found."""
    recording = [(path, m) for path, m in model.named_modules() if isinstance(m, RecordsWeights)]
    if not recording:
        return False
    saved = records_in(container, _strip_wrappers)
    root = used_prefix[:-1] if used_prefix.endswith(".") else used_prefix
    problems, checked = [], 0
    for path, module in recording:
        record = saved.get(".".join(p for p in (root, path) if p))
        if record is not None:
            checked += 1
            problem = record_mismatch(module, record, where=f"{name}.{path}" if path else name)
            if problem:
                problems.append(problem)
    if problems and not partial:
        raise ValueError(f"{'; '.join(problems)}. Build the model with the checkpoint's settings; {_PARTIAL_HINT}")
    if problems:
        report.record = f"weights record differs, loaded anyway (partial=True): {'; '.join(problems)}"
    elif checked:
        report.record = "weights record checked: settings match"
    else:
        report.record = (f"no weights record in {source}: its settings (e.g. a VisionGRU preset) could not be "
                         "checked")
    return bool(problems)


def _refuse_mostly_unmatched(own: Mapping[str, torch.Tensor], report: LoadReport, name: str, source: str) -> None:
    """Raise when fewer than half of the model's tensors, or of its values, were found."""
    values = sum(t.numel() for t in own.values())
    loaded_values = sum(own[k].numel() for k in report.loaded)
    if 2 * len(report.loaded) >= len(own) and 2 * loaded_values >= values:
        return
    raise ValueError(
        f"{name}: only {len(report.loaded)} of its {len(own)} tensors ({100.0 * loaded_values / max(values, 1):.1f}% "
        f"of its values) were found in {source} ({report}): these are not this model's weights (another arch, "
        f"preset or model?); {_PARTIAL_HINT}")


# --------------------------------------------------------------------------- init_cfg
def is_pretrained_cfg(cfg) -> bool:
    return isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained"


def check_pretrained_cfg(cfg, owner: str) -> None:
    """A plain class's ``init_cfg``: ``None`` or ``dict(type='Pretrained', checkpoint=..., prefix=...,
    map_location=..., partial=...)``."""
    if cfg is None:
        return
    if not is_pretrained_cfg(cfg) or not cfg.get("checkpoint"):
        raise ValueError(f"{owner}: init_cfg={cfg!r}: the plain class honours only "
                         "dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=OPTIONAL); other "
                         "initialisers (e.g. TruncNormal) need the mmseg/mmpretrain adapters")
    unknown = set(cfg) - {"type", "checkpoint", "prefix", "map_location", "partial"}
    if unknown:
        raise ValueError(f"{owner}: init_cfg has unknown keys {sorted(unknown)}; use type, checkpoint, "
                         "prefix, map_location, partial")
    if not isinstance(cfg.get("partial", False), bool):
        raise ValueError(f"{owner}: init_cfg partial={cfg['partial']!r}; use True (load whatever fits) or False")

