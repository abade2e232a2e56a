"""Benchmark of the selective-scan backends at the network's stage shapes.

For the stage shapes of the network (docs/architecture.md §2, K=4 directions, N=8 states) it
prints forward and forward+backward wall time and peak memory of each backend side by side, the
speed-ups over the first backend, and the full network's forward latency with each backend.
Defaults: on the CPU, the chunked `torch` scan against the compiled `cpp` scan and the sequential
`ref` loop at B = 1 and 8;
on CUDA, `torch` against the fused `triton` kernels (and mamba-ssm's `cuda` when it loads) at B = 8 and 32.
Every (shape, batch, backend) case runs in its own subprocess, so on CPU the peak memory is that process's peak
resident set size (ru_maxrss)
above its size once the inputs exist; on CUDA it is torch.cuda.max_memory_allocated above the
inputs. Times are the minimum over the repeats (the least disturbed by other load).

    python bench/bench_scan.py [--quick] [--device cpu|cuda] [--batch 1 8] [--backends torch cpp] [--threads N]
                               [--cpu_time]

--cpu_time --threads 1 times the process's CPU time of one thread, which other load hardly changes.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb, rss_mb  # noqa: E402 (needs ROOT on sys.path)

# (L, K*Dn) of the stages at 128x128: H*W tokens, four directions of d_inner channels.
STAGE_SHAPES = ((16384, 192), (4096, 384), (1024, 768), (1024, 1536))
GROUPS, STATES = 4, 8
# (speed-up, memory ratio) targets of (baseline, backend) pairs.
TARGETS = {("ref", "torch"): (3.0, 0.5), ("torch", "cpp"): (5.0, 1.0)}
CASE_TIME_BUDGET_S = 30.0  # stop repeating a case once it has run this long


def make_inputs(batch, length, channels, device):
    """Scan inputs like the network's at initialisation (dt in [1e-3, 1e-1], A = -[1..N])."""
    import torch

    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(channels, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "u": torch.randn(batch, channels, length, generator=g),
        "delta": torch.randn(batch, channels, length, generator=g) * 0.5,
        "A": -torch.arange(1, STATES + 1, dtype=torch.float32).repeat(channels, 1),
        "B": torch.randn(batch, GROUPS, STATES, length, generator=g),
        "C": torch.randn(batch, GROUPS, STATES, length, generator=g),
        "D": torch.ones(channels),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.to(device).requires_grad_() for k, v in inputs.items()}


def run_case(backend, batch, length, channels, device, repeats, clock=time.perf_counter):
    """Measure one case in this process: {'fwd_s', 'fwdbwd_s', 'peak_mb'}."""
    import torch

    from models.selective_scan import selective_scan

    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    inputs = make_inputs(batch, length, channels, device)
    weights = torch.randn(batch, channels, length, device=device)

    def forward():
        return selective_scan(**inputs, delta_softplus=True, backend=backend)

    def forward_backward():
        forward().backward(weights)

    # A tiny call first loads the libraries' code and thread pools, which are no working memory.
    small = make_inputs(1, 64, GROUPS * 2, device)
    selective_scan(**small, backend=backend).sum().backward()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mb()
    forward_backward()  # first run: the peak memory, and the warm-up
    sync()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else peak_rss_mb() - base

    return {"fwd_s": best_time(forward, repeats, sync, clock),
            "fwdbwd_s": best_time(forward_backward, repeats, sync, clock), "peak_mb": peak}


def best_time(fn, repeats, sync, clock=time.perf_counter):
    """The least time of ``repeats`` runs of ``fn`` (each followed by ``sync``); fewer runs once
    CASE_TIME_BUDGET_S is spent."""
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        elapsed = clock() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > CASE_TIME_BUDGET_S:
            break
    return best


