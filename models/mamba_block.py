"""MambaBlock, its residual RMSNorm layer, and HybriMambaMixer (the paper's "HybriMamba" box of a stage)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from models.fwm import FWM
from models.image_ssm import ImageSSM
from models.norms import RMSNorm
from models.recompute import recompute


class MambaBlock(nn.Module):
    """(B, H, W, d) -> (B, H, W, d).

    x, z = split(Linear(d -> 2*d_inner)); x = ImageSSM(SiLU(DWConv3x3(FWM(x))));
    out = Linear(d_inner -> d)(LayerNorm(x) * SiLU(z)).
    """

    def __init__(self, dim, expand=1.5, d_state=8, d_conv=3, scan_backend="auto"):
        super().__init__()
        d_inner = int(expand * dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.fwm = FWM(d_inner)
        self.dwconv = nn.Conv2d(d_inner, d_inner, d_conv, padding=d_conv // 2, groups=d_inner)
        self.ssm = ImageSSM(d_inner, d_state=d_state, dt_rank=math.ceil(dim / 16), scan_backend=scan_backend)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x):
        x, z = self.in_proj(x).chunk(2, dim=-1)
        return self.gate(self.ssm(self.local_mix(self.fwm(x.permute(0, 3, 1, 2)))), z)

    def local_mix(self, x):
        """SiLU(DWConv3x3(x)), the Image-SSM's input; (B, d_inner, H, W) -> same."""
        return F.silu(self.dwconv(x))

    def gate(self, y, z):
        """Linear(LayerNorm(y) * SiLU(z)): y (B, d_inner, H, W) from the Image-SSM, z (B, H, W, d_inner)."""
        return self.out_proj(self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z))


class MambaLayer(nn.Module):
    """x + MambaBlock(RMSNorm(x)); (B, H, W, d) -> same.

    In training with ``fused`` (the default) the same function is computed so that the backward keeps
    x, z, the FWM's input and output (and what its branches keep: the two amplitude conv outputs, the
    wavelet conv's input), the Image-SSM scan's inputs and merged output (and its chunk states), and
    recomputes the rest: the norm, the depthwise conv and SiLU, the symmetry step, the output norm, the
    gate and out_proj's input.
    """

    def __init__(self, dim, **block_kwargs):
        super().__init__()
        self.norm = RMSNorm(dim, eps=1e-5)
        self.block = MambaBlock(dim, **block_kwargs)
        self.fused = True

    def forward(self, x):
        if self.fused and torch.is_grad_enabled():
            return self._forward_recomputing(x)
        return x + self.block(self.norm(x))

    def _projections(self, x):
        """in_proj(RMSNorm(x)) as the FWM's input (B, d_inner, H, W) and z (B, H, W, d_inner), each in its
        own storage (z is kept for the backward, the other half is not)."""
        inner, z = self.block.in_proj.weight.chunk(2)
        normed = self.norm(x)
        return F.linear(normed, inner).permute(0, 3, 1, 2), F.linear(normed, z)

    def _output_part(self, y, z, x):
        return x + self.block.gate(self.block.ssm.symmetry(y), z)

    def _forward_recomputing(self, x):
        block = self.block
        inner, z = recompute(self._projections, x)
        scan_input = recompute(block.local_mix, block.fwm(inner))
        return recompute(self._output_part, block.ssm.scan(scan_input), z, x)


class HybriMambaMixer(nn.Sequential):
    """The paper's "HybriMamba" box of a stage: ``n_layers`` residual Mamba layers; (B, H, W, d) -> same."""

    def __init__(self, dim, n_layers=2, **block_kwargs):
        super().__init__(*(MambaLayer(dim, **block_kwargs) for _ in range(n_layers)))
