"""Reading, listing and pairing image files, with one-line errors that name the file."""
import contextlib
import io
import logging
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.errors import UserError, first_few
from utils.output_files import write_output

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
EXIF_ORIENTATION = 0x0112

log = logging.getLogger("hybrimamba")
_notified = set()


def _notice_once(kind, message):
    if kind not in _notified:
        _notified.add(kind)
        log.warning(message)


def is_image_file(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _entries(folder, recursive):
    """The paths directly in ``folder`` or, recursively, in it and its subfolders, following linked
    folders but each real folder once (a link loop gets a notice)."""
    if not recursive:
        yield from folder.iterdir()
        return
    seen, loops = set(), []
    for root, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:
            loops.append(root)
            dirs.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        yield from (Path(root) / name for name in files)
    if loops:
        log.warning(f"notice: {len(loops)} linked folder(s) lead back to a folder already read, each read once: "
                    f"{first_few(loops)}")


def list_images(folder, recursive=True):
    """Sorted image paths under ``folder`` (recursively by default); an error if there are none. Image
    names that are broken or looping symbolic links are left out with a notice."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; pass the folder that holds the images")
    paths, broken = [], []
    for path in _entries(folder, recursive):
        if is_image_file(path):
            (paths if path.is_file() else broken if not path.exists() else []).append(path)
    if broken:
        log.warning(f"notice: left out {len(broken)} image name(s) that are broken or looping symbolic links: "
                    f"{first_few(sorted(broken))}")
    if not paths:
        raise UserError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(paths)


def exif_orientation(raw):
    """The EXIF orientation (1-8) of the image file bytes ``raw`` that OpenCV's decoding leaves to apply;
    1 when there is none. Only files with an EXIF block are parsed (by PIL); TIFFs OpenCV turns itself."""
    head = bytes(raw[:65536])
    if head[:4] in (b"II*\x00", b"MM\x00*") or not any(tag in head for tag in (b"Exif", b"eXIf", b"EXIF")):
        return 1
    with contextlib.suppress(Exception), Image.open(io.BytesIO(bytes(raw))) as img:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
        return value if 1 <= value <= 8 else 1
    return 1


def orient(img, orientation):
    """(H, W, ...) ``img`` turned upright for an EXIF ``orientation`` (as PIL's ImageOps.exif_transpose)."""
    turns = {1: img, 2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1], 5: img.swapaxes(0, 1),
             6: np.rot90(img, -1), 7: np.rot90(img, 2).swapaxes(0, 1), 8: np.rot90(img, 1)}
    return np.ascontiguousarray(turns[orientation])


def gif_frames(raw):
    """How many frames the GIF bytes ``raw`` hold (1 when PIL cannot tell)."""
    with contextlib.suppress(Exception), Image.open(io.BytesIO(bytes(raw))) as img:
        return int(getattr(img, "n_frames", 1))
    return 1


def read_rgb(path):
    """Read an image as RGB uint8 (H, W, 3), upright as its EXIF orientation says.

    Grayscale is replicated, alpha (with transparent pixels) is dropped, 16-bit is scaled to
    8-bit, a GIF gives its first frame and an EXIF orientation is applied, each with a one-time
    notice. An unreadable or corrupt file raises ``UserError`` naming it.
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
    if raw[:4].tobytes() == b"GIF8":
        frames = gif_frames(raw)
        if frames > 1:
            _notice_once("gif", f"{path}: a GIF of {frames} frames; the first is used (further ones silently)")
    orientation = exif_orientation(raw)
    if orientation != 1:
        _notice_once("exif", f"{path}: turned upright as its EXIF orientation {orientation} says (further ones "
                             f"silently)")
        img = orient(img, orientation)
    if img.ndim == 2:
        _notice_once("gray", f"{path}: grayscale image replicated to RGB (further ones are converted silently)")
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        if (img[:, :, 3] < 255).any():  # an opaque alpha channel (a GIF's) holds nothing to lose
            _notice_once("alpha", f"{path}: alpha channel dropped (further ones are converted silently)")
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise UserError(f"{path}: {img.shape[2]} channels; save it as RGB")
    return np.ascontiguousarray(img[:, :, ::-1])


def check_image_format(path, flag=None):
    """``path``'s extension is one OpenCV can write; else ``UserError`` naming it (and ``flag``)."""
    if not cv2.haveImageWriter(str(path)):
        raise UserError(f"{flag + ' ' if flag else ''}{path}: cannot write images ending in "
                        f"'{Path(path).suffix}'; use .png (or .jpg)")


def write_rgb(path, img, purpose):
    """Write an RGB uint8 (H, W, 3) array as written for ``purpose`` (utils.output_files); the format
    follows the extension (PNG for outputs). ``path`` is never half-written; a failed write (a full
    disk) leaves no temporary file and raises ``UserError``.
    """
    path = Path(path)
    check_image_format(path)
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise UserError(f"{path}: cannot encode an image with this extension; use .png")
    write_output(path, buf.tobytes(), purpose)


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
