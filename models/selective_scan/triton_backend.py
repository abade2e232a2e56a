"""The `triton` backend: the fused Triton selective scan, and the fused Image-SSM scan, as torch custom
ops with autograd.

The kernels (triton_kernels.py, triton_image_kernels.py) run on CUDA tensors, or on CPU tensors in
Triton's interpreter (slow; for tests) when TRITON_INTERPRET=1 was set before Python started. The
forwards and the backwards are custom ops (``hybrimamba::triton_scan_forward`` / ``_backward``,
``hybrimamba::triton_image_scan_forward`` / ``_backward``) with fake (meta) implementations, so
``torch.compile`` traces a model that calls them without graph breaks. Arithmetic is float32 whatever
the inputs: the plain scan computes float64 inputs at float32 precision, the image scan refuses them
(the `torch`, `ref` and `cpp` backends compute in float64).
"""
import contextlib
from typing import List, Optional

import torch
from torch import Tensor

from models.selective_scan import image_scan
from models.selective_scan.layout import check_arguments

# Elements of one (BLOCK_D x N x CHUNK) register tile and warps per program. Chosen without a GPU at
# hand, by ptxas's register report: at 2048 elements (8 channels x N=8 x 32 steps) and 8 warps the
# backward needs 174 registers a thread on sm_90 and spills nothing (sm_80: 4 bytes); at 4096 it
# spills hundreds of bytes. Speed is for bench/bench_scan.py to measure.
TILE_ELEMENTS = 2048
DEFAULT_CHUNK = 32
NUM_WARPS = 8


def _pow2(x):
    return 1 << max(0, int(x) - 1).bit_length()


def _kernels():
    """The kernels module (imports triton), or raises ImportError."""
    from models.selective_scan import triton_kernels
    return triton_kernels


