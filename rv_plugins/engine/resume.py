"""Which checkpoint a run resumes from: the newest one that is complete and loadable, every skip logged.

Toolkit-free (no mmengine, no Detectron2 import): the run preparation of the OpenMMLab tools
(:func:`rv_plugins.openmmlab.runner.prepare_run`), :class:`rv_plugins.engine.hooks.AtomicCheckpointHook`
and Detectron2's checkpointer (:mod:`rv_plugins.detectron2.checkpointer`) all choose with
:func:`find_resume_checkpoint`.

* :func:`checkpoint_problem`: why a file is not a usable torch checkpoint, or ``None``. It checks that
  the file is complete (missing, empty, truncated, a CRC mismatch in the zip archive) and that its
  pickle parses (garbage after a valid header is caught), and optionally that it holds the keys a
  resume needs (a weights-only file has no ``meta``). The pickle is parsed by a skeleton unpickler that
  builds plain containers and stands in for every class, function and tensor storage it names: it runs
  no code from the file and reads no tensor data.
* :class:`CheckpointNames`: how a toolkit names its checkpoints (:data:`MMENGINE_NAMES`:
  ``iter_<N>.pth`` / ``epoch_<N>.pth``; :data:`DETECTRON2_NAMES`: ``model_<N>.pth`` and
  ``model_final.pth``); both name the newest in ``<work_dir>/last_checkpoint``.
* :func:`find_resume_checkpoint`: the newest usable checkpoint of a work dir, with the files it skipped
  and why; ``None`` (and a log line) when there is nothing to resume; :class:`NoCompleteCheckpoint`
  when checkpoints exist but none is usable.
"""
import os
import os.path as osp
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["CheckpointNames", "MMENGINE_NAMES", "DETECTRON2_NAMES", "MMENGINE_RESUME_KEYS",
           "DETECTRON2_RESUME_KEYS", "checkpoint_problem", "read_last_checkpoint", "checkpoint_candidates",
           "out_dir_checkpoints", "find_resume_checkpoint", "NoCompleteCheckpoint"]

# What mmengine's Runner.resume reads from a checkpoint, and what Detectron2's DefaultTrainer resumes from
# (the model, and the iteration its "trainer" checkpointable restores).
MMENGINE_RESUME_KEYS = ("meta.epoch", "meta.iter", "state_dict", "message_hub")
DETECTRON2_RESUME_KEYS = ("model", "trainer.iteration")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch's pre-zip format


@dataclass(frozen=True)
class CheckpointNames:
    """File names of one toolkit's checkpoints: ``pattern`` has the step as its group 1; ``final`` names
    come after every numbered checkpoint (Detectron2's ``model_final.pth``)."""
    pattern: str
    final: Tuple[str, ...] = ()

    def step(self, path: str) -> Optional[float]:
        name = osp.basename(path)
        if name in self.final:
            return float("inf")
        m = re.match(self.pattern, name)
        return float(m.group(1)) if m else None


MMENGINE_NAMES = CheckpointNames(r"^(?:iter|epoch)_(\d+)\.pth$")
DETECTRON2_NAMES = CheckpointNames(r"^model_(\d+)\.pth$", final=("model_final.pth",))


# ---------------------------------------------------------------------------------------------------
# checking one file

class _Opaque:
    """Stands in for every class, function and storage a checkpoint's pickle names; keeps nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _Dict(dict):
    """A dict that takes attributes (torch's state-dict OrderedDicts pickle a ``_metadata`` attribute)."""


_CONTAINERS = {("collections", "OrderedDict"): _Dict, ("builtins", "dict"): _Dict, ("builtins", "list"): list,
               ("builtins", "tuple"): tuple, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset}


class _SkeletonUnpickler(pickle.Unpickler):
    """Plain containers are built; everything else is an :class:`_Opaque` (nothing from the file runs)."""

    def find_class(self, module, name):
        return _CONTAINERS.get((module, name), _Opaque)

    def persistent_load(self, pid):
        return _Opaque()


def _skeleton(f) -> object:
    return _SkeletonUnpickler(f, encoding="utf-8").load()


def _read_structure(path: str, zipped: bool) -> object:
    """The checkpoint's top-level object, tensors and classes replaced by stand-ins."""
    if zipped:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("data.pkl"))
            with z.open(name) as f:
                return _skeleton(f)
    with open(path, "rb") as f:  # torch's legacy format: magic number, protocol, sys info, the object
        if _skeleton(f) != _TORCH_LEGACY_MAGIC:
            raise pickle.UnpicklingError("its first pickle is not torch's magic number")
        _skeleton(f)
        _skeleton(f)
        return _skeleton(f)


