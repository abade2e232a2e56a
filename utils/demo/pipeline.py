"""`make demo`: the whole job end to end on CPU, without any download.

    python -m utils.demo [--out demo_output] [--dataroot HR_FACES_DIR] [--iters N] ...

1. faces: built from images inside scikit-image (``utils.demo.faces``), or your own HR faces;
2. training: a small HybriMamba with ``train.py`` (on the CPU);
3. LR faces with ``python -m data.make_lr`` (also the bicubic baseline), SR with ``test.py``;
4. PSNR/SSIM (and LPIPS when the AlexNet weights are at hand) of the model and of bicubic with
   ``python -m utils.evaluation.results_table``, and a picture with ``python -m utils.evaluation.side_by_side``;
5. the shipped 8x model (``pretrained/``) on a real colour face: scikit-image's astronaut, framed
   like a CelebA test crop, 16x16 -> 128x128, scored and pictured beside bicubic;
6. the same model on a photo with six small faces (the astronaut at 16 to 40 pixels, turned and
   mirrored) with ``enhance.py``: detected, aligned, restored, pasted back into the photo enlarged 8x;
   each face region scored against the 8x ground truth beside bicubic, and pictured;
7. the check: the demo's model must beat bicubic PSNR on the held-out faces (exit code 1 if not).

Every step runs the project's own command-line tools in a subprocess, exactly as a user would.
"""
import argparse
import importlib.util
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from utils.demo.faces import GROUP_SIZES, astronaut_face, astronaut_group_photo, build_builtin_faces, build_user_faces
from utils.errors import UserError
from utils.evaluation.pretrained import SHIPPED_MODEL
from utils.image_io import read_rgb, write_rgb

ROOT = Path(__file__).resolve().parents[2]
MARKER = ".hybrimamba_demo"  # marks a folder as the demo's own, so a rerun may empty it
SUBFOLDERS = ("faces", "results", "ckpt", "logs")
NAME = "demo"
MODEL = "HybriMamba"
BICUBIC = "Bicubic"
# A small network: one block per stage, narrow Mamba; ~0.2 M parameters.
NETWORK = {"embed_dim": 8, "depth": 1, "n_layers": 1, "expand": 1.0, "d_state": 4, "mlp_ratio": 2.0}
LR_DECAY_AT = 0.8  # the learning rate halves after this fraction of the epochs
LPIPS_HOST = ("download.pytorch.org", 443)
SHIPPED = SHIPPED_MODEL
SHIPPED_SIZE, SHIPPED_SCALE = 128, 8
CLOSEUP_FACES = (0, 2, 4)  # the group photo's faces shown close up (16, 24 and 32 pixels)
CLOSEUP_SIDE = 160         # pixels of each close-up tile


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m utils.demo", description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m utils.demo\n  python -m utils.demo --dataroot my_faces/ --out my_demo\n"
               "  HYBRIMAMBA_LPIPS_BACKBONE=alexnet.pth python -m utils.demo   # LPIPS offline",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--out", default="demo_output",
                      help="folder for everything the demo writes (default: %(default)s)")
    data.add_argument("--dataroot", default=None,
                      help="your own HR faces (searched recursively) instead of the built-in ones; evenly spaced "
                           "images are held out")
    data.add_argument("--load_size", type=int, default=24, help="HR side in pixels (default: %(default)s; the "
                      "built-in faces allow up to 24)")
    data.add_argument("--scale", type=int, default=4,
                      help="super-resolution factor (default: %(default)s: 6x6 -> 24x24)")
    train = p.add_argument_group("training")
    train.add_argument("--iters", type=int, default=300, help="training iterations (default: %(default)s)")
    train.add_argument("--batch_size", type=int, default=16, help="default: %(default)s")
    train.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    # Not --num_threads: in train.py and test.py that flag counts DataLoader workers. --threads is the old name.
    train.add_argument("--torch_threads", "--threads", type=int, default=1,
                       help="torch threads of every step (OMP_NUM_THREADS; default: %(default)s, as on a busy 2-core "
                            "machine two threads made this small network's training several times slower)")
    score = p.add_argument_group("scoring")
    score.add_argument("--backbone_weights", default=None,
                       help="torchvision AlexNet state_dict for LPIPS offline (default: $HYBRIMAMBA_LPIPS_BACKBONE)")
    score.add_argument("--no_lpips", action="store_true", help="skip LPIPS")
    score.add_argument("--skip_check", action="store_true",
                       help="do not fail when the model does not beat bicubic (for smoke runs with few iterations)")
    args = p.parse_args(argv)
    for flag in ("load_size", "scale", "iters", "batch_size", "torch_threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)} must be >= 1")
    if args.load_size % 4 or args.load_size % args.scale:
        raise UserError(f"--load_size {args.load_size} must be a multiple of 4 and of --scale {args.scale}")
    return args


