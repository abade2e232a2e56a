"""A Markdown results table in the layout of the paper's Table 1.

One dataset (method name = SR folder name):

    python -m utils.evaluation.results_table --hr_dir HR --dataset_name Helen SR_DIR [SR_DIR ...] \\
        [--bicubic] [--lpips] [--model_stats HybriMamba=stats.json] [--with_paper] --out table.md

Several datasets: one group per dataset, folders of one method sharing their folder name:

    python -m utils.evaluation.results_table --hr_dir HELEN_HR --dataset_name Helen --sr_dirs out/helen/HybriMamba \\
        --hr_dir CELEBA_HR --dataset_name CelebA --sr_dirs out/celeba/HybriMamba --bicubic --out table.md
"""
import argparse
import json
import tempfile
from pathlib import Path

from data.make_lr import make_lr
from models.paper import TABLE1, size_text
from utils.errors import UserError, run_cli
from utils.evaluation.folder_eval import default_workers, evaluate_folders
from utils.output_files import check_output_file, write_output
from utils.y_conventions import CONVENTIONS, DEFAULT_Y_CONVENTION, Y_CONVENTIONS, metric_tag, short_help

BICUBIC = "Bicubic"
PURPOSE = "results table"  # what utils.output_files records for --out

def read_model_stats(spec):
    """'NAME=stats.json' (the output of ``python param.py --json``) -> (NAME, (params, flops) strings)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--model_stats {spec!r}: expected NAME=FILE.json (FILE from `python param.py --json`)")
    try:
        stats = json.loads(Path(path).read_text())
        params, flops = int(stats["params"]), float(stats["flops"])
    except FileNotFoundError:
        raise UserError(f"{path}: file not found (--model_stats {name}=...)") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: expected JSON with 'params' and 'flops' numbers, as `python param.py --json` "
                        "writes") from None
    return name, size_text(params, flops)


def dataset_groups(args):
    """[(dataset name, hr_dir, [sr_dir, ...])] from the repeated --hr_dir/--dataset_name/--sr_dirs options."""
    hr_dirs = args.hr_dir
    if args.sr_dir and args.sr_dirs:
        raise UserError("give SR folders either positionally (one dataset) or with --sr_dirs per --hr_dir, not both")
    if args.sr_dir:
        if len(hr_dirs) != 1:
            raise UserError("positional SR folders need exactly one --hr_dir; use --sr_dirs after each --hr_dir")
        sr_groups = [args.sr_dir]
    elif args.sr_dirs:
        if len(args.sr_dirs) != len(hr_dirs):
            raise UserError(f"{len(hr_dirs)} --hr_dir but {len(args.sr_dirs)} --sr_dirs; give one --sr_dirs per "
                            f"dataset")
        sr_groups = args.sr_dirs
    elif args.bicubic:
        sr_groups = [[] for _ in hr_dirs]
    else:
        raise UserError("no SR folders given; pass SR_DIR ... (or --sr_dirs per --hr_dir) and/or --bicubic")
    names = args.dataset_name or [Path(h).name for h in hr_dirs]
    if len(names) != len(hr_dirs):
        raise UserError(f"{len(hr_dirs)} --hr_dir but {len(names)} --dataset_name; name every dataset or none")
    groups = []
    for name, hr_dir, srs in zip(names, hr_dirs, sr_groups):
        methods = [Path(s).name for s in srs]
        dup = {m for m in methods if methods.count(m) > 1 or (args.bicubic and m == BICUBIC)}
        if dup:
            raise UserError(f"dataset {name}: two SR folders are named {sorted(dup)[0]!r}; the folder name is the "
                            "method name, so rename one")
        groups.append((name, hr_dir, list(srs)))
    return groups


def fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def table_caption(convention, with_lpips, with_paper):
    """The line under the table that names the convention of every PSNR/SSIM value in it."""
    parts = [f"PSNR/SSIM: {metric_tag(convention)}, i.e. BT.601 {CONVENTIONS[convention].describe()}; no border crop"]
    if with_lpips:
        parts.append("LPIPS: AlexNet")
    if with_paper:
        parts.append("(paper) rows: as published")
    return ". ".join(parts) + "."


def markdown_table(datasets, results, stats, with_paper, caption):
    """Table 1 layout and ``caption`` under it; ``results[(method, dataset)] = summary`` from ``evaluate_folders``."""
    head = ["Method", "Params", "FLOPs"]
    for d in datasets:
        head += [f"{d} PSNR", "SSIM", "LPIPS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if with_paper:
        for method, row in TABLE1.items():
            cells = [f"{method} (paper)", *size_text(row.params, row.flops)]
            for d in datasets:
                cells += [fmt(v, n) for v, n in zip(row.scores.get(d.lower(), (None,) * 3), (2, 4, 4))]
            lines.append("| " + " | ".join(cells) + " |")
    methods = list(dict.fromkeys(m for m, _ in results))
    for method in methods:
        cells = [method, *stats.get(method, ("-", "-"))]
        for d in datasets:
            s = results.get((method, d), {})
            cells += [fmt(s.get("psnr"), 2), fmt(s.get("ssim"), 4), fmt(s.get("lpips"), 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + caption + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PSNR/SSIM/LPIPS of SR folders against HR folders as a Markdown "
                                            "table in the layout of the paper's Table 1.",
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sr_dir", nargs="*", help="SR folders of the (single) dataset; method name = folder name")
    p.add_argument("--hr_dir", action="append", required=True, help="HR folder of a dataset (repeat per dataset)")
    p.add_argument("--dataset_name", action="append", help="column name of each dataset (default: HR folder name)")
    p.add_argument("--sr_dirs", action="append", nargs="+", help="SR folders of the preceding --hr_dir's dataset")
    p.add_argument("--bicubic", action="store_true",
                   help="add the bicubic baseline, made on the fly from the HR images")
    p.add_argument("--scale", type=int, default=8, help="scale factor of the bicubic baseline (default 8)")
    p.add_argument("--lpips", action="store_true", help="compute LPIPS (AlexNet) too")
    p.add_argument("--backbone_weights", help="offline torchvision AlexNet state_dict for LPIPS (see calc_lpips.py)")
    p.add_argument("--device", default="auto", help="LPIPS device: auto, cpu, cuda")
    p.add_argument("--model_stats", action="append", default=[], metavar="NAME=JSON",
                   help="Params/FLOPs of method NAME from `python param.py --json > JSON`")
    p.add_argument("--with_paper", action="store_true",
                   help="include the paper's Table 1 rows (filled in for datasets named Helen or CelebA)")
    p.add_argument("--y_convention", choices=Y_CONVENTIONS, default=DEFAULT_Y_CONVENTION,
                   help=short_help() + " (python psnr_ssim.py --help says more)")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--out", required=True, help="Markdown file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace a file that is not a results table this project wrote")
    return p.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    groups = dataset_groups(args)
    inputs = [(flag, path) for _, hr_dir, sr_dirs in groups
              for flag, path in [("--hr_dir", hr_dir), *(("SR_DIR", s) for s in sr_dirs)]]
    check_output_file("--out", args.out, PURPOSE, inputs, args.overwrite)
    stats = dict(read_model_stats(s) for s in args.model_stats)
    lpips_model = None
    if args.lpips:
        from utils.evaluation.lpips_metric import build_lpips  # deferred: torch is only needed for LPIPS
        lpips_model = build_lpips("alex", args.backbone_weights, args.device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bicubic_") as tmp:
        for index, (dataset, hr_dir, sr_dirs) in enumerate(groups):
            if args.bicubic:
                work = Path(tmp) / str(index)
                make_lr(hr_dir, work / "lr", work / BICUBIC, args.scale)
                sr_dirs = [work / BICUBIC, *sr_dirs]
            for sr_dir in sr_dirs:
                _, summary = evaluate_folders(hr_dir, sr_dir, convention=args.y_convention,
                                              lpips_model=lpips_model, workers=args.workers)
                results[(Path(sr_dir).name, dataset)] = summary
                tag = summary["convention"]
                print(f"{dataset} / {Path(sr_dir).name}: PSNR {fmt(summary['psnr'], 2)} ({tag})  "
                      f"SSIM {summary['ssim']:.4f} ({tag})"
                      + (f"  LPIPS {summary['lpips']:.4f} ({summary['lpips_net']})" if summary["lpips"] is not None
                         else ""))
    caption = table_caption(args.y_convention, args.lpips, args.with_paper)
    table = markdown_table([g[0] for g in groups], results, stats, args.with_paper, caption)
    write_output(args.out, table.encode(), PURPOSE, "free disk space or choose another --out")
    print(f"\n{table}\nwritten to {args.out}")


if __name__ == "__main__":
    run_cli(main)
