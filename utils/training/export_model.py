"""Export the weights of a training checkpoint for release: one state_dict and the options that built it.

    python -m utils.training.export_model ckpt/NAME/latest.pt pretrained/NAME.pt [--raw]

A training checkpoint also holds the optimizer state, the raw and the EMA weights, the RNG states and
every option (with the paths of the machine it ran on): about four times the weights. The exported
file keeps one set of weights (EMA when present, else raw) and the options that define the network
and its task, so ``test.py --pretrain_model_path FILE`` rebuilds the network by itself.
"""
import argparse
from pathlib import Path

from models.checkpoint import load_checkpoint, save_checkpoint, select_weights
from models.config import HybriMambaConfig
from utils.errors import UserError, run_cli
from utils.output_files import check_output_file, record_output

# The network's options (its config) and the task's sizes: what test.py needs to rebuild and run it.
KEPT_OPTIONS = (*(f.name for f in HybriMambaConfig.option_fields()), "load_size", "scale_factor")
PURPOSE = "exported model"  # what utils.output_files records for OUT


def export_model(src, dst, prefer_ema=True, overwrite=False):
    """Write ``src``'s weights (EMA when present and ``prefer_ema``) with its options to ``dst``;
    returns which weights were taken ('EMA' or 'raw'). An existing ``dst`` that is not an export of
    the project is replaced only with ``overwrite``."""
    check_output_file("OUT", dst, PURPOSE, {"CHECKPOINT": src}, overwrite)
    ckpt = load_checkpoint(src)
    state, which = select_weights(ckpt, prefer_ema)
    if state is None or which == "bare state_dict" or not isinstance(ckpt.get("options"), dict):
        raise UserError(f"{src}: not a training checkpoint of train.py (it needs the keys 'model' and 'options')")
    options = {k: v for k, v in ckpt["options"].items() if k in KEPT_OPTIONS}
    save_checkpoint(dst, {"model": state, "options": options, "iteration": int(ckpt.get("iteration", 0)),
                          "weights": which})
    record_output(dst, PURPOSE)
    return which


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.training.export_model", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint written by train.py (latest.pt, iter_N.pt, best.pt)")
    p.add_argument("out", help="the file to write")
    p.add_argument("--raw", action="store_true", help="export the raw weights even when EMA weights exist")
    p.add_argument("--overwrite", action="store_true", help="replace OUT although it is not an earlier export")
    args = p.parse_args(argv)
    which = export_model(args.checkpoint, args.out, prefer_ema=not args.raw, overwrite=args.overwrite)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({which} weights, {size:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