class Steps:
    """Prints the step headers and remembers when each step began."""

    def __init__(self, total):
        self.total = total
        self.starts = [("", time.perf_counter())]

    def begin(self, name, title):
        self.starts.append((name, time.perf_counter()))
        print(f"\n=== step {len(self.starts) - 1}/{self.total}: {title} ===", flush=True)

    def minutes(self):
        return (time.perf_counter() - self.starts[0][1]) / 60

    def durations(self):
        """'name 12 s, ...' for the steps begun so far, the last one up to now."""
        ends = [t for _, t in self.starts[2:]] + [time.perf_counter()]
        return ", ".join(f"{name} {end - t:.0f} s" for (name, t), end in zip(self.starts[1:], ends))


def run(args, what, threads):
    """Run ``python ARGS`` from the repository root with ``threads`` torch threads, its output going
    straight to the console."""
    command = [sys.executable, *map(str, args)]
    print("$ " + shlex.join(["python", *command[1:]]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise UserError(f"{what} failed (exit code {done.returncode}, its message is above)")


def prepare_out_dir(out):
    """Create ``out`` or reuse a previous demo's; refuse a non-empty folder the demo did not make."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"{out}: exists and was not written by the demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    for name in SUBFOLDERS:
        if (out / name).exists():
            shutil.rmtree(out / name)  # never follows links out of the folder


def training_arguments(args, train_dir, train_count, out):
    """train.py's command line for ``args.iters`` iterations over ``train_count`` crops."""
    per_epoch = train_count // args.batch_size
    if per_epoch == 0:
        raise UserError(f"{train_count} training faces do not fill one batch of {args.batch_size}; "
                        "add faces or lower --batch_size")
    epochs = math.ceil(args.iters / per_epoch)
    decay = max(1, round(LR_DECAY_AT * epochs)) if epochs > 1 else epochs + 1
    network = [x for key, value in NETWORK.items() for x in (f"--{key}", value)]
    return ["train.py", "--gpus", 0, "--name", NAME, "--dataroot", train_dir,
            "--checkpoints_dir", out / "logs", "--ckpt_dir", out / "ckpt",
            "--load_size", args.load_size, "--scale_factor", args.scale, *network,
            "--batch_size", args.batch_size, "--lr", args.lr, "--lr_milestones", decay,
            "--total_epochs", epochs, "--max_iters", args.iters, "--num_threads", 0, "--seed", args.seed,
            "--print_freq", max(1, min(25, args.iters // 10)), "--visual_freq", args.iters,
            "--save_latest_freq", args.iters]


def lpips_backbone(args, size):
    """(extra results_table flags, one line saying where LPIPS's AlexNet weights come from, or why it is skipped)
    for faces of ``size`` x ``size`` pixels."""
    if args.no_lpips:
        return [], "LPIPS skipped (--no_lpips)"
    from utils.evaluation.lpips_metric import BACKBONE_ENV, MIN_SIDE  # deferred: it imports torch

    min_side = MIN_SIDE["alex"]
    if size < min_side:
        return [], (f"LPIPS skipped: its AlexNet needs images of at least {min_side}x{min_side} and these "
                    f"faces are {size}x{size} (your own faces with --load_size 32 or more get it)")
    weights = args.backbone_weights or os.environ.get(BACKBONE_ENV)
    if weights:
        return ["--lpips", "--backbone_weights", weights], f"LPIPS with the AlexNet weights in {weights}"
    import torch.hub
    if list((Path(torch.hub.get_dir()) / "checkpoints").glob("alexnet-*.pth")):
        return ["--lpips"], "LPIPS with torchvision's cached AlexNet weights"
    try:
        socket.create_connection(LPIPS_HOST, timeout=3).close()
    except OSError:
        return [], (f"LPIPS skipped: torchvision's AlexNet weights are not cached and {LPIPS_HOST[0]} is not "
                    f"reachable; pass --backbone_weights FILE or set {BACKBONE_ENV}")
    return ["--lpips"], "LPIPS with torchvision's AlexNet weights (downloaded once)"


def score_table(args, size, hr_dir, dataset, folders, table):
    """Run utils.evaluation.results_table on ``folders`` against ``hr_dir`` (LPIPS when it can run; without it if
    it fails)."""
    lpips_flags, lpips_note = lpips_backbone(args, size)
    print(lpips_note)
    table_args = ["-m", "utils.evaluation.results_table", "--hr_dir", hr_dir, "--dataset_name", dataset, *folders,
                  "--out", table]
    try:
        run(table_args + lpips_flags, "scoring", args.torch_threads)
    except UserError:
        if not lpips_flags:
            raise
        print("LPIPS failed (see above); the table without LPIPS:")
        run(table_args, "scoring", args.torch_threads)


def shipped_model_on_a_real_face(args, faces, results):
    """The shipped 8x model on the astronaut's face (16x16 -> 128x128): SR, bicubic, scores and a picture;
    returns the lines naming what was written."""
    if not SHIPPED.is_file():
        print(f"skipped: {SHIPPED.relative_to(ROOT)} is not in this checkout")
        return []
    hr_dir, lr_dir = faces / "astronaut_hr", faces / "astronaut_lr"
    sr_dir, bicubic_dir = results / "x8" / MODEL, results / "x8" / BICUBIC
    table, picture = results / "x8" / "table.md", results / "x8" / "side_by_side.png"
    write_rgb(hr_dir / "astronaut.png", astronaut_face(SHIPPED_SIZE))
    run(["-m", "data.make_lr", hr_dir, "--lr_dir", lr_dir, "--lr_up_dir", bicubic_dir, "--scale", SHIPPED_SCALE],
        "making the LR face", args.torch_threads)
    run(["test.py", "--gpus", 0, "--dataroot", lr_dir, "--pretrain_model_path", SHIPPED, "--load_size", SHIPPED_SIZE,
         "--scale_factor", SHIPPED_SCALE, "--save_as_dir", sr_dir, "--num_threads", 0], "testing", args.torch_threads)
    score_table(args, SHIPPED_SIZE, hr_dir, "astronaut x8", [bicubic_dir, sr_dir], table)
    run(["-m", "utils.evaluation.side_by_side", "--lr", lr_dir, "--sr", sr_dir, "--hr", hr_dir, "--bicubic", "--n", 1,
         "--per_row", 1, "--out", picture], "the side-by-side picture", args.torch_threads)
    return [f"  x8 table    {table}", f"  x8 picture  {picture} (LR | bicubic | SR | HR, 128x128)"]


def closeup(group, result, bicubic, faces=CLOSEUP_FACES):
    """Input (pixels enlarged) | bicubic | enhance.py | ground truth around each of ``faces``, as one picture."""
    import cv2

    from utils.evaluation.side_by_side import compose
    from utils.photo import geometry

    rows = []
    for index in faces:
        frame = geometry.compose(geometry.scaling(group.scale), group.frames[index])
        cx, cy = geometry.apply(frame, [(64, 64)])[0]
        half = round(0.75 * 128 * geometry.scale_of(frame))
        box = (round(cx) - half, round(cy) - half, round(cx) + half, round(cy) + half)
        nearest = cv2.resize(group.lr, group.hr.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        tiles = []
        shown = (("Input", nearest), ("Bicubic", bicubic), ("enhance.py", result), ("Ground truth", group.hr))
        for label, img in shown:
            padded = np.pad(img, ((half, half), (half, half), (0, 0)), mode="edge")
            crop = padded[box[1] + half:box[3] + half, box[0] + half:box[2] + half]
            tiles.append((label, cv2.resize(crop, (CLOSEUP_SIDE, CLOSEUP_SIDE), interpolation=cv2.INTER_AREA)))
        rows.append(tiles)
    return compose(rows, 1)


def small_faces_in_a_photo(args, faces, results):
    """The shipped model on a built-in photo with six small faces, through enhance.py; returns the lines
    naming what was written."""
    if not SHIPPED.is_file():
        print(f"skipped: {SHIPPED.relative_to(ROOT)} is not in this checkout")
        return []
    if importlib.util.find_spec("facenet_pytorch") is None:
        from utils.photo.detector import INSTALL

        print(f"skipped: the face detector's package facenet-pytorch is not installed ({INSTALL})")
        return []
    from utils.photo import synthetic

    group = astronaut_group_photo(SHIPPED_SCALE)
    photo, truth, out = faces / "group_photo" / "group.png", faces / "group_photo_hr" / "group.png", results / "photo"
    write_rgb(photo, group.lr)
    write_rgb(truth, group.hr)
    if out.exists():
        shutil.rmtree(out)
    run(["enhance.py", photo, "--out", out, "--side_by_side", "--gpus", 0, "--upscale", SHIPPED_SCALE],
        "enhancing the photo", args.torch_threads)
    result = read_rgb(out / "group.png")
    bicubic = np.asarray(Image.fromarray(group.lr).resize(group.hr.shape[1::-1], Image.BICUBIC))
    print(f"face regions against the {SHIPPED_SCALE}x ground truth (PSNR, RGB):")
    for index, size in enumerate(GROUP_SIZES):
        region = synthetic.face_region(group, index)
        base, ours = synthetic.region_psnr(group.hr, bicubic, region), synthetic.region_psnr(group.hr, result, region)
        print(f"  face {index} ({size:2d} px): bicubic {base:.2f} dB, enhance.py {ours:.2f} dB ({ours - base:+.2f})")
    write_rgb(out / "closeup.png", closeup(group, result, bicubic))
    return [f"  photo       {photo} -> {out} (group.png, group.json, group_faces/, group_side_by_side.png)",
            f"  close-up    {out / 'closeup.png'} (input | bicubic | enhance.py | ground truth)"]


def mean_psnr(hr_dir, sr_dir):
    """Mean Y-channel PSNR (the table's convention) of ``sr_dir`` against ``hr_dir``."""
    from utils.evaluation.folder_eval import evaluate_folders

    return evaluate_folders(hr_dir, sr_dir, progress=False)[1]["psnr"]


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(7)
    out = Path(args.out).resolve()
    prepare_out_dir(out)
    faces, results = out / "faces", out / "results"
    hr_dir, lr_dir = faces / "heldout", faces / "heldout_lr"
    sr_dir, bicubic_dir = results / MODEL, results / BICUBIC
    table, picture = results / "table.md", results / "side_by_side.png"
    checkpoint = out / "ckpt" / NAME / "latest.pt"

    steps.begin("faces", "face dataset")
    if args.dataroot:
        face_set = build_user_faces(args.dataroot, faces, args.load_size)
    else:
        face_set = build_builtin_faces(faces, args.load_size, args.seed)
    print(face_set.description)

    steps.begin("training", f"training a small HybriMamba on the CPU ({args.iters} iterations)")
    run(training_arguments(args, face_set.train_dir, face_set.train_count, out), "training", args.torch_threads)

    steps.begin("testing", f"held-out LR faces (x{args.scale}) and super-resolution")
    run(["-m", "data.make_lr", hr_dir, "--lr_dir", lr_dir, "--lr_up_dir", bicubic_dir, "--scale", args.scale],
        "making the LR faces", args.torch_threads)
    run(["test.py", "--gpus", 0, "--name", NAME, "--dataroot", lr_dir, "--pretrain_model_path", checkpoint,
         "--load_size", args.load_size, "--scale_factor", args.scale, "--save_as_dir", sr_dir,
         "--batch_size", 32, "--num_threads", 0], "testing", args.torch_threads)

    steps.begin("scoring", "scores against the held-out HR faces, and a picture")
    score_table(args, args.load_size, hr_dir, "held-out", [bicubic_dir, sr_dir], table)
    run(["-m", "utils.evaluation.side_by_side", "--lr", lr_dir, "--sr", sr_dir, "--hr", hr_dir, "--bicubic",
         "--n", 8, "--per_row", 2, "--zoom", 4, "--out", picture], "the side-by-side picture", args.torch_threads)

    steps.begin("shipped", "the shipped 8x model on a real face (scikit-image's astronaut, 16x16 -> 128x128)")
    shipped_lines = shipped_model_on_a_real_face(args, faces, results)

    steps.begin("photo", "the shipped 8x model on a photo with six small faces (enhance.py)")
    shipped_lines += small_faces_in_a_photo(args, faces, results)

    steps.begin("check", "check")
    model_psnr, bicubic_psnr = mean_psnr(hr_dir, sr_dir), mean_psnr(hr_dir, bicubic_dir)
    gain = model_psnr - bicubic_psnr
    print(f"written to {out}:\n"
          f"  faces       {faces} (train/, heldout/ = HR, heldout_lr/ = {args.load_size // args.scale}x"
          f"{args.load_size // args.scale} LR)\n"
          f"  checkpoint  {checkpoint}\n"
          f"  training    {out / 'logs' / NAME} (train_log.txt, TensorBoard tb/, visuals/)\n"
          f"  SR faces    {sr_dir}\n  bicubic     {bicubic_dir}\n"
          f"  table       {table}\n  picture     {picture} (LR | bicubic | SR | HR)"
          + "".join("\n" + line for line in shipped_lines))
    verdict = "beats" if gain > 0 else "does NOT beat"
    print(f"\nHybriMamba {verdict} bicubic on the {face_set.heldout_count} held-out faces: PSNR {model_psnr:.2f} dB "
          f"vs {bicubic_psnr:.2f} dB ({gain:+.2f} dB)")
    print(f"the demo took {steps.minutes():.1f} min ({steps.durations()})")
    if gain <= 0 and not args.skip_check:
        print("train longer (--iters) or check the training log above", file=sys.stderr)
        return 1
    return 0
