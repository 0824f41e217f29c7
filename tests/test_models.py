"""Models, likelihoods and KL schedules, each against math written independently."""

import math

import pytest
import torch

from vaefast.models import DiscretizedLogistic, Gaussian, Laplace, ModelConfig, build_model
from vaefast.models.objective import kl_objective
from vaefast.train.schedules import kl_weight


def test_classic_recipe_is_expressible_exactly():
    model = build_model(ModelConfig(hidden=[400], latent_dim=20), (1, 28, 28))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 40), (20, 400), (400, 784)]
    assert sum(p.numel() for p in model.parameters()) == 652_824  # pytorch/examples' VAE, fc21/fc22 merged


@pytest.mark.parametrize("latent_channels, latent_shape", [(0, (64,)), (4, (4, 8, 8))])
def test_conv_vae_flat_and_spatial_latents(latent_channels, latent_shape):
    cfg = ModelConfig(kind="conv", latent_dim=64, channels=[16, 32], latent_channels=latent_channels)
    model = build_model(cfg, (3, 32, 32))
    out = model(torch.rand(5, 3, 32, 32))
    assert out.z.shape == (5, *latent_shape) and out.kl_per_dim.shape == latent_shape
    assert out.decoded.shape == (5, 3, 32, 32)
    out.kl.sum().backward()


def test_large_latent():
    model = build_model(ModelConfig(kind="mlp", hidden=[256], latent_dim=8192), (1, 28, 28))
    out = model(torch.rand(4, 1, 28, 28))
    assert out.z.shape == (4, 8192) and torch.isfinite(out.kl).all()


def test_conv_rejects_sizes_not_divisible():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model(ModelConfig(kind="conv", channels=[8, 8]), (1, 30, 30))


def test_gaussian_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.rand(3, 1, 4, 4, generator=g), torch.rand(3, 1, 4, 4, generator=g)
    lik = Gaussian(sigma=0.2)
    expected = -torch.distributions.Normal(mean.double(), 0.2).log_prob(x.double()).flatten(1).sum(1)
    expected += 16 * math.log(256)  # uniform dequantization to 8-bit bins of width 1/256
    torch.testing.assert_close(lik.nll(mean, x).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("learn", [False, True])
def test_laplace_nll_is_the_l1_loss_as_a_likelihood(learn):
    g = torch.Generator().manual_seed(1)
    x, mean = torch.rand(3, 3, 4, 4, generator=g), torch.rand(3, 3, 4, 4, generator=g)
    lik = Laplace(sigma=0.05, learn_sigma=learn)
    expected = -torch.distributions.Laplace(mean.double(), 0.05).log_prob(x.double()).flatten(1).sum(1)
    expected += 48 * math.log(256)
    nll = lik.nll(mean, x)
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-3)
    # With a fixed scale its gradient is the L1 loss's, scaled by 1/b.
    mean.requires_grad_()
    lik.nll(mean, x).sum().backward()
    torch.testing.assert_close(mean.grad, torch.sign(mean.detach() - x) / 0.05)
    assert isinstance(lik.log_sigma, torch.nn.Parameter) == learn


def test_discretized_logistic_is_a_distribution_over_256_values():
    """exp(-nll) summed over all 256 pixel values is 1, and each bin is a logistic CDF difference."""
    lik = DiscretizedLogistic(init_log_scale=-2.5)
    values = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1) / 255.0
    for raw_mean in (-1.2, 0.0, 0.4, 3.0):
        mean = torch.full((256, 1, 1, 1), raw_mean)
        probs = torch.exp(-lik.nll(mean, values).double())
        assert probs.sum().item() == pytest.approx(1.0, abs=2e-4)
        # An interior bin against the CDF difference in float64.
        s = math.exp(-2.5)
        mu = math.tanh(raw_mean)
        k = 128
        xk = k / 255 * 2 - 1
        sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        expected = sig((xk - mu + 1 / 255) / s) - sig((xk - mu - 1 / 255) / s)
        assert probs[k].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_kl_warmup_and_cyclical_schedules():
    assert kl_weight(0, 100, 2.0, warmup_steps=10) == 0.0
    assert kl_weight(5, 100, 2.0, warmup_steps=10) == 1.0
    assert kl_weight(50, 100, 2.0, warmup_steps=10) == 2.0
    # 4 cycles of 25 steps: ramp over the first half of each cycle.
    assert [kl_weight(s, 100, 1.0, cycles=4) for s in (0, 6, 12, 13, 24, 25, 31)] == pytest.approx(
        [0.0, 0.48, 0.96, 1.0, 1.0, 0.0, 0.48])
    assert kl_weight(7, 100, 0.5) == 0.5


def test_free_bits_floor_stops_gradient_below_it():
    kl_per_dim = torch.tensor([0.05, 0.3, 2.0], requires_grad=True) * 4  # batch of 4: means 0.05, 0.3, 2.0
    kl = torch.tensor([1.0, 1.0, 1.0, 1.0])
    obj = kl_objective(kl, kl_per_dim, batch_size=4, free_bits=0.25)
    assert obj.item() == pytest.approx((0.25 + 0.3 + 2.0) * 4)
    (grad,) = torch.autograd.grad(obj, kl_per_dim)
    assert grad.tolist() == [0.0, 1.0, 1.0]
    assert kl_objective(kl, kl_per_dim, 4, 0.0).item() == 4.0


@pytest.mark.parametrize("warmup, cycles", [(0, 0), (10, 0), (7, 0), (0, 4), (0, 3)])
def test_device_kl_schedule_matches_the_host_schedule(warmup, cycles):
    import torch

    from vaefast.train.schedules import KLWeight

    schedule = KLWeight(100, 0.7, warmup, cycles, device="cpu")
    got = []
    for _ in range(120):
        got.append(float(schedule.value()))
        schedule.advance()
    expected = [kl_weight(s, 100, 0.7, warmup_steps=warmup, cycles=cycles) for s in range(120)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    schedule.set_step(55)
    assert float(schedule.value()) == pytest.approx(kl_weight(55, 100, 0.7, warmup, cycles), rel=1e-6)
    assert schedule.value().dtype == torch.float32
