"""The project's fast pure-PyTorch selective scan: a chunked scan with a hand-written backward.

The sequence of length L is cut into nc chunks of T steps and the states are laid out as
(T, Bt, K, N, Dn, nc), step-in-chunk first, so one Python step advances every chunk of every
channel at once:
T steps of the recurrence inside all chunks in parallel (with cumulative log-decays), then nc
steps carrying the state from chunk to chunk, then one fused correction. Only decays
exp(dt*A) <= 1 and their products are formed, so nothing can overflow. The backward recomputes
the states instead of storing them and runs the adjoint recurrence with the same chunked scan
in reverse. Inputs are processed in blocks (sub-batches, channel slices) that reuse the same
work buffers, so the working memory stays bounded whatever the batch, and the CPU does not pay
page faults for fresh memory at every block.

The in-chunk recurrence has two forms with the same arithmetic: on the CPU each step forms its
decays in small cache-resident temporaries (7 operations per step); on a GPU, where every
operation is a kernel launch, the decays of all steps are formed by whole-buffer operations first
and each step is 2 launches, with blocks as large as a quarter of the free memory allows.
"""
import math
import threading

import torch
import torch.nn.functional as F

from models.selective_scan.layout import check_arguments, compute_dtype, group_view

# Elements (Bt x K x Dn x N x L) of the state tensor processed per block; the working memory is
# three buffers of this size (forward: two), one more in the whole-buffer form. On CPU 2**21 (8 MB
# float32 buffers) measured as fast as larger blocks up to L=4096; as every block costs T + nc
# Python steps, long sequences get at least STATES_PER_STEP states per step. GPUs get blocks
# between these bounds, by free memory: each Python step is a kernel launch.
CPU_BLOCK_ELEMENTS = 1 << 21
STATES_PER_STEP = 1 << 14
GPU_BLOCK_ELEMENTS = (1 << 22, 1 << 28)
OTHER_DEVICE_BLOCK_ELEMENTS = 1 << 25  # e.g. Apple's MPS, whose memory the CPU shares
# Cumulative log-decays are floored here: exp(-80) is still a normal float32, so no denormal
# arithmetic (slow on many CPUs), and a contribution damped by exp(-80) is far below precision.
LOG_DECAY_FLOOR = -80.0


def chunk_length(length):
    """Steps per chunk: the power of two nearest sqrt(L/4), 8..256.

    A step inside the chunks costs about four times the tensor work of a carry step between chunks,
    so about 4T + L/T is smallest there; measured on CPU at L = 1024..16384 (T=16, 32, 64), halving
    or doubling T changed the time by 0-20 %.
    """
    return int(min(256, max(8, 2 ** round(math.log2(max(length, 4) / 4) / 2))))


