"""Export a trained HybriMamba for release; the format follows OUT's extension.

    python -m utils.training.export_model SRC OUT.safetensors [--raw] [--scores metrics.json] [--command "..."]
    python -m utils.training.export_model SRC OUT.onnx [--size 128 | --dynamic]
    python -m utils.training.export_model SRC OUT.pt

SRC is a checkpoint of train.py (latest.pt, iter_N.pt, best.pt) or a model exported before (.safetensors
or .pt). A training checkpoint also holds the optimizer state, the raw and the EMA weights, the RNG
states and every option (with the paths of the machine it ran on): about four times the weights. The
export keeps one set of weights (EMA when present, else raw), the network's configuration and task,
and its provenance: the training command (paths shortened to their last part), the iterations, which
weights, and the scores of ``--scores`` (test.py's metrics.json).

- ``.safetensors``: the release format (models/pretrained.py); ``HybriMamba.from_pretrained``, test.py,
  torch.hub and the web page read it.
- ``.onnx``: the network as an ONNX graph for onnxruntime and other runtimes (models/onnx_friendly.py):
  input (B, 3, H, W) bicubic-upsampled LR in [-1, 1], output the SR face in [-1, 1]; a fixed size
  (``--size``, default the task's 128) or, with ``--dynamic``, any batch and H, W multiples of 8.
- ``.pt``: the earlier torch format (weights and options), which test.py keeps reading.
"""
import argparse
import json
from pathlib import Path

from models import HybriMamba
from models.checkpoint import read_as_release, save_checkpoint
from models.pretrained import SUFFIX, write_release
from utils.errors import UserError, run_cli
from utils.output_files import check_output_file, record_output

FORMATS = (SUFFIX, ".onnx", ".pt")
PURPOSE = "exported model"  # what utils.output_files records for OUT
# What a metrics.json of test.py says about the scores (and "dataset", which a user may add).
SCORE_KEYS = ("dataset", "count", "psnr", "ssim", "lpips", "lpips_net", "y_convention", "crop_border", "channel")


def read_scores(path):
    """The scores of a metrics.json written by test.py (or any JSON object of these keys)."""
    try:
        scores = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the scores ({getattr(err, 'strerror', None) or err}); pass test.py's "
                        f"metrics.json") from None
    if not isinstance(scores, dict) or not any(key in scores for key in SCORE_KEYS):
        raise UserError(f"{path}: holds none of {', '.join(SCORE_KEYS)}; pass test.py's metrics.json")
    return {key: scores[key] for key in SCORE_KEYS if key in scores}


def export_model(src, dst, prefer_ema=True, scores=None, command=None, size=None, dynamic=False, overwrite=False):
    """Write ``src``'s network to ``dst`` in the format of its extension; returns the :class:`Release` written.

    ``scores`` (a dict) and ``command`` (the training command) are added to the provenance; ``size`` and
    ``dynamic`` shape an ONNX export. An existing ``dst`` that is not an export of the project is replaced
    only with ``overwrite``.
    """
    src, dst = Path(src), Path(dst)
    check_output_file("OUT", dst, PURPOSE, {"SRC": src}, overwrite)
    if dst.suffix not in FORMATS:
        raise UserError(f"{dst}: unknown format {dst.suffix or '(no extension)'}; end the name in "
                        f"{', '.join(FORMATS)}")
    release = read_as_release(src, prefer_ema)
    if scores:
        release.provenance["scores"] = scores
    if command:
        release.provenance["training_command"] = command
    if dst.suffix == SUFFIX:
        write_release(dst, release, replace=True)  # checked above
    elif dst.suffix == ".pt":
        save_checkpoint(dst, {"model": release.state_dict, "options": {**release.config.to_dict(), **release.task},
                              "iteration": int(release.provenance.get("iterations", 0)),
                              "weights": release.provenance.get("weights", "raw"), "provenance": release.provenance})
    else:
        from models.onnx_friendly import export_onnx

        export_onnx(HybriMamba.from_release(release, source=src), dst, size=size or release.task["load_size"],
                    dynamic=dynamic)
    record_output(dst, PURPOSE)
    return release


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.training.export_model", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a checkpoint written by train.py (latest.pt, iter_N.pt, best.pt) or an exported model")
    p.add_argument("out", help=f"the file to write; its extension picks the format ({', '.join(FORMATS)})")
    p.add_argument("--raw", action="store_true", help="export the raw weights even when EMA weights exist")
    p.add_argument("--scores", help="test.py's metrics.json: its PSNR/SSIM/LPIPS go into the provenance")
    p.add_argument("--command", help="the training command, for checkpoints that do not record it")
    p.add_argument("--size", type=int, help="ONNX: the fixed input size (default: the task's load_size, 128)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: any batch size and any H, W that are multiples of 8")
    p.add_argument("--overwrite", action="store_true", help="replace OUT although it is not an earlier export")
    args = p.parse_args(argv)
    if args.size is not None and (args.size < 4 or args.size % 4):
        raise UserError(f"--size {args.size}: use a multiple of 4 (the network halves the size twice)")
    if (args.size or args.dynamic) and Path(args.out).suffix != ".onnx":
        raise UserError("--size and --dynamic shape an ONNX export; OUT must end in .onnx")
    scores = read_scores(args.scores) if args.scores else None
    release = export_model(args.src, args.out, prefer_ema=not args.raw, scores=scores, command=args.command,
                           size=args.size, dynamic=args.dynamic, overwrite=args.overwrite)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({release.provenance.get('weights', 'raw')} weights, {size:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
