"""The demo's face dataset: HR training crops and held-out HR faces, written as PNG folders.

Built in (no download: both images ship inside the scikit-image package itself):

- ``skimage.data.lfw_subset()``: 100 face crops of 25x25 grey pixels, each from a different
  photograph of Labeled Faces in the Wild (plus 100 non-face patches, which are not used).
- ``skimage.data.astronaut()``: a 512x512 RGB portrait of Eileen Collins (its training crops are made
  grey like the LFW faces, so that the network learns that a grey face stays grey).

How the held-out faces are kept apart: the last ``HELDOUT_FACES`` LFW faces are the held-out
set and nothing is ever cut from them for training. Training uses the other LFW faces (every
crop offset of the crop window, each also mirrored) and random crops of the astronaut
portrait framed around her face at random zooms and shifts. So every held-out face
is a photograph the network never sees. (The subset has no identity labels, so the same person
may appear in two photographs.)

With a folder of the user's own HR faces, evenly spaced images (in sorted order) are held out
and the rest train; every face is centre-cropped to a square and PIL-bicubic resized to the
demo's size. The split depends only on the sorted file list, so it is the same on every run.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data.degradation import center_square, resize_bicubic
from utils.errors import UserError
from utils.image_io import list_images, read_rgb, write_rgb
from utils.progress import progress_bar

LFW_FACES = 100        # the first 100 images of lfw_subset() are faces
LFW_SIDE = 25
HELDOUT_FACES = 20     # the last 20 LFW faces
ASTRONAUT_CROPS = 160
# Her face (eyebrows to chin ~110 pixels) in the 512x512 portrait; windows from a tight face crop
# (as LFW's) to head and shoulders.
ASTRONAUT_FACE_CENTRE = (225, 120)
ASTRONAUT_WINDOW = (110, 260)
ASTRONAUT_SHIFT = 25
# The shipped 8x model's real face: a window framed like CelebA's 128x128 test crops (eyes at about
# a third of the height, chin near the bottom).
ASTRONAUT_FACE_WINDOW = (225, 125, 136)  # centre x, centre y, side
MAX_USER_HELDOUT = 20
PURPOSE = "demo file"  # what utils.output_files records for everything the demo writes
# The demo's group photo: face sizes (pixels) and turns (degrees).
GROUP_SIZES = (16, 20, 24, 28, 32, 40)
GROUP_ANGLES = (0, 7, -9, 4, -6, 10)


@dataclass
class FaceSet:
    """Where a built face set lives: ``train_dir`` (HR crops), ``heldout_dir`` (HR faces)."""
    train_dir: Path
    heldout_dir: Path
    train_count: int
    heldout_count: int
    description: str


def load_skimage_image(name):
    """``skimage.data.<name>()`` when it ships inside the installed package; else a ``UserError``.

    scikit-image downloads some of its images on first use; the demo must not, so only the
    files of the package's own data folder are accepted.
    """
    import skimage.data

    files = {"astronaut": "astronaut.png", "lfw_subset": "lfw_subset.npy"}
    path = Path(skimage.data.__file__).parent / files[name]
    if not path.is_file():
        raise UserError(f"this scikit-image has no built-in {path.name} (it would need a download); "
                        "run the demo on your own faces with --dataroot DIR")
    return getattr(skimage.data, name)()


def to_uint8(img):
    """A float image in [0, 1] or a uint8 image -> RGB uint8 (H, W, 3); grey is replicated."""
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def grey(img):
    """RGB uint8 -> its PIL luma (ITU-R 601-2) in all three channels."""
    return to_uint8(np.asarray(Image.fromarray(img).convert("L")))


def lfw_faces():
    """The 100 LFW faces as RGB uint8, shape (100, 25, 25, 3)."""
    faces = load_skimage_image("lfw_subset")[:LFW_FACES]
    return np.stack([to_uint8(f) for f in faces])


def resized(img, size):
    """RGB uint8 (h, w, 3) -> (size, size, 3) by PIL bicubic (a copy when already that size)."""
    return np.asarray(resize_bicubic(Image.fromarray(img), (size, size)))


def check_builtin_size(size):
    if not 4 <= size < LFW_SIDE:
        raise UserError(f"--load_size {size}: the built-in faces are {LFW_SIDE}x{LFW_SIDE}, so use a size from 4 "
                        f"to {LFW_SIDE - 1} (e.g. 24), or your own larger faces with --dataroot")


def lfw_crops(face, size):
    """The 8 training crops of one (25, 25, 3) face: the 24x24 windows at offsets (0|1, 0|1), each
    also mirrored, brought to ``size`` -> list of (name suffix, (size, size, 3) uint8)."""
    window = LFW_SIDE - 1
    crops = []
    for top in range(LFW_SIDE - window + 1):
        for left in range(LFW_SIDE - window + 1):
            crop = face[top:top + window, left:left + window]
            crops.append((f"o{top}{left}", resized(crop, size)))
            crops.append((f"o{top}{left}m", resized(crop[:, ::-1], size)))
    return crops


def heldout_crop(face, size):
    """The one crop of a held-out face: the 24x24 window at offset (0, 0), brought to ``size``."""
    window = LFW_SIDE - 1
    return resized(face[:window, :window], size)


def astronaut_crops(count, size, rng):
    """``count`` random (size, size, 3) crops around the astronaut's face: random framing (window side
    ASTRONAUT_WINDOW portrait pixels, centre moved by up to ASTRONAUT_SHIFT), PIL-bicubic shrunk to
    ``size``, half of them mirrored."""
    portrait = Image.fromarray(to_uint8(load_skimage_image("astronaut")))
    cx, cy = ASTRONAUT_FACE_CENTRE
    crops = []
    for _ in range(count):
        half = rng.uniform(*ASTRONAUT_WINDOW) / 2
        x, y = cx + rng.uniform(-ASTRONAUT_SHIFT, ASTRONAUT_SHIFT), cy + rng.uniform(-ASTRONAUT_SHIFT, ASTRONAUT_SHIFT)
        window = portrait.crop(tuple(round(v) for v in (x - half, y - half, x + half, y + half)))
        crop = np.asarray(resize_bicubic(window, (size, size)))
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return crops


def astronaut_face(size=128):
    """The astronaut's face framed like a CelebA test crop, PIL-bicubic resized to (size, size, 3) uint8."""
    portrait = Image.fromarray(to_uint8(load_skimage_image("astronaut")))
    cx, cy, side = ASTRONAUT_FACE_WINDOW
    half = side / 2
    window = portrait.crop(tuple(round(v) for v in (cx - half, cy - half, cx + half, cy + half)))
    return np.asarray(resize_bicubic(window, (size, size)))


