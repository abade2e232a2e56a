"""One-level 2-D Haar wavelet transform and its inverse.

Band layout, signs and odd-size handling (a zero row/column appended) follow
``pytorch_wavelets`` DWTForward(J=1, wave="haar", mode="zero") / DWTInverse, the tests' reference.
"""
import torch
from torch.nn import functional as F


def haar_dwt(x):
    """(B, C, H, W) -> (LL (B, C, h, w), highs (B, C, 3, h, w) ordered LH, HL, HH), h = ceil(H/2), w = ceil(W/2)."""
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) * 0.5
    lh = (a + b - c - d) * 0.5
    hl = (a - b + c - d) * 0.5
    hh = (a - b - c + d) * 0.5
    return ll, torch.stack((lh, hl, hh), dim=2)


def haar_idwt(ll, highs):
    """Inverse of :func:`haar_dwt`: (B, C, h, w), (B, C, 3, h, w) -> (B, C, 2h, 2w); crop odd sizes back."""
    lh, hl, hh = highs.unbind(dim=2)
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    top = torch.stack((a, b), dim=-1).flatten(-2)
    bottom = torch.stack((c, d), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)


class HaarTransform(torch.autograd.Function):
    """:func:`haar_dwt` whose backward is its adjoint, the inverse transform cropped to x's size: the
    transform is orthonormal, so the backward keeps nothing and makes no zero-filled slice gradients."""

    @staticmethod
    def forward(ctx, x):
        ctx.size = x.shape[-2:]
        return haar_dwt(x)

    @staticmethod
    def backward(ctx, grad_ll, grad_highs):
        h, w = ctx.size
        return haar_idwt(grad_ll, grad_highs)[..., :h, :w]


class HaarInverse(torch.autograd.Function):
    """:func:`haar_idwt` cropped to ``size`` (H, W); its backward is :func:`haar_dwt`, the adjoint."""

    @staticmethod
    def forward(ctx, ll, highs, size):
        return haar_idwt(ll, highs)[..., :size[0], :size[1]]

    @staticmethod
    def backward(ctx, grad):
        return (*haar_dwt(grad), None)
