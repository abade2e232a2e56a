"""Triton kernels of the fused selective scan (the `triton` backend; the launch code is triton_backend.py).

One program owns one (batch item, group, block of BLOCK_D channels) and walks the sequence in
chunks of CHUNK steps, keeping the (BLOCK_D x N) state in registers: inside a chunk the affine maps
h -> exp(dt A) h + dt u B are composed by ``tl.associative_scan``, then applied to the state carried
in from the previous chunk. Nothing of size (channels x N x L) is ever written: the forward saves
the state entering every chunk, and the backward walks the chunks in reverse, recomputes the states
inside each chunk from that saved one and runs the adjoint recurrence
lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1}. Arithmetic is float32 whatever the input dtypes.

The adjoint scan reads its inputs in reversed time order and runs a forward scan, then flips the
result with ``tl.flip``: ``associative_scan(reverse=True)`` has been reported to combine
non-commutative operations in the wrong order (triton-lang/triton issue 4362).

Tensors are contiguous: u, delta (Bt, K*Dn, L); A (K*Dn, N); B, C (Bt, K, N, L); D, delta_bias (K*Dn,).
"""
import triton
import triton.language as tl

# softplus(x) = log(1 + exp(x)) equals x in float32 beyond this.
SOFTPLUS_LINEAR_FROM = tl.constexpr(20.0)


@triton.jit
def _compose(decay_a, drive_a, decay_b, drive_b):
    """The affine map h -> decay_b (decay_a h + drive_a) + drive_b: step a, then step b."""
    return decay_a * decay_b, decay_b * drive_a + drive_b


