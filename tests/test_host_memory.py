"""retain_freed_memory: a freed large block is reused by the next allocation, not faulted in again."""
import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import faces6  # noqa: F401 (fixture)
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

PREAMBLE = """
import ctypes, resource, sys, torch
from utils.host_memory import retain_freed_memory
if sys.argv[1] == "retain" and not retain_freed_memory():
    raise SystemExit("retain_freed_memory() did not take effect")

def faults(work):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""
# Eight "training steps" that allocate and free 512 MiB in 64 MiB tensors (above glibc's largest
# adaptive mmap threshold, 32 MiB).
TENSOR_STEPS = PREAMBLE + """
def step():
    xs = [torch.ones(2**24) for _ in range(4)]
    total = sum(xs)

print(*[faults(step) for _ in range(8)])
"""
# One 64 MiB block written and freed, four times: it ends at the top of the heap, which glibc trims.
TOP_OF_HEAP = PREAMBLE + """
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def block():
    pointer = libc.malloc(2**26)
    ctypes.memset(pointer, 1, 2**26)
    libc.free(pointer)

print(*[faults(block) for _ in range(4)])
"""
PAGES = 2**26 // 4096  # of one 64 MiB block


def child_faults(code, mode):
    done = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [int(f) for f in done.stdout.split()]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_later_steps_reuse_retained_memory_without_page_faults():
    # The control: glibc as it is maps fresh pages for every large tensor of every step.
    system = child_faults(TENSOR_STEPS, "system")
    assert min(system) > 8 * PAGES // 2, system
    retained = child_faults(TENSOR_STEPS, "retain")
    assert retained[0] > 8 * PAGES // 2  # the first step faults its working memory in
    # Later steps reuse it: the heap grows a little while fragmentation settles, then nothing faults.
    assert sum(retained[1:]) < sum(system[1:]) // 4, (retained, system)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_the_top_of_the_heap_is_not_given_back():
    system = child_faults(TOP_OF_HEAP, "system")
    assert min(system) > PAGES // 2, system
    retained = child_faults(TOP_OF_HEAP, "retain")
    assert retained[0] > PAGES // 2 and max(retained[1:]) < PAGES // 20, retained


def test_training_and_testing_retain_freed_memory(tmp_path, faces6, monkeypatch):
    from options import TestOptions
    from tests.test_train import run_training
    from utils.evaluation import inference
    from utils.training import trainer

    calls = []
    for module in (trainer, inference):
        monkeypatch.setattr(module, "retain_freed_memory", lambda m=module.__name__: calls.append(m))
    with pytest.raises(UserError, match="--amp fp16 needs CUDA"):  # fails right after the start
        run_training(tmp_path, faces6, "fp16", "--amp", "fp16", "--max_iters", "1")
    with pytest.raises(UserError, match="--save_as_dir"):  # the output folder is the input folder
        inference.run_test(TestOptions().parse(["--dataroot", str(faces6), "--save_as_dir", str(faces6),
                                                "--pretrain_model_path", str(faces6 / "none.pt")]), progress=False)
    assert calls == ["utils.training.trainer", "utils.evaluation.inference"]
