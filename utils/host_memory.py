"""Host memory that a run keeps once it has it, so training steps stop paying page faults.

glibc's malloc hands every block above its mmap threshold (128 KiB at first) to the kernel on
free() and maps fresh, zero-filled pages on the next malloc(). A CPU training step of this network
allocates and frees gigabytes of activations (about 3 GiB per image at 128x128), so each step
faulted its whole working set in again: millions of page faults, a third of the step in the kernel,
worst in the first steps, before glibc's adaptive threshold has risen.
"""
import ctypes
import sys

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def retain_freed_memory():
    """Make glibc's malloc keep freed memory for reuse: no block gets its own mapping and the heap is
    never trimmed. The process's footprint stays at its peak, which a training run reaches every
    step anyway. Returns whether it took effect (False off glibc: macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # not glibc
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # -1 disables trimming (man mallopt); 0 mappings makes large blocks come from the reusable heap.
    return bool(mallopt(M_TRIM_THRESHOLD, -1)) and bool(mallopt(M_MMAP_MAX, 0))
