"""test.py's work: build the network from a checkpoint, super-resolve a folder of LR faces in
batches, write one PNG per input (same file stem) and, given ground truth, score the outputs.
"""
import contextlib
import json
import logging
import math
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.image_tensor import to_uint8
from data.single_dataset import SingleDataset
from models import HybriMamba, forward_padded
from models.checkpoint import WeightsMismatch, load_model_file, load_weights, stored_config
from models.config import HybriMambaConfig
from models.selective_scan import resolve_backend
from options.base_options import network_config
from options.test_options import TestOptions
from utils.errors import UserError, first_few
from utils.evaluation.folder_eval import CSV_PURPOSE, evaluate_folders, summary_lines, write_csv
from utils.host_memory import retain_freed_memory
from utils.image_io import index_by_stem, is_image_file, write_rgb
from utils.output_files import check_output_folder, check_replaceable, write_output
from utils.progress import TqdmHandler, progress_bar

log = logging.getLogger("hybrimamba")
OUTPUT_SUFFIX = ".png"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
# what utils.output_files records for the outputs
SR_PURPOSE, SUMMARY_PURPOSE = "super-resolved image", "metrics summary"
TASK = ("load_size", "scale_factor")  # the task a checkpoint was trained for, which test.py runs by default
MAX_TASK_SIZE = 16384  # a checkpoint's load_size above this is damage, not a task


@contextlib.contextmanager
def console_logging():
    """Route the 'hybrimamba' logger (notices, read_rgb conversions) to the console for one run."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


def select_device(gpus, cuda_available=None):
    """(device, notices) for ``--gpus``: 0 -> CPU; N >= 1 -> cuda:0, or the CPU when CUDA is absent."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if gpus == 0:
        return torch.device("cpu"), []
    if not cuda_available:
        return torch.device("cpu"), [f"--gpus {gpus} but CUDA is not available: running on the CPU"]
    notices = [f"--gpus {gpus}: inference runs on one GPU (cuda:0)"] if gpus > 1 else []
    return torch.device("cuda", 0), notices


def network_options(opt, stored):
    """(HybriMambaConfig, notices): the config a checkpoint stores (``stored``, from ``stored_config``) wins
    over the command line; without one (a bare state_dict) the command line's (default: the paper's) is used.
    """
    config = network_config(opt)
    if stored is None:
        return config, []
    default = HybriMambaConfig()
    notices = [f"--{f.name} {getattr(config, f.name)} ignored: the checkpoint was trained with {f.name} "
               f"{getattr(stored, f.name)}" for f in HybriMambaConfig.option_fields()
               if getattr(config, f.name) not in (getattr(default, f.name), getattr(stored, f.name))]
    return stored, notices


def checkpoint_task(opt, ckpt):
    """Set ``opt.load_size`` and ``opt.scale_factor`` to the task the checkpoint ``ckpt`` was trained for,
    unless they were typed; returns the notices that say which sizes run and why."""
    options = ckpt.get("options") if isinstance(ckpt, dict) else None
    stored = {key: options[key] for key in TASK if isinstance(options, dict) and type(options.get(key)) is int}
    bad = [key for key, value in stored.items() if not 0 < value <= MAX_TASK_SIZE]
    if bad:
        raise UserError(f"{opt.pretrain_model_path}: its {bad[0]} {stored[bad[0]]} is not a usable size (the file is "
                        f"damaged); pass --{bad[0]} or use another checkpoint")
    taken = [key for key in stored if key not in opt.explicit]
    for key in taken:
        setattr(opt, key, stored[key])
    notices = [f"--{key} {getattr(opt, key)} differs from the checkpoint's {key} {stored[key]}, the task it was "
               f"trained for" for key in stored if key not in taken and getattr(opt, key) != stored[key]]
    if taken:
        notices.insert(0, " and ".join(f"{key} {stored[key]}" for key in taken) + " from the checkpoint (the task it "
                          f"was trained for); pass {' / '.join(f'--{key}' for key in taken)} to change")
    return notices


