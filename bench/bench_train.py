"""Training throughput (images/s) and peak memory of one HybriMamba training step.

One step = forward, L1 loss, backward and AdamW update of the paper's network (embed_dim 32) at
128x128, for each batch size x selective-scan backend x precision. Every case runs in its own
subprocess: on the CPU its peak memory is the process's peak resident set size (max RSS,
including PyTorch itself; "step" is the growth over the RSS before the first step); on CUDA it
is ``torch.cuda.max_memory_allocated``. The first step is timed on its own ("1st s": it faults in
the working memory, and compiles with --compile), then the mean of the timed steps.

    python bench/bench_train.py            # batches 1 4 8, backends auto torch ref, fp32 and bf16
    python bench/bench_train.py --quick    # batches 1 4, one timed step, ref only at batch 1
    python bench/bench_train.py --batches 4 --backends cpp --amp fp32 --malloc retain system
                                           # host memory kept for reuse (train.py's way) or not
    python bench/bench_train.py --batches 2 4 --backends auto --amp fp32 --paths unfused fused
                                           # the fused Image-SSM and recomputation against the unfused
                                           # path (cross-scan copies, every activation kept), side by side
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb  # noqa: E402 (needs ROOT on sys.path)


def run_case(batch, backend, amp, steps, size, activation_checkpointing=False, compile_network=False,
             malloc="retain", path="fused"):
    """Time one first step (which compiles, with ``compile_network``) and then ``steps`` training steps;
    returns a dict of figures. ``malloc``: 'retain' keeps freed host memory for reuse as train.py does,
    'system' leaves glibc's malloc as it is. ``path``: 'fused' (the default network) or 'unfused'
    (``set_fused(False)``)."""
    import torch
    import torch.nn.functional as F

    from models import HybriMamba
    from models.selective_scan import resolve_backend
    from utils.host_memory import retain_freed_memory

    if malloc == "retain":
        retain_freed_memory()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = HybriMamba(scan_backend=backend).to(device).train()
    net.set_activation_checkpointing(activation_checkpointing)
    net.set_fused(path == "fused")
    if compile_network:
        net.compile()
    optimizer = torch.optim.AdamW(net.optimizer_param_groups(0.02), lr=4e-4, betas=(0.9, 0.99))
    lr_img = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    hr = (lr_img + 0.1 * torch.randn_like(lr_img)).clamp(-1, 1)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            sr = net(lr_img)
        F.l1_loss(sr.float(), hr).backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    figures = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} "
               f"threads)", "first_s": first, "step_s": seconds, "images_per_s": batch / seconds,
               "backend": resolve_backend(backend, device)}
    if device.type == "cuda":
        figures["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        figures["peak_mb"] = peak_rss_mb()
        figures["step_mb"] = figures["peak_mb"] - rss_before
    return figures


def cases(args):
    for batch in args.batches:
        for backend in args.backends:
            if args.quick and backend == "ref" and batch > 1:
                continue
            for amp in args.amp:
                for malloc in args.malloc:
                    for path in args.paths:
                        yield batch, backend, amp, malloc, path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches 1 4, one timed step, ref only at batch 1")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 4 8)")
    parser.add_argument("--backends", nargs="+", default=["auto", "torch", "ref"],
                        choices=["auto", "cpp", "torch", "ref", "cuda", "triton"])
    parser.add_argument("--amp", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 3, quick 1)")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--activation_checkpointing", action="store_true",
                        help="recompute block activations in the backward (train.py's option of that name)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (train.py's option of that name); the first step compiles")
    parser.add_argument("--malloc", nargs="+", default=["retain"], choices=["retain", "system"],
                        help="retain: keep freed host memory for reuse, as train.py does (default); system: glibc's "
                             "malloc as it is; give both to compare them side by side")
    parser.add_argument("--paths", nargs="+", default=["fused"], choices=["fused", "unfused"],
                        help="fused: the default network (fused Image-SSM kernels, cheap activations recomputed); "
                             "unfused: set_fused(False), the path before them; give both to compare them side by side")
    parser.add_argument("--case_timeout", type=float, default=3600, help="seconds before a case is abandoned")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args(argv)
    steps = args.steps or (1 if args.quick else 3)
    if args.case:
        batch, backend, amp, malloc, path = args.case.split(",")
        print(json.dumps(run_case(int(batch), backend, amp, steps, args.size, args.activation_checkpointing,
                                  args.compile, malloc, path)))
        return 0
    args.batches = args.batches or ([1, 4] if args.quick else [1, 4, 8])
    print(f"training step at {args.size}x{args.size}, embed_dim 32 (paper config), {steps} timed step(s) "
          f"after the first{', activation checkpointing' if args.activation_checkpointing else ''}"
          f"{', torch.compile' if args.compile else ''}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>5} {'backend':>10} {'amp':>5} {'malloc':>6} {'path':>7} {'1st s':>7} {'s/step':>9} "
          f"{'images/s':>9} {'peak MiB':>9} {'step MiB':>9}  device")
    steps_by_case = {}
    for batch, backend, amp, malloc, path in cases(args):
        label = f"{batch:>5} {backend:>10} {amp:>5} {malloc:>6} {path:>7}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{batch},{backend},{amp},{malloc},{path}",
               "--steps", str(steps), "--size", str(args.size)]
        cmd += [flag for flag, on in (("--activation_checkpointing", args.activation_checkpointing),
                                      ("--compile", args.compile)) if on]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"{label}  timed out after {args.case_timeout:.0f} s", flush=True)
            continue
        if done.returncode != 0:
            killed = f"killed by signal {-done.returncode} (out of memory?)" if done.returncode < 0 else "no output"
            reason = (done.stderr.strip().splitlines() or [killed])[-1]
            print(f"{label}  failed: {reason}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        step_mb = f"{r['step_mb']:9.0f}" if "step_mb" in r else f"{'-':>9}"
        shown = f"auto={r['backend']}" if backend == "auto" else backend
        print(f"{batch:>5} {shown:>10} {amp:>5} {malloc:>6} {path:>7} {r['first_s']:7.2f} {r['step_s']:9.2f} "
              f"{r['images_per_s']:9.3f} {r['peak_mb']:9.0f} {step_mb}  {r['device']}", flush=True)
        steps_by_case[batch, backend, amp, malloc, path] = r
    for (batch, backend, amp, malloc, path), fused in steps_by_case.items():
        unfused = steps_by_case.get((batch, backend, amp, malloc, "unfused"))
        if path == "fused" and unfused:
            print(f"batch {batch} {backend} {amp}: fused {unfused['step_s'] / fused['step_s']:.2f}x faster per step, "
                  f"{fused['peak_mb'] / unfused['peak_mb']:.2f} of the peak memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
