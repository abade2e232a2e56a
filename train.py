"""Train HybriMamba (see `python train.py --help`; single device, DataParallel, or DDP under torchrun)."""
from options import TrainOptions
from utils.errors import run_cli
from utils.trainer import train


def main(argv=None):
    train(TrainOptions().parse(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
