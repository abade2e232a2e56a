"""Learning curve of a training run: validation PSNR-Y against the CPU-minutes spent, as a PNG.

Reads the validation lines of train.py's text log (``check_points/<name>/train_log.txt``):
``<date> <time> validation at iteration N: PSNR-Y P dB, ...``. Time counts only while the run ran:
gaps of more than ``--pause`` minutes between two log lines (a stop and a later resume) are left out.
``--offset`` adds the minutes of the run it started from (a fine-tuned model's base), and
``--start_psnr`` puts that base model's validation PSNR at that offset.

    python bench/learning_curve.py check_points/NAME/train_log.txt --out curve.png [--offset 80 --start_psnr 24.9]
"""
import argparse
import math
import re
import sys
from datetime import datetime
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.errors import UserError, run_cli  # noqa: E402 (needs ROOT on sys.path)
from utils.output_files import check_output_file, write_output  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
VALIDATION = re.compile(r"validation at iteration (\d+): PSNR-Y ([\d.]+) dB")
PURPOSE = "learning curve"


def read_curve(log_text, pause_minutes=10.0):
    """[(minutes run, iteration, PSNR-Y)] from a train_log.txt's text, minutes counted from its first line."""
    points, minutes, previous = [], 0.0, None
    for line in log_text.splitlines():
        stamped = STAMP.match(line)
        if not stamped:
            continue
        now = datetime.strptime(stamped[1], "%Y-%m-%d %H:%M:%S")
        if previous is not None:
            step = (now - previous).total_seconds() / 60
            minutes += step if 0 <= step <= pause_minutes else 0
        previous = now
        found = VALIDATION.search(stamped[2])
        if found:
            points.append((minutes, int(found[1]), float(found[2])))
    return points


def nice_step(span, ticks=6):
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks over ``span``."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def draw_curve(points, title, reference=None, size=(720, 440)):
    """A line chart of [(minutes, psnr)] with axes, ticks and an optional horizontal ``reference``
    (label, psnr) line; returns a PIL image."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([reference[1]] if reference else [])
    x_hi = max(xs) * 1.05 or 1
    y_lo, y_hi = min(ys) - 0.1, max(ys) + 0.1
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)

    def at(x, y):
        return (left + (width - left - right) * x / x_hi, top + (height - top - bottom) * (y_hi - y) / (y_hi - y_lo))

    pen.rectangle([left, top, width - right, height - bottom], outline="black")
    step = nice_step(x_hi)
    for i in range(int(x_hi / step) + 1):
        x, _ = at(i * step, y_lo)
        pen.line([x, height - bottom, x, height - bottom + 5], fill="black")
        pen.text((x - 10, height - bottom + 8), f"{i * step:g}", fill="black")
    step = nice_step(y_hi - y_lo)
    value = (int(y_lo / step) + 1) * step
    while value < y_hi:
        _, y = at(0, value)
        pen.line([left - 5, y, width - right, y], fill=(225, 225, 225))
        pen.text((8, y - 6), f"{value:.2f}", fill="black")
        value += step
    if reference:
        _, y = at(0, reference[1])
        pen.line([left, y, width - right, y], fill=(200, 60, 60))
        pen.text((left + 6, y - 14), reference[0], fill=(200, 60, 60))
    pen.line([at(x, y) for x, y in points], fill=(30, 90, 200), width=2)
    for x, y in points:
        cx, cy = at(x, y)
        pen.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(30, 90, 200))
    pen.text((left, 12), title, fill="black")
    pen.text((width // 2 - 90, height - 22), "minutes on the 2-core CPU", fill="black")
    pen.text((8, top - 20), "PSNR-Y (dB)", fill="black")
    return image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="train.py's train_log.txt")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--offset", type=float, default=0.0, help="minutes of the run this one started from")
    p.add_argument("--start_psnr", type=float, help="the starting model's validation PSNR-Y (plotted at --offset)")
    p.add_argument("--pause", type=float, default=10.0, help="longer gaps between log lines are not counted")
    p.add_argument("--reference", nargs=2, metavar=("LABEL", "PSNR"), help="a horizontal line, e.g. Bicubic 23.7")
    p.add_argument("--title", default="validation PSNR-Y against training time")
    p.add_argument("--overwrite", action="store_true", help="replace --out although the project did not write it")
    args = p.parse_args(argv)
    check_output_file("--out", args.out, PURPOSE, {"LOG": args.log}, args.overwrite)
    try:
        text = Path(args.log).read_text(errors="replace")
    except OSError as err:
        reason = err.strerror or err
        raise UserError(f"{args.log}: cannot read the log ({reason}); pass train.py's train_log.txt") from None
    curve = read_curve(text, args.pause)
    if not curve:
        raise UserError(f"{args.log}: no validation lines; train with --val_dataroot and --val_freq")
    points = [(args.offset, args.start_psnr)] if args.start_psnr is not None else []
    points += [(args.offset + minutes, psnr) for minutes, _, psnr in curve]
    reference = (args.reference[0], float(args.reference[1])) if args.reference else None
    image = draw_curve(points, args.title, reference)
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    write_output(args.out, buffer.getvalue(), PURPOSE)
    for minutes, iteration, psnr in curve:
        print(f"{args.offset + minutes:8.1f} min  iteration {iteration:6d}  PSNR-Y {psnr:.3f} dB")
    return 0


if __name__ == "__main__":
    run_cli(main)
