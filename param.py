"""Parameters, MACs/FLOPs and forward latency of HybriMamba, beside the paper's figures.

Examples:
  python param.py
  python param.py --size 96 160 --json
  python param.py --embed_dim 16 --depth 1 --n_layers 1 --no_latency
"""
import argparse
import json
import logging

import torch

from models import HybriMamba
from models.complexity import count_complexity, format_report, measure_latency
from models.device import resolve_device
from models.selective_scan import BACKENDS, resolve_backend
from options.base_options import OptionParser, positive
from utils.errors import UserError, run_cli


def parse_args(argv=None):
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    net = parser.add_argument_group("network (defaults are the paper's)")
    net.add_argument("--embed_dim", type=positive(int), default=32)
    net.add_argument("--depth", type=positive(int), default=2)
    net.add_argument("--n_layers", type=positive(int), default=2)
    net.add_argument("--expand", type=positive(float), default=1.5)
    net.add_argument("--d_state", type=positive(int), default=8)
    net.add_argument("--mlp_ratio", type=positive(float), default=2.0)
    run = parser.add_argument_group("measurement")
    run.add_argument("--size", type=positive(int), nargs=2, default=(128, 128), metavar=("H", "W"),
                     help="input height and width, multiples of 4 (default 128 128)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--scan_backend", default="auto", choices=BACKENDS)
    run.add_argument("--repeats", type=positive(int), default=3, help="timed forward passes (median is printed)")
    run.add_argument("--no_latency", action="store_true", help="skip the latency measurement")
    run.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.size[0] % 4 or args.size[1] % 4:
        raise UserError(f"--size {args.size[0]} {args.size[1]}: both must be multiples of 4")
    args.device = resolve_device(args.device)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    model = HybriMamba(embed_dim=args.embed_dim, depth=args.depth, n_layers=args.n_layers, expand=args.expand,
                       d_state=args.d_state, mlp_ratio=args.mlp_ratio, scan_backend=args.scan_backend)
    model.to(args.device)
    backend = resolve_backend(args.scan_backend, args.device)
    stats = count_complexity(model, size=tuple(args.size))
    latency = None if args.no_latency else measure_latency(model, size=tuple(args.size), repeats=args.repeats)
    if args.json:
        print(json.dumps({**stats, "config": model.config, "latency_s": latency, "device": str(args.device),
                          "scan_backend": backend}, indent=2))
    else:
        print(format_report(stats, latency, args.device, backend))


if __name__ == "__main__":
    run_cli(main)
