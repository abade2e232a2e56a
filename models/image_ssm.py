"""Image-SSM: four-direction selective scan over an image with the symmetry enhancement."""
import math

import torch
from torch import nn

from models.selective_scan import selective_scan

DIRECTIONS = 4  # row-major, column-major, and both reversed


def cross_scan(x):
    """(B, D, H, W) -> (B, 4, D, L): row-major, column-major, reversed row-major, reversed column-major."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack((rows, cols, rows.flip(-1), cols.flip(-1)), dim=1)


def cross_merge(ys, h, w):
    """(B, 4, D, L) in the four scan orders -> (B, D, H, W): each put back in row-major order and summed."""
    b, _, d, _ = ys.shape
    rows = ys[:, 0] + ys[:, 2].flip(-1)
    cols = ys[:, 1] + ys[:, 3].flip(-1)
    return rows.view(b, d, h, w) + cols.view(b, d, w, h).transpose(2, 3)


def per_direction_matmul(weight, x):
    """(K, O, I) @ (B, K, I, L) -> (B, K, O, L), direction k by weight k. One bmm over a view of x, so
    the backward keeps x itself (which the scan keeps too), not the permuted copy einsum or
    matmul would make of it."""
    b, k, i, length = x.shape
    w = weight.expand(b, *weight.shape).reshape(b * k, *weight.shape[1:])
    return torch.bmm(w, x.reshape(b * k, i, length)).view(b, k, -1, length)


class SymmetryEnhancement(nn.Module):
    """y + 0.2 * ((1 - w) * y + w * (y + flip_W(y)) / 2), w = sigmoid(alpha); (B, D, H, W) -> same."""

    def __init__(self, alpha_init=0.3, strength=0.2):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.strength = strength

    def forward(self, y):
        mirrored = (y + y.flip(-1)) * 0.5
        w = torch.sigmoid(self.alpha)
        return y + self.strength * ((1 - w) * y + w * mirrored)


class ImageSSM(nn.Module):
    """Image-Selective Scan Module: (B, D, H, W) -> (B, D, H, W).

    Per direction k (own parameters): x_proj_k D -> R + 2N gives (dt, B, C); dt_proj_k R -> D
    with bias gives delta = softplus(dt_proj_k(dt) + bias); A_k = -exp(A_log_k). The four scans
    run as one grouped selective scan (layout of mamba-ssm's ``selective_scan_fn``).
    """

    def __init__(self, d_inner, *, dt_rank, d_state=8, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4, scan_backend="auto"):
        # dt_rank has no default: the spec's R = ceil(d / 16) is of the Mamba block's width d, which this
        # module does not see (MambaBlock passes it).
        super().__init__()
        k = DIRECTIONS
        self.d_state = d_state
        self.dt_rank = dt_rank
        self.scan_backend = scan_backend
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
        """The Mamba initialisation (spec 3.3); the generic Linear init never touches these."""
        dt_min, dt_max, dt_floor = self._dt_range
        # nn.Linear's default init (fan_in = d_inner): the authors stack Linear weights (spec 3.6).
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
        b, d, h, w = x.shape
        k, n, r = DIRECTIONS, self.d_state, self.dt_rank
        xs = cross_scan(x)
        x_dbl = per_direction_matmul(self.x_proj_weight, xs)
        dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = per_direction_matmul(self.dt_proj_weight, dts)
        # The SSM parameters in at least float32 (a float64 model keeps them in float64).
        precise = torch.promote_types(self.A_logs.dtype, torch.float32)
        ys = selective_scan(
            xs.reshape(b, k * d, -1), dts.reshape(b, k * d, -1), -torch.exp(self.A_logs.to(precise)),
            bs.contiguous(), cs.contiguous(), D=self.Ds.to(precise),
            delta_bias=self.dt_proj_bias.reshape(-1).to(precise),
            delta_softplus=True, backend=self.scan_backend,
        )
        # The merge and the symmetry step stay in float32 under autocast, like the scan's arithmetic.
        y = cross_merge(ys.to(torch.promote_types(ys.dtype, torch.float32)).view(b, k, d, -1), h, w)
        return self.symmetry(y)
