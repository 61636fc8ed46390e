"""Horizontal gated recurrent unit (hGRU; Linsley et al., 2018), in the form used for C-RBP.

One step ``h_next = cell(x, h)`` on ``(B, C, H, W)`` maps (``*`` is a 'same'-padded k x k
convolution, ``U1``/``U2`` are 1x1 convolutions, ``norm`` is optional, ``sp`` is softplus)::

    g1 = sigmoid(U1 h)                               gain gate
    c1 = norm_inh(W_inh * (h . g1))                  inhibition
    h1 = sp(x - sp(c1 . (alpha h + mu)))             inhibited drive
    g2 = sigmoid(U2 h1)                              mix gate
    c2 = norm_exc(W_exc * h1)                        excitation
    h~ = sp(kappa h1 + gamma c2 + omega h1 . c2)     candidate
    h_next = sp((1 - g2) . h + g2 . h~)

``alpha, gamma, kappa, omega, mu`` are learnable per-channel ``(1, C, 1, 1)`` parameters.
Defaults follow the authors' Pathfinder code: alpha=0.1, gamma=1, kappa=0.5, omega=0.5, mu=1,
orthogonal horizontal kernels, gain-gate bias ``log(U(1, 7))`` and mix-gate bias its negative,
BatchNorm with batch statistics only (eps 1e-3, weight 0.1) on both horizontal convolutions.
The gate-bias rule is the authors' documented intent; their code runs ``U(1, 7)`` without the log
(``gate_bias_rule='uniform'``, see :class:`HGRUCell`).

The cell is independent of any task: ``x`` is any constant drive with ``C`` channels and ``h`` any
state of the same shape (e.g. Pathfinder maps or ``(N, C, 14, 14)`` ROI features).

:class:`CocoHGRUCell` is the other variant: the cell of the C-RBP authors' COCO mask head
(``c-rbp/panoptic_segmentation``), with an attention-like gain gate and fewer nonlinearities.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "none")
GATE_BIAS_RULES = ("log_uniform", "uniform")


def _make_norm(kind: str, channels: int, eps: float, weight_init: float, groups: int) -> nn.Module:
    """One normalisation layer for a horizontal convolution's output ``(B, C, H, W)``."""
    if kind == "batch":
        norm = nn.BatchNorm2d(channels, eps=eps, track_running_stats=False)  # batch stats always
    elif kind == "group":
        if channels % groups != 0:
            raise ValueError(f"HGRUCell: norm='group' needs channels ({channels}) divisible by "
                             f"norm_groups ({groups}); pass a divisor of {channels} as norm_groups")
        norm = nn.GroupNorm(groups, channels, eps=eps)
    elif kind == "none":
        return nn.Identity()
    else:
        raise ValueError(f"HGRUCell: unknown norm {kind!r}; choose one of {NORMS}")
    nn.init.constant_(norm.weight, weight_init)
    nn.init.zeros_(norm.bias)
    return norm


