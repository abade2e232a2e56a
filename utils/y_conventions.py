"""The Y-channel conventions of PSNR/SSIM, defined once: their names, the default, and whose numbers each gives.

Every convention starts from BT.601 Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on uint8 RGB
and differs only in how Y is quantised; SSIM is the same 11x11 Gaussian window in all of them.
Imports nothing, so that options/ can name the choices without numpy or torch; the arithmetic
is ``utils.evaluation.metrics.rgb_to_y``. tests/test_metric_conventions.py measures each claim
against the tool it names.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class YConvention:
    name: str
    quantisation: str  # what happens to Y
    tools: str  # whose numbers it reproduces
    brief: str  # the same, in a few words

    @property
    def tag(self):
        """The short label printed beside every PSNR/SSIM value, e.g. 'Y truncate'."""
        return f"Y {self.name}"

    def describe(self):
        return f"{self.quantisation}, as {self.tools}"


CONVENTIONS = {c.name: c for c in (
    YConvention("truncate", "Y truncated to an integer",
                "the face-SR family's psnr_ssim.py (SPARNet lineage, behind the paper's Table 1)",
                "face-SR psnr_ssim.py, the paper's Table 1"),
    YConvention("round", "Y rounded to the nearest integer, halves up", "MATLAB's rgb2ycbcr on uint8 images",
                "MATLAB rgb2ycbcr"),
    YConvention("float", "Y unquantised", "BasicSR's calculate_psnr/calculate_ssim with test_y_channel=True",
                "BasicSR"),
)}
Y_CONVENTIONS = tuple(CONVENTIONS)
DEFAULT_Y_CONVENTION = "truncate"


def metric_tag(convention, rgb=False):
    """What PSNR/SSIM values were computed on, to print beside them: 'RGB' or the convention's tag."""
    return "RGB" if rgb else CONVENTIONS[convention].tag


def help_lines():
    """One line per convention naming the tools it reproduces, for --help texts."""
    width = max(map(len, Y_CONVENTIONS))
    return [f"  {c.name:<{width}}  {c.describe()}" + ("; the default" if c.name == DEFAULT_Y_CONVENTION else "")
            for c in CONVENTIONS.values()]


def short_help():
    """A one-sentence --y_convention help naming each convention's tool."""
    return "how Y is quantised for PSNR/SSIM: " + ", ".join(f"{c.name} ({c.brief})" for c in CONVENTIONS.values())
