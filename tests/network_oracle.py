"""A float64 functional re-implementation of HybriMamba, written from docs/architecture.md §2-3 alone.

Nothing here imports the project's ``models`` package: every function takes the network's parameters
as a dict of float64 tensors keyed by the project's state_dict names, and a ``prefix`` naming the
part of the network it computes. Images are (B, C, H, W); the per-pixel parts work on (B, H, W, C).
torch supplies only primitives (conv2d, FFT, elementwise maths); the scan is a sequential loop.
"""
import math

import torch
from torch.nn import functional as F

LEAKY_SLOPE = 0.01   # section 2: PyTorch's default LeakyReLU slope
NORM_EPS = 1e-5      # RMSNorm (section 3) and LayerNorm (PyTorch's default)
SYMMETRY_STRENGTH = 0.2


def float64_params(model):
    """The model's parameters and buffers by state_dict name, as float64 copies."""
    return {name: value.detach().to(torch.float64) for name, value in model.state_dict().items()}


def channels_last(x):
    return x.permute(0, 2, 3, 1)


def channels_first(x):
    return x.permute(0, 3, 1, 2)


# ----------------------------------------------------------------- elementwise pieces
def silu(x):
    return x * torch.sigmoid(x)


def gelu(x):
    """The exact (erf) GELU, PyTorch's default."""
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softplus(x):
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def leaky_relu(x):
    return torch.where(x >= 0, x, LEAKY_SLOPE * x)


def rms_norm(x, gain):
    """Over the last dimension."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * gain


def layer_norm(x, weight, bias):
    """Over the last dimension, population variance."""
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight + bias


def linear(x, weight, bias=None):
    """(..., in) -> (..., out) with weight (out, in)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def conv(x, p, name, **kwargs):
    """F.conv2d with ``name``.weight and, when the state_dict has it, ``name``.bias."""
    return F.conv2d(x, p[f"{name}.weight"], p.get(f"{name}.bias"), **kwargs)


# ----------------------------------------------------------------- FWM (3.2)
def haar_dwt(x):
    """One-level orthonormal 2-D Haar on (B, C, H, W), odd sides zero-padded at the end.

    Returns (LL, [LH, HL, HH]); LH is low-pass along the width and high-pass along the height,
    HL the other way round, with pytorch_wavelets' signs (checked against it in the tests).
    """
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    top_left, top_right = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    bottom_left, bottom_right = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll = (top_left + top_right + bottom_left + bottom_right) / 2
    lh = (top_left + top_right - bottom_left - bottom_right) / 2
    hl = (top_left - top_right + bottom_left - bottom_right) / 2
    hh = (top_left - top_right - bottom_left + bottom_right) / 2
    return ll, [lh, hl, hh]


def haar_idwt(ll, highs):
    """Inverse of ``haar_dwt`` (the transform is orthonormal: its own transpose); returns the padded size."""
    lh, hl, hh = highs
    b, c, h, w = ll.shape
    out = ll.new_zeros(b, c, 2 * h, 2 * w)
    out[..., 0::2, 0::2] = (ll + lh + hl + hh) / 2
    out[..., 0::2, 1::2] = (ll + lh - hl - hh) / 2
    out[..., 1::2, 0::2] = (ll - lh + hl - hh) / 2
    out[..., 1::2, 1::2] = (ll - lh - hl + hh) / 2
    return out


def fourier_branch(p, prefix, x):
    """irfft2(mag' * exp(i*phase)), mag' = 1x1 conv -> GELU -> 1x1 conv of |rfft2(x)| (orthonormal FFTs)."""
    spectrum = torch.fft.rfft2(x, norm="ortho")
    magnitude = conv(gelu(conv(spectrum.abs(), p, f"{prefix}.amplitude.0")), p, f"{prefix}.amplitude.2")
    phase = torch.angle(spectrum)
    return torch.fft.irfft2(torch.polar(magnitude, phase), s=x.shape[-2:], norm="ortho")


def wavelet_branch(p, prefix, x):
    """LL unchanged; LH, HL, HH each through the same 3x3 conv; inverse DWT cropped to x's size."""
    ll, highs = haar_dwt(x)
    highs = [conv(band, p, f"{prefix}.high_conv", padding=1) for band in highs]
    return haar_idwt(ll, highs)[..., :x.shape[-2], :x.shape[-1]]


