"""The files enhance.py writes for one photo, and the rule that keeps them from replacing anyone's.

    OUT/<stem>.png                 the whole photo enlarged, faces restored
    OUT/<stem>.json                what was done: each face's box, landmarks, score and transform
    OUT/<stem>_faces/NN.png        face NN (as numbered in the JSON): its aligned LR input (pixels enlarged)
                                   beside the restored face; none for a face too large to restore
    OUT/<stem>_side_by_side.png    (--side_by_side) input | bicubic | result

They follow the project's rule for output files (utils/output_files.py): a later run replaces what
enhance.py wrote, but no other file without --overwrite, and everything is checked before any work.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError
from utils.evaluation.side_by_side import compose
from utils.image_io import write_rgb
from utils.output_files import check_output_file, check_replaceable, write_output, written_for

WRITTEN_BY = "enhance.py"
PURPOSE = "enhance.py output"  # what utils.output_files records for every file above
FACE_FILE = re.compile(r"\d{2,}\.png")
MAX_PANEL_SIDE = 1600  # side-by-side panels are reduced to at most this many pixels


@dataclass
class PhotoOutputs:
    out_dir: Path
    stem: str

    @property
    def image(self):
        return self.out_dir / f"{self.stem}.png"

    @property
    def record(self):
        return self.out_dir / f"{self.stem}.json"

    @property
    def faces_dir(self):
        return self.out_dir / f"{self.stem}_faces"

    @property
    def side_by_side(self):
        return self.out_dir / f"{self.stem}_side_by_side.png"

    def face_files(self):
        """The face pictures of an earlier run, which this run replaces or removes."""
        return sorted(p for p in self.faces_dir.iterdir() if FACE_FILE.fullmatch(p.name)) \
            if self.faces_dir.is_dir() else []

    def check_free(self, inputs, side_by_side, overwrite=False):
        """Before any work: every file this photo's run writes, replaces or removes may be (utils.output_files:
        enhance.py's own or ``overwrite``), and none is an input of ``inputs`` (``{flag: path}``)."""
        for path in (self.image, self.record, *([self.side_by_side] if side_by_side else [])):
            check_output_file("--out", path, PURPOSE, inputs, overwrite)
        if self.faces_dir.exists() and not self.faces_dir.is_dir():
            raise UserError(f"--out {self.faces_dir}: is a file where enhance.py writes its face pictures; move it")
        check_replaceable("--out", self.faces_dir, self.face_files(), PURPOSE, overwrite)


def face_picture(lr, restored):
    """The aligned LR input, its pixels enlarged to the restored face's size, beside the restored face."""
    side = restored.shape[0]
    return np.hstack([cv2.resize(lr, (side, side), interpolation=cv2.INTER_NEAREST), restored])


def panel(img):
    """``img`` reduced (area averaging) so that its longer side is at most MAX_PANEL_SIDE."""
    zoom = MAX_PANEL_SIDE / max(img.shape[:2])
    if zoom >= 1:
        return img
    size = (max(1, round(img.shape[1] * zoom)), max(1, round(img.shape[0] * zoom)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def side_by_side(photo, bicubic, result):
    """Input (pixels enlarged), bicubic and result side by side, captioned."""
    nearest = cv2.resize(photo, result.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return compose([[("Input", panel(nearest)), ("Bicubic", panel(bicubic)), ("HybriMamba", panel(result))]], 1)


def write_outputs(outputs, result, record, photo=None, bicubic=None):
    """Write the JSON ``record``, the face pictures (removing enhance.py's face files of an earlier run that
    found more faces), the photo and, given ``photo`` and ``bicubic``, the side-by-side picture."""
    write_output(outputs.record, (json.dumps({"written_by": WRITTEN_BY, **record}, indent=2) + "\n").encode(),
                 PURPOSE, "free disk space or choose another --out")
    names = set()
    for number, face in enumerate(result.faces):
        if face.restored is not None:
            names.add(f"{number:02d}.png")
            write_rgb(outputs.faces_dir / f"{number:02d}.png", face_picture(face.lr, face.restored), PURPOSE)
    for stale in outputs.face_files():
        if stale.name not in names and written_for(stale, PURPOSE):
            stale.unlink()
    write_rgb(outputs.image, result.image, PURPOSE)
    if photo is not None:
        write_rgb(outputs.side_by_side, side_by_side(photo, bicubic, result.image), PURPOSE)