def astronaut_source():
    """The astronaut's face with its CelebA-like frame, for group photos (``utils.photo.synthetic``): the
    portrait cut around the frame with the margins of a CelebA aligned image (frame 137 pixels at 19, 63
    of 178x218: about 0.14 of the side to the left, 0.16 right, 0.46 above, 0.13 below)."""
    from utils.photo.synthetic import FaceSource

    cx, cy, side = ASTRONAUT_FACE_WINDOW
    left, top = cx - side // 2, cy - side // 2
    portrait = to_uint8(load_skimage_image("astronaut"))
    x0, y0 = max(0, left - round(0.14 * side)), max(0, top - round(0.46 * side))
    x1, y1 = left + side + round(0.16 * side), top + side + round(0.13 * side)
    return FaceSource(portrait[y0:y1, x0:x1], (left - x0, top - y0, side))


def astronaut_group_photo(scale=8):
    """A built-in "group photo": the astronaut's face six times, 16 to 40 pixels, turned and mirrored,
    on a smooth background, with its x``scale`` ground truth (``utils.photo.synthetic.GroupPhoto``)."""
    from utils.photo import synthetic

    face = astronaut_source()
    left, top, side = face.frame
    mirrored = synthetic.FaceSource(np.ascontiguousarray(face.image[:, ::-1]), (face.image.shape[1] - left - side,
                                                                                top, side))
    placements, (width, height) = synthetic.grid_layout(GROUP_SIZES, GROUP_ANGLES, per_row=3)
    sources = [face if i % 2 == 0 else mirrored for i in range(len(GROUP_SIZES))]
    return synthetic.group_photo(sources, placements, width, height, scale=scale, seed=0)


