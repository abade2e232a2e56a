"""Triton kernels of the fused Image-SSM scan (the launch code is ``image_selective_scan_triton`` in triton_backend.py).

The four-direction selective scan of an image without the unfused path's copies (cross-scan, the
(B, K*Dn, L) step sizes, per-direction outputs kept for the backward). One program owns one (batch
item, direction k, block of BLOCK_D channels) and walks direction k's pixel order in chunks of CHUNK
steps, with the plain scan's chunk machinery (triton_kernels.py): step t reads pixel p_k(t) of the
feature map x (B, Dn, H, W) and of the row-major projections x_dbl (B, K, R+2N, H*W) by index
arithmetic, and forms delta = W_k dt + bias_k, dt = softplus(delta) in registers, a loop over the R
ranks (R = ceil(Dn/16) is 3..24 at the network's sizes: too small for tl.dot). Arithmetic is float32
whatever the input dtypes; float64 is not supported (the launch code refuses it).

Merging without races: a pixel's four directions are computed by four programs, so each writes its
direction's outputs at their row-major pixels of its own slice of y (B, K, Dn, H*W) float32, and the
launch code sums over K (a separate, deterministic reduction). That costs a transient buffer of four
outputs, written and read once (400 MB at the first stage at batch 32: Dn=48, 128x128). The race-free
alternative, one program doing the four directions of its channels in turn and adding into y, has a
quarter of the programs: 48 for an H100's 132 SMs at the first stage at batch 8. Atomic adds would
make results depend on timing. The backward does the same for the gradient of x, and writes its
gradient of x_dbl (a sum over channels) as per-channel-block partial sums (blocks, B, K, R+2N, H*W)
that the launch code adds up, as the plain scan's backward does for B and C.

The backward saves nothing per step: it walks the chunks in reverse, recomputes the states from the
state saved at each chunk's start and runs the adjoint in reversed time with a forward scan and
``tl.flip`` (see triton_kernels.py for why not ``associative_scan(reverse=True)``).

Tensors are contiguous: x (B, Dn, H, W); x_dbl (B, K, R+2N, H*W); dt_proj weight (K, Dn, R) and
bias (K, Dn); A (K*Dn, N); D (K*Dn,).
"""
import triton
import triton.language as tl

from models.selective_scan.triton_kernels import _at_step, _chunk_states, _softplus

DIRECTIONS = tl.constexpr(4)


