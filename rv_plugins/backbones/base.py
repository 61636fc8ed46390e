"""What every hierarchical backbone of the package shares; a model file keeps its blocks and arch table.

A subclass (see ``docs/adding_a_backbone.md``) sets

- ``arch_zoo`` (canonical arch name -> arch dict) and ``arch_aliases`` (alias -> canonical name), and
  optionally overrides :meth:`_check_arch` (validate / complete a resolved arch dict);
- in ``__init__``: :meth:`_init_arch` (``self.arch``, ``embed_dims``, ``depths``, ``num_stages``),
  :meth:`_setup_conventions` (``out_indices``, ``frozen_stages``, ``norm_eval``), ``self.stem``,
  ``self.stages`` (an ``nn.ModuleList``, one module per stage, built with :meth:`drop_path_schedule`),
  optionally ``self.norm`` (applied to the last stage's output) and ``self.head`` (classifier or
  ``None``), then ``self.init_weights()`` and ``self._freeze_stages()``;
- :meth:`_stage_strides` (each stage's stride) and ``maps_channels_last`` (whether the maps between
  stages are ``(B, H, W, C)``).

This class then gives ``forward`` (input check, :meth:`_embed`, the stage loop that stops after the last
stage in ``out_indices``), ``forward_head``, ``strides`` / ``feature_info`` (timm style),
``frozen_stages`` / ``norm_eval`` (frozen parts and, with ``norm_eval``, normalisation layers stay in
eval mode through ``train()``), ``init_cfg`` loading, the checkpoint-loading hook that resizes
positional embeddings, and the weights record (:mod:`rv_plugins.utils.weights_record`: the arch, plus
what a subclass's :meth:`weights_record` adds, travels in every checkpoint of the model and is checked
when one is loaded). Only BatchNorm has state that eval mode freezes; LayerNorm/GroupNorm are listed
so that ``norm_eval`` means the same whatever norm a user swaps in.
"""
import numbers
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from rv_plugins.utils.weights_record import RecordsWeights

__all__ = ["HierarchicalBackbone"]


class _ArchTypeError(TypeError, ValueError):
    """``arch`` is neither a name nor a dict (a TypeError; a ValueError too, as the models raised before)."""


