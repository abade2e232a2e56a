"""Train HybriMamba (see `python train.py --help`; single device, DataParallel, or DDP under torchrun)."""
from options import TrainOptions
from utils.errors import run_cli


def main(argv=None):
    opt = TrainOptions().parse(argv)
    # Imported after parsing, so --help and option errors answer without loading torch.
    from utils.trainer import train
    train(opt)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
