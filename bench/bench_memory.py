"""Activation memory of the paper's network: what a forward keeps for its backward, fused against unfused.

For each path (``unfused``: cross-scan copies, every activation kept, as before the fused Image-SSM;
``fused``: the default, fused scan kernels and recomputation of cheap activations) it prints, side by
side:
- held GiB per image: on the CPU the growth of the process's resident memory over one forward (glibc
  set to map every block above 64 KiB on its own and unmap it when freed, so the resident size follows
  live memory); on CUDA the growth of ``torch.cuda.memory_allocated``;
- saved GiB per image: the unique storages autograd keeps for the backward (parameters excluded);
- with --train_step (CUDA): ``torch.cuda.max_memory_allocated`` of a whole training step (AdamW);
- the saved bytes per module kind (the innermost two modules around each saved tensor, batch 1).
Every case runs in a fresh subprocess.

    python bench/bench_memory.py                          # CPU, 128x128, batch 2, fp32, both paths
    python bench/bench_memory.py --amp bf16 --batch 32 --train_step --backend triton   # a GPU
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.process_memory import rss_mb  # noqa: E402 (needs ROOT on sys.path)

PATHS = ("unfused", "fused")
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
GIB = 2**30


def map_every_block():
    """Every malloc above 64 KiB gets its own mapping, returned to the kernel by free (glibc; else a no-op)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        except (OSError, AttributeError):
            pass


def build(path, backend, device, activation_checkpointing=False):
    import torch

    from models import HybriMamba

    torch.manual_seed(0)
    net = HybriMamba(scan_backend=backend).to(device).train()
    net.set_fused(path == "fused")
    net.set_activation_checkpointing(activation_checkpointing)
    return net


class SavedTensorLog:
    """Unique storages autograd saves during a forward, by the innermost two modules around them."""

    def __init__(self, net):
        self.net, self.stack, self.storages = net, [], {}
        self.parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def _push(self, module, args):
        self.stack.append(type(module).__name__)

    def _pop(self, module, args, output):
        self.stack.pop()

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.parameters and key not in self.storages:
            self.storages[key] = (" / ".join(self.stack[-2:]) or "(network)", storage.nbytes())
        return tensor

    def run(self, forward):
        import torch

        handles = [h for m in self.net.modules()
                   for h in (m.register_forward_pre_hook(self._push), m.register_forward_hook(self._pop))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                return forward()
        finally:
            for handle in handles:
                handle.remove()

    def by_module(self):
        totals = defaultdict(int)
        for where, nbytes in self.storages.values():
            totals[where] += nbytes
        return dict(totals)


def run_case(path, backend, amp, batch, size, device, train_step, activation_checkpointing=False):
    """Figures of one path, measured in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from models.selective_scan import resolve_backend

    cuda = device == "cuda"
    if not cuda:
        map_every_block()
    net = build(path, backend, device, activation_checkpointing)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def forward(images):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return net(images)

    # A small forward and backward first: libraries' code, thread pools and the compiled scan are no activations.
    forward(x[:1, :, :16, :16]).sum().backward()
    net.zero_grad(set_to_none=True)
    figures = {"backend": resolve_backend(backend, device)}
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_mb() * 2**20
    out = forward(x)
    if cuda:
        torch.cuda.synchronize()
        figures["held_gib"] = (torch.cuda.memory_allocated() - before) / GIB / batch
    else:
        figures["held_gib"] = (rss_mb() * 2**20 - before) / GIB / batch
    out.float().mean().backward()
    del out
    net.zero_grad(set_to_none=True)
    log = SavedTensorLog(net)
    out = log.run(lambda: forward(x[:1]))
    figures["saved_gib"] = sum(log.by_module().values()) / GIB
    figures["modules_mib"] = {where: nbytes / 2**20 for where, nbytes in log.by_module().items()}
    del out
    if cuda and train_step:
        net.zero_grad(set_to_none=True)
        optimizer = torch.optim.AdamW(net.optimizer_param_groups(0.02), lr=4e-4, betas=(0.9, 0.99))
        hr = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the second step has the optimizer's state
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(forward(x).float(), hr).backward()
            optimizer.step()
        torch.cuda.synchronize()
        figures["step_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    return figures


def print_tables(results):
    paths = [p for p in PATHS if p in results]
    print(f"{'path':>8} {'backend':>8} {'held GiB/img':>13} {'saved GiB/img':>14} {'step peak GiB':>14}")
    for path in paths:
        r = results[path]
        peak = f"{r['step_peak_gib']:14.2f}" if "step_peak_gib" in r else f"{'-':>14}"
        print(f"{path:>8} {r['backend']:>8} {r['held_gib']:13.2f} {r['saved_gib']:14.2f} {peak}")
    if len(paths) == 2:
        a, b = (results[p] for p in paths)
        print(f"fused / unfused: held {b['held_gib'] / a['held_gib']:.2f}, saved {b['saved_gib'] / a['saved_gib']:.2f}")
    print("\nsaved MiB per image, by the innermost two modules around each saved tensor (batch 1):")
    rows = sorted({w for p in paths for w in results[p]["modules_mib"]},
                  key=lambda w: -max(results[p]["modules_mib"].get(w, 0) for p in paths))
    print(f"| {'where':<44} | " + " | ".join(f"{p + ' MiB':>12} | {'share':>5}" for p in paths) + " |")
    print(f"|{'-' * 46}|" + "|".join(f"{'-' * 14}|{'-' * 7}" for _ in paths) + "|")
    for where in rows:
        cells = []
        for p in paths:
            mib = results[p]["modules_mib"].get(where, 0.0)
            cells.append(f"{mib:12.0f} | {100 * mib / (results[p]['saved_gib'] * 1024):4.0f}%")
        print(f"| {where:<44} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"{results[p]['saved_gib'] * 1024:12.0f} | {'100%':>5}" for p in paths)
    print(f"| {'total':<44} | {totals} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--backend", default="auto", help="selective-scan backend (default auto)")
    parser.add_argument("--amp", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2, help="images in the held-memory forward (default 2)")
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--train_step", action="store_true", help="CUDA: also the peak of a whole training step")
    parser.add_argument("--activation_checkpointing", action="store_true",
                        help="keep only each HybriMamba block's input (train.py's option of that name)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one path, print JSON
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.case:
        print(json.dumps(run_case(args.case, args.backend, args.amp, args.batch, args.size, args.device,
                                  args.train_step, args.activation_checkpointing)))
        return 0
    print(f"activation memory at {args.size}x{args.size}, paper configuration, {args.amp}, batch {args.batch}, "
          f"{args.device}, backend {args.backend}"
          f"{', activation checkpointing' if args.activation_checkpointing else ''}; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for path in args.paths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", path, "--backend", args.backend, "--amp",
               args.amp, "--batch", str(args.batch), "--size", str(args.size), "--device", args.device]
        cmd += [flag for flag, on in (("--train_step", args.train_step),
                                      ("--activation_checkpointing", args.activation_checkpointing)) if on]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            print(f"{path}: failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}", flush=True)
            continue
        results[path] = json.loads(done.stdout.strip().splitlines()[-1])
    if results:
        print_tables(results)
    return 0 if len(results) == len(args.paths) else 1


if __name__ == "__main__":
    raise SystemExit(main())