def _interpreted():
    """Whether Triton runs in its interpreter (TRITON_INTERPRET=1 set before triton was imported)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(_kernels().scan_forward_kernel, InterpretedFunction)


def triton_unavailable_reason(device):
    """None if the triton backend can run on tensors on ``device``, else one line why."""
    try:
        interpreted = _interpreted()
    except ImportError as err:
        return f"triton cannot be imported ({err}); it ships with torch's CUDA builds on Linux"
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreted:
        return None
    return (f"tensors are on '{device.type}', the Triton kernels need a CUDA device (on the CPU, Triton's slow "
            f"interpreter runs them when TRITON_INTERPRET=1 is set before Python starts)")


def launch_shape(width, n_state, length, chunk=None, block_d=None):
    """(chunk, block_d, n_block): steps per chunk (DEFAULT_CHUNK, or L rounded up to a power of two
    if shorter), channels per program, N rounded up to a power of two."""
    n_block = _pow2(n_state)
    chunk = chunk or min(DEFAULT_CHUNK, _pow2(length))
    if chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    block_d = block_d or max(1, min(_pow2(width), TILE_ELEMENTS // (n_block * chunk)))
    if block_d & (block_d - 1):
        raise ValueError(f"block_d must be a power of two, got {block_d}")
    return chunk, block_d, n_block


def _run(kernel, grid, device, *args, **constexprs):
    """Launch ``kernel`` on ``grid`` on ``device`` (its CUDA device, or the interpreter on the CPU)."""
    options = {} if device.type == "cpu" else {"num_warps": NUM_WARPS}
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, **constexprs, **options)


def _launch(kernel, u, args, width, n_state, n_chunks, chunk, block_d, **constexprs):
    """Run ``kernel`` over (batch x groups, channel blocks) on u's device."""
    bt, channels, length = u.shape
    _, _, n_block = launch_shape(width, n_state, length, chunk, block_d)
    grid = (bt * (channels // width), -(-width // block_d))
    _run(kernel, grid, u.device, *args, channels, width, n_state, length, n_chunks, N_BLOCK=n_block, BLOCK_D=block_d,
         CHUNK=chunk, **constexprs)


def _absent(x, like):
    """x, or an empty placeholder the kernels never read when x is None."""
    return like.new_empty(0) if x is None else x


@torch.library.custom_op("hybrimamba::triton_scan_forward", mutates_args=())
def _forward_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool, chunk: int, block_d: int,
                save_states: bool) -> List[Tensor]:
    """[y (like u), states entering each chunk (Bt, K*Dn, n_chunks, N) float32, or empty]."""
    bt, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    n_chunks = -(-length // chunk)
    y = torch.empty_like(u)
    states = u.new_empty((bt, channels, n_chunks, n_state) if save_states else (0,), dtype=torch.float32)
    args = (u, delta, A, B, C, _absent(D, u), _absent(delta_bias, u), y, states)
    _launch(_kernels().scan_forward_kernel, u, args, channels // groups, n_state, n_chunks, chunk, block_d,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, SAVE_STATES=save_states)
    return [y, states]


@_forward_op.register_fake
def _forward_fake(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, block_d, save_states):
    bt, channels, length = u.shape
    shape = (bt, channels, -(-length // chunk), A.shape[1]) if save_states else (0,)
    return [torch.empty_like(u), u.new_empty(shape, dtype=torch.float32)]


@torch.library.custom_op("hybrimamba::triton_scan_backward", mutates_args=())
def _backward_op(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                 delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool, chunk: int,
                 block_d: int) -> List[Tensor]:
    """Gradients [u, delta, A, B, C, D, delta_bias] in their inputs' dtypes (empty for a None D or delta_bias)."""
    bt, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    width = channels // groups
    n_chunks = states.shape[2]
    f32 = {"dtype": torch.float32}
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_a = u.new_empty((bt, channels, n_state), **f32)
    blocks = -(-width // block_d)
    grad_b, grad_c = (u.new_empty((blocks,) + tuple(B.shape), **f32) for _ in range(2))
    grad_d, grad_bias = (u.new_empty((bt, channels), **f32) for _ in range(2))
    args = (u, delta, A, B, C, _absent(D, u), _absent(delta_bias, u), states, grad_y.contiguous(),
            grad_u, grad_delta, grad_a, grad_b, grad_c, grad_d, grad_bias)
    _launch(_kernels().scan_backward_kernel, u, args, width, n_state, n_chunks, chunk, block_d,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
    return [grad_u, grad_delta, grad_a.sum(0).to(A.dtype), grad_b.sum(0).to(B.dtype), grad_c.sum(0).to(C.dtype),
            grad_d.sum(0).to(D.dtype) if D is not None else u.new_empty(0),
            grad_bias.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)]


@_backward_op.register_fake
def _backward_fake(grad_y, u, delta, A, B, C, D, delta_bias, states, delta_softplus, chunk, block_d):
    return [torch.empty_like(x) if x is not None else u.new_empty(0) for x in (u, delta, A, B, C, D, delta_bias)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, block_d, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.options = (delta_softplus, chunk, block_d)


def _backward(ctx, grad_outputs):
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    grads = _backward_op(grad_outputs[0], u, delta, A, B, C, D, delta_bias, states, *ctx.options)
    grad_d = grads[5] if D is not None else None
    grad_bias = grads[6] if delta_bias is not None else None
    return (*grads[:5], grad_d, grad_bias, None, None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, chunk=None, block_d=None):
    """The fused Triton scan with the layout and result of ``selective_scan_ref``.

    u, delta: (Bt, K*Dn, L); A: (K*Dn, N); B, C: (Bt, K, N, L) or (Bt, N, L); D, delta_bias: (K*Dn,) or
    None; float32, bfloat16 or float16 (computed in float32). chunk: steps per chunk and block_d:
    channels per program (powers of two; defaults from ``launch_shape``). Returns y (Bt, K*Dn, L) in u's dtype.
    """
    B, C = check_arguments(u, delta, A, B, C, D, delta_bias)
    reason = triton_unavailable_reason(u.device)
    if reason is not None:
        raise RuntimeError(f"the triton selective scan cannot run: {reason}")
    chunk, block_d, _ = launch_shape(u.shape[1] // B.shape[1], A.shape[1], u.shape[2], chunk, block_d)
    tensors = [x if x is None else x.contiguous() for x in (u, delta, A, B, C, D, delta_bias)]
    save_states = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    return _forward_op(*tensors, delta_softplus, chunk, block_d, save_states)[0]


# ---- the fused Image-SSM scan (triton_image_kernels.py) ----

DIRECTIONS = image_scan.DIRECTIONS


def _image_kernels():
    from models.selective_scan import triton_image_kernels
    return triton_image_kernels


def _image_grid(x, block_d):
    """(batch x directions, channel blocks): one program per direction of each channel block."""
    return (x.shape[0] * DIRECTIONS, -(-x.shape[1] // block_d))


def _image_sizes(x, x_dbl, A, chunk):
    """The kernels' size arguments: Dn, H, W, R, N and the number of chunks."""
    _, channels, height, width = x.shape
    n_state = A.shape[1]
    return channels, height, width, x_dbl.shape[2] - 2 * n_state, n_state, -(-height * width // chunk)


@torch.library.custom_op("hybrimamba::triton_image_scan_forward", mutates_args=())
def _image_forward_op(x: Tensor, x_dbl: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor, A: Tensor, D: Tensor,
                      chunk: int, block_d: int, save_states: bool) -> list[Tensor]:
    """[y (B, Dn, H, W) float32, states entering each chunk (B, K*Dn, n_chunks, N) float32, or empty]."""
    sizes = _image_sizes(x, x_dbl, A, chunk)
    bt, channels, height, width = x.shape
    f32 = {"dtype": torch.float32}
    per_direction = x.new_empty((bt, DIRECTIONS, channels, height * width), **f32)
    states = x.new_empty((bt, DIRECTIONS * channels, sizes[-1], A.shape[1]) if save_states else (0,), **f32)
    _run(_image_kernels().image_scan_forward_kernel, _image_grid(x, block_d), x.device,
         x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, per_direction, states, *sizes,
         N_BLOCK=_pow2(A.shape[1]), BLOCK_D=block_d, CHUNK=chunk, SAVE_STATES=save_states)
    return [per_direction.sum(1).view(x.shape), states]


@_image_forward_op.register_fake
def _image_forward_fake(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, chunk, block_d, save_states):
    bt, channels, height, width = x.shape
    shape = (bt, DIRECTIONS * channels, -(-height * width // chunk), A.shape[1]) if save_states else (0,)
    return [x.new_empty(x.shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)]


@torch.library.custom_op("hybrimamba::triton_image_scan_backward", mutates_args=())
def _image_backward_op(grad_y: Tensor, x: Tensor, x_dbl: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor,
                       A: Tensor, D: Tensor, states: Tensor, chunk: int, block_d: int) -> list[Tensor]:
    """Gradients [x, x_dbl, dt_proj_weight, dt_proj_bias, A, D] in their inputs' dtypes."""
    sizes = _image_sizes(x, x_dbl, A, chunk)
    bt, channels, height, width = x.shape
    grid = _image_grid(x, block_d)
    f32 = {"dtype": torch.float32}
    grad_x = x.new_empty((bt, DIRECTIONS, channels, height * width), **f32)
    grad_x_dbl = x.new_empty((grid[1], *x_dbl.shape), **f32)
    grad_w = x.new_empty((bt, *dt_proj_weight.shape), **f32)
    grad_bias, grad_d = (x.new_empty((bt, *dt_proj_bias.shape), **f32) for _ in range(2))
    grad_a = x.new_empty((bt, *A.shape), **f32)
    _run(_image_kernels().image_scan_backward_kernel, grid, x.device,
         x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, states, grad_y.contiguous(),
         grad_x, grad_x_dbl, grad_w, grad_bias, grad_a, grad_d, *sizes,
         N_BLOCK=_pow2(A.shape[1]), BLOCK_D=block_d, CHUNK=chunk, R_BLOCK=_pow2(dt_proj_weight.shape[2]))
    return [grad_x.sum(1).view(x.shape).to(x.dtype), grad_x_dbl.sum(0).to(x_dbl.dtype),
            grad_w.sum(0).to(dt_proj_weight.dtype), grad_bias.sum(0).to(dt_proj_bias.dtype),
            grad_a.sum(0).to(A.dtype), grad_d.sum(0).view(D.shape).to(D.dtype)]


@_image_backward_op.register_fake
def _image_backward_fake(grad_y, x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, states, chunk, block_d):
    return [torch.empty_like(t) for t in (x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)]


def _image_setup_context(ctx, inputs, output):
    *tensors, chunk, block_d, _ = inputs
    ctx.save_for_backward(*tensors, output[1])
    ctx.options = (chunk, block_d)


def _image_backward(ctx, grad_outputs):
    return (*_image_backward_op(grad_outputs[0], *ctx.saved_tensors, *ctx.options), None, None, None)


_image_forward_op.register_autograd(_image_backward, setup_context=_image_setup_context)


def image_selective_scan_triton(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, chunk=None, block_d=None):
    """The Image-SSM's four-direction scan in fused Triton kernels: y (B, Dn, H, W) float32.

    x (B, Dn, H, W); x_dbl (B, K=4, R+2N, H*W): direction k's (dt, B, C) projections at each pixel in
    row-major order; dt_proj_weight (K, Dn, R); dt_proj_bias (K, Dn); A (K*Dn, N); D (K*Dn,). Direction
    k scans the pixels row-major (k=0), column-major (k=1) or those reversed (k=2, 3) with
    delta = softplus(dt_proj_weight[k] @ dt + dt_proj_bias[k]); y sums the four directions' outputs at
    their pixels (``image_scan.image_selective_scan`` computes the same the unfused way). Inputs in
    float32, bfloat16 or float16, computed in float32; float64 raises ValueError. chunk (pixels per
    chunk) and block_d (channels per program): powers of two, defaults from ``launch_shape``.
    """
    tensors = (x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)
    image_scan.check_arguments(*tensors)
    if any(t.dtype == torch.float64 for t in tensors):
        raise ValueError("the triton image scan computes in float32: convert float64 inputs, or use the torch, "
                         "ref or cpp backend for float64")
    reason = triton_unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"the triton image scan cannot run: {reason}")
    _, channels, height, width = x.shape
    chunk, block_d, _ = launch_shape(channels, A.shape[1], height * width, chunk, block_d)
    tensors = [t.contiguous() for t in tensors]
    save_states = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _image_forward_op(*tensors, chunk, block_d, save_states)[0]
