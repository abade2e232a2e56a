"""Super-resolve a folder of LR faces with a trained HybriMamba (see `python test.py --help`)."""
from options import TestOptions
from utils.errors import run_cli


def main(argv=None):
    opt = TestOptions().parse(argv)
    # Imported after parsing, so --help and option errors answer without loading torch.
    from utils.evaluation.inference import run_test
    run_test(opt)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
