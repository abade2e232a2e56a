"""FWM, the Fourier-Wavelet Transform Module: x + Fourier(x) + Wavelet(x)."""
import torch
from torch import nn

from models.haar import haar_dwt, haar_idwt


class FourierBranch(nn.Module):
    """Modulate the amplitude spectrum with 1x1 conv-GELU-1x1 and keep the phase; (B, C, H, W) -> same.

    The FFT runs in float32 (or float64) even under autocast (half-precision FFTs lose the spectrum's
    dynamic range and only accept power-of-two sizes).
    """

    def __init__(self, dim):
        super().__init__()
        self.amplitude = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        h, w = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft2(x.to(torch.promote_types(x.dtype, torch.float32)), norm="ortho")
            mag = spec.abs()
            # exp(i*angle(X)) written as X/|X|, with angle 0 where |X| = 0: angle() has no
            # finite gradient at 0, and flat regions make exactly-zero bins.
            nonzero = mag > 0
            phase = torch.where(nonzero, spec / torch.where(nonzero, mag, torch.ones_like(mag)), torch.ones_like(spec))
            mag = self.amplitude(mag)
            out = torch.fft.irfft2(mag * phase, s=(h, w), norm="ortho")
        return out.to(x.dtype)


class WaveletBranch(nn.Module):
    """One-level Haar DWT; LL passes, LH/HL/HH share one 3x3 conv; inverse DWT. (B, C, H, W) -> same.

    Odd sizes (a stage at H/4 of an H that is not a multiple of 8) are zero-padded by one
    row/column, as pytorch_wavelets' mode="zero" does, and cropped back.
    """

    def __init__(self, dim):
        super().__init__()
        self.high_conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        ll, highs = haar_dwt(x)
        b, c, _, h, w = highs.shape
        highs = self.high_conv(highs.transpose(1, 2).reshape(b * 3, c, h, w))
        return haar_idwt(ll, highs.reshape(b, 3, c, h, w).transpose(1, 2))[..., :x.shape[-2], :x.shape[-1]]


class FWM(nn.Module):
    """Fourier-Wavelet Transform Module: (B, C, H, W) -> (B, C, H, W) = x + Fourier(x) + Wavelet(x)."""

    def __init__(self, dim):
        super().__init__()
        self.fourier = FourierBranch(dim)
        self.wavelet = WaveletBranch(dim)

    def forward(self, x):
        return x + self.fourier(x) + self.wavelet(x)
