"""The HybriMamba network against independent re-derivations of the spec (docs/architecture.md §2-3)."""
import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models import HybriMamba, forward_padded
from models.fwm import FWM
from models.haar import haar_dwt, haar_idwt
from models.image_ssm import ImageSSM, SymmetryEnhancement
from models.selective_scan import resolve_backend
from models.selective_scan.image_scan import cross_merge, cross_scan
from utils.errors import UserError

TINY = dict(embed_dim=8, depth=1, n_layers=1)


def tiny_model(**kw):
    torch.manual_seed(0)
    return HybriMamba(**{**TINY, **kw})


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 5, 16, 16), (3, 1, 2, 6), (1, 2, 3, 5)])
def test_haar_matches_pytorch_wavelets(shape):
    from pytorch_wavelets import DWTForward, DWTInverse

    x = torch.randn(*shape, dtype=torch.float64)
    yl, yh = DWTForward(J=1, wave="haar", mode="zero").double()(x)
    ll, highs = haar_dwt(x)
    # pytorch_wavelets stores its filters in float32, hence ~1e-7.
    assert torch.allclose(ll, yl, atol=1e-6) and torch.allclose(highs, yh[0], atol=1e-6)
    inverse = DWTInverse(wave="haar", mode="zero").double()((ll, [highs]))
    assert torch.allclose(haar_idwt(ll, highs), inverse, atol=1e-6)
    assert torch.allclose(haar_idwt(ll, highs)[..., :shape[2], :shape[3]], x, atol=1e-12)


def spec_param_count(c=32, depth=2, n_layers=2, expand=1.5, d_state=8, mlp_ratio=2.0):
    """Parameters of the network re-derived from docs/architecture.md, layer by layer."""
    def mamba_block(d):
        di, r, n = int(expand * d), math.ceil(d / 16), d_state
        fwm = 2 * (di * di + di) + (9 * di * di + di)
        ssm = 4 * (r + 2 * n) * di + 4 * (di * r + di) + 4 * di * n + 4 * di + 1
        return d * 2 * di + fwm + (9 * di + di) + ssm + 2 * di + di * d

    def lem(d):
        s, hidden = max(d // 16, 1), int(d * mlp_ratio)
        gate = d * s + s + s * d + d
        mlp = 2 * d + d * hidden + hidden + hidden * d + d
        return (2 * d * d + 2 * d) + (9 * d + d) + gate + mlp + (d * d + d)

    def stage(d):
        return depth * (4 * d + n_layers * (d + mamba_block(d)) + lem(d))

    def down(cin, cout):
        return 16 * cin + cin * cout

    def up(cin, cout):
        return 9 * cin + cin * 4 * cout

    total = (27 * c + c) + stage(c) + down(c, 2 * c) + stage(2 * c) + down(2 * c, 4 * c) + 2 * stage(4 * c)
    total += stage(8 * c) + up(8 * c, 2 * c) + stage(4 * c) + up(4 * c, c) + stage(2 * c) + (9 * 2 * c * 3 + 3)
    return total


@pytest.mark.parametrize("config", [{}, TINY, dict(embed_dim=16, depth=1, n_layers=2, d_state=4)])
def test_parameter_count_matches_the_spec(config):
    model = HybriMamba(**config)
    assert sum(p.numel() for p in model.parameters()) == spec_param_count(
        c=config.get("embed_dim", 32), depth=config.get("depth", 2), n_layers=config.get("n_layers", 2),
        d_state=config.get("d_state", 8))


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (12, 20), (4, 8)])
def test_output_shape(size):
    model = tiny_model().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_non_multiple_of_four_is_refused_and_padded_by_the_helper():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 30, 22)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(x)
    with torch.no_grad():
        out = forward_padded(model, x)
        padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 2), (0, 2)), mode="reflect"))
        expected = model(padded)[..., :30, :22]
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = tiny_model(embed_dim=16)
    out = model(torch.randn(2, 3, 16, 16))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum()]
    # Only the squeeze layer of an LEM gate can be silenced by its ReLU at a random init.
    assert all(".gate." in n for n in zero), zero


def test_eval_mode_is_deterministic():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 16, 20)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_last_decoder_stage_is_applied():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.dec3.blocks[0].lem.project_out.weight.add_(0.5)
        assert not torch.allclose(model(x), before)


def test_global_residual_to_the_input():
    model = tiny_model().eval()
    with torch.no_grad():
        for p in model.reconstruct.parameters():
            p.zero_()
        x = torch.randn(1, 3, 8, 8)
        assert torch.equal(model(x), x)


def test_symmetry_enhancement_formula_by_hand():
    y = torch.tensor([[[[1.0, 2.0, 4.0], [0.0, -3.0, 5.0]]]])
    w = 1 / (1 + math.exp(-0.3))
    mirror = np.array([[1.0, 2.0, 4.0], [0.0, -3.0, 5.0]])
    mirror = (mirror + mirror[:, ::-1]) / 2
    expected = y[0, 0].numpy() + 0.2 * ((1 - w) * y[0, 0].numpy() + w * mirror)
    assert np.allclose(SymmetryEnhancement()(y)[0, 0].detach().numpy(), expected, atol=1e-6)


