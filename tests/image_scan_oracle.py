"""An unfused float64 Image-SSM scan written from the agreed interface, the oracle of the fused kernels' tests.

The four pixel orders come from explicit loops over rows and columns (not from index arithmetic like the
kernels'), dt_proj is an einsum, the scan is the project's sequential float64 loop (``selective_scan_ref``),
and the merge puts each direction's outputs back through the inverse permutation.
"""
import torch

from models.selective_scan.reference import selective_scan_ref

DIRECTIONS = 4
NAMES = ("x", "x_dbl", "dt_proj_weight", "dt_proj_bias", "A", "D")


def pixel_orders(height, width):
    """The row-major pixel (h*W + w) visited at each step of the four directions: (4, H*W) long."""
    rows = [h * width + w for h in range(height) for w in range(width)]
    cols = [h * width + w for w in range(width) for h in range(height)]
    return torch.tensor([rows, cols, rows[::-1], cols[::-1]])


def image_scan_oracle(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D):
    """y (B, Dn, H, W) float64 of the fused interface (see ``image_selective_scan_triton``), autograd-ready."""
    x, x_dbl, dt_proj_weight, dt_proj_bias, A, D = (t.double() for t in (x, x_dbl, dt_proj_weight, dt_proj_bias, A, D))
    b, d, h, w = x.shape
    r, n = dt_proj_weight.shape[2], A.shape[1]
    orders = pixel_orders(h, w)
    pixels = x.reshape(b, d, h * w)
    xs = torch.stack([pixels[:, :, order] for order in orders], dim=1)                 # (B, 4, Dn, L)
    proj = torch.stack([x_dbl[:, k][:, :, order] for k, order in enumerate(orders)], dim=1)
    deltas = torch.einsum("kdr,bkrl->bkdl", dt_proj_weight, proj[:, :, :r])
    ys = selective_scan_ref(xs.reshape(b, DIRECTIONS * d, -1), deltas.reshape(b, DIRECTIONS * d, -1), A,
                            proj[:, :, r:r + n], proj[:, :, r + n:], D=D, delta_bias=dt_proj_bias.reshape(-1),
                            delta_softplus=True).view(b, DIRECTIONS, d, -1)
    merged = sum(ys[:, k][:, :, torch.argsort(order)] for k, order in enumerate(orders))
    return merged.view(b, d, h, w)


def make_image_inputs(bt, channels, height, width, n, rank, seed=0):
    """Random float64 inputs of the fused interface, requiring grad; dt from weak to strong decay."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = {
        "x": randn(bt, channels, height, width),
        "x_dbl": randn(bt, DIRECTIONS, rank + 2 * n, height * width),
        "dt_proj_weight": randn(DIRECTIONS, channels, rank) * rank ** -0.5,
        "dt_proj_bias": randn(DIRECTIONS, channels) * 0.5 - 1.0,
        "A": -torch.exp(randn(DIRECTIONS * channels, n) * 0.5
                        + torch.log(torch.arange(1.0, n + 1, dtype=torch.float64))),
        "D": randn(DIRECTIONS * channels),
    }
    return {k: v.requires_grad_() for k, v in inputs.items()}


def output_and_grads(fn, inputs, grad_seed=1, **kwargs):
    """[y, then the gradients of <y, random weights> w.r.t. each input in NAMES order]."""
    y = fn(**inputs, **kwargs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grads = torch.autograd.grad((y.double() * weights.to(y.device)).sum(), [inputs[k] for k in NAMES])
    return [y, *grads]


def relative_errors(results, reference):
    """{name: max|x - ref| / max(max|ref|, 1)} for y and each gradient."""
    errors = {}
    for name, x, ref in zip(("y", *NAMES), results, reference):
        assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)}, expected {tuple(ref.shape)}"
        x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
        errors[name] = ((x - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()
    return errors
