"""Faces in real photos: detect, align to the training framing, restore, paste back (enhance.py).

Modules: ``detector`` (MTCNN), ``alignment`` (the training framing's landmark template),
``restorer`` (loading and running the network), ``paste`` (inverse warp, feathered mask),
``pipeline`` (``enhance_photo``), ``photo_io`` (EXIF orientation, enlarging), ``outputs`` (the files
enhance.py writes), ``cli`` (enhance.py), ``synthetic`` (group photos with known faces).
"""
from utils.photo.detector import Detection, FaceDetector
from utils.photo.pipeline import EnhancedPhoto, FaceResult, enhance_photo
from utils.photo.restorer import FaceRestorer, load_model

__all__ = ["Detection", "EnhancedPhoto", "FaceDetector", "FaceRestorer", "FaceResult", "enhance_photo", "load_model"]