def _same_conv2d(inp: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """'Same'-padded k x k convolution ``(B, C_in, H, W) -> (B, C_out, H, W)`` (zero padding
    ``(k - 1) // 2`` before and ``k // 2`` after, as PyTorch's ``padding='same'``)."""
    k = int(weight.shape[-1])  # a plain int: a tracer's size value is no valid conv padding
    if k % 2 == 1:
        return F.conv2d(inp, weight, bias, padding=k // 2)
    before, after = (k - 1) // 2, k // 2
    return F.conv2d(F.pad(inp, (before, after, before, after)), weight, bias)


class HGRUCell(nn.Module):
    """One hGRU step ``(x, h) -> h_next``, all ``(B, channels, H, W)``.

    Args:
        channels: channels of the drive ``x`` and of the state ``h``.
        kernel_size: size of the horizontal (inhibition / excitation) kernels; any size >= 1
            (convolutions use 'same' padding, so H and W are kept for odd and even sizes).
        share_kernels: one kernel for inhibition and excitation instead of two.
        norm: ``'batch'`` (BatchNorm2d with batch statistics in train and eval, as the authors),
            ``'group'`` (GroupNorm with ``norm_groups`` groups) or ``'none'``.
        norm_eps, norm_weight_init, norm_groups: settings of that normalisation.
        alpha, gamma, kappa, omega, mu: initial values of the per-channel coefficients.
        gate_bias_range: ``(low, high)`` of the gain-gate bias draw (per channel); the mix gate
            gets its negative.
        gate_bias_rule: ``'log_uniform'`` (default): ``log(U(low, high))``, the intent the authors
            document (the paper; the ``.log()`` call in their code) and this package's rule from the
            start, kept so that training runs and results stay comparable; ``'uniform'``:
            ``U(low, high)``, what the authors' Pathfinder code actually runs
            (``c-rbp/pathfinder_experiments``, ``models/hgrucleanSEG.py`` lines 99-101: ``.log()`` is
            not in place, so its result is dropped). With the defaults the gain gate then starts
            at ``sigmoid(1..7)`` = 0.73-1.0 instead of ``sigmoid(0..1.95)`` = 0.5-0.88.
    """

    def __init__(self, channels: int, kernel_size: int = 15, share_kernels: bool = False,
                 norm: str = "batch", norm_eps: float = 1e-3, norm_weight_init: float = 0.1,
                 norm_groups: int = 1, alpha: float = 0.1, gamma: float = 1.0, kappa: float = 0.5,
                 omega: float = 0.5, mu: float = 1.0,
                 gate_bias_range: Tuple[float, float] = (1.0, 7.0), gate_bias_rule: str = "log_uniform"):
        super().__init__()
        if channels < 1 or kernel_size < 1:
            raise ValueError(f"HGRUCell: channels ({channels}) and kernel_size ({kernel_size}) "
                             "must be positive integers")
        if gate_bias_rule not in GATE_BIAS_RULES:
            raise ValueError(f"HGRUCell: gate_bias_rule={gate_bias_rule!r}; choose one of {GATE_BIAS_RULES} "
                             "('log_uniform': the authors' documented intent, 'uniform': what their code runs)")
        low, high = gate_bias_range
        if gate_bias_rule == "log_uniform" and not 0 < low <= high:
            raise ValueError(f"HGRUCell: gate_bias_range {gate_bias_range} must satisfy "
                             "0 < low <= high (the bias is log of a uniform sample)")
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"HGRUCell: gate_bias_range {gate_bias_range} must be finite with low <= high")
        self.gate_bias_rule = gate_bias_rule
        self.channels, self.kernel_size = channels, kernel_size
        self.share_kernels, self.norm_kind = share_kernels, norm
        self.gate_bias_range = (float(low), float(high))
        kernel_shape = (channels, channels, kernel_size, kernel_size)
        self.w_inh = nn.Parameter(torch.empty(kernel_shape))
        self.w_exc = None if share_kernels else nn.Parameter(torch.empty(kernel_shape))
        self.gain_gate = nn.Conv2d(channels, channels, 1)  # U1
        self.mix_gate = nn.Conv2d(channels, channels, 1)   # U2
        self.norm_inh = _make_norm(norm, channels, norm_eps, norm_weight_init, norm_groups)
        self.norm_exc = _make_norm(norm, channels, norm_eps, norm_weight_init, norm_groups)
        coefficients = dict(alpha=alpha, gamma=gamma, kappa=kappa, omega=omega, mu=mu)
        for name, value in coefficients.items():
            self.register_parameter(name, nn.Parameter(torch.full((1, channels, 1, 1), float(value))))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal horizontal and gate kernels, gate biases ``+-log(U(low, high))`` (``+-U(low, high)``
        with ``gate_bias_rule='uniform'``)."""
        nn.init.orthogonal_(self.w_inh)
        if self.w_exc is not None:
            nn.init.orthogonal_(self.w_exc)
        nn.init.orthogonal_(self.gain_gate.weight)
        nn.init.orthogonal_(self.mix_gate.weight)
        with torch.no_grad():
            self.gain_gate.bias.uniform_(*self.gate_bias_range)
            if self.gate_bias_rule == "log_uniform":
                self.gain_gate.bias.log_()
            self.mix_gate.bias.copy_(-self.gain_gate.bias)

    def _horizontal(self, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """'Same'-padded k x k convolution ``(B, C, H, W) -> (B, C, H, W)``."""
        return _same_conv2d(inp, weight)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (drive), h (state): ``(B, C, H, W)`` -> next state ``(B, C, H, W)``, all >= 0."""
        if x.dim() != 4 or x.shape != h.shape or x.shape[1] != self.channels:
            raise ValueError(f"HGRUCell: x {tuple(x.shape)} and h {tuple(h.shape)} must both be "
                             f"(B, {self.channels}, H, W); project the drive to {self.channels} "
                             "channels and start h with zeros_like(x)")
        w_exc = self.w_inh if self.w_exc is None else self.w_exc
        gain = torch.sigmoid(self.gain_gate(h))
        inhibition = self.norm_inh(self._horizontal(h * gain, self.w_inh))
        h1 = F.softplus(x - F.softplus(inhibition * (self.alpha * h + self.mu)))
        mix = torch.sigmoid(self.mix_gate(h1))
        excitation = self.norm_exc(self._horizontal(h1, w_exc))
        candidate = F.softplus(self.kappa * h1 + self.gamma * excitation + self.omega * h1 * excitation)
        return F.softplus((1 - mix) * h + mix * candidate)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"share_kernels={self.share_kernels}, norm={self.norm_kind!r}")


