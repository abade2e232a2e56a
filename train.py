"""Train HybriMamba (see `python train.py --help`; single device, DataParallel, or DDP under torchrun)."""
from options import TrainOptions
from utils.errors import run_cli
from utils.training.stop_signals import EXIT_STOPPED


def main(argv=None):
    opt = TrainOptions().parse(argv)
    # Imported after parsing, so --help and option errors answer without loading torch.
    from utils.training.trainer import train
    return EXIT_STOPPED if train(opt).stopped_by else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
