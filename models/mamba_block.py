"""MambaBlock, its residual RMSNorm layer, and HybriMambaMixer (the paper's "HybriMamba" box of a stage)."""
import math

from torch import nn
from torch.nn import functional as F

from models.fwm import FWM
from models.image_ssm import ImageSSM
from models.norms import RMSNorm


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
        x = F.silu(self.dwconv(self.fwm(x.permute(0, 3, 1, 2))))
        y = self.ssm(x).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class MambaLayer(nn.Module):
    """x + MambaBlock(RMSNorm(x)); (B, H, W, d) -> same."""

    def __init__(self, dim, **block_kwargs):
        super().__init__()
        self.norm = RMSNorm(dim, eps=1e-5)
        self.block = MambaBlock(dim, **block_kwargs)

    def forward(self, x):
        return x + self.block(self.norm(x))


class HybriMambaMixer(nn.Sequential):
    """The paper's "HybriMamba" box of a stage: ``n_layers`` residual Mamba layers; (B, H, W, d) -> same."""

    def __init__(self, dim, n_layers=2, **block_kwargs):
        super().__init__(*(MambaLayer(dim, **block_kwargs) for _ in range(n_layers)))
