"""The compiled CPU selective scan (cpu_scan.cpp beside this file), built on first use.

torch.utils.cpp_extension compiles it with g++ and OpenMP into torch's extension folder
(``TORCH_EXTENSIONS_DIR``, default ~/.cache/torch_extensions), so later processes load it in a
second. The backward recomputes states from checkpoints saved every ``chunk`` steps by the forward.
Two entry points: the selective scan (``selective_scan_cpp``) and the fused Image-SSM scan
(``image_selective_scan_cpp``: four directions read from the feature map, merged into one result).
"""
import contextlib
import getpass
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from models.selective_scan.layout import check_arguments, compute_dtype

SOURCE = Path(__file__).with_name("cpu_scan.cpp")
# Steps between saved states: the backward keeps 2*CHUNK*N states per block of channels in L1/L2
# and saves N states per CHUNK steps (an eighth of u's size at N = 8, float32).
CHUNK = 32
_log = logging.getLogger("hybrimamba")
_loaded = None  # (module or None, reason or None) once tried


def build_options():
    """(extension name, compiler flags). Not -march=native: torch's extension folder may be shared by
    machines with different CPUs (a home directory on a cluster), and a binary using instructions
    another CPU lacks dies there. AVX2+FMA only when this CPU has them, and the name says so, so a
    machine without them builds and loads its own plain -O3 version. The torch version is in the
    name too: a binary built against another torch may not load."""
    flags = ["-O3", "-fopenmp", "-ffp-contract=fast"]
    name = "hybrimamba_cpu_scan_torch" + re.sub(r"\W", "_", torch.__version__)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return name + "_avx2", flags + ["-mavx2", "-mfma"]
    return name + "_generic", flags


def _build_directory(cpp_extension, name):
    """torch's extension folder for ``name``, or one in the temporary folder where that cannot be made
    (a read-only home directory)."""
    try:
        return Path(cpp_extension._get_build_directory(name, verbose=False))
    except OSError:
        path = Path(tempfile.gettempdir()) / f"torch_extensions_{getpass.getuser()}" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def _ninja_on_path():
    """Put pip's ninja on PATH while building: a venv's bin/ is not on PATH unless activated."""
    path = os.environ.get("PATH", "")
    try:
        import ninja
        if shutil.which("ninja") is None:
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = path


def build_failure_reason(err):
    """One line from a failed build: the compiler's first error line when there is one (also in the output
    of a failed compiler probe: torch < 2.5 runs `c++ -v` before building)."""
    output = getattr(err, "output", None)
    output = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    lines = f"{err}\n{output}".strip().splitlines() or [""]
    for line in lines:
        if re.search(r"error:|not found", line, re.IGNORECASE) and not line.startswith(("[", "FAILED")):
            return line.strip()
    return f"{type(err).__name__}: {lines[0]}"


# Loads a compiled library in a child process (argv: module name, path); see damaged_library_reason.
_PROBE = ("import importlib.util, sys\n"
          "import torch\n"
          "spec = importlib.util.spec_from_file_location(sys.argv[1], sys.argv[2])\n"
          "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stamp(built):
    """The file that keeps the sha256 of ``built`` once it has loaded safely."""
    return built.with_name(built.name + ".sha256")


def _keep_stamp(built):
    with contextlib.suppress(OSError):  # a read-only extension folder: the next run checks again
        _stamp(built).write_text(_sha256(built) + "\n")


def damaged_library_reason(built, name):
    """None if the compiled library ``built`` (extension module ``name``) is safe to load here, else one line why.

    A damaged file (truncated by a full disk or a killed link, rewritten under this process's feet)
    kills the process that loads it with SIGBUS, which no ``except`` catches. So a library is loaded in
    a child process first (its own session: a signal to this job's process group does not end the
    check), once per build: the sha256 of a library that loaded there is kept beside it, and later
    runs only compare the file with it."""
    with contextlib.suppress(OSError):
        if _stamp(built).read_text().strip() == _sha256(built):
            return None
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, name, str(built)], capture_output=True, text=True,
                              timeout=600, start_new_session=True)
    except subprocess.TimeoutExpired:
        return f"loading {built} in a test process did not finish in 10 minutes"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        how = (f"ended by {signal.Signals(-done.returncode).name}" if done.returncode < 0
               else f"failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
        return (f"the compiled scan {built} is damaged (loading it in a test process {how}); delete "
                f"{built.parent} to rebuild it")
    _keep_stamp(built)
    return None


def _build():
    """(module, None) or (None, one line why); logs once that it compiles, and how long it took."""
    name, flags = build_options()
    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension compiles with
    if shutil.which(compiler) is None:
        return None, f"no C++ compiler: '{compiler}' not found (install g++, or set CXX)"
    # Importing cpp_extension logs a CUDA_HOME warning on machines without CUDA: not ours to show.
    # (torch < 2.5 prints it to stderr instead: "No CUDA runtime is found, using CUDA_HOME=...")
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            from torch.utils import cpp_extension
        build_dir = _build_directory(cpp_extension, name)
        built = build_dir / f"{name}.so"
        compiling = not built.exists() or built.stat().st_mtime < SOURCE.stat().st_mtime
        if compiling:
            _log.info("selective scan: compiling the C++ CPU kernel into %s (once, about a minute)", build_dir)
        else:
            damaged = damaged_library_reason(built, name)
            if damaged:
                return None, damaged
        start = time.perf_counter()
        with _ninja_on_path(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = cpp_extension.load(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                        build_directory=str(build_dir))
        if compiling:
            _log.info("selective scan: compiled the C++ CPU kernel in %.0f s", time.perf_counter() - start)
            _keep_stamp(built)  # built and loaded by this process: no need to check it in a child
        return module, None
    except Exception as err:  # a compiler, ninja or header problem: reported, never fatal under auto
        return None, build_failure_reason(err)
    finally:
        torch_log.setLevel(level)


def cpp_unavailable_reason():
    """None if the compiled scan is loaded (building it on the first call), else one line why."""
    global _loaded
    if _loaded is None:
        _loaded = _build()
    return _loaded[1]


def _extension():
    reason = cpp_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the cpp selective scan is unavailable: {reason}")
    return _loaded[0]


def _kernel_inputs(u, delta, A, B, C, D, delta_bias):
    """Contiguous tensors in the compute dtype (float32 for bf16/fp16 inputs)."""
    dtype = compute_dtype(u)
    return [None if x is None else x.to(dtype).contiguous() for x in (u, delta, A, B, C, D, delta_bias)]


class _CompiledScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):
        y, checkpoints = _extension().forward(*_kernel_inputs(u, delta, A, B, C, D, delta_bias),
                                              delta_softplus, chunk, True)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, checkpoints)
        ctx.options = (delta_softplus, chunk)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        *inputs, checkpoints = ctx.saved_tensors
        delta_softplus, chunk = ctx.options
        grads = _extension().backward(*_kernel_inputs(*inputs), delta_softplus, chunk, checkpoints,
                                      grad_y.to(checkpoints.dtype).contiguous())
        grads = [None if g is None or not needed else g.to(x.dtype)
                 for g, x, needed in zip(grads, inputs, ctx.needs_input_grad)]
        return (*grads, None, None)