def _missing_key(obj, required: Sequence[str]) -> Optional[str]:
    for dotted in required:
        node, parts = obj, dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                return ".".join(parts[:i + 1])
            node = node[part]
    return None


def _structure_problem(obj, required: Sequence[str]) -> Optional[str]:
    missing = _missing_key(obj, required)
    if missing is None:
        return None
    if not isinstance(obj, dict):
        return f"not a training checkpoint: it holds a {type(obj).__name__}, not a dict with {missing!r}"
    keys = [str(k) for k in list(obj)[:6]]
    weights = bool(obj) and all(isinstance(v, _Opaque) for v in list(obj.values())[:50])
    kind = "a weights-only file (a state dict of tensors)" if weights else f"a dict with the keys {keys}"
    return (f"not a training checkpoint: it has no {missing!r}, it is {kind}; such a file can initialise a "
            f"run (load_from / MODEL.WEIGHTS), not resume one")


_CACHE: Dict[tuple, Optional[str]] = {}


def checkpoint_problem(path: str, required: Sequence[str] = ()) -> Optional[str]:
    """Why ``path`` is not a usable torch checkpoint, or ``None`` if it is.

    torch (>= 1.6) saves a zip archive; a kill during the write leaves a file without the archive's
    central directory (truncated), and disk or copy errors show as CRC mismatches: both are found by
    reading every member once. Then the pickle is parsed (see the module docstring), and each dotted
    key of ``required`` (e.g. ``"meta.iter"``) must be present. Files in torch's legacy (pre-zip)
    format get the pickle checks only (their tensor data has no checksum). Results are cached per
    (file, size, modification time).
    """
    if not osp.exists(path):
        return "the file does not exist"
    if not osp.isfile(path):
        return "not a regular file"
    stat = os.stat(path)
    key = (osp.realpath(path), stat.st_size, stat.st_mtime_ns, tuple(required))
    if key not in _CACHE:
        _CACHE[key] = _problem(path, stat.st_size, required)
    return _CACHE[key]


def _problem(path: str, size: int, required: Sequence[str]) -> Optional[str]:
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    zipped = head == b"PK\x03\x04"
    if not zipped and head[:1] != b"\x80":
        return f"not a torch checkpoint (starts with {head!r}, not a zip archive)"
    if zipped:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except zipfile.BadZipFile as e:
            return f"truncated or corrupted zip archive ({e}; {size} bytes)"
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            return f"unreadable ({type(e).__name__}: {e})"
        if bad is not None:
            return f"corrupted: CRC mismatch in archive member {bad!r}"
        if not any(n.endswith("data.pkl") for n in names):
            return "a zip archive without torch's data.pkl: not a torch checkpoint"
    try:
        obj = _read_structure(path, zipped)
    except Exception as e:  # any parse failure means torch.load would fail too
        where = "its data.pkl" if zipped else "the file (torch's legacy format)"
        return f"not loadable: {where} does not unpickle ({type(e).__name__}: {e})"
    return _structure_problem(obj, required)


# ---------------------------------------------------------------------------------------------------
# choosing among a work dir's checkpoints