def build_model(opt, device, ckpt=None):
    """(HybriMamba in eval mode on ``device`` with the checkpoint's weights, one-line description);
    ``ckpt``: the checkpoint when already loaded."""
    path = opt.pretrain_model_path
    ckpt = load_model_file(path) if ckpt is None else ckpt
    stored = stored_config(ckpt, path)
    config, notices = network_options(opt, stored)
    for line in notices:
        log.warning(f"notice: {line}")
    model = HybriMamba(config, scan_backend=opt.scan_backend)
    try:
        what = load_weights(model, path, prefer_ema=not opt.no_ema, ckpt=ckpt)
    except WeightsMismatch as err:
        if stored is not None:  # load_weights already named the stored configuration
            raise
        flags = "/".join(f"--{f.name}" for f in HybriMambaConfig.option_fields())
        raise UserError(f"{err}; it stores no network options, so pass the {flags} it was trained with") from None
    shape = " ".join(f"{f.name} {getattr(config, f.name)}" for f in HybriMambaConfig.option_fields())
    model = model.eval().to(device)
    if opt.compile:
        model.compile()
    return model, f"{what}; network {shape}"


def check_ground_truth(hr_dir, stems, load_size):
    """Before any inference: every input stem has a ``load_size`` x ``load_size`` image in ``hr_dir``."""
    hr = index_by_stem(hr_dir)
    missing = [s for s in stems if s not in hr]
    if missing:
        raise UserError(f"{hr_dir}: no ground truth for {len(missing)} input(s) ({first_few(missing)}); "
                        f"HR images are paired with the inputs by file stem")
    for stem in stems:
        with contextlib.suppress(OSError):  # files PIL cannot parse are reported by the evaluation
            with Image.open(hr[stem]) as img:
                size = img.size
            if size != (load_size, load_size):
                raise UserError(f"{hr[stem]}: ground truth is {size[0]}x{size[1]} but the outputs are "
                                f"{load_size}x{load_size}; pass --load_size {size[0]} or the matching HR folder")


def foreign_outputs(save_dir, stems):
    """Images already in ``save_dir`` that this run will not write (left over from another input set)."""
    if not save_dir.is_dir():
        return []
    ours = {stem + OUTPUT_SUFFIX for stem in stems}
    return sorted(p.name for p in save_dir.iterdir() if p.is_file() and is_image_file(p) and p.name not in ours)


def is_out_of_memory(err):
    """Whether a RuntimeError from a forward pass is an allocation failure (CUDA, CPU or another device)."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def forward_checked(model, lr, paths, device):
    """``forward_padded`` on one batch; running out of memory and non-finite outputs raise ``UserError``."""
    try:
        sr = forward_padded(model, lr, multiple=4)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        size = lr.shape[-1]
        raise UserError(f"out of memory running {len(paths)} image(s) of {size}x{size} on {device}; lower "
                        f"--batch_size (now {len(paths)}) or --load_size (now {size})") from None
    bad = [path for path, out in zip(paths, sr) if not bool(torch.isfinite(out).all())]
    if bad:
        raise UserError(f"non-finite output (NaN or inf) for {first_few(bad)}: the weights overflow on these inputs; "
                        f"use an earlier checkpoint")
    return sr


@torch.inference_mode()
def super_resolve(model, dataset, save_dir, batch_size=8, device="cpu", workers=0, progress=True):
    """Run ``model`` over a SingleDataset in batches; returns the output paths in input order.

    Batches are (B, 3, S, S) with S = the dataset's load_size; any S works (the input is padded
    to a multiple of 4 and the output cropped back). Each output is rounded to uint8 and
    written as ``save_dir/<input stem>.png`` (a ``SR_PURPOSE`` file of utils.output_files). Running
    out of memory and non-finite outputs raise ``UserError`` before the batch is written.
    """
    device, save_dir = torch.device(device), Path(save_dir)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=min(workers, len(dataset)),
                        pin_memory=device.type == "cuda")
    save_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    with progress_bar(total=len(dataset), desc="super-resolving", unit="img", enabled=progress) as bar:
        for batch in loader:
            sr = forward_checked(model, batch["LR"].to(device, non_blocking=True), batch["path"], device)
            for path, img in zip(batch["path"], to_uint8(sr)):
                out = save_dir / (Path(path).stem + OUTPUT_SUFFIX)
                write_rgb(out, img, SR_PURPOSE)
                outputs.append(out)
            bar.update(len(batch["path"]))
    return outputs


def _json_safe(value):
    """JSON has no infinity (PSNR of identical images): non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_metrics(save_dir, rows, summary, extra):
    """``save_dir/metrics.csv`` (per image) and ``save_dir/metrics.json`` (summary and ``extra``)."""
    csv_path, json_path = save_dir / METRICS_CSV, save_dir / METRICS_JSON
    record = {k: _json_safe(v) for k, v in {**summary, **extra}.items()}
    fix = "free disk space or choose another --save_as_dir"
    write_csv(csv_path, rows, fix)
    write_output(json_path, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode(), SUMMARY_PURPOSE, fix)
    return csv_path, json_path