class HierarchicalBackbone(RecordsWeights, nn.Module):
    num_stages = 4
    # canonical arch name -> arch dict (per-stage lists), and alias -> canonical name
    arch_zoo: Mapping[str, Mapping[str, Any]] = {}
    arch_aliases: Mapping[str, str] = {}
    # how a custom arch is written, for error messages
    arch_hint = "a dict with per-stage lists depths and embed_dims"
    # the maps between stages: (B, H, W, C) if True, else (B, C, H, W); outputs are always (B, C, H, W)
    maps_channels_last = False
    # parameters of shape (1, C, h, w) that a checkpoint of another grid is resized to (bicubic)
    pos_embed_names: Tuple[str, ...] = ("pos_embed",)

    # ------------------------------------------------------------------ arch
    @classmethod
    def resolve_arch(cls, arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
        """An arch name / alias (any case) or dict -> a fresh arch dict, checked by :meth:`_check_arch`."""
        name = cls.__name__
        if isinstance(arch, str):
            key = cls.arch_aliases.get(arch.lower(), arch.lower())
            if key not in cls.arch_zoo:
                names = sorted(cls.arch_zoo) + sorted(cls.arch_aliases)
                raise ValueError(f"{name}: unknown arch {arch!r}; choose one of {names} or pass {cls.arch_hint}")
            arch = cls.arch_zoo[key]
        if not isinstance(arch, Mapping):
            raise _ArchTypeError(f"{name}: arch must be a name or {cls.arch_hint}, got {type(arch).__name__} "
                                 f"{arch!r}")
        return cls._check_arch({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in arch.items()})

    @classmethod
    def _check_arch(cls, arch: Dict[str, Any]) -> Dict[str, Any]:
        """Validate and complete a resolved arch dict (subclasses: defaults, per-stage lengths, ranges)."""
        return arch

    def _init_arch(self, arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
        """Resolve ``arch`` and set ``self.arch``, ``embed_dims``, ``depths`` and ``num_stages``."""
        cfg = self.resolve_arch(arch)
        self.arch = cfg
        self.embed_dims, self.depths = cfg["embed_dims"], cfg["depths"]
        self.num_stages = len(self.depths)
        return cfg

    @staticmethod
    def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
        """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over all blocks -> one list of
        rates per stage (``depths[i]`` entries)."""
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        return [dpr[s:s + d] for s, d in zip(starts, depths)]

    # ------------------------------------------------------------------ conventions
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

    # ------------------------------------------------------------------ strides / feature_info
    def _stage_strides(self) -> Sequence[int]:
        """Each stage's stride (input pixels per output pixel), e.g. ``(4, 8, 16, 32)``."""
        raise NotImplementedError(f"{type(self).__name__} must define _stage_strides()")

    @property
    def strides(self) -> Tuple[int, ...]:
        """Every stage's stride, e.g. ``(4, 8, 16, 32)`` (exact when the input size divides by it)."""
        return tuple(int(s) for s in self._stage_strides())

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """timm-style description of every stage's output: ``[{num_chs, reduction, module}, ...]``."""
        return [dict(num_chs=int(c), reduction=s, module=f"stages.{i}")
                for i, (c, s) in enumerate(zip(self.embed_dims, self.strides))]

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}; set in_channels to the image channels")
        if min(x.shape[2:]) < 1:
            raise ValueError(f"{type(self).__name__}: the images are {x.shape[2]}x{x.shape[3]} pixels; every image "
                             "needs H, W >= 1 (an empty crop or resize upstream?)")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, in_channels, H, W)`` -> the first stage's input (``self.stem``)."""
        return self.stem(x)

    def _run_stage(self, i: int, box: List[torch.Tensor]) -> torch.Tensor:
        """Stage ``i`` on the map in ``box``, a one-element list that this call empties (so that a stage may
        free its input early)."""
        return self.stages[i](box.pop())

    def _stage_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i``'s map as ``forward`` returns it: ``self.norm`` on the last stage (if there is one),
        channels first, contiguous."""
        norm = getattr(self, "norm", None)
        if i == self.num_stages - 1 and norm is not None:
            x = norm(x)
        return x.permute(0, 3, 1, 2).contiguous() if self.maps_channels_last else x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of ``(B, embed_dims[i], H_i, W_i)`` for ``i`` in
        ``out_indices`` (in that order); stages after the last one listed are not run."""
        self._check_input(x)
        return self._forward_stages(self._embed(x))

    def _forward_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_stem_layout(x)
        outs = {}
        box = [x]
        del x  # the map is handed from stage to stage in ``box``: no frame here holds it while a stage runs
        for i in range(max(self.out_indices) + 1):
            y = self._run_stage(i, box)
            if i in self.out_indices:
                outs[i] = self._stage_output(i, y)
            box = [y]
            del y
        return tuple(outs[i] for i in self.out_indices)

    def _check_stem_layout(self, x: torch.Tensor) -> None:
        """A stem that returns ``(B, C0, h, w)`` in a model with ``maps_channels_last = True`` would fail
        inside the first block (a LayerNorm or conv over the wrong axis); say what is wrong instead."""
        c0 = self.embed_dims[0]
        if self.maps_channels_last and x.dim() == 4 and x.shape[1] == c0 and x.shape[-1] != c0:
            raise ValueError(f"{type(self).__name__}: the stem returned {tuple(x.shape)}, channels first, but the "
                             f"model sets maps_channels_last = True; return (B, H, W, C) from the stem (e.g. "
                             f".permute(0, 2, 3, 1)) or set maps_channels_last = False")

    def forward_head(self, feats: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Last-stage map ``(B, embed_dims[-1], h, w)`` (or ``forward``'s tuple, last entry used; already
        normalised by ``forward``) -> token mean -> linear -> ``(B, num_classes)``."""
        name = type(self).__name__
        if getattr(self, "head", None) is None:
            raise RuntimeError(f"{name}.forward_head needs a classifier; build with num_classes > 0")
        x = feats if isinstance(feats, torch.Tensor) else feats[-1]
        if x.dim() != 4 or x.shape[1] != self.embed_dims[-1]:
            raise ValueError(f"{name}.forward_head expects the last stage's map (B, {self.embed_dims[-1]}, "
                             f"h, w), got {tuple(x.shape)}; include {self.num_stages - 1} in out_indices")
        return self.head(x.mean(dim=(2, 3)))

    # ------------------------------------------------------------------ weights
    def weights_record(self) -> Dict[str, Any]:
        """Written into every checkpoint of the model (see :mod:`rv_plugins.utils.weights_record`): the
        arch (shown, not compared: the tensors' shapes tell archs apart). Subclasses add the settings
        that change what the same tensors compute."""
        return {"arch": self.arch}

    def load_pretrained(self, checkpoint, prefix: Optional[str] = None, strict: bool = False,
                        map_location="cpu", partial: bool = False):
        """Load a checkpoint (path, URL or state dict) with :func:`rv_plugins.utils.checkpoint.load_pretrained`:
        prefixes detected, positional embeddings resized, a one-line report (returned), and an error when
        none of this model's tensors is in it, or (unless ``partial=True``) most are not or the
        checkpoint's weights record differs from this model's."""
        from rv_plugins.utils.checkpoint import load_pretrained
        return load_pretrained(self, checkpoint, prefix=prefix, strict=strict, map_location=map_location,
                               partial=partial)

    def _apply_init_cfg(self):
        """Honour ``self.init_cfg``: ``None`` or ``dict(type='Pretrained', checkpoint=..., prefix=...,
        partial=False)`` (anything else raises: the plain classes have no other initialisers). Subclasses
        call it at the end of ``init_weights``."""
        from rv_plugins.utils.checkpoint import check_pretrained_cfg
        cfg = getattr(self, "init_cfg", None)
        check_pretrained_cfg(cfg, type(self).__name__)
        if cfg is None:
            return None
        return self.load_pretrained(cfg["checkpoint"], prefix=cfg.get("prefix"),
                                    map_location=cfg.get("map_location", "cpu"), partial=cfg.get("partial", False))

    def resize_pos_embeds_(self, state_dict: Dict[str, torch.Tensor], prefix: str = "") -> List[str]:
        """In place: each positional embedding of ``state_dict`` (``prefix + name`` for ``name`` in
        ``pos_embed_names``) of shape ``(1, C, h', w')`` -> this model's ``(1, C, h, w)``, bicubic
        (:func:`rv_plugins.utils.checkpoint.resize_pos_embed`, as ``forward`` resizes). Returns the keys
        resized. Called by ``load_state_dict`` (any loader: ours, mmengine's, ``torch``'s), so a 224
        checkpoint loads into a model made for 512."""
        from rv_plugins.utils.checkpoint import resize_pos_embed
        resized = []
        for name in self.pos_embed_names:
            own, key = getattr(self, name, None), prefix + name
            value = state_dict.get(key)
            if (isinstance(own, torch.Tensor) and isinstance(value, torch.Tensor) and own.dim() == value.dim() == 4
                    and value.shape[:2] == own.shape[:2] and value.shape != own.shape):
                state_dict[key] = resize_pos_embed(value, own.shape[2:])
                resized.append(key)
        return resized

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.resize_pos_embeds_(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> Iterator[nn.Module]:
        """What ``frozen_stages`` freezes: ``0`` the stem; ``k >= 1`` also ``stages[0..k-1]``; all stages
        also ``self.norm`` (if any)."""
        if self.frozen_stages >= 0:
            yield self.stem
            for i in range(self.frozen_stages):
                yield self.stages[i]
            norm = getattr(self, "norm", None)
            if self.frozen_stages == self.num_stages and norm is not None:
                yield norm

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:  # positional embeddings belong to the stem
            for name in self.pos_embed_names:
                pe = getattr(self, name, None)
                if isinstance(pe, nn.Parameter):
                    pe.requires_grad = False
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
