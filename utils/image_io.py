"""Reading, listing and pairing image files, with one-line errors that name the file."""
import contextlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError, first_few

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

log = logging.getLogger("hybrimamba")
_notified = set()


def _notice_once(kind, message):
    if kind not in _notified:
        _notified.add(kind)
        log.warning(message)


def is_image_file(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder, recursive=True):
    """Sorted image paths under ``folder`` (recursively by default); an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; pass the folder that holds the images")
    pattern = "**/*" if recursive else "*"
    paths = sorted(p for p in folder.glob(pattern) if p.is_file() and is_image_file(p))
    if not paths:
        raise UserError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def read_rgb(path):
    """Read an image as RGB uint8 (H, W, 3).

    Grayscale is replicated, alpha is dropped and 16-bit is scaled to 8-bit, each with a
    one-time notice. An unreadable or corrupt file raises ``UserError`` naming it.
    """
    path = Path(path)
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror}); check the path and permissions") from None
    return decode_rgb(raw, path)


def decode_rgb(raw, path):
    """``read_rgb`` for the bytes ``raw`` of an image file (bytes or a uint8 array); ``path`` names it in
    notices and errors."""
    raw = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray)) else raw
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise UserError(f"{path}: not a readable image (corrupt or unsupported format); re-export or remove it")
    if img.dtype == np.uint16:
        _notice_once("16bit", f"{path}: 16-bit image scaled to 8-bit (further 16-bit files are converted silently)")
        img = np.round(img.astype(np.float64) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise UserError(f"{path}: unsupported pixel type {img.dtype}; save it as 8- or 16-bit PNG")
    if img.ndim == 2:
        _notice_once("gray", f"{path}: grayscale image replicated to RGB (further ones are converted silently)")
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        _notice_once("alpha", f"{path}: alpha channel dropped (further ones are converted silently)")
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise UserError(f"{path}: {img.shape[2]} channels; save it as RGB")
    return np.ascontiguousarray(img[:, :, ::-1])


def write_rgb(path, img):
    """Write an RGB uint8 (H, W, 3) array; the format follows the extension (PNG for outputs).

    Written to ``<path>.tmp`` then renamed, so ``path`` is never half-written; a failed write
    (a full disk) removes the temp file and raises ``UserError``.
    """
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise UserError(f"{path}: cannot encode an image with this extension; use .png")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(buf)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise UserError(f"{path}: cannot write the file ({err.strerror or err}); free disk space or choose "
                            f"another output folder") from None
        raise


def index_by_stem(folder):
    """Map file stem -> path for the images of a folder; two files with one stem is an error."""
    index = {}
    for p in list_images(folder, recursive=False):
        if p.stem in index:
            raise UserError(f"{folder}: '{index[p.stem].name}' and '{p.name}' share the stem '{p.stem}'; keep one")
        index[p.stem] = p
    return index


def pair_by_stem(gt_dir, sr_dir, allow_missing=False):
    """Pair images of two folders by file stem (extensions may differ).

    Returns ``(pairs, missing)``: pairs is a sorted list of ``(stem, gt_path, sr_path)``;
    missing lists the stems present in only one folder. Unpaired files are an error unless
    ``allow_missing``.
    """
    gt, sr = index_by_stem(gt_dir), index_by_stem(sr_dir)
    missing = sorted(set(gt) ^ set(sr))
    if missing and not allow_missing:
        only_gt = sorted(set(gt) - set(sr))
        only_sr = sorted(set(sr) - set(gt))
        shown = "; ".join(
            part for part in (
                f"only in {gt_dir}: {first_few(only_gt)}" if only_gt else "",
                f"only in {sr_dir}: {first_few(only_sr)}" if only_sr else "",
            ) if part
        )
        raise UserError(f"{len(missing)} unpaired image(s) ({shown}); pass --allow_missing to skip them")
    pairs = [(stem, gt[stem], sr[stem]) for stem in sorted(set(gt) & set(sr))]
    if not pairs:
        raise UserError(f"{gt_dir} and {sr_dir} share no file stems; images are paired by name")
    return pairs, missing
