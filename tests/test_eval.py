"""Evaluation: IWAE against a closed form, bits/dim, active units, the eval CLI and the pictures."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vaefast.data import ImageDataset, load_dataset
from vaefast.eval import bits_per_dim, evaluate_elbo, iwae_log_likelihood
from vaefast.eval.inspect import inspect_model, sample_images
from vaefast.eval.quality import psnr_ssim
from vaefast.eval.report import evaluate_checkpoint
from vaefast.models import VAE
from vaefast.models.likelihoods import Likelihood
from vaefast.train import TrainConfig, Trainer


class GaussianDensity(Likelihood):
    """N(x; mean, sigma^2 I) as a plain density, so that log p(x) has a closed form."""

    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def nll(self, mean, x):
        d = x[0].numel()
        return (0.5 * ((x - mean) / self.sigma) ** 2).flatten(1).sum(1) + d * (math.log(self.sigma) + 0.5 * math.log(2 * math.pi))

    def mean(self, mean):
        return mean


class FixedEncoder(nn.Module):
    """A deliberately imperfect diagonal posterior: the exact posterior's mean map without the -b offset and its
    diagonal variance inflated by 1.5, so that the ELBO is strictly below log p(x) and K matters."""

    def __init__(self, a: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.a, self.logvar = a, logvar

    def forward(self, x):
        mu = x.flatten(1) @ self.a.T
        return torch.cat([mu, self.logvar.expand_as(mu)], dim=1)


def linear_gaussian_model(d_x=6, d_z=3, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_x, d_z, generator=g, dtype=torch.float64)
    b = torch.randn(d_x, generator=g, dtype=torch.float64) * 0.1
    decoder = nn.Linear(d_z, d_x).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    # Exact posterior of the linear-Gaussian model: cov = (I + W^T W / s^2)^-1, mean = cov W^T (x - b) / s^2.
    cov = torch.linalg.inv(torch.eye(d_z, dtype=torch.float64) + w.T @ w / sigma**2)
    a = cov @ w.T / sigma**2
    logvar = torch.log(torch.diagonal(cov) * 1.5)
    encoder = FixedEncoder(a, logvar)
    model = VAE(encoder, nn.Sequential(decoder, nn.Unflatten(1, (1, 1, d_x))), GaussianDensity(sigma),
                (1, 1, d_x), (d_z,), None, "torch").double()
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d_x, dtype=torch.float64))
    return model, marginal, b


def test_iwae_converges_to_the_closed_form_log_likelihood():
    torch.manual_seed(0)
    model, marginal, b = linear_gaussian_model()
    x = marginal.sample((16,)).view(16, 1, 1, -1)
    exact = marginal.log_prob(x.flatten(1))
    est_1 = torch.stack([iwae_log_likelihood(model, x, 1) for _ in range(200)]).mean(0)
    est_big = iwae_log_likelihood(model, x, 5000)
    gap_1 = (exact - est_1).mean().item()
    gap_big = (exact - est_big).mean().item()
    assert gap_1 > 0.05, "with an imperfect posterior the ELBO is strictly below log p(x)"
    assert -0.02 <= gap_big < 0.2 * gap_1, (gap_1, gap_big)


def test_iwae_k1_is_the_elbo_in_expectation_and_large_k_is_tighter():
    torch.manual_seed(1)
    model, marginal, _ = linear_gaussian_model(seed=1)
    x = marginal.sample((32,)).view(32, 1, 1, -1)
    draws = torch.stack([iwae_log_likelihood(model, x, 1) for _ in range(400)])  # [400, 32]
    out = model(x)
    # The ELBO as the trainer computes it (one-sample reconstruction + analytic KL), averaged over many draws.
    elbos = torch.stack([-(model.nll(model(x).decoded, x).double() + model(x).kl.double()) for _ in range(400)])
    se = (draws.std(0) / 20 + elbos.std(0) / 20).mean().item()
    assert abs(draws.mean().item() - elbos.mean().item()) < 4 * se
    big = iwae_log_likelihood(model, x, 2000).mean().item()
    assert big > elbos.mean().item()
    assert out.kl.shape == (32,)


def test_bits_per_dim_is_exact():
    assert bits_per_dim(100.0, 784) == 100.0 / (784 * math.log(2))


class HalfBlindEncoder(nn.Module):
    """Uses the input for the first `active` latent dims; the rest are the prior exactly (KL = 0)."""

    def __init__(self, d_in, d_z, active):
        super().__init__()
        self.lin = nn.Linear(d_in, active)
        self.d_z, self.active = d_z, active

    def forward(self, x):
        mu_active = 3.0 * torch.tanh(self.lin(x.flatten(1)))
        zeros = torch.zeros(x.shape[0], self.d_z - self.active)
        mu = torch.cat([mu_active, zeros], dim=1)
        return torch.cat([mu, torch.zeros_like(mu)], dim=1)


def test_active_units_count_the_dimensions_the_encoder_uses():
    from vaefast.models import Bernoulli

    torch.manual_seed(2)
    model = VAE(HalfBlindEncoder(16, 10, 4), nn.Sequential(nn.Linear(10, 16), nn.Unflatten(1, (1, 4, 4))),
                Bernoulli(), (1, 4, 4), (10,), (-10.0, 10.0), "auto")
    images = (torch.rand(300, 1, 4, 4) * 255).to(torch.uint8)
    result = evaluate_elbo(model, images, batch_size=100)
    assert result["active_units"] == 4
    assert (result["kl_per_dim"][4:] == 0).all()
    assert result["bpd"] == pytest.approx(result["neg_elbo_nats"] / (16 * math.log(2)), rel=1e-12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun")
    full = load_dataset(None)
    data = ImageDataset("small", full.train[:2000], full.test[:300], full.train_labels[:2000], full.test_labels[:300])
    cfg = TrainConfig.from_options(out=str(out), epochs=2, progress=False, tensorboard=False, compile=False)
    Trainer(cfg, data).fit()
    return out


def test_eval_cli_json(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "vaefast", "eval", "--checkpoint", str(checkpoint),
                           "--iw-samples", "50", "--limit", "200", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = json.loads((Path(__file__).parent / "fixtures" / "json_keys.json").read_text())["eval"]
    assert list(result) == keys  # the keys --json printed before the typed report, in order
    assert result["iw_samples"] == 50 and result["latent_dim"] == 20
    assert result["iwae_nll_nats"] <= result["test_neg_elbo_nats"] + 1.0
    assert result["test_bpd"] == pytest.approx(result["test_neg_elbo_nats"] / (784 * math.log(2)), rel=1e-12)
    assert "verdict" in result
    # Reconstruction quality of a 2-epoch MLP on Fashion-MNIST: well above chance, below perfect.
    assert 12.0 < result["psnr"] < 40.0 and 0.2 < result["ssim"] < 1.0, (result["psnr"], result["ssim"])


def test_collapsed_model_gets_a_collapse_verdict(tmp_path):
    full = load_dataset(None)
    data = ImageDataset("small", full.train[:1000], full.test[:200], full.train_labels[:1000], full.test_labels[:200])
    cfg = TrainConfig.from_options(out=str(tmp_path / "collapsed"), epochs=2, beta=500.0, lr=3e-3, progress=False,
                      tensorboard=False, compile=False)
    with pytest.warns(RuntimeWarning):
        Trainer(cfg, data).fit()
    result = evaluate_checkpoint(tmp_path / "collapsed", limit=200)
    assert result.verdict.startswith(("collapsed", "partial collapse")), result.verdict


def test_sample_and_inspect_images(checkpoint, tmp_path):
    path = sample_images(checkpoint, tmp_path / "samples.png", n=16, temperature=0.8)
    img = Image.open(path)
    # 4x4 tiles of 28 px with 2 px padding, upscaled 2x, plus an 18 px title banner.
    assert img.size == ((4 * 30 + 2) * 2, (4 * 30 + 2) * 2 + 18)
    assert np.asarray(img).astype(float).std() > 10
    binarized = Image.open(sample_images(checkpoint, tmp_path / "binary.png", n=4, binarize=True))
    assert set(np.unique(np.asarray(binarized))) >= {0, 255}
    paths = inspect_model(checkpoint, tmp_path / "inspect", n=8, steps=9, dims=4)
    assert set(paths) == {"reconstructions", "traversals", "interpolations", "interpolations_spherical",
                          "latent_scatter"}
    for name, p in paths.items():
        im = Image.open(p)
        assert np.asarray(im.convert("L")).astype(float).std() > 5, f"{name} is blank"
    assert Image.open(paths["traversals"]).size == ((9 * 30 + 2) * 2, (4 * 30 + 2) * 2 + 18)
    assert Image.open(paths["reconstructions"]).size == ((8 * 30 + 2) * 2, (2 * 30 + 2) * 2 + 18)


def test_psnr_of_a_known_error_and_ssim_of_identical_images():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8
    psnr, ssim = psnr_ssim((x + 0.1).clamp(0, 1), x)  # MSE = 0.01 everywhere: PSNR = 10 log10(1 / 0.01) = 20 dB
    torch.testing.assert_close(psnr, torch.full((4,), 20.0), rtol=0, atol=1e-3)
    _, same = psnr_ssim(x, x)
    torch.testing.assert_close(same, torch.ones(4), rtol=0, atol=1e-6)


def test_ssim_matches_scikit_image_on_a_photograph():
    """A real RGB photograph (scikit-image's astronaut, bundled with its wheel) against a noisy copy: SSIM equals
    scikit-image's Gaussian-window SSIM with the same constants, and PSNR its peak_signal_noise_ratio."""
    skimage = pytest.importorskip("skimage")
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.transform import resize

    photo = resize(skimage.data.astronaut(), (96, 96), anti_aliasing=True)  # float64 in [0, 1], H x W x 3
    noisy = (photo + np.random.default_rng(0).normal(0, 0.05, photo.shape)).clip(0, 1)
    as_batch = lambda image: torch.from_numpy(image).permute(2, 0, 1)[None]  # noqa: E731
    psnr, ssim = psnr_ssim(as_batch(noisy), as_batch(photo))
    expected_ssim = structural_similarity(photo, noisy, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
    assert ssim.item() == pytest.approx(expected_ssim, abs=1e-5)
    assert psnr.item() == pytest.approx(peak_signal_noise_ratio(photo, noisy, data_range=1.0), abs=1e-3)


def test_lpips_is_reported_for_rgb_data_with_weights(tmp_path):
    from vaefast.config import ModelConfig
    from vaefast.eval.quality import reconstruction_quality
    from vaefast.models import build_model
    from vaefast.models.lpips import LPIPS

    torch.manual_seed(0)
    state = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in LPIPS().features.state_dict().items()}
    torch.save(state, tmp_path / "vgg16.pth")
    lpips = LPIPS.from_files(tmp_path / "vgg16.pth")
    model = build_model(ModelConfig(kind="conv", channels=[8, 16], latent_channels=2, likelihood="gaussian"),
                        (3, 16, 16))
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    result = reconstruction_quality(model, images, batch_size=4, lpips=lpips)
    with torch.no_grad():
        x = images.float() / 255
        rec = model.likelihood.mean(model.decode(model.encode(x)[0])).clamp(0, 1)
        expected = lpips(x * 2 - 1, rec * 2 - 1).mean()
    assert result["lpips"] == pytest.approx(float(expected), rel=1e-5) and result["lpips"] > 0
    with pytest.raises(ValueError, match="LPIPS compares RGB images; this data has 1 channel"):
        reconstruction_quality(model, images[:, :1], lpips=lpips)


def test_the_latent_scatter_draws_its_legend_below_its_title(tmp_path):
    """The legend has a line of its own: no swatch colour in the title's line, every class's swatch in the next."""
    import numpy as np
    from PIL import Image

    from vaefast.eval.images import PALETTE, scatter_png

    torch.manual_seed(0)
    labels = torch.arange(10).repeat(20)
    path = scatter_png(torch.randn(200, 2), labels, tmp_path / "scatter.png",
                       title="posterior means, first two principal components, coloured by label " * 2)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colours = {tuple(c) for c in PALETTE[:10]}
    title_line = {tuple(p) for p in pixels[:18].reshape(-1, 3)}
    legend_line = {tuple(p) for p in pixels[18:36].reshape(-1, 3)}
    assert not colours & title_line and colours <= legend_line
