"""Image-SSM: four-direction selective scan over an image with the symmetry enhancement."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from models.selective_scan.image_scan import (
    DIRECTIONS,
    cross_scan,
    image_selective_scan,
    per_direction_matmul,
    scan_directions,
)


class SymmetryEnhancement(nn.Module):
    """y + 0.2 * ((1 - w) * y + w * (y + flip_W(y)) / 2), w = sigmoid(alpha); (B, D, H, W) -> same."""

    def __init__(self, alpha_init=0.3, strength=0.2):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.strength = strength
        self.fused = True

    def forward(self, y):
        w = torch.sigmoid(self.alpha)
        if self.fused:  # the same as y * a + flip_W(y) * c: three passes over y instead of eight
            c = 0.5 * self.strength * w
            return torch.addcmul(y * (1 + self.strength * (1 - w) + c), y.flip(-1), c)
        mirrored = (y + y.flip(-1)) * 0.5
        return y + self.strength * ((1 - w) * y + w * mirrored)


class ImageSSM(nn.Module):
    """Image-Selective Scan Module: (B, D, H, W) -> (B, D, H, W).

    Per direction k (own parameters): x_proj_k D -> R + 2N gives (dt, B, C); dt_proj_k R -> D
    with bias gives delta = softplus(dt_proj_k(dt) + bias); A_k = -exp(A_log_k). With ``fused`` (the
    default) x_proj runs once in row-major pixel order and ``image_selective_scan`` does the rest (fused
    kernels on the cpp and triton backends); otherwise the unfused path: x copied into the four scan
    orders, projected there, one grouped selective scan (layout of mamba-ssm's ``selective_scan_fn``),
    merged.
    """

    def __init__(self, d_inner, *, dt_rank, d_state=8, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4, scan_backend="auto"):
        # dt_rank has no default: the spec's R = ceil(d / 16) is of the Mamba block's width d, which this
        # module does not see (MambaBlock passes it).
        super().__init__()
        k = DIRECTIONS
        self.d_state = d_state
        self.dt_rank = dt_rank
        self.scan_backend = scan_backend
        self.fused = True
        r = self.dt_rank
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, d_inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, d_inner, r))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.symmetry = SymmetryEnhancement()
        self._dt_range = (dt_min, dt_max, dt_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """The Mamba initialisation (docs/architecture.md §3.3); the generic Linear init never touches these."""
        dt_min, dt_max, dt_floor = self._dt_range
        # nn.Linear's default init (fan_in = d_inner): the authors stack Linear weights (docs/architecture.md §3.6).
        x_bound = self.x_proj_weight.shape[-1] ** -0.5
        nn.init.uniform_(self.x_proj_weight, -x_bound, x_bound)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj_weight, -bound, bound)
        dt = torch.exp(torch.rand_like(self.dt_proj_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x):
        return self.symmetry(self.scan(x))

    def scan(self, x):
        """The four directions' scans of x (B, D, H, W) merged into (B, D, H, W), in at least float32."""
        b, d, h, w = x.shape
        # The SSM parameters in at least float32 (a float64 model keeps them in float64).
        precise = torch.promote_types(self.A_logs.dtype, torch.float32)
        ssm = (self.dt_proj_weight, self.dt_proj_bias.to(precise), -torch.exp(self.A_logs.to(precise)),
               self.Ds.to(precise))
        if not self.fused:
            xs = cross_scan(x)
            return scan_directions(xs, per_direction_matmul(self.x_proj_weight, xs), *ssm, h, w, self.scan_backend)
        # All directions' projections at once, pixel by pixel: (B, H*W, K, R+2N) memory, seen as
        # (B, K, R+2N, H*W). x comes channels-last from the Mamba block, so this reads a view of it (which
        # the scan keeps too); the kernel reads both layouts best.
        pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, d)
        x_dbl = F.linear(pixels, self.x_proj_weight.flatten(0, 1)).view(b, h * w, DIRECTIONS, -1).permute(0, 2, 3, 1)
        return image_selective_scan(x, x_dbl, *ssm, backend=self.scan_backend)