@triton.jit
def _step_sizes(delta_ptr, rows, t, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(dt, d dt / d(delta + bias)) at steps t of the rows (BLOCK_D, CHUNK). Masked steps (past L) have
    u = gy = 0 and B = C = 0, so their dt never reaches a result."""
    x = tl.load(delta_ptr + rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += bias[:, None]
    if SOFTPLUS:
        dt, slope = _softplus(x)
    else:
        dt = x
        slope = tl.full(x.shape, 1.0, tl.float32)
    return dt, slope


@triton.jit
def _softplus(x):
    """(softplus(x), its derivative sigmoid(x)) in float32."""
    # log1p(e) as log(w) e / (w - 1) with w = 1 + e (exact to rounding, unlike log(1 + e) for small
    # e: the network's initial dt, 1e-3..1e-1, has e of that size).
    e = tl.exp(tl.minimum(x, SOFTPLUS_LINEAR_FROM))
    w = 1.0 + e
    small = w == 1.0
    dt = tl.where(x > SOFTPLUS_LINEAR_FROM, x, tl.where(small, e, tl.log(w) * (e / tl.where(small, 1.0, w - 1.0))))
    return dt, 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _chunk_states(dt, signal, a, vector, h0):
    """States (BLOCK_D, N, CHUNK) of h_t = exp(dt_t a) h_{t-1} + signal_t vector_t inside a chunk entered
    with state h0 (BLOCK_D, N), and the drives signal_t vector_t. dt, signal: (BLOCK_D, CHUNK); vector (N, CHUNK)."""
    decay = tl.exp(dt[:, None, :] * a[:, :, None])
    drive = signal[:, None, :] * vector[None, :, :]
    total_decay, total_drive = tl.associative_scan((decay, drive), 2, _compose)
    return total_decay * h0[:, :, None] + total_drive, drive


@triton.jit
def _at_step(x, steps, index):
    """x[..., index] of a (BLOCK_D, N, CHUNK) tensor."""
    return tl.sum(tl.where(steps[None, None, :] == index, x, 0.0), axis=2)


@triton.jit
def _block(channels, width, n_state, length, N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (batch, group, channel block): its batch*groups index, channels and their mask,
    states and their mask, u/delta row of each channel and B/C row offset of each state."""
    batch_group = tl.program_id(0)
    groups = channels // width
    batch, group = batch_group // groups, batch_group % groups
    d_in = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_in < width
    channel = group * width + d_in
    n = tl.arange(0, N_BLOCK)
    n_mask = n < n_state
    row = batch.to(tl.int64) * channels + channel
    bc_rows = (batch_group.to(tl.int64) * n_state + n) * length
    return batch_group, channel, d_mask, n, n_mask, row, bc_rows


@triton.jit
def scan_forward_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, states_ptr,
                        channels, width, n_state, length, n_chunks,
                        N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE_STATES: tl.constexpr):
    """y = C h + D u for one (batch, group, channel block); the state entering each chunk goes to
    states (Bt, K*Dn, n_chunks, N) if SAVE_STATES."""
    batch_group, channel, d_mask, n, n_mask, row, bc_rows = _block(channels, width, n_state, length,
                                                                   N_BLOCK, BLOCK_D)
    dn_mask = d_mask[:, None] & n_mask[None, :]
    steps = tl.arange(0, CHUNK)

    a = tl.load(a_ptr + channel[:, None] * n_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    skip = tl.load(d_ptr + channel, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else None
    bias = tl.load(bias_ptr + channel, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    rows = row * length
    state_at = (row[:, None] * n_chunks * n_state + n[None, :])
    h = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)
    for chunk in range(0, n_chunks):
        t = chunk * CHUNK + steps
        mask = d_mask[:, None] & (t < length)[None, :]
        bc_mask = n_mask[:, None] & (t < length)[None, :]
        u = tl.load(u_ptr + rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        dt, _ = _step_sizes(delta_ptr, rows, t, mask, bias, HAS_BIAS, SOFTPLUS)
        b = tl.load(b_ptr + bc_rows[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + bc_rows[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        if SAVE_STATES:
            tl.store(states_ptr + state_at + chunk * n_state, h, mask=dn_mask)
        hs, _ = _chunk_states(dt, dt * u, a, b, h)
        y = tl.sum(hs * c[None, :, :], axis=1)
        if HAS_D:
            y += skip[:, None] * u
        tl.store(y_ptr + rows[:, None] + t[None, :], y, mask=mask)
        h = _at_step(hs, steps, CHUNK - 1)


@triton.jit
def scan_backward_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, states_ptr, gy_ptr,
                         gu_ptr, gdelta_ptr, ga_ptr, gb_ptr, gc_ptr, gd_ptr, gbias_ptr,
                         channels, width, n_state, length, n_chunks,
                         N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr,
                         HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Gradients for one (batch, group, channel block), given the output gradient gy.

    Writes gu, gdelta (like u); per-program partial sums the caller adds up: ga (Bt, K*Dn, N),
    gd and gbias (Bt, K*Dn), gb and gc (channel blocks, Bt, K, N, L) (summed here over the block's channels).
    """
    batch_group, channel, d_mask, n, n_mask, row, bc_rows = _block(channels, width, n_state, length,
                                                                   N_BLOCK, BLOCK_D)
    dn_mask = d_mask[:, None] & n_mask[None, :]
    steps = tl.arange(0, CHUNK)
    reversed_steps = CHUNK - 1 - steps

    a = tl.load(a_ptr + channel[:, None] * n_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    skip = tl.load(d_ptr + channel, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else None
    bias = tl.load(bias_ptr + channel, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    rows = row * length
    part_rows = ((tl.program_id(1).to(tl.int64) * tl.num_programs(0) + batch_group) * n_state + n) * length
    state_at = (row[:, None] * n_chunks * n_state + n[None, :])

    lam = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)  # the adjoint entering the chunk from its right
    grad_a = tl.zeros((BLOCK_D, N_BLOCK), tl.float32)
    grad_d = tl.zeros((BLOCK_D,), tl.float32)
    grad_bias = tl.zeros((BLOCK_D,), tl.float32)
    for back in range(0, n_chunks):
        chunk = n_chunks - 1 - back
        t = chunk * CHUNK + steps
        mask = d_mask[:, None] & (t < length)[None, :]
        bc_mask = n_mask[:, None] & (t < length)[None, :]
        u = tl.load(u_ptr + rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        dt, slope = _step_sizes(delta_ptr, rows, t, mask, bias, HAS_BIAS, SOFTPLUS)
        b = tl.load(b_ptr + bc_rows[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        h0 = tl.load(states_ptr + state_at + chunk * n_state, mask=dn_mask, other=0.0)
        hs, drive = _chunk_states(dt, dt * u, a, b, h0)

        # Adjoint, in reversed time: lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1}.
        tr = chunk * CHUNK + reversed_steps
        mask_r = d_mask[:, None] & (tr < length)[None, :]
        next_mask_r = d_mask[:, None] & (tr + 1 < length)[None, :]
        dt_next_r, _ = _step_sizes(delta_ptr, rows, tr + 1, next_mask_r, bias, HAS_BIAS, SOFTPLUS)
        gy_r = tl.load(gy_ptr + rows[:, None] + tr[None, :], mask=mask_r, other=0.0).to(tl.float32)
        c_r = tl.load(c_ptr + bc_rows[:, None] + tr[None, :], mask=n_mask[:, None] & (tr < length)[None, :],
                      other=0.0).to(tl.float32)
        lam_r, _ = _chunk_states(dt_next_r, gy_r, a, c_r, lam)
        lam = _at_step(lam_r, steps, CHUNK - 1)
        lams = tl.flip(lam_r, 2)

        q = lams * (hs - drive)  # lam_t exp(dt_t A) h_{t-1}: d loss / d(dt_t A)
        lam_b = tl.sum(lams * b[None, :, :], axis=1)
        grad_dt = tl.sum(q * a[:, :, None], axis=1) + lam_b * u
        grad_u = lam_b * dt
        if HAS_D:
            grad_u += skip[:, None] * gy
            grad_d += tl.sum(gy * u, axis=1)
        grad_delta = tl.where(mask, grad_dt * slope, 0.0)
        tl.store(gu_ptr + rows[:, None] + t[None, :], grad_u, mask=mask)
        tl.store(gdelta_ptr + rows[:, None] + t[None, :], grad_delta, mask=mask)
        grad_bias += tl.sum(grad_delta, axis=1)
        grad_a += tl.sum(q * dt[:, None, :], axis=2)
        tl.store(gb_ptr + part_rows[:, None] + t[None, :], tl.sum(lams * (dt * u)[:, None, :], axis=0), mask=bc_mask)
        tl.store(gc_ptr + part_rows[:, None] + t[None, :], tl.sum(hs * gy[:, None, :], axis=0), mask=bc_mask)

    tl.store(ga_ptr + row[:, None] * n_state + n[None, :], grad_a, mask=dn_mask)
    if HAS_D:
        tl.store(gd_ptr + row, grad_d, mask=d_mask)
    if HAS_BIAS:
        tl.store(gbias_ptr + row, grad_bias, mask=d_mask)
