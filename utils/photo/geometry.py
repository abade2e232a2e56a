"""Similarity transforms between an image and a face's aligned frame.

Coordinates are continuous pixel coordinates with the image's top-left *corner* at (0, 0), so the
centre of pixel (row i, column j) is (j + 0.5, i + 0.5) and scaling an image by s scales every
coordinate by s. A transform is a 2x3 float64 matrix ``M`` mapping a point p to ``M[:, :2] @ p + M[:, 2]``.
OpenCV's warps put pixel centres at integers; ``to_opencv`` converts.
"""
import numpy as np


def umeyama(src, dst, weights=None):
    """The similarity transform (rotation, uniform scale, translation; no reflection) that maps the
    points ``src`` (N, 2) onto ``dst`` (N, 2) with the least (``weights``-weighted) squared error
    (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    a, b = src - mu_src, dst - mu_dst
    var_src = w @ (a ** 2).sum(1)
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_src
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_dst - scale * rot @ mu_src
    return m


def similarity(scale, angle, src_point, dst_point):
    """The similarity that scales by ``scale``, rotates by ``angle`` radians (counter-clockwise on screen)
    and maps ``src_point`` to ``dst_point``."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    lin = np.array([[c, s], [-s, c]])
    return np.hstack([lin, (np.asarray(dst_point, np.float64) - lin @ np.asarray(src_point, np.float64))[:, None]])


def apply(m, points):
    """``m`` applied to points (N, 2) -> (N, 2)."""
    points = np.asarray(points, np.float64)
    return points @ m[:, :2].T + m[:, 2]


def invert(m):
    lin_inv = np.linalg.inv(m[:, :2])
    return np.hstack([lin_inv, (-lin_inv @ m[:, 2])[:, None]])


def compose(outer, inner):
    """The transform ``outer(inner(p))``."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def scaling(factor):
    """Scaling about the origin (the corner): an image's coordinates after resizing it by ``factor``."""
    return np.array([[factor, 0.0, 0.0], [0.0, factor, 0.0]])


def translation(dx, dy):
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def scale_of(m):
    """The uniform scale factor of a similarity transform."""
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def angle_of(m):
    """The rotation of a similarity transform, in degrees (counter-clockwise on screen)."""
    return float(np.degrees(np.arctan2(m[0, 1], m[0, 0])))


def to_opencv(m):
    """The same transform for OpenCV, whose pixel centres are at integer coordinates."""
    return compose(translation(-0.5, -0.5), compose(m, translation(0.5, 0.5)))


def bounding_box(m, width, height):
    """(x0, y0, x1, y1) bounds of the ``width`` x ``height`` rectangle at the origin mapped by ``m``."""
    corners = apply(m, [(0, 0), (width, 0), (0, height), (width, height)])
    return (*corners.min(0), *corners.max(0))
