"""Train HybriMamba (see `python train.py --help`; single device, DataParallel, or DDP under torchrun)."""
import sys

from options import TrainOptions
from utils.errors import run_cli
from utils.training.stop_signals import EXIT_STOPPED, StoppedDuringStartup, StopSignals


def main(argv=None):
    # The stop signals are handled from here on, before torch is imported: one during start-up ends the
    # run with status 3 too (with nothing to save yet), not a traceback or the signal's own status.
    with StopSignals() as stop_signals:
        try:
            opt = TrainOptions().parse(argv)
            # Imported after parsing, so --help and option errors answer without loading torch.
            from utils.training.trainer import train
            return EXIT_STOPPED if train(opt, stop_signals).stopped_by else 0
        except StoppedDuringStartup as stopped:
            print(stopped, file=sys.stderr)
            return EXIT_STOPPED


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
