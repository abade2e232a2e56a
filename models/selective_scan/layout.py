"""Argument checks and tensor layout helpers shared by the selective-scan backends."""
import torch


def compute_dtype(u):
    """The accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def group_view(x, groups):
    """(Bt, K*Dn, L) -> (Bt, K, Dn, L): channel block k belongs to B/C group k."""
    return x.reshape(x.shape[0], groups, -1, x.shape[-1])


def check_arguments(u, delta, A, B, C, D=None, delta_bias=None):
    """Validate the mamba-ssm layout and return B, C as (Bt, K, N, L) (a 3-D (Bt, N, L) means K=1).

    u, delta: (Bt, K*Dn, L); A: (K*Dn, N); D, delta_bias: (K*Dn,) or None.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, channels, length), got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    bt, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    for name, x in (("B", B), ("C", C)):
        if x.dim() != 4 or x.shape[0] != bt or x.shape[2] != n or x.shape[3] != length:
            raise ValueError(f"{name} must be ({bt}, groups, {n}, {length}) or ({bt}, {n}, {length}), "
                             f"got {tuple(x.shape)}")
    groups = B.shape[1]
    if C.shape[1] != groups or channels % groups:
        raise ValueError(f"B and C need the same number of groups dividing the {channels} channels, "
                         f"got {B.shape[1]} and {C.shape[1]}")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and tuple(x.shape) != (channels,):
            raise ValueError(f"{name} must be ({channels},), got {tuple(x.shape)}")
    return B, C
