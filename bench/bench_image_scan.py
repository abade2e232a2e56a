"""Benchmark of the fused Image-SSM scan against the unfused path, at the network's stage shapes.

Both paths compute the Image-SSM's core, from the feature map x (B, Dn, H, W) to the merged scan output
(B, Dn, H, W), with the network's parameter shapes (K=4 directions, N=8 states, dt_rank = ceil(Dn/16)):
  unfused: cross-scan copy, per-direction x_proj and dt_proj, the plain selective scan, cross-merge (what
           ImageSSM computed before issue 19);
  fused:   x_proj in row-major pixel order, then one fused image-scan call (the kernels read the four
           directions by index arithmetic and apply dt_proj themselves).
It prints forward and forward+backward times, peak memory above the inputs (CUDA) and the fused path's
speed-up and memory ratio. Every (stage, batch, path) case runs in its own subprocess. On the CPU the
triton path runs only in Triton's interpreter (TRITON_INTERPRET=1): tiny --stages for a smoke run.

    python bench/bench_image_scan.py [--device cuda] [--batch 8 32] [--amp bf16] [--repeats 3]
                                     [--stages 48x128 96x64 192x32 384x32]
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
FUSED_BACKENDS = ("triton",)


def make_inputs(batch, channels, side, device, dtype):
    """x and the Image-SSM's parameters as the network initialises them (dt in [1e-3, 1e-1], A = -[1..N])."""
    import torch

    g = torch.Generator().manual_seed(0)
    rank = math.ceil(channels / 16)
    dt = torch.exp(torch.rand(4, channels, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "x": torch.randn(batch, channels, side, side, generator=g).to(dtype),
        "x_proj_weight": (torch.rand(4, rank + 2 * STATES, channels, generator=g) * 2 - 1) * channels ** -0.5,
        "dt_proj_weight": (torch.rand(4, channels, rank, generator=g) * 2 - 1) * rank ** -0.5,
        "dt_proj_bias": dt + torch.log(-torch.expm1(-dt)),
        "A": -torch.arange(1, STATES + 1, dtype=torch.float32).repeat(4 * channels, 1),
        "D": torch.ones(4 * channels),
    }
    return {k: v.to(device).requires_grad_() for k, v in inputs.items()}


def unfused(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, backend):
    """Cross-scan, per-direction projections, the plain selective scan, cross-merge."""
    import torch

    from models.image_ssm import cross_merge, cross_scan, per_direction_matmul
    from models.selective_scan import selective_scan

    b, d, h, w = x.shape
    rank = dt_proj_weight.shape[2]
    xs = cross_scan(x)
    dts, bs, cs = torch.split(per_direction_matmul(x_proj_weight, xs), [rank, STATES, STATES], dim=2)
    ys = selective_scan(xs.reshape(b, 4 * d, -1), per_direction_matmul(dt_proj_weight, dts).reshape(b, 4 * d, -1),
                        A, bs.contiguous(), cs.contiguous(), D=D, delta_bias=dt_proj_bias.reshape(-1),
                        delta_softplus=True, backend=backend)
    return cross_merge(ys.float().view(b, 4, d, -1), h, w)


def fused(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, backend):
    """x_proj in row-major pixel order (one matmul for the four directions), then the fused image scan."""
    import torch

    from models.selective_scan.triton_backend import image_selective_scan_triton

    scans = {"triton": image_selective_scan_triton}
    x_dbl = torch.matmul(x_proj_weight, x.flatten(2).unsqueeze(1))  # (B, K, R+2N, H*W)
    return scans[backend](x, x_dbl, dt_proj_weight, dt_proj_bias, A, D)


def run_case(path, backend, batch, channels, side, device, amp, repeats):
    """Measure one case in this process: {'fwd_s', 'fwdbwd_s', 'peak_mb'} (peak_mb None off CUDA)."""
    import torch

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    fn = {"unfused": unfused, "fused": fused}[path]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def call(inputs):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=amp == "bf16"):
            return fn(**inputs, backend=backend)

    def forward():
        return call(inputs)

    def forward_backward():
        forward().backward(weights)

    call(make_inputs(1, 8, 4, device, dtype)).sum().backward()  # compiles the kernels before anything is measured
    inputs = make_inputs(batch, channels, side, device, dtype)
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
                        help="the scan backend of both paths (default triton)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--worker", nargs=4, metavar=("PATH", "BATCH", "DN", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, batch, channels, side = args.worker[0], *map(int, args.worker[1:])
        print(json.dumps(run_case(path, args.backend, batch, channels, side, args.device, args.amp, args.repeats)))
        return 0

    stages = [tuple(map(int, stage.split("x"))) for stage in args.stages]
    print(f"Image-SSM scan, fused vs unfused '{args.backend}' path, K=4 N={STATES} dt_rank=ceil(Dn/16), {args.amp}, "
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