def fwm(p, prefix, x):
    """(B, C, H, W) -> x + Fourier(x) + Wavelet(x)."""
    return x + fourier_branch(p, f"{prefix}.fourier", x) + wavelet_branch(p, f"{prefix}.wavelet", x)


# ----------------------------------------------------------------- Image-SSM (3.3)
def sequential_scan(u, dt, a, b, c, d):
    """h_t = exp(dt_t a) h_{t-1} + dt_t b_t u_t, y_t = <c_t, h_t> + d u_t, one step at a time.

    u, dt: (..., D, L); a: (..., D, N); b, c: (..., N, L); d: (..., D). Returns (..., D, L).
    """
    h = u.new_zeros(*u.shape[:-1], a.shape[-1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * a) * h + (dt[..., t] * u[..., t])[..., None] * b[..., None, :, t]
        ys.append((h * c[..., None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + d[..., None] * u


def scan_orders(h, w):
    """(4, L): the row-major index of each step of the four scans: row-major, column-major, both reversed."""
    grid = torch.arange(h * w).view(h, w)
    rows, cols = grid.flatten(), grid.T.flatten()
    return torch.stack((rows, cols, rows.flip(0), cols.flip(0)))


def image_ssm(p, prefix, x):
    """(B, D, H, W) -> (B, D, H, W): four directional selective scans summed, then the symmetry term.

    Direction k has its own x_proj[k], dt_proj[k], dt bias, and the k-th block of D rows of A_logs and Ds.
    """
    bt, d, h, w = x.shape
    orders = scan_orders(h, w)
    u = x.flatten(2)[:, :, orders].transpose(1, 2)                 # (B, 4, D, L), each in its scan order
    a = -torch.exp(p[f"{prefix}.A_logs"]).view(4, d, -1)           # (4, D, N)
    n = a.shape[-1]
    dt_proj = p[f"{prefix}.dt_proj_weight"]                        # (4, D, R)
    rank = dt_proj.shape[-1]
    proj = torch.einsum("kcd,bkdl->bkcl", p[f"{prefix}.x_proj_weight"], u)   # (B, 4, R + 2N, L)
    dt_low, b, c = proj.split([rank, n, n], dim=2)
    dt = softplus(torch.einsum("kdr,bkrl->bkdl", dt_proj, dt_low) + p[f"{prefix}.dt_proj_bias"][..., None])
    ys = sequential_scan(u, dt, a, b, c, p[f"{prefix}.Ds"].view(4, d))
    y = torch.zeros_like(x).flatten(2)
    for k in range(4):
        y[..., orders[k]] += ys[:, k]                              # back to row-major
    y = y.view(bt, d, h, w)
    mirrored = (y + y.flip(-1)) / 2
    weight = torch.sigmoid(p[f"{prefix}.symmetry.alpha"])
    return y + SYMMETRY_STRENGTH * ((1 - weight) * y + weight * mirrored)


# ----------------------------------------------------------------- Mamba block, LEM, Stage (3, 3.1, 3.5)
def mamba_block(p, prefix, x):
    """(B, H, W, d) -> (B, H, W, d)."""
    xz = linear(x, p[f"{prefix}.in_proj.weight"])
    inner, gate = xz.chunk(2, dim=-1)
    inner = fwm(p, f"{prefix}.fwm", channels_first(inner))
    d_inner = inner.shape[1]
    inner = silu(conv(inner, p, f"{prefix}.dwconv", padding=1, groups=d_inner))
    y = channels_last(image_ssm(p, f"{prefix}.ssm", inner))
    y = layer_norm(y, p[f"{prefix}.out_norm.weight"], p[f"{prefix}.out_norm.bias"]) * silu(gate)
    return linear(y, p[f"{prefix}.out_proj.weight"])


def mamba_layer(p, prefix, x):
    """x + MambaBlock(RMSNorm(x)); (B, H, W, d)."""
    return x + mamba_block(p, f"{prefix}.block", rms_norm(x, p[f"{prefix}.norm.weight"]))


def lem(p, prefix, x):
    """(B, H, W, d) -> (B, H, W, d)."""
    d = x.shape[-1]
    f1, f2 = conv(channels_first(x), p, f"{prefix}.project_in").split(d, dim=1)
    f1 = conv(f1, p, f"{prefix}.dwconv", padding=1, groups=d)
    squeeze = F.relu(conv(f1.mean(dim=(2, 3), keepdim=True), p, f"{prefix}.gate.1"))
    f1 = f1 * torch.sigmoid(conv(squeeze, p, f"{prefix}.gate.3"))
    f2 = layer_norm(channels_last(f2), p[f"{prefix}.mlp.0.weight"], p[f"{prefix}.mlp.0.bias"])
    f2 = linear(gelu(linear(f2, p[f"{prefix}.mlp.1.weight"], p[f"{prefix}.mlp.1.bias"])),
                p[f"{prefix}.mlp.3.weight"], p[f"{prefix}.mlp.3.bias"])
    return channels_last(conv(f1 * channels_first(f2), p, f"{prefix}.project_out"))


def count_indices(p, prefix):
    """How many ``prefix.<i>.`` entries the state_dict numbers (the depth of a Sequential)."""
    return len({name[len(prefix):].split(".")[1] for name in p if name.startswith(f"{prefix}.")})


def hybrimamba_block(p, prefix, x):
    """x = x + HybriMambaMixer(LN(x)) (n_layers Mamba layers); x = x + LEM(LN(x)); (B, H, W, d)."""
    mixed = layer_norm(x, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"])
    for i in range(count_indices(p, f"{prefix}.mixer")):
        mixed = mamba_layer(p, f"{prefix}.mixer.{i}", mixed)
    x = x + mixed
    return x + lem(p, f"{prefix}.lem", layer_norm(x, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"]))


def stage(p, prefix, x):
    """``depth`` HybriMamba blocks; (B, d, H, W) -> (B, d, H, W)."""
    x = channels_last(x)
    for i in range(count_indices(p, f"{prefix}.blocks")):
        x = hybrimamba_block(p, f"{prefix}.blocks.{i}", x)
    return channels_first(x)


# ----------------------------------------------------------------- sampling and the U-Net (2)
def down(p, prefix, x):
    """Depthwise 4x4 stride 2 padding 1, then pointwise 1x1 (no biases)."""
    return conv(conv(x, p, f"{prefix}.0", stride=2, padding=1, groups=x.shape[1]), p, f"{prefix}.1")


def up(p, prefix, x):
    """Depthwise 3x3 padding 1, pointwise 1x1 to 4*cout, PixelShuffle(2) (no biases)."""
    return F.pixel_shuffle(conv(conv(x, p, f"{prefix}.0", padding=1, groups=x.shape[1]), p, f"{prefix}.1"), 2)


def network(p, x):
    """(B, 3, H, W) -> (B, 3, H, W), H and W multiples of 4."""
    s0 = stage(p, "enc0", leaky_relu(conv(x, p, "shallow.0", padding=1)))
    s1 = stage(p, "enc1", down(p, "down1", s0))
    s2 = stage(p, "enc2", down(p, "down2", s1))
    d = stage(p, "dec1", torch.cat((stage(p, "bottleneck", s2), s2), dim=1))
    d = stage(p, "dec2", torch.cat((up(p, "up1", d), s1), dim=1))
    d = stage(p, "dec3", torch.cat((up(p, "up2", d), s0), dim=1))
    return leaky_relu(conv(d, p, "reconstruct.0", padding=1)) + x


# The parts a test can compare one by one: oracle function and the layout of its input and output.
PARTS = {
    "stage": (stage, "BCHW"),
    "hybrimamba_block": (hybrimamba_block, "BHWC"),
    "mamba_layer": (mamba_layer, "BHWC"),
    "mamba_block": (mamba_block, "BHWC"),
    "lem": (lem, "BHWC"),
    "fwm": (fwm, "BCHW"),
    "image_ssm": (image_ssm, "BCHW"),
    "down": (down, "BCHW"),
    "up": (up, "BCHW"),
}