class CocoHGRUCell(nn.Module):
    """The C-RBP authors' COCO mask-head hGRU step ``(x, h) -> h_next``, all ``(B, C, H, W)``.

    Read in ``c-rbp/panoptic_segmentation`` (``detectron2/modeling/backbone/rnns.py``,
    ``hConvGRUCell`` with their COCO settings ``GALA: True``, ``LESS_SOFTPLUS: True``,
    ``NL: softplus``, ``NORM: GN``, kernel 3; ``configs/BASE-RCNN-RFPN-CBP*.yaml``); written here
    from that description, not copied. With ``sp`` = softplus, ``*`` a 'same' k x k convolution::

        a  = V2(sp(V1 h))                       channel path C -> C/r -> C (1x1; V1 has a bias)
        s  = S2 * sp(S1 * h + b_s)              spatial path C -> C/2 -> 1 (k x k)
        g1 = sigmoid(a . s + b_g)               attention-like gain gate, b_g per channel
        c1 = norm_inh(W_inh * (h . g1))
        h1 = sp(x - c1 . (alpha h + mu))        no inner softplus
        g2 = sigmoid(U2 h1)                     mix gate (1x1)
        h~ = sp(norm_exc(W_exc * h1))           no kappa / gamma / omega
        h_next = (1 - g2) . h + g2 . h~         no outer softplus (stays >= 0 from h0 >= 0)

    Differences from :class:`HGRUCell` (the Pathfinder form): the gain gate, the missing inner,
    candidate and outer nonlinearities, GroupNorm (eps 1e-5, 32 groups) instead of BatchNorm,
    kaiming-normal kernels instead of orthogonal, and gate biases drawn from ``U(low, high)``
    without a log (their ``bias.data.log()`` is not in place; with 20 steps ``U(1, 19)``), the
    mix gate's bias the negative of the gain gate's.

    Args:
        channels: channels of ``x`` and ``h`` (``C``; the ROI feature width, 256 in Mask R-CNN).
        kernel_size: size of the horizontal and spatial-gate kernels (the authors: 3).
        reduction: ``r`` of the channel path (the authors: 4).
        norm, norm_groups, norm_eps, norm_weight_init: the two horizontal normalisations
            (``'group'``/``'batch'``/``'none'``; the authors: GroupNorm(32), eps 1e-5, weight 0.1).
        alpha, mu: initial per-channel coefficients (the authors: 0.1, 1).
        gate_bias_range: ``b_g ~ U(low, high)``, ``U2``'s bias ``= -b_g`` (the authors:
            ``(1, steps - 1)``).
    """

    def __init__(self, channels: int = 256, kernel_size: int = 3, reduction: int = 4,
                 norm: str = "group", norm_groups: int = 32, norm_eps: float = 1e-5,
                 norm_weight_init: float = 0.1, alpha: float = 0.1, mu: float = 1.0,
                 gate_bias_range: Tuple[float, float] = (1.0, 19.0)):
        super().__init__()
        if kernel_size < 1 or reduction < 1 or channels < max(2, reduction):
            raise ValueError(f"CocoHGRUCell: channels={channels}, kernel_size={kernel_size}, "
                             f"reduction={reduction}; need kernel_size >= 1 and channels >= "
                             "max(2, reduction) (the gate has C/r and C/2 hidden channels)")
        low, high = gate_bias_range
        if not low <= high:
            raise ValueError(f"CocoHGRUCell: gate_bias_range {gate_bias_range} must satisfy low <= high")
        self.channels, self.kernel_size, self.reduction = channels, kernel_size, reduction
        self.norm_kind, self.gate_bias_range = norm, (float(low), float(high))
        hidden, spatial = channels // reduction, channels // 2
        kernel = (kernel_size, kernel_size)
        self.gate_channel_in = nn.Conv2d(channels, hidden, 1)
        self.gate_channel_out = nn.Conv2d(hidden, channels, 1, bias=False)
        self.gate_spatial_in = nn.Parameter(torch.empty(spatial, channels, *kernel))
        self.gate_spatial_bias = nn.Parameter(torch.empty(spatial))
        self.gate_spatial_out = nn.Parameter(torch.empty(1, spatial, *kernel))
        self.gain_bias = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.w_inh = nn.Parameter(torch.empty(channels, channels, *kernel))
        self.w_exc = nn.Parameter(torch.empty(channels, channels, *kernel))
        self.mix_gate = nn.Conv2d(channels, channels, 1)
        self.norm_inh = _make_norm(norm, channels, norm_eps, norm_weight_init, norm_groups)
        self.norm_exc = _make_norm(norm, channels, norm_eps, norm_weight_init, norm_groups)
        self.alpha = nn.Parameter(torch.full((1, channels, 1, 1), float(alpha)))
        self.mu = nn.Parameter(torch.full((1, channels, 1, 1), float(mu)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal kernels (PyTorch's defaults, as the authors), zero spatial-gate bias,
        ``b_g ~ U(low, high)``, mix-gate bias ``-b_g``; ``V1``'s bias keeps PyTorch's init."""
        for weight in (self.w_inh, self.w_exc, self.gate_channel_in.weight,
                       self.gate_channel_out.weight, self.gate_spatial_in, self.gate_spatial_out,
                       self.mix_gate.weight):
            nn.init.kaiming_normal_(weight)
        with torch.no_grad():
            self.gate_spatial_bias.zero_()
            self.gain_bias.uniform_(*self.gate_bias_range)
            self.mix_gate.bias.copy_(-self.gain_bias.flatten())

    def gain(self, h: torch.Tensor) -> torch.Tensor:
        """The attention-like gain gate ``g1`` ``(B, C, H, W)`` in (0, 1) of a state ``h``."""
        channel = self.gate_channel_out(F.softplus(self.gate_channel_in(h)))
        spatial = _same_conv2d(F.softplus(_same_conv2d(h, self.gate_spatial_in,
                                                       self.gate_spatial_bias)),
                               self.gate_spatial_out)
        return torch.sigmoid(channel * spatial + self.gain_bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (drive), h (state): ``(B, C, H, W)`` -> next state ``(B, C, H, W)``."""
        if x.dim() != 4 or x.shape != h.shape or x.shape[1] != self.channels:
            raise ValueError(f"CocoHGRUCell: x {tuple(x.shape)} and h {tuple(h.shape)} must both be "
                             f"(B, {self.channels}, H, W); the drive is the ROI features "
                             "themselves, so set channels to their width and start h with "
                             "zeros_like(x)")
        inhibition = self.norm_inh(_same_conv2d(h * self.gain(h), self.w_inh))
        h1 = F.softplus(x - inhibition * (self.alpha * h + self.mu))
        mix = torch.sigmoid(self.mix_gate(h1))
        candidate = F.softplus(self.norm_exc(_same_conv2d(h1, self.w_exc)))
        return (1 - mix) * h + mix * candidate

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"reduction={self.reduction}, norm={self.norm_kind!r}")


def gabor_bank(num_orientations: int = 12, phases: Tuple[float, ...] = (0.0, math.pi / 2),
               kernel_size: int = 7, wavelength: float = 4.0, sigma: float = 1.75,
               aspect: float = 0.6, with_dog: bool = True) -> torch.Tensor:
    """Zero-mean, unit-norm filters ``(num_orientations * len(phases) + with_dog, k, k)``.

    Gabors ``exp(-(u^2 + aspect^2 v^2) / 2 sigma^2) cos(2 pi u / wavelength + phase)`` with ``u``
    along the orientation ``pi * i / num_orientations``; the optional last filter is a
    difference of Gaussians (centre ``sigma / 2``, surround ``sigma``). Zero mean makes a flat
    background respond with 0; the defaults give the 24 + 1 filters of the C-RBP Pathfinder model.
    """
    if kernel_size < 1 or num_orientations < 1 or not phases:
        raise ValueError("gabor_bank: kernel_size and num_orientations must be >= 1 and phases "
                         "non-empty")
    coords = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    filters = []
    for index in range(num_orientations):
        theta = math.pi * index / num_orientations
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        envelope = torch.exp(-(u ** 2 + (aspect * v) ** 2) / (2 * sigma ** 2))
        for phase in phases:
            filters.append(envelope * torch.cos(2 * math.pi * u / wavelength + phase))
    if with_dog:
        radius2 = xx ** 2 + yy ** 2
        centre = torch.exp(-radius2 / (2 * (sigma / 2) ** 2))
        surround = torch.exp(-radius2 / (2 * sigma ** 2))
        filters.append(centre / centre.sum() - surround / surround.sum())
    bank = torch.stack(filters)
    bank = bank - bank.mean(dim=(1, 2), keepdim=True)
    bank = bank / bank.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    return bank.float()


class GaborConv2d(nn.Module):
    """Gabor-initialised input convolution ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    The first ``out_channels - 1`` filters are Gabors spread over orientations and two phases,
    the last a difference of Gaussians (``out_channels=25``: 24 Gabors + 1 DoG as in the paper);
    every input channel gets the same filter divided by ``in_channels``. The weights stay
    trainable. ``square_output=True`` returns ``conv(x) ** 2`` (the authors' energy response).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 25, kernel_size: int = 7,
                 square_output: bool = True, bias: bool = False):
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"GaborConv2d: out_channels={out_channels}; need >= 2 (Gabors + one "
                             "difference of Gaussians)")
        self.square_output = square_output
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Load the Gabor / DoG bank into the convolution weight."""
        out_channels, in_channels, kernel_size, _ = self.conv.weight.shape
        num_gabors = out_channels - 1
        phases = (0.0, math.pi / 2) if num_gabors % 2 == 0 else (0.0,)
        bank = gabor_bank(num_orientations=num_gabors // len(phases), phases=phases,
                          kernel_size=kernel_size, wavelength=max(2.0, kernel_size / 1.75),
                          sigma=max(0.5, kernel_size / 4))
        with torch.no_grad():
            self.conv.weight.copy_(bank[:, None].expand(-1, in_channels, -1, -1) / in_channels)
            if self.conv.bias is not None:
                self.conv.bias.zero_()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img ``(B, in_channels, H, W)`` -> responses ``(B, out_channels, H, W)`` (>= 0 if squared)."""
        out = self.conv(img)
        return out * out if self.square_output else out