def default_block_elements(device, length, chunk, element_size=4):
    """States per block for a scan of ``length`` steps in chunks of ``chunk`` on ``device``.

    On CUDA the four state-sized buffers of the backward take at most a quarter of the free memory
    (between 16 MB and 1 GB each in float32): the fewer the blocks, the fewer the launches.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free_bytes = torch.cuda.mem_get_info(device)[0]
        low, high = GPU_BLOCK_ELEMENTS
        return int(min(high, max(low, free_bytes // (16 * element_size))))
    if device.type != "cpu":
        return OTHER_DEVICE_BLOCK_ELEMENTS
    return max(CPU_BLOCK_ELEMENTS, STATES_PER_STEP * (chunk + -(-length // chunk)))


class _Workspace:
    """Named work buffers reused by every block of a call (blocks come largest first), and the form of
    the in-chunk recurrence: ``whole_buffers`` gives it a spare state-sized buffer."""

    def __init__(self, whole_buffers):
        self.buffers = {}
        self.whole_buffers = whole_buffers

    def take(self, name, shape, like):
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype:
            buffer = self.buffers[name] = like.new_empty(numel)
        return buffer[:numel].view(shape)

    def spare(self, shape, like):
        """The spare buffer of the whole-buffer form, or None in the per-step form."""
        return self.take("spare", shape, like) if self.whole_buffers else None


_cpu_workspaces = threading.local()


def _workspace(device, whole_buffers):
    """The work buffers for a call on ``device``. On CPU they are kept between calls, per thread and
    inference mode (three blocks, 24-48 MB in float32 at the network's sizes): fresh memory from the OS
    costs a page fault per 4 kB, which took a large share of the scan's time. CUDA's caching allocator
    already reuses memory."""
    if device.type != "cpu":
        return _Workspace(whole_buffers)
    # Tensors made under inference_mode cannot be written outside it (and the reverse), so each
    # mode keeps its own buffers.
    if not hasattr(_cpu_workspaces, "by_mode"):
        _cpu_workspaces.by_mode = {}
    key = (torch.is_inference_mode_enabled(), whole_buffers)
    return _cpu_workspaces.by_mode.setdefault(key, _Workspace(whole_buffers))


def _to_chunks(x, chunk):
    """(Bt, K, X, L) -> contiguous (T, Bt, K, X, nc): time zero-padded to nc*T steps, step-in-chunk first.

    A plain 2-D transpose (rows Bt*K*X*nc, columns T), several times cheaper than a general permute.
    """
    pad = -x.shape[-1] % chunk
    if pad:
        x = F.pad(x, (0, pad))
    bt, groups, width, padded = x.shape
    return x.reshape(-1, chunk).t().contiguous().view(chunk, bt, groups, width, padded // chunk)


def _from_chunks(x, out):
    """Copy (T, Bt, K, X, nc) into ``out`` (Bt, K, X, L), dropping the padding; returns ``out``."""
    chunk, bt, groups, width, nc = x.shape
    rows = x.reshape(chunk, -1).t()
    if nc * chunk == out.shape[-1] and out.is_contiguous():
        out.view(rows.shape).copy_(rows)
    else:
        out.copy_(rows.reshape(bt, groups, width, nc * chunk)[..., :out.shape[-1]])
    return out


def _state_sum(x, weight, out=None):
    """sum_n x[..., n, :, :] * weight[..., n, :, :]: (..., N, Dn, nc) states, weight broadcastable
    -> (..., Dn, nc), written into ``out`` if given."""
    total = torch.mul(x[..., 0, :, :], weight[..., 0, :, :], out=out)
    for n in range(1, x.shape[-3]):
        total.addcmul_(x[..., n, :, :], weight[..., n, :, :])
    return total


def _channel_sum(x, weight, work):
    """sum_d x[..., d, :] * weight[..., d, :]: (T, Bt, K, N, Dn, nc) states, (T, Bt, K, Dn, nc) weight
    -> (T, Bt, K, N, nc); ``work`` (like x) holds the products."""
    return torch.mul(x, weight[:, :, :, None], out=work).sum(-2)


def _in_chunks_per_step(steps, a, drive, signal, order, h, decay):
    """The in-chunk recurrence, all its work per step: small temporaries that stay in the CPU's cache,
    each full buffer written once."""
    log_step, step_decay, cumulative = (torch.empty_like(h[0]) for _ in range(3))
    prev = None
    for t in order:
        torch.mul(steps[t][:, :, None], a[..., None], out=log_step)
        torch.mul(drive[t][:, :, None], signal[t][..., None, :], out=h[t])
        if prev is None:
            cumulative.copy_(log_step)
        else:
            h[t].addcmul_(torch.exp(log_step, out=step_decay), h[prev])
            cumulative.add_(log_step)
        torch.clamp(cumulative, min=LOG_DECAY_FLOOR, out=decay[t]).exp_()
        prev = t


def _in_chunks_whole_buffers(steps, a, drive, signal, order, h, decay, spare):
    """The same recurrence with the decays of all steps formed at once: two launches per step on a GPU."""
    log_step = torch.mul(steps[:, :, :, None], a[..., None], out=spare)
    decay[order[0]].copy_(log_step[order[0]])
    for prev, t in zip(order, order[1:]):
        torch.add(decay[prev], log_step[t], out=decay[t])
    decay.clamp_(min=LOG_DECAY_FLOOR).exp_()
    step_decay = log_step.exp_()
    torch.mul(drive[:, :, :, None], signal[..., None, :], out=h)
    for prev, t in zip(order, order[1:]):
        h[t].addcmul_(step_decay[t], h[prev])


def _scan_chunks(steps, a, drive, signal, reverse, out, work, spare=None):
    """States of h_t = exp(steps_t * a) h_{t-1} + drive_t * signal_t (h_{t+1} if reverse), h zero outside.

    steps, drive: (T, Bt, K, Dn, nc); a: (K, N, Dn); signal: (T, Bt, K, N, nc); out, work and, if
    given, spare: uninitialised (T, Bt, K, N, Dn, nc) buffers. With ``spare`` the in-chunk decays are
    formed by whole-buffer operations (for GPUs), else step by step. Returns ``out`` filled with the
    states; ``work`` and ``spare`` are overwritten.
    """
    chunk, nc = steps.shape[0], steps.shape[-1]
    h, decay = out, work
    # Inside every chunk at once, one step at a time: the local state from a zero start and the
    # decay since the chunk's start.
    order = range(chunk - 1, -1, -1) if reverse else range(chunk)
    if spare is None:
        _in_chunks_per_step(steps, a, drive, signal, order, h, decay)
    else:
        _in_chunks_whole_buffers(steps, a, drive, signal, order, h, decay, spare)
    # Across chunks: the state entering chunk k (zero for the first one).
    edge = 0 if reverse else chunk - 1
    entering = h.new_zeros((nc,) + h.shape[1:-1])  # (nc, Bt, K, N, Dn)
    order = range(nc - 2, -1, -1) if reverse else range(1, nc)
    for k in order:
        prev = k + 1 if reverse else k - 1
        torch.addcmul(h[edge, ..., prev], decay[edge, ..., prev], entering[prev], out=entering[k])
    h.addcmul_(decay, entering.permute(1, 2, 3, 4, 0))
    return h


def _step_sizes(delta, delta_bias, delta_softplus):
    """dt = softplus(delta + delta_bias) (or without softplus) and d dt / d(delta + delta_bias)."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        return F.softplus(delta), torch.sigmoid(delta)
    return delta, None


def _forward_block(steps, dtu, a, b_chunks, c_chunks, workspace, out):
    """Write y without the D skip for one block into ``out``, in chunk layout (T, Bt, K, Dn, nc).

    steps (dt), dtu (dt*u): (T, Bt, K, Dn, nc); a: (K, N, Dn); b_chunks, c_chunks: (T, Bt, K, N, nc).
    """
    shape = steps.shape[:3] + a.shape[1:] + steps.shape[-1:]
    h = _scan_chunks(steps, a, dtu, b_chunks, False, workspace.take("h", shape, steps),
                     workspace.take("work", shape, steps), workspace.spare(shape, steps))
    _state_sum(h, c_chunks[..., None, :], out=out)


def _backward_block(gy, steps, next_steps, dtu, u, a, b_chunks, c_chunks, workspace, grad_u, grad_dt):
    """Gradients of one block, all in chunk layout. gy, steps (dt), next_steps (dt one step later),
    dtu (dt*u), u: (T, Bt, K, Dn, nc); a: (K, N, Dn); b_chunks, c_chunks: (T, Bt, K, N, nc).

    Writes grad_u, grad_dt (T, Bt, K, Dn, nc); returns grad_a (K, N, Dn), grad_B, grad_C (T, Bt, K, N, nc).
    """
    shape = steps.shape[:3] + a.shape[1:] + steps.shape[-1:]
    work, spare = workspace.take("work", shape, steps), workspace.spare(shape, steps)
    h = _scan_chunks(steps, a, dtu, b_chunks, False, workspace.take("h", shape, steps), work, spare)
    grad_c = _channel_sum(h, gy, work)
    # Adjoint: lam_t = C_t grad_y_t + exp(dt_{t+1} A) lam_{t+1}.
    lam = _scan_chunks(next_steps, a, gy, c_chunks, True, workspace.take("lam", shape, steps), work, spare)
    # d loss / d(dt_t A) = lam_t exp(dt_t A) h_{t-1} = lam_t (h_t - dt_t u_t B_t).
    drive = torch.mul(dtu[:, :, :, None], b_chunks[..., None, :], out=work)
    q = h.sub_(drive).mul_(lam)
    _state_sum(q, a[..., None], out=grad_dt)
    grad_a = q.mul_(steps[:, :, :, None]).sum(0).sum((0, -1))
    lam_b = _state_sum(lam, b_chunks[..., None, :])
    grad_b = _channel_sum(lam, dtu, work)
    torch.mul(lam_b, steps, out=grad_u)
    grad_dt.addcmul_(lam_b, u)
    return grad_a, grad_b, grad_c


def _blocks(bt, groups, width, length, n, block_elements):
    """Yield (batch slice, channel-in-group slices) covering the input with about block_elements states per block."""
    per_channel = groups * n * length
    if per_channel * width <= block_elements:
        batch_step, width_step = max(1, block_elements // (per_channel * width)), width
    else:
        batch_step, width_step = 1, max(1, block_elements // per_channel)
    widths = [slice(d0, d0 + width_step) for d0 in range(0, width, width_step)]
    for b0 in range(0, bt, batch_step):
        yield slice(b0, b0 + batch_step), widths


def _grouped_inputs(u, delta, A, B, C, delta_bias, grad_y=None):
    """Inputs in the compute dtype, channels split by group: u, delta (and grad_y) (Bt, K, Dn, L),
    a (K, N, Dn), B, C (Bt, K, N, L), bias (K, Dn) or None."""
    dtype = compute_dtype(u)
    groups, n = B.shape[1], B.shape[2]
    grouped = [group_view(x.to(dtype), groups).contiguous() for x in (u, delta)]
    a = A.to(dtype).reshape(groups, -1, n).transpose(1, 2)
    bias = None if delta_bias is None else delta_bias.to(dtype).reshape(groups, -1)
    extra = [] if grad_y is None else [group_view(grad_y.to(dtype), groups).contiguous()]
    return grouped + [a, B.to(dtype), C.to(dtype), bias] + extra


class _ChunkedScan(torch.autograd.Function):
    """Autograd wrapper; computes in float32 (float64 for float64 inputs) even under autocast."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, block_elements, whole_buffers):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.options = (delta_softplus, chunk, block_elements, whole_buffers)
        with torch.autocast(u.device.type, enabled=False):
            uf, df, a, Bf, Cf, bias = _grouped_inputs(u, delta, A, B, C, delta_bias)
            workspace = _workspace(u.device, whole_buffers)
            y = torch.empty_like(uf)
            for bs, widths in _blocks(*uf.shape, a.shape[1], block_elements):
                dt, _ = _step_sizes(df[bs], bias, delta_softplus)
                steps, dtu = _to_chunks(dt, chunk), _to_chunks(dt * uf[bs], chunk)
                b_chunks, c_chunks = _to_chunks(Bf[bs], chunk), _to_chunks(Cf[bs], chunk)
                y_chunks = torch.empty_like(steps)
                for ds in widths:
                    _forward_block(steps[:, :, :, ds], dtu[:, :, :, ds], a[..., ds], b_chunks, c_chunks,
                                   workspace, out=y_chunks[:, :, :, ds])
                _from_chunks(y_chunks, y[bs])
            y = y.view(u.shape)
            if D is not None:
                y = y.addcmul_(D.to(y.dtype)[:, None], uf.view(u.shape))
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        delta_softplus, chunk, block_elements, whole_buffers = ctx.options
        with torch.autocast(u.device.type, enabled=False):
            uf, df, a, Bf, Cf, bias, gy = _grouped_inputs(u, delta, A, B, C, delta_bias, grad_y)
            workspace = _workspace(u.device, whole_buffers)
            grad_u, grad_delta = torch.empty_like(uf), torch.empty_like(uf)
            grad_a, grad_b, grad_c = torch.zeros_like(a), torch.empty_like(Bf), torch.empty_like(Cf)
            for bs, widths in _blocks(*uf.shape, a.shape[1], block_elements):
                dt, dsoftplus = _step_sizes(df[bs], bias, delta_softplus)
                steps, dtu, u_chunks = _to_chunks(dt, chunk), _to_chunks(dt * uf[bs], chunk), _to_chunks(uf[bs], chunk)
                next_steps = _to_chunks(F.pad(dt[..., 1:], (0, 1)), chunk)
                gy_chunks = _to_chunks(gy[bs], chunk)
                b_chunks, c_chunks = _to_chunks(Bf[bs], chunk), _to_chunks(Cf[bs], chunk)
                gu, gdt = torch.empty_like(steps), torch.empty_like(steps)
                gb, gc = torch.zeros_like(b_chunks), torch.zeros_like(c_chunks)
                for ds in widths:
                    block = [x[:, :, :, ds] for x in (gy_chunks, steps, next_steps, dtu, u_chunks, gu, gdt)]
                    ga, gb_part, gc_part = _backward_block(*block[:5], a[..., ds], b_chunks, c_chunks,
                                                           workspace, *block[5:])
                    grad_a[..., ds] += ga
                    gb += gb_part
                    gc += gc_part
                _from_chunks(gu, grad_u[bs])
                _from_chunks(gdt, grad_delta[bs])
                if delta_softplus:
                    grad_delta[bs] *= dsoftplus
                _from_chunks(gb, grad_b[bs])
                _from_chunks(gc, grad_c[bs])
            grad_u, grad_delta = grad_u.view(u.shape), grad_delta.view(u.shape)
            grad_d = None
            if D is not None:
                gyf = gy.view(u.shape)
                grad_u.addcmul_(D.to(gyf.dtype)[:, None], gyf)
                grad_d = (gyf * uf.view(u.shape)).sum((0, 2)).to(D.dtype)
            grad_bias = None if delta_bias is None else grad_delta.sum((0, 2)).to(delta_bias.dtype)
        return (grad_u.to(u.dtype), grad_delta.to(delta.dtype), grad_a.transpose(1, 2).reshape(A.shape).to(A.dtype),
                grad_b.to(B.dtype), grad_c.to(C.dtype), grad_d, grad_bias, None, None, None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                           chunk=None, block_elements=None, whole_buffers=None):
    """Chunked selective scan with the layout and result of ``selective_scan_ref``.

    u, delta: (Bt, K*Dn, L); A: (K*Dn, N); B, C: (Bt, K, N, L) or (Bt, N, L); D, delta_bias: (K*Dn,)
    or None. chunk: steps per chunk (default ``chunk_length(L)``); block_elements: states per block
    (default ``default_block_elements``); whole_buffers: the in-chunk form (default: on GPUs only).
    Returns y (Bt, K*Dn, L) in u's dtype.
    """
    B, C = check_arguments(u, delta, A, B, C, D, delta_bias)
    chunk = chunk or chunk_length(u.shape[-1])
    block_elements = block_elements or default_block_elements(u.device, u.shape[-1], chunk,
                                                              compute_dtype(u).itemsize)
    if whole_buffers is None:
        whole_buffers = u.device.type != "cpu"
    return _ChunkedScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, block_elements,
                              whole_buffers)