def test_cross_scan_orders_and_merge():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    xs = cross_scan(x)[0, :, 0]
    assert xs[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert xs[1].tolist() == [0, 3, 1, 4, 2, 5]
    assert xs[2].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[3].tolist() == [5, 2, 4, 1, 3, 0]
    assert torch.equal(cross_merge(cross_scan(x), 2, 3), 4 * x)


def naive_image_ssm(ssm, x):
    """Image-SSM written from the spec: one direction, one channel, one step at a time (float64)."""
    _, d, h, w = x.shape
    n, r = ssm.d_state, ssm.dt_rank
    img = x[0].double()
    row_major = [(i, j) for i in range(h) for j in range(w)]
    col_major = [(i, j) for j in range(w) for i in range(h)]
    orders = [row_major, col_major, row_major[::-1], col_major[::-1]]
    y = torch.zeros(d, h, w, dtype=torch.float64)
    for k, order in enumerate(orders):
        wx, wdt, bdt = ssm.x_proj_weight[k].double(), ssm.dt_proj_weight[k].double(), ssm.dt_proj_bias[k].double()
        a = -torch.exp(ssm.A_logs[k * d:(k + 1) * d].double())
        dskip = ssm.Ds[k * d:(k + 1) * d].double()
        state = torch.zeros(d, n, dtype=torch.float64)
        for i, j in order:
            u = img[:, i, j]
            proj = wx @ u
            dt = F.softplus(wdt @ proj[:r] + bdt)
            b, c = proj[r:r + n], proj[r + n:]
            state = torch.exp(dt[:, None] * a) * state + (dt * u)[:, None] * b[None, :]
            y[:, i, j] += state @ c + dskip * u
    wgt = torch.sigmoid(ssm.symmetry.alpha.double())
    return y + 0.2 * ((1 - wgt) * y + wgt * (y + y.flip(-1)) / 2)


@pytest.mark.parametrize("backend", ["ref", "torch", "cpp"])
def test_image_ssm_matches_a_naive_implementation(backend):
    torch.manual_seed(1)
    ssm = ImageSSM(6, d_state=4, dt_rank=2, scan_backend=backend).double()
    with torch.no_grad():
        ssm.A_logs.add_(torch.rand_like(ssm.A_logs) * 0.1)
        ssm.Ds.add_(torch.rand_like(ssm.Ds))
    x = torch.randn(1, 6, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ssm(x)[0], naive_image_ssm(ssm, x), atol=1e-10)


@pytest.mark.parametrize("size", [(8, 6), (3, 5)])
def test_fwm_matches_numpy_fft_and_pytorch_wavelets(size):
    from pytorch_wavelets import DWTForward, DWTInverse

    torch.manual_seed(2)
    fwm = FWM(5).double()
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    spec = np.fft.rfft2(x.numpy(), norm="ortho")
    mag = torch.from_numpy(np.abs(spec))
    mag = fwm.fourier.amplitude(mag).detach().numpy()
    fourier = np.fft.irfft2(mag * np.exp(1j * np.angle(spec)), s=size, norm="ortho")
    yl, yh = DWTForward(J=1, wave="haar", mode="zero").double()(x)
    b, c, _, h, w = yh[0].shape
    highs = fwm.wavelet.high_conv(yh[0].transpose(1, 2).reshape(b * 3, c, h, w)).view(b, 3, c, h, w).transpose(1, 2)
    wavelet = DWTInverse(wave="haar", mode="zero").double()((yl, [highs]))[..., :size[0], :size[1]]
    expected = x.numpy() + fourier + wavelet.detach().numpy()
    with torch.no_grad():
        # The FFT runs in float32 by design, hence the tolerance.
        assert np.allclose(fwm(x).numpy(), expected, atol=1e-5)


def test_fwm_gradient_is_finite_on_a_flat_image():
    fwm = FWM(3)
    x = torch.ones(1, 3, 8, 8, requires_grad=True)
    fwm(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in fwm.parameters())


def test_bf16_autocast_runs_and_stays_close():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1


def test_ref_and_torch_backends_agree_on_the_whole_network():
    model = tiny_model().double().eval()
    x = torch.randn(1, 3, 16, 12, dtype=torch.float64)
    with torch.no_grad():
        model.set_scan_backend("ref")
        ref = model(x)
        model.set_scan_backend("torch")
        fast = model(x)
    assert torch.allclose(ref, fast, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(monkeypatch):
    # TF32 would round convolution inputs to 10 mantissa bits; the comparison is of float32 arithmetic.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu_net = tiny_model(scan_backend="torch")
    gpu_net = tiny_model(scan_backend="torch").cuda()
    x = torch.rand(2, 3, 32, 24) * 2 - 1
    outputs, grads = [], []
    for net, device in ((cpu_net, "cpu"), (gpu_net, "cuda")):
        y = net(x.to(device))
        y.square().mean().backward()
        outputs.append(y.detach().cpu())
        grads.append(torch.cat([p.grad.flatten().cpu() for p in net.parameters()]))
    assert torch.allclose(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    assert ((grads[1] - grads[0]).abs().max() / grads[0].abs().max()).item() < 1e-3


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    x = torch.rand(2, 3, 16, 12) * 2 - 1
    results, calls = [], []
    for enabled in (False, True):
        net = tiny_model(depth=2)
        net.set_activation_checkpointing(enabled)
        calls.append(0)
        # The wavelet branch: training recomputes the cheap parts of a block in any case, not this one.
        wavelet = net.dec3.blocks[1].mixer[0].block.fwm.wavelet
        wavelet.forward = lambda x, run=wavelet.forward: calls.__setitem__(-1, calls[-1] + 1) or run(x)
        y = net(x)
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad for p in net.parameters()])
    assert calls == [1, 2]  # checkpointed: the backward ran the block's forward again
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_ssm_initialisation_survives_the_generic_init():
    model = HybriMamba(embed_dim=16, depth=1, n_layers=1, d_state=8)
    ssm = model.enc0.blocks[0].mixer[0].block.ssm
    assert torch.allclose(ssm.A_logs, torch.log(torch.arange(1, 9.0)).expand_as(ssm.A_logs))
    assert torch.equal(ssm.Ds, torch.ones_like(ssm.Ds))
    dt = F.softplus(ssm.dt_proj_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert ssm.dt_proj_weight.abs().max() <= ssm.dt_rank ** -0.5
    assert abs(ssm.dt_proj_weight.std().item() - ssm.dt_rank ** -0.5 / math.sqrt(3)) < 0.1
    assert ssm.symmetry.alpha.item() == pytest.approx(0.3)


def test_x_proj_keeps_the_default_linear_init():
    # nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = d_inner (docs/architecture.md §3.6).
    torch.manual_seed(0)
    model = HybriMamba(embed_dim=32, depth=1, n_layers=1)
    ssm = model.enc0.blocks[0].mixer[0].block.ssm
    bound = 48 ** -0.5
    w = ssm.x_proj_weight
    assert w.shape[-1] == 48
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_every_conv_and_linear_module_starts_from_normal_0_02_with_zero_bias():
    torch.manual_seed(0)
    model = HybriMamba(embed_dim=16, depth=1, n_layers=1)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    kinds = {type(m) for _, m in layers}
    assert kinds == {nn.Conv2d, nn.Linear} and len(layers) > 50
    pooled = []
    for name, m in layers:
        w = m.weight.detach().flatten()
        n = w.numel()
        # The sample std of n normal draws has a relative spread of about 1/sqrt(2n).
        assert abs(w.std().item() / 0.02 - 1) < 5 / math.sqrt(2 * n) + 1e-3, name
        assert abs(w.mean().item()) < 5 * 0.02 / math.sqrt(n), name
        if m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        pooled.append(w)
    pooled = torch.cat(pooled)
    assert pooled.std().item() == pytest.approx(0.02, rel=0.01)
    # Normal, not uniform: the kurtosis of a normal is 3 (a uniform's is 1.8).
    assert (pooled / pooled.std()).pow(4).mean().item() == pytest.approx(3.0, abs=0.1)


def test_both_leaky_relus_have_slope_0_01():
    model = tiny_model()
    slopes = [m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.01, 0.01]
    assert model.shallow[1].negative_slope == 0.01 and model.reconstruct[1].negative_slope == 0.01


def test_cross_merge_and_symmetry_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    ssm = ImageSSM(8, d_state=4, dt_rank=1, scan_backend="torch")
    x = torch.randn(1, 8, 4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssm(x.bfloat16())
    assert y.dtype == torch.float32


def test_optimizer_groups_exclude_a_log_and_d_from_weight_decay():
    model = tiny_model()
    decay, no_decay = model.optimizer_param_groups(0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[1] for p in no_decay["params"]} == {"A_logs", "Ds"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_unknown_scan_backend_is_the_same_user_error_everywhere():
    message = "unknown selective-scan backend 'fast'; choose one of auto, cuda, triton, cpp, torch, ref"
    for build in (lambda: HybriMamba(**TINY, scan_backend="fast"), lambda: tiny_model().set_scan_backend("fast"),
                  lambda: resolve_backend("fast", "cpu")):
        with pytest.raises(UserError) as err:
            build()
        assert str(err.value) == message


def test_models_lists_each_box_with_its_module_and_imports_it_on_first_use():
    import models

    boxes = [name for name in models.__all__ if isinstance(getattr(models, name), type)
             and issubclass(getattr(models, name), nn.Module)]
    assert len(boxes) == 11
    for name in boxes:
        assert re.search(rf"\b{name}\b.*\b{getattr(models, name).__module__}\b", models.__doc__), name
    with pytest.raises(AttributeError):
        models.NoSuchBox  # noqa: B018