def measure(backend, batch, length, channels, args):
    """Run one case in a fresh subprocess (honest peak memory) and return its measurements."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", backend, str(batch), str(length),
               str(channels), "--device", args.device, "--repeats", str(args.repeats)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.cpu_time:
        command.append("--cpu_time")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"benchmark case {backend} B={batch} L={length} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_row(cells, widths):
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def default_backends(device):
    """ref and torch on the CPU; torch, triton and, when mamba-ssm's kernels load, cuda on a GPU."""
    if not device.startswith("cuda"):
        return ["torch", "cpp", "ref"]
    from models.selective_scan import cuda_unavailable_reason
    return ["torch", "triton"] + (["cuda"] if cuda_unavailable_reason(device) is None else [])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default 1 8 on the CPU, 8 32 on CUDA; --quick: the first)")
    parser.add_argument("--backends", nargs="+", default=None, choices=["ref", "torch", "cpp", "triton", "cuda"],
                        help="backends, the first is the baseline (default: torch cpp ref on the CPU, "
                             "torch triton [cuda] on CUDA)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case, best kept (default 3; --quick: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu_time", action="store_true",
                        help="time the process's CPU time, not wall time: with --threads 1, unaffected by other load")
    parser.add_argument("--quick", action="store_true", help="the first batch size only, one timed run per case")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "BATCH", "L", "CHANNELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker:
        backend, batch, length, channels = args.worker[0], *map(int, args.worker[1:])
        clock = time.process_time if args.cpu_time else time.perf_counter
        print(json.dumps(run_case(backend, batch, length, channels, args.device, args.repeats, clock)))
        return 0

    import torch
    from tqdm import tqdm

    cuda = args.device.startswith("cuda")
    backends = args.backends or default_backends(args.device)
    batches = args.batch or ([8, 32] if cuda else [1, 8])
    batches = batches[:1] if args.quick else batches
    cases = [(b, length, ch) for b in batches for length, ch in STAGE_SHAPES]
    threads = args.threads or torch.get_num_threads()
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU, {threads} threads"
    print(f"selective scan, K={GROUPS} N={STATES}, {device_name}; {'CPU' if args.cpu_time else 'wall'} times: "
          f"best of {args.repeats}, "
          f"memory: peak above the inputs; speed-ups: fwd+bwd over '{backends[0]}'")
    header = ["B", "L", "K*Dn"] + [f"{b} {what}" for b in backends for what in ("fwd ms", "f+b ms", "MB")]
    header += [f"{b} x" for b in backends[1:]]
    widths = [max(len(h), 5) for h in header]
    rows, speedups, ratios = [], {b: [] for b in backends[1:]}, {b: [] for b in backends[1:]}
    for batch, length, channels in tqdm(cases, desc="cases", file=sys.stderr):
        figures = {b: measure(b, batch, length, channels, args) for b in backends}
        base = figures[backends[0]]
        row = [batch, length, channels]
        for b in backends:
            row += [f"{figures[b]['fwd_s'] * 1e3:.1f}", f"{figures[b]['fwdbwd_s'] * 1e3:.1f}",
                    f"{figures[b]['peak_mb']:.0f}"]
        for b in backends[1:]:
            speedups[b].append(base["fwdbwd_s"] / figures[b]["fwdbwd_s"])
            ratios[b].append(figures[b]["peak_mb"] / max(base["peak_mb"], 1e-9))
            row.append(f"{speedups[b][-1]:.1f}")
        rows.append(row)
        tqdm.write(format_row(row, widths), file=sys.stderr)
    print(format_row(header, widths))
    for row in rows:
        print(format_row(row, widths))
    for b in backends[1:]:
        geomean = math.exp(sum(map(math.log, speedups[b])) / len(speedups[b]))
        print(f"fwd+bwd speed-up {b} vs {backends[0]}: geometric mean {geomean:.2f}x, min {min(speedups[b]):.2f}x; "
              f"peak memory {b}/{backends[0]}: max {max(ratios[b]):.2f}")
        if (backends[0], b) in TARGETS:
            target_speedup, target_memory = TARGETS[backends[0], b]
            met = geomean >= target_speedup and min(speedups[b]) >= 1.0 and max(ratios[b]) <= target_memory
            print(f"target (>= {target_speedup:g}x geometric mean, never slower, <= {target_memory:g} memory): "
                  f"{'met' if met else 'NOT met'}")
    from models import HybriMamba
    from models.complexity import measure_latency

    for backend in backends:
        model = HybriMamba(scan_backend=backend).to(args.device)
        latency = measure_latency(model, repeats=args.repeats)
        print(f"HybriMamba forward at 1x3x128x128, scan backend '{backend}': {latency * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
