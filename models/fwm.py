"""FWM, the Fourier-Wavelet Transform Module: x + Fourier(x) + Wavelet(x)."""
import torch
from torch import nn
from torch.nn import functional as F

from models.haar import HaarInverse, HaarTransform, haar_dwt, haar_idwt


def _spectrum(x):
    """rfft2(x) in at least float32, |rfft2(x)|, and where that is nonzero."""
    spec = torch.fft.rfft2(x.to(torch.promote_types(x.dtype, torch.float32)), norm="ortho")
    mag = spec.abs()
    return spec, mag, mag > 0


def _pointwise(weight, bias, x):
    """A 1x1 conv (weight (C, C, 1, 1)) of x (B, C, ...) as one bmm over a view of x."""
    b, c = x.shape[:2]
    w = weight.view(c, c).to(x.dtype).expand(b, c, c)
    return torch.baddbmm(bias.to(x.dtype).view(1, c, 1), w, x.reshape(b, c, -1)).view(x.shape)


class _FourierFunction(torch.autograd.Function):
    """Fourier(x) = irfft2(A * X / |X|), A = conv2(GELU(conv1(|X|))), X = rfft2(x) (phase 1 where |X| = 0).

    The backward keeps x and the two conv outputs and recomputes the spectrum from x; its gradient is
    written out (the complex intermediates of autograd's version are three times the size of x):
    with P = X/|X|, r = A/|X|, G the gradient of the spectrum product and G_A = Re(conj(P) G),
    d/dX = r G + P (d/d|X| - r G_A), zero where |X| = 0.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        with torch.autocast(x.device.type, enabled=False):
            spec, mag, nonzero = _spectrum(x)
            hidden = _pointwise(w1, b1, mag)
            amplitude = _pointwise(w2, b2, F.gelu(hidden))
            ratio = torch.where(nonzero, amplitude / torch.where(nonzero, mag, 1.0), 0.0)
            product = torch.where(nonzero, spec * ratio, amplitude.to(spec.dtype))
            out = torch.fft.irfft2(product, s=x.shape[-2:], norm="ortho")
        ctx.save_for_backward(x, w1, w2, hidden, amplitude)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2, hidden, amplitude = ctx.saved_tensors
        width = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            spec, mag, nonzero = _spectrum(x)
            # irfft2's adjoint: rfft2, the columns irfft2 counts twice (not 0, nor W/2 for even W) doubled.
            grad = torch.fft.rfft2(grad.to(spec.real.dtype), norm="ortho")
            grad[..., 1:width - spec.shape[-1] + 1] *= 2
            inverse = torch.where(nonzero, 1.0 / torch.where(nonzero, mag, 1.0), 0.0)
            ratio = amplitude * inverse
            phase = spec * inverse
            grad_amplitude = torch.where(nonzero, (phase.conj() * grad).real, grad.real)
            act = F.gelu(hidden)
            grads_2, grad_act = _pointwise_backward(w2, act, grad_amplitude)
            grad_hidden = torch.ops.aten.gelu_backward(grad_act, hidden)
            grads_1, grad_mag = _pointwise_backward(w1, mag, grad_hidden)
            grad_spec = ratio * grad + phase * (grad_mag - ratio * grad_amplitude)
            # rfft2's adjoint: the one-sided spectrum zero-padded to the full width, inverse FFT, real part.
            grad_x = torch.fft.ifft2(F.pad(grad_spec, (0, width - spec.shape[-1])), norm="ortho").real
        return (grad_x.to(x.dtype), *grads_1, *grads_2)


def _pointwise_backward(weight, x, grad):
    """((d weight, d bias), d x) of ``_pointwise(weight, bias, x)`` given the gradient of its output."""
    b, c = x.shape[:2]
    flat_x, flat_grad = x.reshape(b, c, -1), grad.reshape(b, c, -1)
    grad_weight = torch.bmm(flat_grad, flat_x.transpose(1, 2)).sum(0).view(weight.shape).to(weight.dtype)
    grad_bias = flat_grad.sum((0, 2)).to(weight.dtype)
    w = weight.view(c, c).to(x.dtype).t().expand(b, c, c)
    return (grad_weight, grad_bias), torch.bmm(w, flat_grad).view(x.shape)


class FourierBranch(nn.Module):
    """Modulate the amplitude spectrum with 1x1 conv-GELU-1x1 and keep the phase; (B, C, H, W) -> same.

    The FFT runs in float32 (or float64) even under autocast (half-precision FFTs lose the spectrum's
    dynamic range and only accept power-of-two sizes).
    """

    def __init__(self, dim):
        super().__init__()
        self.amplitude = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.fused = True

    def forward(self, x):
        if self.fused:
            first, second = self.amplitude[0], self.amplitude[2]
            return _FourierFunction.apply(x, first.weight, first.bias, second.weight, second.bias)
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
        self.fused = True

    def forward(self, x):
        if self.fused:
            return self._forward_fused(x)
        ll, highs = haar_dwt(x)
        b, c, _, h, w = highs.shape
        highs = self.high_conv(highs.transpose(1, 2).reshape(b * 3, c, h, w))
        return haar_idwt(ll, highs.reshape(b, 3, c, h, w).transpose(1, 2))[..., :x.shape[-2], :x.shape[-1]]

    def _forward_fused(self, x):
        """The same, with the transforms' adjoints as their backward (nothing kept, no zero-filled slice
        gradients) and the conv on channels-last bands (oneDNN's faster layout)."""
        ll, highs = HaarTransform.apply(x)
        b, c, _, h, w = highs.shape
        bands = highs.permute(0, 2, 3, 4, 1).reshape(b * 3, h, w, c).permute(0, 3, 1, 2)
        bands = self.high_conv(bands).permute(0, 2, 3, 1).reshape(b, 3, h, w, c).permute(0, 4, 1, 2, 3)
        return HaarInverse.apply(ll, bands, x.shape[-2:])


class FWM(nn.Module):
    """Fourier-Wavelet Transform Module: (B, C, H, W) -> (B, C, H, W) = x + Fourier(x) + Wavelet(x)."""

    def __init__(self, dim):
        super().__init__()
        self.fourier = FourierBranch(dim)
        self.wavelet = WaveletBranch(dim)

    def forward(self, x):
        return x + self.fourier(x) + self.wavelet(x)
