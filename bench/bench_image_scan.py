"""Benchmark of the fused Image-SSM scan against the unfused path, at the network's stage shapes.

Both paths are ``ImageSSM.scan`` (the module's four-direction scan, from the feature map x (B, Dn, H, W) to
the merged (B, Dn, H, W), without the symmetry step) as the network initialises it (K=4 directions, N=8
states, dt_rank = ceil(Dn/24)), with the module's ``fused`` switch:
  unfused: cross-scan copy, per-direction x_proj and dt_proj, the plain selective scan, cross-merge;
  fused:   x_proj in row-major pixel order, then one fused image-scan call (the kernels read the four
           directions by index arithmetic and apply dt_proj themselves).
It prints forward and forward+backward times, peak memory above the inputs (CUDA) and the fused path's
speed-up and memory ratio. Every (stage, batch, path) case runs in its own subprocess. On the CPU the
triton backend runs only in Triton's interpreter (TRITON_INTERPRET=1): tiny --stages for a smoke run.

    python bench/bench_image_scan.py [--device cuda] [--backend triton|cpp] [--batch 8 32] [--amp bf16]
                                     [--repeats 3] [--stages 48x128 96x64 192x32 384x32]
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_scan import best_time, format_row  # noqa: E402 (needs ROOT on sys.path)

# (Dn, side) of the stages at 128x128 (d_inner of dims 32, 64, 128, 256), as bench_scan.py's STAGE_SHAPES.
STAGES = ("48x128", "96x64", "192x32", "384x32")
STATES = 8
FUSED_BACKENDS = ("triton", "cpp")


def dt_rank(channels):
    """The network's ceil(dim / 16), with Dn = 1.5 x dim (the default expand)."""
    return math.ceil(channels / 1.5 / 16)


def run_case(path, backend, batch, channels, side, device, amp, repeats):
    """Measure one case in this process: {'fwd_s', 'fwdbwd_s', 'peak_mb'} (peak_mb None off CUDA)."""
    import torch

    from models.image_ssm import ImageSSM

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    torch.manual_seed(0)
    module = ImageSSM(channels, d_state=STATES, dt_rank=dt_rank(channels), scan_backend=backend).to(device)
    module.fused = path == "fused"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def inputs(b, c, s):
        return torch.randn(b, c, s, s, device=device, dtype=dtype).requires_grad_()

    def call(ssm, x):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=amp == "bf16"):
            return ssm.scan(x)

    def forward():
        return call(module, x)

    def forward_backward():
        forward().backward(weights)

    small = ImageSSM(8, d_state=STATES, dt_rank=1, scan_backend=backend).to(device)
    small.fused = module.fused
    call(small, inputs(1, 8, 4)).sum().backward()  # compiles the kernels before anything is measured
    x = inputs(batch, channels, side)
    weights = torch.randn(batch, channels, side, side, device=device)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    forward_backward()
    sync()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return {"fwd_s": best_time(forward, repeats, sync), "fwdbwd_s": best_time(forward_backward, repeats, sync),
            "peak_mb": peak}


def measure(path, batch, channels, side, args):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", path, str(batch), str(channels), str(side),
               "--device", args.device, "--amp", args.amp, "--repeats", str(args.repeats), "--backend", args.backend]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"benchmark case {path} B={batch} Dn={channels} {side}x{side} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu under TRITON_INTERPRET=1")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="batch sizes (default 8 32)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), metavar="DnxSIDE",
                        help=f"channels x image side of each case (default: the network's, {' '.join(STAGES)})")
    parser.add_argument("--amp", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: x in bfloat16 and the projections under bf16 autocast, as in training")
    parser.add_argument("--backend", choices=FUSED_BACKENDS, default="triton",
                        help="the scan backend of both paths (default triton; cpp on the CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--worker", nargs=4, metavar=("PATH", "BATCH", "DN", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, batch, channels, side = args.worker[0], *map(int, args.worker[1:])
        print(json.dumps(run_case(path, args.backend, batch, channels, side, args.device, args.amp, args.repeats)))
        return 0

    stages = [tuple(map(int, stage.split("x"))) for stage in args.stages]
    print(f"ImageSSM.scan, fused vs unfused '{args.backend}' path, K=4 N={STATES} dt_rank=ceil(Dn/24), {args.amp}, "
          f"{args.device}; times: best of {args.repeats}, memory: peak above the inputs")
    header = ["B", "Dn", "HxW"] + [f"{p} {what}" for p in ("unfused", "fused") for what in ("fwd ms", "f+b ms", "MB")]
    header += ["f+b x", "mem x"]
    widths = [max(len(h), 5) for h in header]
    print(format_row(header, widths))
    speedups = []
    for batch in args.batch:
        for channels, side in stages:
            figures = {p: measure(p, batch, channels, side, args) for p in ("unfused", "fused")}
            row = [batch, channels, f"{side}x{side}"]
            for p in ("unfused", "fused"):
                mb = figures[p]["peak_mb"]
                row += [f"{figures[p]['fwd_s'] * 1e3:.1f}", f"{figures[p]['fwdbwd_s'] * 1e3:.1f}",
                        "-" if mb is None else f"{mb:.0f}"]
            speedups.append(figures["unfused"]["fwdbwd_s"] / figures["fused"]["fwdbwd_s"])
            ratio = None if figures["fused"]["peak_mb"] is None else \
                figures["fused"]["peak_mb"] / max(figures["unfused"]["peak_mb"], 1e-9)
            row += [f"{speedups[-1]:.2f}", "-" if ratio is None else f"{ratio:.2f}"]
            print(format_row(row, widths), flush=True)
    geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
    print(f"fused fwd+bwd speed-up over unfused: geometric mean {geomean:.2f}x, min {min(speedups):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
