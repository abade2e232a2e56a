"""LEM, the Local Enhancement Module: a channel-gated depthwise branch times a per-pixel MLP branch."""
from torch import nn


class LEM(nn.Module):
    """(B, H, W, d) -> (B, H, W, d).

    f1, f2 = split(Conv1x1(d -> 2d)(x)); f1 = DWConv3x3(f1) gated by a squeeze-excitation
    (GAP -> 1x1 d->d/16 -> ReLU -> 1x1 -> Sigmoid); f2 = per-pixel MLP (LayerNorm, d -> ratio*d,
    GELU, -> d); out = Conv1x1(f1 * f2).
    """

    def __init__(self, dim, mlp_ratio=2.0):
        super().__init__()
        squeezed = max(dim // 16, 1)
        hidden = int(dim * mlp_ratio)
        self.project_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, dim, 1),
            nn.Sigmoid(),
        )
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.project_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        f1, f2 = self.project_in(x.permute(0, 3, 1, 2)).chunk(2, dim=1)
        f1 = self.dwconv(f1)
        f1 = f1 * self.gate(f1)
        f2 = self.mlp(f2.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.project_out(f1 * f2).permute(0, 2, 3, 1)
