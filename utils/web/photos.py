"""The web page's work on an uploaded photo with faces: enhance.py's pipeline (``enhance_photo``) with the
page's model, within a size cap, and the photo enlarged by bicubic alone beside it.

The face detector (MTCNN, facenet-pytorch) is an optional extra: it is loaded on the first photo, and its
absence is a one-line ``UserError`` naming the package; the page's face mode does not need it.
"""
from utils.errors import UserError
from utils.photo.detector import MIN_BOX, UPSAMPLE, FaceDetector
from utils.photo.photo_io import upscale
from utils.photo.pipeline import enhance_photo
from utils.photo.restorer import FaceRestorer

# The enlarged photo is sent to the browser twice (bicubic and enhanced) as PNG: 16 megapixels (a
# 500x500 photo at x8) keeps the server's memory near 200 MB and the page responsive.
MAX_OUTPUT_PIXELS = 16_000_000
PHOTO_SIDE = 256  # "auto": an image longer than this on a side is a photo with faces, not one face


def is_photo(width, height):
    """Whether "auto" treats a ``width`` x ``height`` image as a photo with faces."""
    return max(width, height) > PHOTO_SIDE


def check_size(width, height, scale, name):
    """A ``UserError`` when the photo enlarged ``scale`` times would exceed ``MAX_OUTPUT_PIXELS``."""
    pixels = width * height * scale ** 2
    if pixels > MAX_OUTPUT_PIXELS:
        side = int((MAX_OUTPUT_PIXELS / scale ** 2) ** 0.5)
        raise UserError(f"{name}: {width}x{height} enlarged {scale}x would be {pixels / 1e6:.0f} megapixels; the page "
                        f"makes at most {MAX_OUTPUT_PIXELS // 10**6} (about {side}x{side} in): crop the photo around "
                        f"the faces, or use enhance.py for large photos")


class PhotoEnhancer:
    """``model`` (HybriMamba with its ``task``) on the faces of whole photos, with MTCNN loaded on first use."""

    def __init__(self, model):
        device = next(model.parameters()).device
        self.scale = model.task["scale_factor"]
        self.restorer = FaceRestorer(model, self.scale, model.task["load_size"], device)
        self.device, self._detector = device, None

    def detector(self):
        if self._detector is None:
            try:
                self._detector = FaceDetector(MIN_BOX, UPSAMPLE, device=self.device)
            except UserError as err:
                raise UserError(f"photo mode: {err}; face mode works without it") from None
        return self._detector

    def enhance(self, photo, name="photo"):
        """``photo`` (H, W, 3) uint8 -> (bicubic, enhanced) enlarged ``scale`` times, and the faces' records
        (boxes in the photo's pixels, highest score first)."""
        check_size(photo.shape[1], photo.shape[0], self.scale, name)
        result = enhance_photo(photo, self.restorer, self.detector(), self.scale)
        return upscale(photo, self.scale), result.image, [face.record() for face in result.faces]
