"""What every hierarchical backbone of the package shares: OpenMMLab backbone conventions.

Subclasses set ``num_stages`` and implement ``_frozen_modules()`` (the modules that ``frozen_stages``
freezes, stem first); this class validates ``out_indices`` / ``frozen_stages`` and keeps frozen parts
(and, with ``norm_eval``, normalisation layers) in eval mode through ``train()``. Only BatchNorm has
state that eval mode freezes; LayerNorm/GroupNorm are listed so that ``norm_eval`` means the same
whatever norm a user swaps in.
"""
import numbers
from typing import Iterator, Optional, Sequence, Tuple, Union

from torch import nn


class HierarchicalBackbone(nn.Module):
    num_stages = 4

    def _setup_conventions(self, out_indices: Union[int, Sequence[int]], frozen_stages: int,
                           norm_eval: bool) -> None:
        name = type(self).__name__
        if isinstance(out_indices, numbers.Integral) and not isinstance(out_indices, bool):
            out_indices = (out_indices,)
        iterable = not isinstance(out_indices, (str, bytes, bool)) and hasattr(out_indices, "__iter__")
        if iterable:
            out_indices = tuple(out_indices)
        if not iterable or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                   for i in out_indices):
            raise TypeError(f"{name}: out_indices must be a stage index or a list/tuple of stage indices "
                            f"(ints in 0..{self.num_stages - 1}), got {out_indices!r}; e.g. "
                            f"out_indices={tuple(range(self.num_stages))} for all {self.num_stages} stages")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices:
            raise ValueError(f"{name}: out_indices is empty; give at least one stage index "
                             f"(0..{self.num_stages - 1})")
        for i in out_indices:
            if not -self.num_stages <= i < self.num_stages:
                raise ValueError(f"{name}: out_indices {out_indices} out of range; "
                                 f"use stage indices 0..{self.num_stages - 1}")
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f"{name}: frozen_stages must be in -1..{self.num_stages}, got {frozen_stages}")
        self.out_indices: Tuple[int, ...] = tuple(i % self.num_stages for i in out_indices)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval

    def _frozen_modules(self) -> Iterator[nn.Module]:
        raise NotImplementedError

    def load_pretrained(self, checkpoint, prefix: Optional[str] = None, strict: bool = False,
                        map_location="cpu"):
        """Load a checkpoint (path, URL or state dict) with :func:`rv_plugins.utils.checkpoint.load_pretrained`:
        prefixes detected, positional embeddings resized, a one-line report (returned), and an error when
        none of this model's tensors is in it."""
        from rv_plugins.utils.checkpoint import load_pretrained
        return load_pretrained(self, checkpoint, prefix=prefix, strict=strict, map_location=map_location)

    def _apply_init_cfg(self):
        """Honour ``self.init_cfg``: ``None`` or ``dict(type='Pretrained', checkpoint=..., prefix=...)``
        (anything else raises: the plain classes have no other initialisers). Subclasses call it at the
        end of ``init_weights``."""
        from rv_plugins.utils.checkpoint import check_pretrained_cfg
        cfg = getattr(self, "init_cfg", None)
        check_pretrained_cfg(cfg, type(self).__name__)
        if cfg is None:
            return None
        return self.load_pretrained(cfg["checkpoint"], prefix=cfg.get("prefix"),
                                    map_location=cfg.get("map_location", "cpu"))

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        """Train mode, keeping frozen stages (and, with ``norm_eval``, norm layers) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    m.eval()
        return self
