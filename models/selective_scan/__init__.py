"""Selective scan with one interface and five backends (docs/architecture.md §3.4).

``selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True, backend="auto")`` takes the
layout of mamba-ssm's ``selective_scan_fn``: u, delta (Bt, K*Dn, L); A (K*Dn, N); B, C (Bt, K, N, L)
or (Bt, N, L); D, delta_bias (K*Dn,). Backends: ``cuda`` (mamba-ssm's kernels), ``triton`` (the fused
Triton kernels), ``cpp`` (the compiled CPU scan, built on first use), ``torch`` (the chunked
pure-PyTorch scan), ``ref`` (the sequential oracle); ``auto`` picks cuda when it can run on the
tensors' device, else triton on a CUDA device, cpp on the CPU when it builds, else torch.
"""
import logging

import torch

from models.config import SCAN_BACKENDS, check_scan_backend
from models.selective_scan import cpu_kernel, cuda_backend
from models.selective_scan.chunked import selective_scan_chunked
from models.selective_scan.cuda_backend import cuda_unavailable_reason
from models.selective_scan.reference import selective_scan_ref
from utils.errors import UserError

BACKENDS = SCAN_BACKENDS  # defined torch-free in models.config, for options/ and param.py
_IMPLEMENTATIONS = {"torch": selective_scan_chunked, "ref": selective_scan_ref,
                    "cuda": cuda_backend.selective_scan_cuda, "cpp": cpu_kernel.selective_scan_cpp}
_logged = set()

__all__ = ["BACKENDS", "selective_scan", "resolve_backend", "cuda_unavailable_reason", "triton_unavailable_reason"]


def _triton():
    """The triton backend's module, imported on first use: it registers torch custom ops, which need torch
    2.4, so that older torch runs the other backends (see triton_unavailable_reason)."""
    from models.selective_scan import triton_backend
    return triton_backend


def triton_unavailable_reason(device):
    """None if the triton backend can run on tensors on ``device``, else one line why."""
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} is too old for the Triton kernels' custom ops (they need torch >= 2.4)"
    return _triton().triton_unavailable_reason(device)


def _cpp_unavailable_reason(device_type):
    """None if the compiled CPU scan can run on tensors on ``device_type`` (building it once), else why."""
    if device_type != "cpu":
        return f"tensors are on '{device_type}', the compiled scan runs on the CPU"
    return cpu_kernel.cpp_unavailable_reason()


def _auto_choice(device, cuda_reason):
    """(backend, why the faster ones cannot run or None) for 'auto': cuda, else triton on a CUDA device,
    else cpp on the CPU, else torch."""
    if cuda_reason is None:
        return "cuda", None
    why = f"cuda unavailable: {cuda_reason}"
    if torch.device(device).type == "cpu":
        cpp_reason = _cpp_unavailable_reason("cpu")
        return ("cpp", None) if cpp_reason is None else ("torch", f"cpp unavailable: {cpp_reason}")
    if torch.device(device).type != "cuda":
        return "torch", why
    triton_reason = triton_unavailable_reason(device)
    return ("triton", why) if triton_reason is None else ("torch", f"{why}; triton unavailable: {triton_reason}")


def resolve_backend(name, device):
    """The backend ('cuda', 'triton', 'cpp', 'torch' or 'ref') that ``name`` means for tensors on ``device``;
    logged once.

    Raises UserError for an unknown name or for 'cuda', 'triton' or 'cpp' where it cannot run.
    """
    check_scan_backend(name)
    device_type = torch.device(device).type
    reason = cuda_unavailable_reason(device) if name in ("auto", "cuda") else None
    if name == "cuda" and reason is not None:
        raise UserError(f"--scan_backend cuda cannot run: {reason}; --scan_backend torch works everywhere")
    if name == "triton":
        triton_reason = triton_unavailable_reason(device)
        if triton_reason is not None:
            raise UserError(f"--scan_backend triton cannot run: {triton_reason}; --scan_backend torch works everywhere")
    if name == "cpp":
        cpp_reason = _cpp_unavailable_reason(device_type)
        if cpp_reason is not None:
            raise UserError(f"--scan_backend cpp cannot run: {cpp_reason}; --scan_backend torch works everywhere")
    resolved, why = _auto_choice(device, reason) if name == "auto" else (name, None)
    key = (name, resolved, device_type)
    if key not in _logged:
        _logged.add(key)
        why = f"; {why}" if why else ""
        logging.getLogger("hybrimamba").info(
            "selective scan: backend '%s' (%s on %s%s)", resolved, name, device_type, why)
    return resolved


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    """y (Bt, K*Dn, L) in u's dtype; h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t.

    dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias. Shapes as in the
    module docstring; channel block k (of Dn channels) uses B/C group k.
    """
    name = resolve_backend(backend, u.device)
    scan = _triton().selective_scan_triton if name == "triton" else _IMPLEMENTATIONS[name]
    return scan(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
