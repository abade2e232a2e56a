"""Parameters, MACs/FLOPs and forward latency of HybriMamba, beside the paper's figures.

Examples:
  python param.py
  python param.py --size 96 160 --json
  python param.py --embed_dim 16 --depth 1 --n_layers 1 --no_latency
"""
import argparse
import json
import logging

from models.config import SCAN_BACKENDS
from options.base_options import OptionParser, add_network_options, network_config, positive
from utils.errors import UserError, run_cli


def parse_args(argv=None):
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_options(parser.add_argument_group("network (defaults are the paper's)"))
    run = parser.add_argument_group("measurement")
    run.add_argument("--size", type=positive(int), nargs=2, default=(128, 128), metavar=("H", "W"),
                     help="input height and width, multiples of 4 (default 128 128)")
    run.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    run.add_argument("--scan_backend", default="auto", choices=SCAN_BACKENDS)
    run.add_argument("--repeats", type=positive(int), default=3, help="timed forward passes (median is printed)")
    run.add_argument("--no_latency", action="store_true", help="skip the latency measurement")
    run.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.size[0] % 4 or args.size[1] % 4:
        raise UserError(f"--size {args.size[0]} {args.size[1]}: both must be multiples of 4")
    config = network_config(args)
    # Imported after parsing, so --help and option errors answer without loading torch.
    from models import HybriMamba
    from models.complexity import count_complexity, format_report, measure_latency
    from models.device import resolve_device
    from models.selective_scan import resolve_backend

    args.device = resolve_device(args.device)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    model = HybriMamba(config, scan_backend=args.scan_backend).to(args.device)
    backend = resolve_backend(args.scan_backend, args.device)
    stats = count_complexity(model, size=tuple(args.size))
    latency = None if args.no_latency else measure_latency(model, size=tuple(args.size), repeats=args.repeats)
    if args.json:
        print(json.dumps({**stats, "config": model.config.to_dict(), "latency_s": latency, "device": str(args.device),
                          "scan_backend": backend}, indent=2))
    else:
        print(format_report(stats, latency, args.device, backend))


if __name__ == "__main__":
    run_cli(main)
