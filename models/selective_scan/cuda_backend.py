"""The optional mamba-ssm CUDA kernels: probed once, never imported at module load."""
import torch

from models.selective_scan.layout import check_arguments

_probe = None  # (selective_scan_fn or None, reason or None) once probed


def _import_failure_reason(err):
    """One line saying why importing mamba-ssm's selective scan failed."""
    missing = getattr(err, "name", None) if isinstance(err, ImportError) else None
    if missing is not None and missing.split(".")[0] == "mamba_ssm":
        return "mamba-ssm not installed"
    if missing == "selective_scan_cuda" or "selective_scan_cuda" in str(err):
        return ("mamba_ssm imported but its compiled kernels (selective_scan_cuda) are missing: it was installed "
                "without building CUDA kernels (reinstall with MAMBA_FORCE_BUILD=TRUE pip install "
                "--no-build-isolation mamba-ssm)")
    if missing is not None:
        return f"mamba_ssm needs the missing module '{missing}' (pip install {missing.split('.')[0]})"
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"importing mamba_ssm failed: {type(err).__name__}: {first_line}"


def _probed():
    """(selective_scan_fn, None) if mamba-ssm's kernels import, else (None, reason); probed once per process."""
    global _probe
    if _probe is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            _probe = (selective_scan_fn, None)
        except Exception as err:  # a broken install fails in many ways (missing .so, triton, CUDA runtime)
            _probe = (None, _import_failure_reason(err))
    return _probe


def reset_probe():
    """Forget the probe result so the next call imports again (tests substitute fake modules)."""
    global _probe
    _probe = None


def device_runs_kernels(device):
    """Whether tensors on ``device`` can be given to the CUDA kernels."""
    return torch.device(device).type == "cuda"


def cuda_unavailable_reason(device=None):
    """None if the mamba-ssm backend can run (on ``device`` if given, else on this machine), else one line why."""
    reason = _probed()[1]
    if reason is not None:
        return reason
    if device is None:
        return None if torch.cuda.is_available() else "no CUDA device"
    if not device_runs_kernels(device):
        return f"tensors are on '{torch.device(device).type}', the mamba-ssm kernels need a CUDA device"
    return None


def selective_scan_cuda(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """mamba-ssm's fused kernel. u, delta: (Bt, K*Dn, L); A: (K*Dn, N); B, C: (Bt, K, N, L) or (Bt, N, L).

    The kernels want delta, B, C in u's dtype and A, D, delta_bias in float32, all contiguous.
    """
    B, C = check_arguments(u, delta, A, B, C, D, delta_bias)
    fn, reason = _probed()
    if fn is None:
        raise RuntimeError(f"the cuda selective scan is unavailable: {reason}")

    def same_as_u(x):
        return x.to(u.dtype).contiguous()

    def float32(x):
        return None if x is None else x.float().contiguous()

    return fn(u.contiguous(), same_as_u(delta), float32(A), same_as_u(B), same_as_u(C),
              D=float32(D), z=None, delta_bias=float32(delta_bias), delta_softplus=delta_softplus,
              return_last_state=False)
