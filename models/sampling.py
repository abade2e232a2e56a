"""Down- and up-sampling between U-Net levels (both halve or double H and W)."""
from torch import nn


class Downsample(nn.Sequential):
    """(B, cin, H, W) -> (B, cout, H/2, W/2): depthwise 4x4 stride-2 conv, then pointwise 1x1 (no biases)."""

    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cin, 4, stride=2, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
        )


class Upsample(nn.Sequential):
    """(B, cin, H, W) -> (B, cout, 2H, 2W): depthwise 3x3, pointwise 1x1 to 4*cout, PixelShuffle(2)."""

    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, 4 * cout, 1, bias=False),
            nn.PixelShuffle(2),
        )