def build_builtin_faces(out_dir, size=24, seed=0, progress=True):
    """Write the built-in set (module docstring) to ``out_dir/train`` and ``out_dir/heldout``.

    Train: (100 - HELDOUT_FACES) LFW faces x 8 crops + ASTRONAUT_CROPS astronaut crops (made grey);
    held out: HELDOUT_FACES faces; every image grey, as RGB uint8 (size, size, 3) PNG.
    """
    check_builtin_size(size)
    out_dir = Path(out_dir)
    train_dir, heldout_dir = out_dir / "train", out_dir / "heldout"
    faces = lfw_faces()
    first_heldout = LFW_FACES - HELDOUT_FACES
    rng = np.random.default_rng(seed)
    train = 0
    for index in progress_bar(range(first_heldout), desc="training crops", unit="face", enabled=progress):
        for suffix, crop in lfw_crops(faces[index], size):
            write_rgb(train_dir / f"lfw{index:03d}_{suffix}.png", crop, PURPOSE)
            train += 1
    # Grey like the LFW faces: colour crops taught the network colour edges, which it then put on the
    # grey held-out faces as cyan/magenta fringes.
    for number, crop in enumerate(astronaut_crops(ASTRONAUT_CROPS, size, rng)):
        write_rgb(train_dir / f"astronaut_{number:03d}.png", grey(crop), PURPOSE)
        train += 1
    for index in range(first_heldout, LFW_FACES):
        write_rgb(heldout_dir / f"lfw{index:03d}.png", heldout_crop(faces[index], size), PURPOSE)
    description = (f"{train} training crops ({first_heldout} LFW faces x 8 crops, {ASTRONAUT_CROPS} grey crops of "
                   f"scikit-image's astronaut) and {HELDOUT_FACES} held-out LFW faces (photographs never used "
                   f"for training), all {size}x{size}")
    return FaceSet(train_dir, heldout_dir, train, HELDOUT_FACES, description)


def heldout_indices(count):
    """Evenly spaced indices of the held-out images among ``count`` sorted images (at least 1)."""
    held = min(MAX_USER_HELDOUT, max(1, count // 5))
    return sorted({int((i + 0.5) * count / held) for i in range(held)})


def build_user_faces(dataroot, out_dir, size=24, progress=True):
    """Split the HR faces under ``dataroot`` (recursive) into ``out_dir/train`` and ``out_dir/heldout``.

    Every face becomes a centre square, PIL-bicubic resized to (size, size); names are
    ``<position in sorted order>_<stem>.png`` so equal stems in subfolders stay apart.
    """
    paths = list_images(dataroot)
    if len(paths) < 2:
        raise UserError(f"{dataroot}: {len(paths)} image(s); the demo needs at least 2 (one to train on, one held out)")
    out_dir = Path(out_dir)
    train_dir, heldout_dir = out_dir / "train", out_dir / "heldout"
    held = set(heldout_indices(len(paths)))
    for index, path in enumerate(progress_bar(paths, desc="preparing faces", unit="img", enabled=progress)):
        face = np.asarray(resize_bicubic(center_square(Image.fromarray(read_rgb(path))), (size, size)))
        write_rgb((heldout_dir if index in held else train_dir) / f"{index:05d}_{path.stem}.png", face, PURPOSE)
    description = (f"{len(paths) - len(held)} training faces and {len(held)} held-out faces (evenly spaced in "
                   f"sorted order) from {dataroot}, all {size}x{size}")
    return FaceSet(train_dir, heldout_dir, len(paths) - len(held), len(held), description)
