"""The files enhance.py writes for one photo, and the rule that keeps them from replacing anyone's.

    OUT/<stem>.png                 the whole photo enlarged, faces restored
    OUT/<stem>.json                what was done: each face's box, landmarks, score and transform
    OUT/<stem>_faces/NN.png        face NN (as numbered in the JSON): its aligned LR input (pixels enlarged)
                                   beside the restored face; none for a face too large to restore
    OUT/<stem>_side_by_side.png    (--side_by_side) input | bicubic | result

The JSON file marks the others as enhance.py's own: a later run may replace them, but never a
``<stem>.png`` (or face folder) that has no JSON of ours beside it.
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

WRITTEN_BY = "enhance.py"
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

    def ours(self):
        """Whether ``record`` is a JSON file written by enhance.py."""
        try:
            return json.loads(self.record.read_text()).get("written_by") == WRITTEN_BY
        except (OSError, ValueError, AttributeError):
            return False

    def check_free(self, source):
        """Refuse to replace files enhance.py did not write (``source``: the input photo)."""
        for path in (self.image, self.record, self.side_by_side, self.faces_dir):
            if path.exists() and (path.resolve() == Path(source).resolve() or not self.ours()):
                raise UserError(f"{path}: already exists and was not written by enhance.py; choose another --out "
                                f"(nothing is replaced that enhance.py did not make)")


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
    """Write the JSON ``record`` first (it marks the folder's files as ours), then the face pictures
    (removing face files of an earlier run that found more faces), the photo and, given ``photo`` and
    ``bicubic``, the side-by-side picture."""
    outputs.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        outputs.record.write_text(json.dumps({"written_by": WRITTEN_BY, **record}, indent=2) + "\n")
    except OSError as err:
        raise UserError(f"{outputs.record}: cannot write the file ({err.strerror or err}); free disk space or "
                        f"choose another --out") from None
    names = set()
    for number, face in enumerate(result.faces):
        if face.restored is not None:
            names.add(f"{number:02d}.png")
            write_rgb(outputs.faces_dir / f"{number:02d}.png", face_picture(face.lr, face.restored))
    if outputs.faces_dir.is_dir():
        for stale in outputs.faces_dir.iterdir():
            if FACE_FILE.fullmatch(stale.name) and stale.name not in names:
                stale.unlink()
    write_rgb(outputs.image, result.image)
    if photo is not None:
        write_rgb(outputs.side_by_side, side_by_side(photo, bicubic, result.image))
