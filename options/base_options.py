"""Command-line options shared by train.py and test.py (argparse, grouped help, one-line errors).

Every flag of the seed's train.sh/test.sh parses. Flags the seed passes that have no meaning
for HybriMamba (``--Gnorm``) are accepted, documented as such in ``--help``, and produce a
notice when set to anything but their default.
"""
import argparse
import difflib
import os
import sys
from pathlib import Path

from models.config import SCAN_BACKENDS, HybriMambaConfig, bounds_problem
from utils.errors import UserError


def default_loader_workers():
    """DataLoader workers: 4, but no more than the CPUs this process may use (more only contend, and
    the DataLoader warns)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line ``UserError`` instead of usage + exit."""

    def error(self, message):
        raise UserError(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text; the description and examples keep their line breaks."""


def unknown_option_message(extras, valid_flags):
    """One line for the first unrecognised command-line word, with the closest valid flag."""
    word = extras[0]
    if not word.startswith("-"):
        return f"unexpected argument '{word}' (every value belongs to a --flag; quote values with spaces)"
    name = word.split("=", 1)[0]
    close = difflib.get_close_matches(name.lstrip("-"), [f.lstrip("-") for f in valid_flags], n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else "; see --help"
    return f"unknown option {name}{hint}"


def positive(kind):
    """argparse type: a number of ``kind`` that is > 0."""
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def network_field_type(f):
    """argparse type of the flag of ``HybriMambaConfig`` field ``f``: its number type and bounds."""
    def parse(text):
        value = f.metadata["type"](text)
        problem = bounds_problem(f, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    parse.__name__ = f.metadata["type"].__name__
    return parse


def add_network_options(group):
    """One flag per ``HybriMambaConfig`` option field, with its type, bounds, default and help."""
    for f in HybriMambaConfig.option_fields():
        group.add_argument(f"--{f.name}", type=network_field_type(f), default=f.default, help=f.metadata["help"])


def non_negative(kind):
    """argparse type: a number of ``kind`` that is >= 0."""
    def parse(text):
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


class BaseOptions:
    """Options of both phases; subclasses add theirs in ``add_phase_options``."""

    phase = "base"
    prog = None
    description = ""
    examples = ""

    def __init__(self):
        self.parser = self.build_parser()

    def build_parser(self):
        parser = OptionParser(prog=self.prog, description=self.description, epilog=self.examples,
                              formatter_class=HelpFormatter, allow_abbrev=False)
        self.add_base_options(parser)
        self.add_phase_options(parser)
        return parser

    def add_base_options(self, parser):
        exp = parser.add_argument_group("experiment")
        exp.add_argument("--name", default="Mamba-SRx8",
                         help="experiment name: logs in <checkpoints_dir>/<name>/, weights in <ckpt_dir>/<name>/")
        exp.add_argument("--checkpoints_dir", default="check_points",
                         help="folder for logs, saved options, TensorBoard events and visuals")
        exp.add_argument("--ckpt_dir", default="ckpt", help="folder for model checkpoints")

        hw = parser.add_argument_group("hardware")
        hw.add_argument("--gpus", type=non_negative(int), default=1,
                        help="number of visible GPUs to use (DataParallel over the first N; "
                             "set CUDA_VISIBLE_DEVICES to choose which); 0 or no CUDA = CPU. "
                             "Under torchrun each process uses one GPU and this only switches CPU (0) vs GPU")
        hw.add_argument("--num_threads", type=non_negative(int), default=default_loader_workers(),
                        help="DataLoader worker processes (0 = load in the main process); not torch's threads, "
                             "which OMP_NUM_THREADS sets")
        hw.add_argument("--scan_backend", choices=SCAN_BACKENDS, default="auto",
                        help="selective-scan implementation: auto = cuda (mamba-ssm) on GPU if installed, else "
                             "triton on GPU; on CPU the compiled cpp scan if it builds; else torch")
        hw.add_argument("--compile", action="store_true",
                        help="torch.compile the network: slower start (compiling), faster steps on a GPU")

        data = parser.add_argument_group("data")
        data.add_argument("--dataroot", required=True, help=self.dataroot_help)
        data.add_argument("--load_size", type=positive(int), default=128, help=self.load_size_help)
        data.add_argument("--scale_factor", type=positive(int), default=8, help=self.scale_factor_help)

        net = parser.add_argument_group("network")
        net.add_argument("--model", choices=("Mamba", "HybriMamba"), default="Mamba",
                         help="the network; HybriMamba is the only one (both names select it, "
                              "'Mamba' as in the seed's scripts)")
        net.add_argument("--Gnorm", default="bn",
                         help="accepted for compatibility with the seed's scripts; HybriMamba uses "
                              "LayerNorm/RMSNorm, so this has no effect")
        add_network_options(net)
        net.add_argument("--pretrain_model_path", default=None, help=self.pretrain_help)

    dataroot_help = "input images"
    pretrain_help = "weights to load"
    load_size_help = "side of the square network input/output (HR size); a multiple of 4"
    scale_factor_help = "super-resolution factor: LR side = load_size / scale_factor"

    def add_phase_options(self, parser):
        """Add the options of one phase (train or test)."""

    def parse(self, argv=None):
        """Parse ``argv`` (default: sys.argv[1:]) into a Namespace; bad input raises ``UserError``."""
        argv = sys.argv[1:] if argv is None else list(argv)
        opt, extras = self.parser.parse_known_args(argv)
        if extras:
            raise UserError(unknown_option_message(extras, self.parser._option_string_actions))
        opt.phase = self.phase
        opt.explicit = self.typed_options(argv)
        self.validate(opt)
        return opt

    def typed_options(self, argv):
        """The option names (dests) that ``argv`` sets explicitly, sorted."""
        flags = {flag: action.dest for flag, action in self.parser._option_string_actions.items()}
        return sorted({flags[word.split("=", 1)[0]] for word in argv if word.split("=", 1)[0] in flags})

    def validate(self, opt):
        network_config(opt)  # the network options together (each flag alone is checked by its type)
        if "/" in opt.name or "\\" in opt.name or opt.name in ("", ".", ".."):
            raise UserError(f"--name '{opt.name}' must be a plain folder name (no path separators)")

    def defaults(self):
        return {a.dest: a.default for a in self.parser._actions if a.dest != "help"}

    def notices(self, opt):
        """One line per flag that is accepted but has no effect, when set to a non-default value."""
        lines = []
        if opt.Gnorm != self.defaults()["Gnorm"]:
            lines.append(f"--Gnorm {opt.Gnorm} has no effect: HybriMamba uses LayerNorm/RMSNorm")
        return lines

    def format(self, opt):
        """The resolved options as text, one per line; values that differ from the default say so."""
        defaults = self.defaults()
        lines = [f"----------------- {self.phase} options -----------------"]
        for key, value in sorted(vars(opt).items()):
            note = f"\t[default: {defaults[key]}]" if key in defaults and value != defaults[key] else ""
            lines.append(f"{key:>22}: {value}{note}")
        lines.append("------------------------- end -------------------------")
        return "\n".join(lines)

    def save(self, opt):
        """Write ``format(opt)`` to <checkpoints_dir>/<name>/<phase>_opt.txt; returns the path."""
        path = Path(opt.checkpoints_dir) / opt.name / f"{self.phase}_opt.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.format(opt) + "\n")
        return path


def network_config(opt):
    """The ``HybriMambaConfig`` the parsed options select."""
    return HybriMambaConfig.from_options(vars(opt), "command line")
