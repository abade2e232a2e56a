"""An exporter-friendly formulation of HybriMamba, swapped in when the network goes to ONNX.

Two parts of the network do not reach ONNX as they are written for training:
- the FWM's Fourier branch computes on complex tensors (``rfft2``, ``abs``, the phase ``X/|X|``,
  ``irfft2``): ONNX has almost no complex operators and ONNX runtimes almost no complex support;
- the selective scan runs as a compiled kernel (``cpp``, ``cuda``, ``triton``), which no exporter
  sees into, or as the chunked ``torch`` scan, whose Python loops (their count set by the input's
  size) a trace can only unroll into hundreds of steps per scan for one fixed size.

``onnx_friendly(model)`` returns a copy of the model in which every Fourier branch computes the
same transform on real/imaginary pairs, with the DFT as matrix products (:class:`RealFourierBranch`),
and every Image-SSM runs :func:`chunked_scan`, a selective scan of plain tensor operations and two
loops that stay loops in the graph (ONNX Scan). Both read the original modules' parameters, so the
copy computes what the model computes, to float32 rounding (tests/test_onnx.py checks it); the model
itself is left untouched. Sizes stay symbolic (the DFT matrices are built from the input's shape),
so a graph exported with dynamic sizes serves any input size.
"""
import copy
import importlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from models.fwm import FourierBranch
from models.image_ssm import ImageSSM
from models.pretrained import metadata
from models.selective_scan.image_scan import DIRECTIONS, cross_merge, cross_scan, per_direction_matmul
from utils.atomic_file import atomic_output
from utils.errors import UserError

try:  # torch.scan-to-be, which the ONNX exporter writes as one Scan loop (not in every torch the project runs on)
    from torch._higher_order_ops.scan import scan
except ImportError:
    scan = None

INPUT, OUTPUT = "lr_upsampled", "sr"
# Dynamic graphs take H and W in multiples of 8: the stage at H/4 then has even sides for its wavelets.
DYNAMIC_MULTIPLE = 8
# Steps per chunk of the scan: its in-chunk loop runs this many steps, its carry L/SCAN_CHUNK.
SCAN_CHUNK = 32


def dft_matrices(n, columns, dtype, device):
    """(cos, sin) of 2*pi*j*k/n for j < n, k < columns: (n, columns) each.

    j*k is reduced modulo n in integers first, so every angle is below 2*pi and its cosine and sine
    are as exact as for a small FFT, whatever n.
    """
    jk = torch.arange(n, device=device)[:, None] * torch.arange(columns, device=device)[None, :]
    # Floor division, not remainder: the exporter cannot write remainder by a symbolic size.
    angle = (jk - torch.div(jk, n, rounding_mode="floor") * n).to(dtype) * (2 * math.pi / n)
    return torch.cos(angle), torch.sin(angle)