def check_outputs(opt, save_dir):
    """Before any work: --save_as_dir may receive an SR image per input (and the metrics with --hr_dir)."""
    inputs = {"--dataroot": opt.dataroot, "--hr_dir": opt.hr_dir}
    check_output_folder("--save_as_dir", save_dir, inputs)
    stems = index_by_stem(opt.dataroot)
    check_output_folder("--save_as_dir", save_dir, inputs, SR_PURPOSE, [s + OUTPUT_SUFFIX for s in stems],
                        opt.overwrite)
    if opt.hr_dir:
        for name, purpose in ((METRICS_CSV, CSV_PURPOSE), (METRICS_JSON, SUMMARY_PURPOSE)):
            check_replaceable("--save_as_dir", save_dir, [save_dir / name], purpose, opt.overwrite)


def run_test(opt, progress=True):
    """The whole test.py run for the parsed TestOptions ``opt``; returns ``(outputs, summary or None)``."""
    with console_logging():
        return _run_test(opt, progress)


def _run_test(opt, progress):
    retain_freed_memory()  # each batch reuses the last one's host memory instead of faulting it in again
    device, notices = select_device(opt.gpus)
    for line in notices + TestOptions().notices(opt):
        log.warning(f"notice: {line}")
    save_dir = Path(opt.save_as_dir)
    # Everything that can fail cheaply is checked before the (long) inference.
    check_outputs(opt, save_dir)
    ckpt = load_model_file(opt.pretrain_model_path)
    for line in checkpoint_task(opt, ckpt):
        log.warning(f"notice: {line}")
    dataset = SingleDataset(opt.dataroot, load_size=opt.load_size, scale_factor=opt.scale_factor,
                            skip_bad=opt.skip_bad_images)
    stems = [Path(p).stem for p in dataset.paths]
    leftovers = foreign_outputs(save_dir, stems)
    if opt.hr_dir:
        check_ground_truth(opt.hr_dir, stems, opt.load_size)
        if leftovers:
            raise UserError(f"{save_dir}: holds {len(leftovers)} image(s) not made from {opt.dataroot} "
                            f"({first_few(leftovers)}) that would be scored too; empty it or choose another "
                            f"--save_as_dir")
    elif leftovers:
        log.warning(f"notice: {save_dir} also holds {len(leftovers)} other image(s) ({first_few(leftovers)})")
    resolve_backend(opt.scan_backend, device)
    lpips_model = None
    if opt.lpips:
        from utils.evaluation.lpips_metric import build_lpips  # deferred: lpips imports torchvision's models
        lpips_model = build_lpips("alex", opt.backbone_weights, device)
    model, what = build_model(opt, device, ckpt)
    log.info(f"{what}; {len(dataset)} image(s) at {opt.load_size}x{opt.load_size} on {device}")

    outputs = super_resolve(model, dataset, save_dir, opt.batch_size, device, opt.num_threads, progress)
    log.info(f"{len(outputs)} result(s) written to {save_dir}")
    if not opt.hr_dir:
        return outputs, None

    rows, summary = evaluate_folders(opt.hr_dir, save_dir, convention=opt.y_convention, lpips_model=lpips_model,
                                     lpips_batch_size=opt.batch_size, allow_missing=True, progress=progress)
    print("\n".join(summary_lines(summary)))
    extra = {"checkpoint": str(opt.pretrain_model_path), "weights": what, "load_size": opt.load_size,
             "scale_factor": opt.scale_factor}
    csv_path, json_path = write_metrics(save_dir, rows, summary, extra)
    print(f"per-image results: {csv_path}; summary: {json_path}")
    return outputs, summary
