"""The Image-SSM's four-direction scan of a feature map (docs/architecture.md §3.3), fused or unfused.

``image_selective_scan(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, backend="auto")``:
x (Bt, Dn, H, W), pixels p = h*W + w; x_dbl (Bt, K=4, R+2N, H*W): the x_proj projections of direction k
at each pixel p (in memory row-major, or pixel-major as the network makes it), rows [0, R) dt,
[R, R+N) B, [R+N, R+2N) C; dt_proj_weight (K, Dn, R); dt_proj_bias (K, Dn); A (K*Dn, N) (already
-exp(A_log)); D (K*Dn,). Direction k visits the
pixels in the order k=0 row-major, k=1 column-major, k=2 and k=3 the reverse of k=0 and k=1. Per
direction: delta = softplus(dt_proj_weight[k] @ dt + bias[k]), then the selective scan of x's pixels in
that order. Result: y (Bt, Dn, H, W), float32 (float64 for float64 x), the sum over k of each
direction's outputs put back at their pixels.

The ``cpp`` and ``triton`` backends run fused kernels (triton in float32; float64 runs unfused) that
read the four orders from x by index arithmetic and write the merged sum; every other backend runs the
unfused composition (cross-scan copies, ``selective_scan``, cross-merge), the reference the fused
kernels are tested against.
"""
import torch

from models.selective_scan import _triton, cpu_kernel, resolve_backend, selective_scan

DIRECTIONS = 4  # row-major, column-major, and both reversed


def scan_order(x, k):
    """(B, C, H, W) -> (B, C, H*W): the pixels in the order direction k visits them."""
    pixels = (x if k % 2 == 0 else x.transpose(2, 3)).flatten(2)
    return pixels.flip(-1) if k >= 2 else pixels


def cross_scan(x):
    """(B, D, H, W) -> (B, 4, D, L): x in the four scan orders."""
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


def scan_directions(xs, x_dbl, dt_proj_weight, dt_proj_bias, A, D, h, w, backend):
    """The unfused scan on inputs already in scan order: xs (B, K, Dn, L), x_dbl (B, K, R+2N, L) ->
    the merged (B, Dn, H, W), in at least float32."""
    b, k, d, length = xs.shape
    r, n = dt_proj_weight.shape[-1], A.shape[-1]
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = per_direction_matmul(dt_proj_weight, dts)
    ys = selective_scan(xs.reshape(b, k * d, length), dts.reshape(b, k * d, length), A, bs.contiguous(),
                        cs.contiguous(), D=D, delta_bias=dt_proj_bias.reshape(-1), delta_softplus=True,
                        backend=backend)
    # The merge stays in float32 under autocast, like the scan's arithmetic.
    return cross_merge(ys.to(torch.promote_types(ys.dtype, torch.float32)).view(b, k, d, length), h, w)


def image_selective_scan_unfused(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, backend="torch"):
    """The reference composition: x and each direction's rows of x_dbl copied into scan order, one
    grouped ``selective_scan`` with ``backend``, the four outputs merged."""
    b, _, h, w = x.shape
    rows = x_dbl.shape[2]
    ordered = torch.stack([scan_order(x_dbl[:, k].reshape(b, rows, h, w), k) for k in range(DIRECTIONS)], dim=1)
    return scan_directions(cross_scan(x), ordered, dt_proj_weight, dt_proj_bias, A, D, h, w, backend)


def check_arguments(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D):
    """Raise ValueError unless the shapes are those of the module docstring (every fused kernel's contract)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, channels, H, W), got {tuple(x.shape)}")
    bt, d, h, w = x.shape
    if dt_proj_weight.dim() != 3 or dt_proj_weight.shape[:2] != (DIRECTIONS, d):
        raise ValueError(f"dt_proj_weight must be ({DIRECTIONS}, {d}, R), got {tuple(dt_proj_weight.shape)}")
    if A.dim() != 2 or A.shape[0] != DIRECTIONS * d:
        raise ValueError(f"A must be ({DIRECTIONS * d}, N), got {tuple(A.shape)}")
    rows = dt_proj_weight.shape[2] + 2 * A.shape[1]
    if tuple(x_dbl.shape) != (bt, DIRECTIONS, rows, h * w):
        raise ValueError(f"x_dbl must be ({bt}, {DIRECTIONS}, R+2N={rows}, H*W={h * w}), got {tuple(x_dbl.shape)}")
    for name, t, shape in (("dt_proj_bias", dt_proj_bias, (DIRECTIONS, d)), ("D", D, (DIRECTIONS * d,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")


def fused_implementation(backend, dtype=torch.float32):
    """The fused kernel of a resolved backend name for inputs of ``dtype``, or None where it has none (the
    unfused composition runs)."""
    if backend == "cpp":
        return cpu_kernel.image_selective_scan_cpp
    if backend == "triton" and dtype != torch.float64:  # triton computes in float32; float64 goes unfused
        fused = getattr(_triton(), "image_selective_scan_triton", None)
        # Its kernels index the agreed layouts: row-major x and x_dbl (the network's are channels-last).
        return None if fused is None else lambda x, x_dbl, *rest: fused(x.contiguous(), x_dbl.contiguous(), *rest)
    return None


def image_selective_scan(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, backend="auto"):
    """The merged four-direction scan of x; arguments and result as in the module docstring."""
    check_arguments(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)
    name = resolve_backend(backend, x.device)
    fused = fused_implementation(name, x.dtype)
    if fused is not None:
        return fused(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)
    return image_selective_scan_unfused(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, backend=name)