def selective_scan_cpp(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, chunk=CHUNK):
    """The compiled scan with the layout and result of ``selective_scan_ref`` (CPU tensors).

    u, delta: (Bt, K*Dn, L); A: (K*Dn, N); B, C: (Bt, K, N, L) or (Bt, N, L); D, delta_bias: (K*Dn,)
    or None. Computes in float64 for float64 inputs, else float32; returns y in u's dtype. Without
    autograd (no_grad, inference mode, or no input requiring grad) it saves no states.
    """
    B, C = check_arguments(u, delta, A, B, C, D, delta_bias)
    tensors = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        return _CompiledScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk)
    y, _ = _extension().forward(*_kernel_inputs(*tensors), delta_softplus, chunk, False)
    return y.to(u.dtype)


def _image_inputs(x, x_dbl, *parameters):
    """The image scan's tensors in the compute dtype: x contiguous or channels-last, x_dbl row-major or
    pixel-major (kept as they come when they are: the kernel reads either), the parameters contiguous."""
    dtype = compute_dtype(x)
    x = x.to(dtype)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)) or \
            x.stride(2) != x.shape[3] * x.stride(3):
        x = x.contiguous()
    x_dbl = x_dbl.to(dtype)
    if not (x_dbl.is_contiguous() or x_dbl.permute(0, 3, 1, 2).is_contiguous()):
        x_dbl = x_dbl.contiguous()
    return [x, x_dbl] + [t.to(dtype).contiguous() for t in parameters]


class _CompiledImageScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, chunk):
        y, checkpoints = _extension().image_forward(*_image_inputs(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D),
                                                    chunk, True)
        # The inputs as given (bf16 under autocast: half the bytes), converted again in the backward.
        ctx.save_for_backward(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, checkpoints)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        *inputs, checkpoints = ctx.saved_tensors
        tensors = _image_inputs(*inputs)
        grad_y = grad_y.to(checkpoints.dtype)
        if grad_y.stride() != tensors[0].stride():  # the kernel reads it in x's layout
            grad_y = torch.empty_like(tensors[0]).copy_(grad_y)
        grads = _extension().image_backward(*tensors, ctx.chunk, checkpoints, grad_y)
        grads = [g.to(x.dtype) if needed else None for g, x, needed in zip(grads, inputs, ctx.needs_input_grad)]
        return (*grads, None)


def image_selective_scan_cpp(x, x_dbl, dt_proj_weight, dt_proj_bias, A, D, chunk=CHUNK):
    """The fused Image-SSM scan (layout in models/selective_scan/image_scan.py) on CPU tensors.

    Computes in float64 for float64 x, else float32, and returns y (Bt, Dn, H, W) in that dtype, in x's
    memory format (channels-last x, the network's, gives channels-last y; x_dbl may be pixel-major, a
    permuted (Bt, H*W, K, R+2N) tensor, which the kernel reads best). Without autograd it saves no states.
    """
    tensors = (x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _CompiledImageScan.apply(*tensors, chunk)
    return _extension().image_forward(*_image_inputs(*tensors), chunk, False)[0]


def vector_exp(x):
    """The kernel's vectorised exp, elementwise (to measure its accuracy)."""
    return _extension().vector_exp(x.contiguous())