@triton.jit
def _image_parameters(a_ptr, d_ptr, bias_ptr, channel, n, d_mask, dn_mask, proj, dt_rank, n_state, length):
    """A block's A (BLOCK_D, N_BLOCK), D and dt bias (BLOCK_D,) in float32, and the offsets of its B and C
    projection rows (N_BLOCK,), shared by the forward and the backward kernel."""
    a = tl.load(a_ptr + channel[:, None] * n_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    skip = tl.load(d_ptr + channel, mask=d_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channel, mask=d_mask, other=0.0).to(tl.float32)
    b_rows = proj + (dt_rank + n) * length
    c_rows = b_rows + n_state * length
    return a, skip, bias, b_rows, c_rows


@triton.jit
def _direction_pixels(t, direction, height, width):
    """Row-major pixels p = h*W + w visited at steps t by ``direction`` (0: row-major, 1: column-major,
    t -> h = t % H, w = t // H; 2 and 3: those reversed); 0 at steps past the end."""
    length = height * width
    s = tl.where(direction >= 2, length - 1 - t, t)
    pixels = tl.where(direction % 2 == 1, (s % height) * width + s // height, s)
    return tl.where(t < length, pixels, 0)


@triton.jit
def _chunk_inputs(x_ptr, x_rows, d_mask, n_mask, chunk, steps, direction, height, width, length,
                  CHUNK: tl.constexpr):
    """Chunk ``chunk`` of a direction: its steps t, which are in range, the pixels they visit, the
    (channel, step) and (state, step) masks, and x at those pixels in float32 (BLOCK_D, CHUNK)."""
    t = chunk * CHUNK + steps
    valid = t < length
    pixels = _direction_pixels(t, direction, height, width)
    mask = d_mask[:, None] & valid[None, :]
    bc_mask = n_mask[:, None] & valid[None, :]
    u = tl.load(x_ptr + x_rows[:, None] * length + pixels[None, :], mask=mask, other=0.0).to(tl.float32)
    return t, valid, pixels, mask, bc_mask, u


@triton.jit
def _image_block(channels, n_state, dt_rank, length, N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (batch, direction, channel block): direction, channels and their mask, the
    channels' rows of the K*Dn parameters, states and their mask, the channels' rows of x (and of
    the (B, Dn, H, W) gradient) and of the (B, K, Dn, .) tensors, and where its x_dbl rows start."""
    batch_dir = tl.program_id(0)  # batch * K + direction
    batch = batch_dir // DIRECTIONS
    direction = batch_dir % DIRECTIONS
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < channels
    channel = direction * channels + d
    n = tl.arange(0, N_BLOCK)
    n_mask = n < n_state
    x_rows = batch.to(tl.int64) * channels + d
    rows = batch_dir.to(tl.int64) * channels + d
    proj = batch_dir.to(tl.int64) * (dt_rank + 2 * n_state) * length
    return direction, d_mask, channel, n, n_mask, x_rows, rows, proj


@triton.jit
def _projected_step_sizes(xdbl_ptr, proj, w_ptr, channel, d_mask, bias, pixels, valid, dt_rank, length,
                          BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """(dt, d dt / d delta) (BLOCK_D, CHUNK) at the pixels: dt = softplus(W_k x_dbl[dt rows] + bias_k).
    Steps past the end get dt = softplus(bias): their u, gy, B and C are 0, so it reaches no result."""
    delta = tl.zeros((BLOCK_D, CHUNK), tl.float32) + bias[:, None]
    for r in range(dt_rank):
        w = tl.load(w_ptr + channel * dt_rank + r, mask=d_mask, other=0.0).to(tl.float32)
        low = tl.load(xdbl_ptr + proj + r * length + pixels, mask=valid, other=0.0).to(tl.float32)
        delta += w[:, None] * low[None, :]
    return _softplus(delta)


@triton.jit
def image_scan_forward_kernel(x_ptr, xdbl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, ys_ptr, states_ptr,
                              channels, height, width, dt_rank, n_state, n_chunks,
                              N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
                              SAVE_STATES: tl.constexpr):
    """Direction k's outputs C h + D u for one (batch, direction, channel block), at their row-major
    pixels of y (B, K, Dn, H*W); the state entering each chunk goes to states (B, K*Dn, n_chunks, N)
    if SAVE_STATES."""
    length = height * width
    direction, d_mask, channel, n, n_mask, x_rows, rows, proj = _image_block(channels, n_state, dt_rank, length,
                                                                              N_BLOCK, BLOCK_D)
    dn_mask = d_mask[:, None] & n_mask[None, :]
    steps = tl.arange(0, CHUNK)

    a, skip, bias, b_rows, c_rows = _image_parameters(a_ptr, d_ptr, bias_ptr, channel, n, d_mask, dn_mask, proj,
                                                      dt_rank, n_state, length)
    state_at = rows[:, None] * n_chunks * n_state + n[None, :]
    h = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)
    for chunk in range(n_chunks):
        t, valid, pixels, mask, bc_mask, u = _chunk_inputs(x_ptr, x_rows, d_mask, n_mask, chunk, steps, direction,
                                                           height, width, length, CHUNK)
        dt, _ = _projected_step_sizes(xdbl_ptr, proj, w_ptr, channel, d_mask, bias, pixels, valid, dt_rank, length,
                                      BLOCK_D, CHUNK)
        b = tl.load(xdbl_ptr + b_rows[:, None] + pixels[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        c = tl.load(xdbl_ptr + c_rows[:, None] + pixels[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        if SAVE_STATES:
            tl.store(states_ptr + state_at + chunk * n_state, h, mask=dn_mask)
        hs, _ = _chunk_states(dt, dt * u, a, b, h)
        y = tl.sum(hs * c[None, :, :], axis=1) + skip[:, None] * u
        tl.store(ys_ptr + rows[:, None] * length + pixels[None, :], y, mask=mask)
        h = _at_step(hs, steps, CHUNK - 1)


@triton.jit
def image_scan_backward_kernel(x_ptr, xdbl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, states_ptr, gy_merged_ptr,
                               gxs_ptr, gxdbl_ptr, gw_ptr, gbias_ptr, ga_ptr, gd_ptr,
                               channels, height, width, dt_rank, n_state, n_chunks,
                               N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
                               R_BLOCK: tl.constexpr):
    """Gradients for one (batch, direction, channel block), given the gradient gy (B, Dn, H, W) of the merged output.

    Writes direction k's part of the gradient of x at its row-major pixels of gx (B, K, Dn, H*W), and
    partial sums the caller adds up: gxdbl (channel blocks, B, K, R+2N, H*W) (summed here over the
    block's channels), gw (B, K*Dn, R), gbias and gd (B, K*Dn), ga (B, K*Dn, N).
    """
    length = height * width
    direction, d_mask, channel, n, n_mask, x_rows, rows, proj = _image_block(channels, n_state, dt_rank, length,
                                                                              N_BLOCK, BLOCK_D)
    dn_mask = d_mask[:, None] & n_mask[None, :]
    steps = tl.arange(0, CHUNK)
    reversed_steps = CHUNK - 1 - steps
    ranks = tl.arange(0, R_BLOCK)

    a, skip, bias, b_rows, c_rows = _image_parameters(a_ptr, d_ptr, bias_ptr, channel, n, d_mask, dn_mask, proj,
                                                      dt_rank, n_state, length)
    part = (tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * (dt_rank + 2 * n_state) * length
    part_b_rows = part + (dt_rank + n) * length
    part_c_rows = part_b_rows + n_state * length
    state_at = rows[:, None] * n_chunks * n_state + n[None, :]

    lam = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)  # the adjoint entering the chunk from its right
    grad_a = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)
    grad_w = tl.zeros((BLOCK_D, R_BLOCK), tl.float32)
    grad_d = tl.zeros((BLOCK_D,), tl.float32)
    grad_bias = tl.zeros((BLOCK_D,), tl.float32)
    for back in range(n_chunks):
        chunk = n_chunks - 1 - back
        t, valid, pixels, mask, bc_mask, u = _chunk_inputs(x_ptr, x_rows, d_mask, n_mask, chunk, steps, direction,
                                                           height, width, length, CHUNK)
        gy = tl.load(gy_merged_ptr + x_rows[:, None] * length + pixels[None, :], mask=mask, other=0.0).to(tl.float32)
        dt, slope = _projected_step_sizes(xdbl_ptr, proj, w_ptr, channel, d_mask, bias, pixels, valid, dt_rank,
                                          length, BLOCK_D, CHUNK)
        b = tl.load(xdbl_ptr + b_rows[:, None] + pixels[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        h0 = tl.load(states_ptr + state_at + chunk * n_state, mask=dn_mask, other=0.0)
        hs, drive = _chunk_states(dt, dt * u, a, b, h0)

        # Adjoint, in reversed time: lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1}.
        tr = chunk * CHUNK + reversed_steps
        valid_r = tr < length
        pixels_r = _direction_pixels(tr, direction, height, width)
        pixels_next_r = _direction_pixels(tr + 1, direction, height, width)
        dt_next_r, _ = _projected_step_sizes(xdbl_ptr, proj, w_ptr, channel, d_mask, bias, pixels_next_r,
                                             tr + 1 < length, dt_rank, length, BLOCK_D, CHUNK)
        gy_r = tl.load(gy_merged_ptr + x_rows[:, None] * length + pixels_r[None, :],
                       mask=d_mask[:, None] & valid_r[None, :], other=0.0).to(tl.float32)
        c_r = tl.load(xdbl_ptr + c_rows[:, None] + pixels_r[None, :], mask=n_mask[:, None] & valid_r[None, :],
                      other=0.0).to(tl.float32)
        lam_r, _ = _chunk_states(dt_next_r, gy_r, a, c_r, lam)
        lam = _at_step(lam_r, steps, CHUNK - 1)
        lams = tl.flip(lam_r, 2)

        q = lams * (hs - drive)  # lam_t exp(dt_t A) h_{t-1}: d loss / d(dt_t A)
        lam_b = tl.sum(lams * b[None, :, :], axis=1)
        grad_delta = tl.where(mask, (tl.sum(q * a[:, :, None], axis=1) + lam_b * u) * slope, 0.0)
        tl.store(gxs_ptr + rows[:, None] * length + pixels[None, :], lam_b * dt + skip[:, None] * gy, mask=mask)
        grad_d += tl.sum(gy * u, axis=1)
        grad_bias += tl.sum(grad_delta, axis=1)
        grad_a += tl.sum(q * dt[:, None, :], axis=2)
        tl.store(gxdbl_ptr + part_b_rows[:, None] + pixels[None, :], tl.sum(lams * (dt * u)[:, None, :], axis=0),
                 mask=bc_mask)
        tl.store(gxdbl_ptr + part_c_rows[:, None] + pixels[None, :], tl.sum(hs * gy[:, None, :], axis=0), mask=bc_mask)
        # dt_proj: delta = W_k low + bias_k, so d low = W_k^T d delta and d W_k = d delta low^T.
        for r in range(dt_rank):
            w = tl.load(w_ptr + channel * dt_rank + r, mask=d_mask, other=0.0).to(tl.float32)
            low = tl.load(xdbl_ptr + proj + r * length + pixels, mask=valid, other=0.0).to(tl.float32)
            tl.store(gxdbl_ptr + part + r * length + pixels, tl.sum(w[:, None] * grad_delta, axis=0), mask=valid)
            grad_w += tl.where(ranks[None, :] == r, tl.sum(grad_delta * low[None, :], axis=1)[:, None], 0.0)

    tl.store(ga_ptr + rows[:, None] * n_state + n[None, :], grad_a, mask=dn_mask)
    tl.store(gw_ptr + rows[:, None] * dt_rank + ranks[None, :], grad_w,
             mask=d_mask[:, None] & (ranks < dt_rank)[None, :])
    tl.store(gd_ptr + rows, grad_d, mask=d_mask)
    tl.store(gbias_ptr + rows, grad_bias, mask=d_mask)
