"""The `triton` backend: the fused Triton selective scan as a torch custom op with autograd.

The kernels (triton_kernels.py) run on CUDA tensors, or on CPU tensors in Triton's interpreter
(slow; for tests) when TRITON_INTERPRET=1 was set before Python started. The forward and the
backward are custom ops (``hybrimamba::triton_scan_forward`` / ``_backward``) with fake (meta)
implementations, so ``torch.compile`` traces a model that calls them without graph breaks.
"""
import contextlib
from typing import List, Optional

import torch
from torch import Tensor

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


def _launch(kernel, u, args, width, n_state, n_chunks, chunk, block_d, **constexprs):
    """Run ``kernel`` over (batch x groups, channel blocks) on u's device."""
    bt, channels, length = u.shape
    _, _, n_block = launch_shape(width, n_state, length, chunk, block_d)
    grid = (bt * (channels // width), -(-width // block_d))
    options = {} if u.device.type == "cpu" else {"num_warps": NUM_WARPS}
    with torch.cuda.device(u.device) if u.device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, channels, width, n_state, length, n_chunks, N_BLOCK=n_block, BLOCK_D=block_d,
                     CHUNK=chunk, **constexprs, **options)


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
