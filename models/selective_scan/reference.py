"""The reference selective scan: a plain sequential loop over time, the test oracle and speed baseline."""
import torch
import torch.nn.functional as F

from models.selective_scan.layout import check_arguments, compute_dtype, group_view


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Sequential selective scan; autograd differentiates through it.

    u, delta: (Bt, K*Dn, L); A: (K*Dn, N); B, C: (Bt, K, N, L) (channel block k uses group k) or (Bt, N, L);
    D, delta_bias: (K*Dn,) or None. Returns y (Bt, K*Dn, L) in u's dtype, computed in float64 for
    float64 inputs and float32 otherwise. Per channel c and state n:
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,  y_t = sum_n C_t h_t + D u_t.
    """
    B, C = check_arguments(u, delta, A, B, C, D, delta_bias)
    dtype = compute_dtype(u)
    with torch.autocast(u.device.type, enabled=False):
        bt, channels, length = u.shape
        groups, n = B.shape[1], B.shape[2]
        uf, dt = u.to(dtype), delta.to(dtype)
        if delta_bias is not None:
            dt = dt + delta_bias.to(dtype)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        # Per-step slices contiguous: time first, then (batch, group, channel-in-group, state).
        dt_g, u_g = group_view(dt, groups), group_view(uf, groups)          # (Bt, K, Dn, L)
        a = A.to(dtype).reshape(groups, -1, n)                                  # (K, Dn, N)
        decay = torch.exp(dt_g.permute(3, 0, 1, 2)[..., None] * a)           # (L, Bt, K, Dn, N)
        b_t = B.to(dtype).permute(3, 0, 1, 2)[:, :, :, None, :]             # (L, Bt, K, 1, N)
        c_t = C.to(dtype).permute(3, 0, 1, 2)[:, :, :, :, None]             # (L, Bt, K, N, 1)
        drive = (dt_g * u_g).permute(3, 0, 1, 2)[..., None] * b_t            # (L, Bt, K, Dn, N)
        h = torch.zeros_like(drive[0])
        ys = []
        # unbind, not indexing: autograd then gathers the per-step gradients once instead of
        # building a full-size zero tensor for every step.
        for decay_t, drive_t, c_tt in zip(decay.unbind(0), drive.unbind(0), c_t.unbind(0)):
            h = decay_t * h + drive_t
            ys.append(torch.matmul(h, c_tt))                                 # (Bt, K, Dn, 1)
        y = torch.stack(ys, dim=-1).reshape(bt, channels, length)
        if D is not None:
            y = y + D.to(dtype)[:, None] * uf
    return y.to(u.dtype)