def read_last_checkpoint(work_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(path named by ``<work_dir>/last_checkpoint``, or None; why it is unusable, or None).

    A relative name is taken relative to the current folder if it exists there (mmengine writes the
    path it saved to), else to ``work_dir`` (Detectron2 writes the bare file name)."""
    marker = osp.join(work_dir, "last_checkpoint")
    if not osp.exists(marker):
        return None, None
    with open(marker) as f:
        target = f.read().strip()
    if not target:
        return None, f"{marker} is empty (ignored)"
    if not osp.isabs(target) and not osp.exists(target):
        target = osp.join(work_dir, osp.basename(target))
    return target, None


def checkpoint_candidates(work_dir: str, extra_dirs: Iterable[str] = (),
                          names: CheckpointNames = MMENGINE_NAMES) -> Tuple[List[str], List[str]]:
    """Checkpoints that could be resumed from, newest first, and notes about what was ignored.

    Newest = highest step in the file name (``names``; the work dir, ``extra_dirs`` and the folder of
    ``last_checkpoint``'s target are searched); the target of ``last_checkpoint`` comes first among
    equal steps, and after every numbered checkpoint if its name carries no step.
    """
    notes: List[str] = []
    target, why = read_last_checkpoint(work_dir)
    if why:
        notes.append(why)
    dirs = [work_dir] + [d for d in extra_dirs if d]
    if target:
        dirs.append(osp.dirname(target))
    found = {}
    for d in dict.fromkeys(osp.abspath(d) for d in dirs):
        if not osp.isdir(d):
            continue
        for name in os.listdir(d):
            if names.step(name) is not None:
                found[osp.join(d, name)] = None
    if target:
        target = osp.abspath(target)
        if not osp.exists(target):
            notes.append(f"last_checkpoint names {target}, which does not exist (ignored)")
            target = None
        else:
            found[target] = None

    def key(p):
        s = names.step(p)
        mtime = osp.getmtime(p) if osp.exists(p) else 0.0
        return (s if s is not None else -1.0, p == target, mtime)

    return sorted(found, key=key, reverse=True), notes


def out_dir_checkpoints(work_dir: str, out_dir) -> List[str]:
    """Where mmengine's CheckpointHook saves when given ``out_dir``: ``<out_dir>/<work dir's folder name>``
    (as a list of extra folders to search; empty without a local ``out_dir``)."""
    if not isinstance(out_dir, str) or not out_dir or "://" in out_dir:
        return []
    return [osp.join(out_dir, osp.basename(osp.abspath(work_dir).rstrip(os.sep)))]


class NoCompleteCheckpoint(RuntimeError):
    """Checkpoints exist but none is usable."""


def find_resume_checkpoint(work_dir: str, extra_dirs: Iterable[str] = (), log: Callable[[str], None] = print,
                           names: CheckpointNames = MMENGINE_NAMES, required: Sequence[str] = (),
                           fix: str = "or name a good checkpoint with --resume PATH") -> Optional[str]:
    """The newest usable checkpoint of ``work_dir`` (see :func:`checkpoint_problem`; ``required`` are the
    keys the resume reads); every file skipped is logged with the reason. ``fix`` ends the message of
    :class:`NoCompleteCheckpoint` (how to name a checkpoint in the caller's tool).

    Returns ``None`` (after logging that training starts from scratch) when there is no checkpoint at
    all; raises :class:`NoCompleteCheckpoint` when there are checkpoints but none is usable.
    """
    candidates, notes = checkpoint_candidates(work_dir, extra_dirs, names)
    for note in notes:
        log(f"resume: {note}")
    skipped = []
    for path in candidates:
        why = checkpoint_problem(path, required)
        if why is None:
            for p, w in skipped:
                log(f"resume: skipped {p}: {w}")
            log(f"resume: resuming from {path} (the newest usable checkpoint in {work_dir})")
            return path
        skipped.append((path, why))
    if skipped:
        listing = "; ".join(f"{p}: {w}" for p, w in skipped)
        raise NoCompleteCheckpoint(
            f"--resume: none of the {len(skipped)} checkpoint(s) in {work_dir} is usable ({listing}). "
            f"Move them out of the work dir to train from scratch, {fix}.")
    log(f"resume: nothing to resume in {osp.abspath(work_dir)} (no last_checkpoint file and no "
        f"checkpoint files); training starts from scratch")
    return None
