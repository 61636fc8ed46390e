"""The VisionGRU authors' checkpoint layout (``YangLiu9208/VisionGRU``) -> ours.

Their keys (after ``_orig_mod.`` / ``module.`` are stripped)::

    tokenizer.{conv1, norm1, conv2, norm2}                      stem (3x3 s2 conv, LN, GELU, 3x3 s2 conv, LN)
    snake_gru.{conv1, norm1, conv2, norm2, conv3, norm3}        downsampling into stages 1, 2, 3
    snake_gru.layers.<stage>.<block>.norm                       LN before the token mixer
        .dw_conv                                                3x3 depthwise conv
        .min_gru_1.to_hidden_and_gate / .to_out                 raster-order minGRU
        .min_gru_2.to_hidden_and_gate / .to_out                 minGRU on the map flipped in H and W
        .norm2, .projection1, .projection2                      LN and MLP
    fc                                                          classifier (token mean -> linear)

``to_hidden_and_gate.weight`` is ``(2 * hidden, dim)`` with rows ``[candidate; gate]``; ours
(``MinGRU.in_proj``) is ``[gate; candidate]``, so the halves are swapped. Their flipped-map scan is
our reverse scan of the same raster sequence, so ``min_gru_2`` becomes ``gru_bwd`` unchanged.
The converted weights need ``VisionGRU(preset='released')`` (candidate through ``g``, no positional
embedding): the authors' code has both.
"""
import re
from typing import Dict, Mapping, Tuple

import torch

__all__ = ["convert_authors_state_dict", "authors_arch", "is_authors_state_dict", "authors_key"]

_STEM = {"tokenizer.conv1": "stem.conv1.conv", "tokenizer.norm1": "stem.conv1.norm",
         "tokenizer.conv2": "stem.conv2.conv", "tokenizer.norm2": "stem.conv2.norm"}
_BLOCK = {"norm": "norm1", "dw_conv": "mixer.dwconv", "min_gru_1.to_hidden_and_gate": "mixer.gru_fwd.in_proj",
          "min_gru_1.to_out": "mixer.gru_fwd.out_proj", "min_gru_2.to_hidden_and_gate": "mixer.gru_bwd.in_proj",
          "min_gru_2.to_out": "mixer.gru_bwd.out_proj", "norm2": "norm2", "projection1": "mlp.fc1",
          "projection2": "mlp.fc2"}
_BLOCK_RE = re.compile(r"^snake_gru\.layers\.(\d+)\.(\d+)\.(.+)\.(weight|bias)$")
_DOWN_RE = re.compile(r"^snake_gru\.(conv|norm)([123])\.(weight|bias)$")


def _strip(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop wrapper prefixes; of a whole segmentor's checkpoint keep the backbone."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in ("module.", "_orig_mod.", "vig."):  # DDP, torch.compile, their mmseg wrapper
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    if any(k.startswith("backbone.") for k in out):  # their mmseg checkpoint: backbone.vig._orig_mod...
        out = _strip({k[len("backbone."):]: v for k, v in out.items() if k.startswith("backbone.")})
    return out


def is_authors_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    keys = _strip(state)
    return any(k.startswith("tokenizer.") for k in keys) and any(k.startswith("snake_gru.") for k in keys)


def authors_arch(state: Mapping[str, torch.Tensor]) -> Dict[str, list]:
    """``dict(embed_dims=[...], depths=[...])`` read off the checkpoint (Ti: 72.., [2, 2, 8, 2])."""
    keys = _strip(state)
    width_from = next((k for k in ("tokenizer.conv2.weight", "tokenizer.norm2.weight", "tokenizer.conv2.bias")
                       if k in keys), None)
    if width_from is None:
        raise ValueError("the authors' checkpoint lacks the stem's second convolution and norm "
                         "(tokenizer.conv2.*, tokenizer.norm2.*), which give the model width; the file is "
                         "incomplete: download or save it again")
    c0 = keys[width_from].shape[0]
    depths = [0, 0, 0, 0]
    for key in keys:
        m = _BLOCK_RE.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depths[stage] = max(depths[stage], block + 1)
    return dict(embed_dims=[c0, 2 * c0, 4 * c0, 8 * c0], depths=depths)


def authors_key(key: str) -> str:
    """Our key -> the authors' name for the same tensor (for messages about missing tensors)."""
    base, _, kind = key.rpartition(".")
    theirs = {v: k for k, v in _STEM.items()}
    if base in theirs:
        return f"{theirs[base]}.{kind}"
    if base == "head":
        return f"fc.{kind}"
    m = re.match(r"^stages\.(\d)\.downsample\.(conv|norm)$", base)
    if m:
        return f"snake_gru.{m.group(2)}{m.group(1)}.{kind}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", base)
    block = {v: k for k, v in _BLOCK.items()}
    if m and m.group(3) in block:
        return f"snake_gru.layers.{m.group(1)}.{m.group(2)}.{block[m.group(3)]}.{kind}"
    return key


def convert_authors_state_dict(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
    """The authors' state dict -> (our ``VisionGRU(arch, preset='released', num_classes=...)`` state dict,
    arch dict). Raises ``ValueError`` naming any key it does not know (nothing is dropped silently)."""
    src = _strip(state)
    if not is_authors_state_dict(src):
        raise ValueError("not a VisionGRU authors' checkpoint: expected keys under 'tokenizer.' and "
                         f"'snake_gru.', got keys beginning {sorted(src)[:4]}")
    out, unknown = {}, []
    for key, value in src.items():
        base, _, kind = key.rpartition(".")
        if base in _STEM:
            out[f"{_STEM[base]}.{kind}"] = value
            continue
        if base == "fc":
            out[f"head.{kind}"] = value
            continue
        m = _DOWN_RE.match(key)
        if m:
            part, stage, kind = m.groups()
            out[f"stages.{stage}.downsample.{part}.{kind}"] = value
            continue
        m = _BLOCK_RE.match(key)
        if m and m.group(3) in _BLOCK:
            stage, block, name, kind = m.groups()
            if name.endswith("to_hidden_and_gate"):
                candidate, gate = value.chunk(2, dim=0)
                value = torch.cat([gate, candidate], dim=0)
            out[f"stages.{stage}.blocks.{block}.{_BLOCK[name]}.{kind}"] = value
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(f"authors' checkpoint has {len(unknown)} keys the converter does not know: "
                         f"{unknown[:5]}; it was written by a different version of their code")
    return out, authors_arch(src)
