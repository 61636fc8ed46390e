"""The recurrent cells the hGRU mask head can run, in a registry: a new cell is one registration.

:class:`~rv_plugins.heads.HGRUMaskPredictor` (and through it Detectron2's ``HGRUMaskHead``,
``MODEL.ROI_MASK_HEAD.HGRU.CELL``) looks its ``cell`` name up in :data:`MASK_HEAD_CELLS`. An entry
says how to build the cell from the head's settings and how the head wires it::

    from rv_plugins.heads.cells import MASK_HEAD_CELLS, CellSettings

    @MASK_HEAD_CELLS.register("my_cell", features_as_drive=False, readout_norm=False)
    def build_my_cell(settings: CellSettings) -> nn.Module:
        return MyCell(settings.channels, settings.kernel_size)

A cell is any ``nn.Module`` with ``forward(x, h) -> next h``, all ``(N, channels, S, S)`` (the
:class:`~rv_plugins.solvers.FixedPointSolver` contract). ``docs/adding_a_recurrent_cell.md`` walks
through a complete example (a test builds and trains it as written).
"""
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Mapping

from torch import nn

from rv_plugins.layers.hgru import CocoHGRUCell, HGRUCell

__all__ = ["CellSettings", "MaskHeadCell", "CellRegistry", "MASK_HEAD_CELLS"]


@dataclass(frozen=True)
class CellSettings:
    """The head's settings a cell builder may use (the builder ignores what it does not need and
    raises ``ValueError`` for a setting it cannot honour).

    Attributes:
        channels: channels ``C`` of the drive and the state.
        kernel_size: size of the cell's spatial kernels.
        norm, norm_groups: the normalisation the head asks for (``'group'``/``'batch'``/``'none'``).
        share_kernels: one kernel for inhibition and excitation (hGRU cells).
        steps: the solver's training steps (e.g. for a gate-bias range tied to them).
    """

    channels: int
    kernel_size: int
    norm: str = "group"
    norm_groups: int = 32
    share_kernels: bool = False
    steps: int = 20


@dataclass(frozen=True)
class MaskHeadCell:
    """One registered cell.

    Attributes:
        name: the ``cell=`` value that selects it.
        build: ``CellSettings -> nn.Module``.
        features_as_drive: ``True``: the ROI features are the drive as they are (no input
            projection, so ``channels`` must equal the ROI feature width); ``False``: a ``k x k``
            projection (``input_kernel_size``) followed by ReLU maps them to ``channels``.
        readout_norm: ``True``: the head normalises the fixed point before the deconvolution
            (``readout_norm=``); ``False``: no norm there.
    """

    name: str
    build: Callable[[CellSettings], nn.Module]
    features_as_drive: bool = False
    readout_norm: bool = False


class CellRegistry(Mapping):
    """``name -> MaskHeadCell``; prints as the tuple of names (for error messages)."""

    def __init__(self):
        self._cells: Dict[str, MaskHeadCell] = {}

    def register(self, name: str, *, features_as_drive: bool = False, readout_norm: bool = False):
        """Decorator registering a builder ``CellSettings -> nn.Module`` under ``name``; returns the
        builder unchanged. A name that is taken raises ``KeyError`` (no silent replacement)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"MASK_HEAD_CELLS.register: name must be a non-empty string, got {name!r}")
        if name in self._cells:
            raise KeyError(f"MASK_HEAD_CELLS: a cell named {name!r} is registered already; pick another name")

        def decorator(build: Callable[[CellSettings], nn.Module]):
            if not callable(build):
                raise TypeError(f"MASK_HEAD_CELLS.register({name!r}): decorate a function CellSettings -> "
                                f"nn.Module, got {build!r}")
            self._cells[name] = MaskHeadCell(name, build, bool(features_as_drive), bool(readout_norm))
            return build

        return decorator

    def __getitem__(self, name: str) -> MaskHeadCell:
        if name not in self._cells:
            raise KeyError(f"unknown mask-head cell {name!r}; registered: {tuple(self._cells)} (register one "
                           "with rv_plugins.heads.cells.MASK_HEAD_CELLS.register, docs/adding_a_recurrent_cell.md)")
        return self._cells[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cells)

    def __len__(self) -> int:
        return len(self._cells)

    def __repr__(self) -> str:
        return repr(tuple(self._cells))


MASK_HEAD_CELLS = CellRegistry()


@MASK_HEAD_CELLS.register("pathfinder")
def _pathfinder_cell(settings: CellSettings) -> nn.Module:
    """This package's first head: the Pathfinder form of the hGRU on a 1x1 / 3x3 projection."""
    return HGRUCell(settings.channels, settings.kernel_size, share_kernels=settings.share_kernels,
                    norm=settings.norm, norm_groups=settings.norm_groups)


@MASK_HEAD_CELLS.register("coco", features_as_drive=True, readout_norm=True)
def _coco_cell(settings: CellSettings) -> nn.Module:
    """The C-RBP authors' COCO head: their cell on the ROI features, gate bias ``U(1, steps - 1)``."""
    if settings.share_kernels:
        raise ValueError("HGRUMaskPredictor(cell='coco'): share_kernels is a 'pathfinder' option; the "
                         "authors' COCO cell has separate kernels")
    return CocoHGRUCell(settings.channels, settings.kernel_size, norm=settings.norm,
                        norm_groups=settings.norm_groups,
                        gate_bias_range=(1.0, float(max(settings.steps, 2) - 1)))
