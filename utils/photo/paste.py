"""Pasting restored faces back into the enlarged photo: inverse warp and a feathered mask."""
import cv2
import numpy as np

from utils.photo import geometry

# Of the restored face's side: the mask is the face's square eroded by ERODE, then blurred with a
# Gaussian of sigma BLUR, so the face fades into the background over about a tenth of its width.
ERODE = 0.08
BLUR = 0.03


def feathered_mask(side):
    """Float32 (side, side) mask: 0 at the square's edges, 1 inside, a smooth ramp between."""
    mask = np.zeros((side, side), np.float32)
    margin = round(ERODE * side)
    mask[margin:side - margin, margin:side - margin] = 1.0
    sigma = BLUR * side
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


def paste_face(canvas, face, face_to_canvas, mask=None):
    """Blend ``face`` (R, R, 3) float32 into ``canvas`` (uint8, in place) where ``face_to_canvas`` maps it,
    weighted by ``mask`` (default ``feathered_mask(R)``); returns the touched (x0, y0, x1, y1) or None.

    Only the face's bounding region is read and written; pixels where the mask is 0 keep their values.
    A face shrunk by more than 2x is first reduced with area averaging, so the warp does not alias.
    """
    side = face.shape[0]
    mask = feathered_mask(side) if mask is None else mask
    zoom = geometry.scale_of(face_to_canvas)
    if zoom < 0.5:
        small = max(2, round(side * zoom * 2))
        face = cv2.resize(face, (small, small), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (small, small), interpolation=cv2.INTER_AREA)
        face_to_canvas = geometry.compose(face_to_canvas, geometry.scaling(side / small))
        side = small
    x0, y0, x1, y1 = geometry.bounding_box(face_to_canvas, side, side)
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(canvas.shape[1], int(np.ceil(x1))), min(canvas.shape[0], int(np.ceil(y1)))
    if x1 <= x0 or y1 <= y0:
        return None
    m = geometry.to_opencv(geometry.compose(geometry.translation(-x0, -y0), face_to_canvas))
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, m, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region = canvas[y0:y1, x0:x1]
    inside = alpha > 0
    blend = region.astype(np.float32) + alpha[..., None] * (warped - region)
    region[inside] = np.clip(np.round(blend[inside]), 0, 255).astype(np.uint8)
    return x0, y0, x1, y1
