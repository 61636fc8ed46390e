"""An independent re-implementation of the VisionGRU authors' released model, for the conversion tests.

Written from the facts in ``NOTES.md`` ("What the papers' own code does") (their module names and key layout, their algorithm),
not from rv_plugins' code and not copied from theirs: it shares nothing with ``rv_plugins`` so that a
conversion that passes here reproduces *their* model.

* module names: ``tokenizer.{conv1,norm1,conv2,norm2}``, ``snake_gru.{conv1..3,norm1..3}``,
  ``snake_gru.layers.<stage>.<block>.{norm,dw_conv,min_gru_1,min_gru_2,norm2,projection1,projection2}``,
  ``fc``; minGRU ``to_hidden_and_gate`` (rows [candidate; gate], no bias) and ``to_out`` (no bias);
* minGRU: ``h_t = (1 - z_t) h_{t-1} + z_t g(h~_t)``, ``h_0 = 0``, evaluated in log space with a
  cumulative log-sum-exp (the form their minGRU uses for sequences longer than one token);
* the second minGRU runs on the map flipped in H and W and its output is flipped back;
* stem/downsampling LayerNorms eps 1e-6, block LayerNorms eps 1e-5; sizes ceil-halve (segmentation
  code); classifier = token mean -> linear, no final norm.

Input ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def _g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _log_g(x):
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class RefMinGRU(nn.Module):
    """``(B, L, dim)`` -> ``(B, L, dim)``; log-space parallel form, or a step loop with ``loop=True``."""

    def __init__(self, dim, expansion=2, loop=False):
        super().__init__()
        inner = int(dim * expansion)
        self.to_hidden_and_gate = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.loop = loop

    def forward(self, x):
        cand, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        if self.loop:
            z, hs, h = torch.sigmoid(gate), [], torch.zeros_like(cand[:, 0])
            for t in range(x.shape[1]):
                h = (1 - z[:, t]) * h + z[:, t] * _g(cand[:, t])
                hs.append(h)
            return self.to_out(torch.stack(hs, 1))
        log_a = -F.softplus(gate)                    # log(1 - z)
        log_b = -F.softplus(-gate) + _log_g(cand)    # log(z * g(h~))
        cum = torch.cumsum(log_a, dim=1)
        h = torch.exp(cum + torch.logcumsumexp(log_b - cum, dim=1))
        return self.to_out(h)


class RefBlock(nn.Module):
    def __init__(self, dim, loop=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dw_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.min_gru_1 = RefMinGRU(dim, loop=loop)
        self.min_gru_2 = RefMinGRU(dim, loop=loop)
        self.norm2 = nn.LayerNorm(dim)
        self.projection1 = nn.Linear(dim, 4 * dim)
        self.projection2 = nn.Linear(4 * dim, dim)

    def forward(self, x, hw):
        (h, w), (n, _, c) = hw, x.shape
        y = self.dw_conv(self.norm(x).transpose(1, 2).reshape(n, c, h, w))      # (n, c, h, w)
        fwd = y.flatten(2).transpose(1, 2)                                         # raster order
        bwd = torch.flip(y, dims=[2, 3]).flatten(2).transpose(1, 2)                # flipped map, raster
        x = x + self.min_gru_1(fwd) + torch.flip(self.min_gru_2(bwd), dims=[1])
        return x + self.projection2(F.gelu(self.projection1(self.norm2(x))))


class RefTokenizer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, dim // 2, 3, 2, 1)
        self.norm1 = nn.LayerNorm(dim // 2, eps=1e-6)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = F.gelu(self.norm1(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        x = self.norm2(self.conv2(x).permute(0, 2, 3, 1))                          # (n, h, w, c)
        return x.flatten(1, 2), tuple(x.shape[1:3])


class RefGRUBlocks(nn.Module):
    def __init__(self, dim, depths, loop=False):
        super().__init__()
        dims = [dim * 2 ** i for i in range(4)]
        self.layers = nn.ModuleList(nn.ModuleList(RefBlock(d, loop) for _ in range(n)) for d, n in zip(dims, depths))
        for i in (1, 2, 3):
            setattr(self, f"conv{i}", nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1))
            setattr(self, f"norm{i}", nn.LayerNorm(dims[i], eps=1e-6))

    def forward(self, x, hw):
        for stage, blocks in enumerate(self.layers):
            if stage:
                n, _, c = x.shape
                conv, norm = getattr(self, f"conv{stage}"), getattr(self, f"norm{stage}")
                x = conv(x.transpose(1, 2).reshape(n, c, *hw)).permute(0, 2, 3, 1)
                hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
                x = norm(x).flatten(1, 2)
            for block in blocks:
                x = block(x, hw)
        return x.mean(dim=1)


class AuthorsVisionGRU(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, num_classes)``; Ti: ``dim=72, depths=(2, 2, 8, 2)``."""

    def __init__(self, num_classes, dim=72, depths=(2, 2, 8, 2), loop=False):
        super().__init__()
        self.tokenizer = RefTokenizer(dim)
        self.snake_gru = RefGRUBlocks(dim, depths, loop)
        self.fc = nn.Linear(8 * dim, num_classes)

    def forward(self, x):
        return self.fc(self.snake_gru(*self.tokenizer(x)))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every tensor (LayerNorm affine too), so that a swapped or misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 2)[-2].startswith("norm") and name.endswith(".weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model
