"""Super-resolve a folder of LR faces with a trained HybriMamba (see `python test.py --help`)."""
from options import TestOptions
from utils.errors import run_cli
from utils.evaluation.inference import run_test


def main(argv=None):
    run_test(TestOptions().parse(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