def real_rfft2(x):
    """``torch.fft.rfft2(x, norm="ortho")`` of a real (..., H, W) as (real, imaginary), each (..., H, W//2+1)."""
    h, w = x.shape[-2:]
    cos_w, sin_w = dft_matrices(w, w // 2 + 1, x.dtype, x.device)
    cos_h, sin_h = dft_matrices(h, h, x.dtype, x.device)
    # Along W: Y = x e^{-i..}; along H: X = e^{-i..} Y (cos_h and sin_h are symmetric).
    y_re, y_im = x @ cos_w, -(x @ sin_w)
    scale = (h * w) ** -0.5
    return (cos_h @ y_re + sin_h @ y_im) * scale, (cos_h @ y_im - sin_h @ y_re) * scale


def real_irfft2(re, im, h, w):
    """``torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")`` for (..., h, w//2+1) halves."""
    cols = w // 2 + 1
    cos_h, sin_h = dft_matrices(h, h, re.dtype, re.device)
    cos_w, sin_w = dft_matrices(w, cols, re.dtype, re.device)
    # Inverse complex DFT along H, then the Hermitian sum along W: the columns between DC and
    # Nyquist stand for themselves and their mirror images (twice), DC and an even W's Nyquist once;
    # their imaginary parts meet sin(0) = sin(pi*w) = 0, which drops them as irfft does.
    v_re, v_im = cos_h @ re - sin_h @ im, cos_h @ im + sin_h @ re
    k = torch.arange(cols, device=re.device)
    twice = ((k > 0) & (2 * k < w)).to(re.dtype) + 1
    out = (v_re * twice) @ cos_w.transpose(0, 1) - (v_im * twice) @ sin_w.transpose(0, 1)
    return out * (h * w) ** -0.5


class RealFourierBranch(nn.Module):
    """FourierBranch on real/imaginary pairs: the same amplitude network (shared, not copied), the
    phase X/|X| (1 where |X| = 0), the DFT as matrix products.

    Bins that are zero up to rounding take a phase from their rounding noise, here as in torch's FFT
    (whose rounding differs): a channel that is exactly constant but not zero is such a case. Inside
    HybriMamba none occurs (the first 3x3 convolution's zero padding makes every map vary at its border).
    """

    def __init__(self, branch):
        super().__init__()
        self.amplitude = branch.amplitude

    def forward(self, x):
        h, w = x.shape[-2:]
        re, im = real_rfft2(x)
        mag = torch.sqrt(re * re + im * im)
        nonzero = mag > 0
        safe = torch.where(nonzero, mag, 1.0)
        phase_re, phase_im = torch.where(nonzero, re / safe, 1.0), torch.where(nonzero, im / safe, 0.0)
        mag = self.amplitude(mag)
        return real_irfft2(mag * phase_re, mag * phase_im, h, w)


def _linear_recurrence(decay, drive, init, before=False):
    """The states s_t = decay_t * s_{t-1} + drive_t along dim 0 from s_{-1} = ``init``, or with ``before``
    the states each step starts from (s_{-1} .. s_{T-2}). One ONNX Scan loop in an exported graph."""
    def step(state, inputs):
        a, b = inputs
        new = a * state + b
        return new, (state if before else new).clone()  # a scan's outputs may not alias its carry

    if torch.compiler.is_exporting():
        return scan(step, init, (decay, drive))[1]
    # Run eagerly, the same steps as a Python loop: scan itself would torch.compile them, which also starts
    # autograd's worker threads, after which a fork()ed process (DataLoader workers, DDP) cannot backpropagate.
    outputs = []
    for inputs in zip(decay, drive):
        init, out = step(init, inputs)
        outputs.append(out)
    return torch.stack(outputs)


def _softplus(x):
    """log(1 + e^x), written out: onnxruntime's Softplus operator took 4 times as long (27 against 7 ms for
    2 M values on 2 CPU cores)."""
    return torch.clamp(x, min=0) + torch.log(1 + torch.exp(-x.abs()))


def chunked_scan(u, delta, A, B, C, D, delta_bias, chunk=SCAN_CHUNK):
    """The selective scan of ``models.selective_scan.selective_scan`` (delta_softplus=True) as a graph
    an exporter can write down: y (Bt, K*Dn, L) for u, delta (Bt, K*Dn, L), A (K*Dn, N),
    B, C (Bt, K, N, L), D, delta_bias (K*Dn,). Computes in u's dtype.

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t. The sequence is cut into chunks
    of ``chunk`` steps: a loop of ``chunk`` steps runs the recurrence inside all chunks at once, from
    a zero state; a loop over the chunks carries the state from each chunk's end into the next, and
    one correction adds it, decayed by exp(cumulative dt A) since the chunk's start. So the graph
    has two loops (ONNX Scan) of chunk and L/chunk steps, for any L, instead of one of L tiny steps.
    Only decays <= 1 and their products are formed, so nothing overflows.
    """
    bt, channels, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    pad = (chunk - length % chunk) % chunk
    nc = (length + pad) // chunk

    def chunked(x):
        """(Bt, K, X, L) -> (T, Bt, K, X, nc), zero-padded: step in chunk first, the loop's axis. Only the
        inputs are laid out so, before the state axis N multiplies their size."""
        return F.pad(x, (0, pad)).unflatten(-1, (nc, chunk)).movedim(-1, 0)

    dt = chunked(_softplus(delta + delta_bias[:, None]).view(bt, groups, -1, length))    # (T, Bt, K, Dn, nc)
    dtu = dt * chunked(u.view(bt, groups, -1, length))
    b, c = chunked(B)[:, :, :, None], chunked(C)[:, :, :, None]                           # (T, Bt, K, 1, N, nc)
    a = A.view(groups, -1, n)[:, :, :, None]                                              # (K, Dn, N, 1)
    log_decay = dt[:, :, :, :, None] * a                                                  # (T, Bt, K, Dn, N, nc)
    drive = dtu[:, :, :, :, None] * b                                                     # zero in the padding
    local = _linear_recurrence(torch.exp(log_decay), drive, torch.zeros_like(drive[0]))
    since_start = torch.exp(torch.cumsum(log_decay, dim=0))
    # The state entering chunk c, carried over the chunks (their axis first for the loop).
    entering = _linear_recurrence(since_start[-1].movedim(-1, 0), local[-1].movedim(-1, 0),
                                  torch.zeros_like(local[-1][..., 0]), before=True)
    h = local + since_start * entering.movedim(0, -1)                                     # (T, Bt, K, Dn, N, nc)
    y = (h * c).sum(-2).movedim(0, -1).flatten(-2)[..., :length]                          # (Bt, K, Dn, L)
    return y.reshape(bt, channels, length) + D[:, None] * u


class ChunkedImageSSM(nn.Module):
    """ImageSSM with :func:`chunked_scan` as its scan: the same parameters (shared), projections,
    directions, merge and symmetry step."""

    def __init__(self, ssm):
        super().__init__()
        self.ssm = ssm

    def forward(self, x):
        ssm = self.ssm
        b, d, h, w = x.shape
        k, n, r = DIRECTIONS, ssm.d_state, ssm.dt_rank
        xs = cross_scan(x)
        dts, bs, cs = torch.split(per_direction_matmul(ssm.x_proj_weight, xs), [r, n, n], dim=2)
        dts = per_direction_matmul(ssm.dt_proj_weight, dts)
        ys = chunked_scan(xs.reshape(b, k * d, -1), dts.reshape(b, k * d, -1), -torch.exp(ssm.A_logs), bs, cs,
                          ssm.Ds, ssm.dt_proj_bias.reshape(-1))
        return ssm.symmetry(cross_merge(ys.view(b, k, d, -1), h, w))


def onnx_friendly(model):
    """A copy of ``model`` (HybriMamba or any part of it) with every FourierBranch and ImageSSM
    replaced by its exporter-friendly formulation; ``model`` is not changed."""
    if scan is None:
        raise UserError(f"the ONNX formulation needs torch's scan operator, which torch {torch.__version__} lacks; "
                        f"install a newer torch (tested: 2.14)")
    model = copy.deepcopy(model)
    replacements = {FourierBranch: RealFourierBranch, ImageSSM: ChunkedImageSSM}
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in replacements:
                setattr(module, child_name, replacements[type(child)](child))
    return model.train(model.training)


def require(package, feature):
    """Import ``package``, or raise a one-line ``UserError`` naming it and the extras file."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(f"{feature} needs the package '{package}': pip install {package} (requirements-extra.txt "
                        f"names the versions tested)") from None


def dynamic_example(channels):
    """(example input, dynamic_shapes) for torch.onnx.export of a (B, channels, H, W) network with any B and
    any H, W that are multiples of 8."""
    dim = torch.export.Dim
    shapes = ({0: dim("batch"), 2: DYNAMIC_MULTIPLE * dim("height8"), 3: DYNAMIC_MULTIPLE * dim("width8")},)
    # Example sizes other than 1 (and unlike each other), or the exporter fixes them.
    return torch.zeros(2, channels, 2 * DYNAMIC_MULTIPLE, 3 * DYNAMIC_MULTIPLE), shapes


def export_onnx(model, path, size=128, dynamic=False):
    """Write HybriMamba ``model`` to ``path`` as an ONNX graph (its exporter-friendly copy, float32, CPU),
    atomically; returns ``path``.

    The graph maps input ``lr_upsampled`` (B, C, H, W), the bicubic-upsampled LR face in [-1, 1], to
    ``sr``, the super-resolved face in [-1, 1]. Its size is fixed to B = 1 and H = W = ``size`` (a
    multiple of 4), or with ``dynamic`` any B and any H, W that are multiples of 8. The model's config,
    task and provenance go into the file's metadata, as in a release file.
    """
    for package in ("onnx", "onnxscript"):
        require(package, "ONNX export")
    path = Path(path)
    friendly = onnx_friendly(model).float().cpu().eval()
    channels = model.config.in_chans
    if dynamic:
        example, shapes = dynamic_example(channels)
    else:
        if size < 4 or size % 4:
            raise UserError(f"ONNX size {size}: use a multiple of 4 (the network halves the size twice)")
        shapes, example = None, torch.zeros(1, channels, size, size)
    with torch.no_grad():
        program = torch.onnx.export(friendly, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=shapes, verbose=False)
    program.model.metadata_props.update({
        **metadata(model.config, model.task, model.provenance, path),
        "input": f"{INPUT}: (B, {channels}, H, W) bicubic-upsampled LR in [-1, 1]; output {OUTPUT}: SR in [-1, 1]",
        "size": f"B, H, W dynamic (H, W multiples of {DYNAMIC_MULTIPLE})" if dynamic else f"1x{channels}x{size}x{size}",
    })
    with atomic_output(path, "the ONNX file") as tmp:
        program.save(str(tmp))
    return path
