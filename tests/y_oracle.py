"""The Y channel of docs/architecture.md §5 in exact integer arithmetic, for the metric tests.

Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on uint8 RGB, i.e. 255000 Y = 65481 R + 128553 G
+ 24966 B + 16 * 255000 exactly; "truncate" floors that rational, "round" rounds it half up.
"""
import numpy as np

WEIGHTS = (65481, 128553, 24966)
DENOMINATOR = 255000

# Colours whose exact Y is an integer that the float64 formula lands just below, so a
# floating-point truncation gives one less (a test checks the property).
FLOAT_FORMULA_TRAPS = ((6, 140, 9), (21, 131, 16), (87, 235, 53), (98, 236, 19), (137, 69, 31), (255, 157, 14))


def y_channel(img, convention="truncate"):
    """RGB uint8 (..., 3) -> quantised Y as float64 (...)."""
    rgb = np.asarray(img).astype(np.int64)
    numerator = sum(w * rgb[..., i] for i, w in enumerate(WEIGHTS)) + 16 * DENOMINATOR
    if convention == "truncate":
        return (numerator // DENOMINATOR).astype(np.float64)
    if convention == "round":
        return ((2 * numerator + DENOMINATOR) // (2 * DENOMINATOR)).astype(np.float64)
    raise ValueError(convention)


def float_formula_y(img):
    """The section 5 formula evaluated in float64 and floored: what a naive truncation computes."""
    r, g, b = (np.asarray(img)[..., i].astype(np.float64) for i in range(3))
    return np.floor(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)


def with_traps(img):
    """A copy of an RGB uint8 image (at least 2 x 3) whose first pixels are FLOAT_FORMULA_TRAPS."""
    out = img.copy()
    flat = out.reshape(-1, 3)
    flat[:len(FLOAT_FORMULA_TRAPS)] = FLOAT_FORMULA_TRAPS
    return out
