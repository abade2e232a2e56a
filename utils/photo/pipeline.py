"""The photo pipeline as one call: detect the faces, align each to the training framing, restore it,
paste it back into the photo enlarged by the background's bicubic filter.

    from utils.photo import enhance_photo, FaceDetector, FaceRestorer, load_model
    model, model_scale, hr_size, _ = load_model(path)
    result = enhance_photo(photo, FaceRestorer(model, model_scale, hr_size), FaceDetector(), scale=8)

Faces are processed one at a time: memory holds the enlarged photo and one face's buffers.
"""
from dataclasses import dataclass, field

import numpy as np

from utils.photo import geometry
from utils.photo.alignment import FRAME, align_face, frame_transform
from utils.photo.paste import paste_face
from utils.photo.photo_io import upscale
from utils.progress import progress_bar

# Faces larger than this (frame side, pixels) are left as the bicubic enlargement. The shipped model
# (trained on 16-pixel faces) gains +0.75 dB at 48 pixels on every face, at 64 on one face in three
# (bench/bench_photo.py); reducing large faces to a size it handles loses more (-1.6 dB at 48 reduced
# to 32).
MAX_FACE = 48
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class FaceResult:
    """One face: what the detector found, how it was aligned, the network's input ``lr`` (n, n, 3) and
    output ``restored`` (n * model scale, ...) as uint8 (None when it was too large to restore), and a
    notice when its size was out of range."""
    detection: object
    to_frame: np.ndarray
    face_size: float
    lr: np.ndarray
    restored: np.ndarray
    notice: str = ""

    def record(self):
        """The JSON-ready description (coordinates in input pixels, the photo's top-left corner at (0, 0))."""
        to_frame = self.to_frame
        return {
            "box": [round(float(v), 2) for v in self.detection.box],
            "landmarks": {name: [round(float(x), 2), round(float(y), 2)]
                          for name, (x, y) in zip(LANDMARK_NAMES, self.detection.landmarks)},
            "score": round(float(self.detection.score), 4),
            "face_size": round(self.face_size, 2),
            "transform": {"photo_to_frame": [[round(float(v), 6) for v in row] for row in to_frame],
                          "frame_size": FRAME, "scale": round(geometry.scale_of(to_frame), 6),
                          "angle_degrees": round(geometry.angle_of(to_frame), 3)},
            "restored": self.restored is not None,
            "network_input": int(self.lr.shape[0]) if self.restored is not None else None,
            "notice": self.notice,
        }


@dataclass
class EnhancedPhoto:
    """The photo enlarged ``scale`` times with its faces restored, and the faces (highest score first)."""
    image: np.ndarray
    scale: int
    faces: list = field(default_factory=list)


def size_notice(face_size, lr_size, max_face):
    if face_size < lr_size - 0.5:
        return (f"{face_size:.0f} px face is smaller than the model's {lr_size} px input: enlarged to it and restored "
                f"from what there is")
    if face_size > max_face + 0.5:
        return (f"{face_size:.0f} px face is larger than --max_face {max_face}: left as the bicubic enlargement (the "
                f"model restores faces of about {lr_size} px)")
    return ""


def to_uint8(img):
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def restore_faces(photo, canvas, restorer, detections, scale, max_face=MAX_FACE, progress=False):
    """Align, restore and paste each detection into ``canvas`` (``photo`` enlarged ``scale`` times, in
    place); returns the ``FaceResult`` list."""
    faces = []
    for det in progress_bar(detections, desc="faces", unit="face", enabled=progress and len(detections) > 1):
        to_frame = frame_transform(det.landmarks)
        face_size = FRAME / geometry.scale_of(to_frame)
        notice = size_notice(face_size, restorer.lr_size, max_face)
        if face_size > max_face + 0.5:
            faces.append(FaceResult(det, to_frame, face_size, None, None, notice))
            continue
        aligned = align_face(photo, det.landmarks, restorer.lr_size)
        restored = restorer.restore(aligned.lr)
        face_to_photo = geometry.compose(geometry.invert(to_frame), geometry.scaling(FRAME / restored.shape[0]))
        paste_face(canvas, restored, geometry.compose(geometry.scaling(scale), face_to_photo))
        faces.append(FaceResult(det, to_frame, face_size, aligned.lr, to_uint8(restored), notice))
    return faces


def enhance_photo(photo, restorer, detector, scale=8, max_face=MAX_FACE, progress=False):
    """``photo`` (H, W, 3) uint8 -> ``EnhancedPhoto``: PIL-bicubic enlarged ``scale`` times, each face
    ``detector.detect(photo)`` finds restored by ``restorer`` and pasted back with a feathered mask."""
    detections = detector.detect(photo)
    canvas = upscale(photo, scale)
    return EnhancedPhoto(canvas, scale, restore_faces(photo, canvas, restorer, detections, scale, max_face, progress))
