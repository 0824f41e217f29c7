"""diffusers' AutoencoderKL in vaefast: the adapter trains, the CLI builds, resumes, evaluates and exports it, the
presets load, and patch() makes diffusers' own sample()/kl() fused with the same values and gradients."""

import json
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from vaefast.integrations.diffusers import (  # noqa: E402
    DIFFUSERS_CLAMP, PRESETS, from_diffusers, load_autoencoder, patch, unpatch)
from vaefast.train import Trainer  # noqa: E402

from conftest import quiet_config  # noqa: E402

# One channel at 28x28 (the embedded Fashion-MNIST); two blocks: one 2x downsampling to a [4, 14, 14] latent.
TINY = {"in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32], "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4, "norm_num_groups": 8, "sample_size": 28}


def tiny_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(**TINY)


def test_from_diffusers_trains_a_tiny_autoencoder_kl(tmp_path, tiny_data):
    cfg = quiet_config(tmp_path / "run", epochs=1, max_steps=6, precision="fp32")
    cfg.model.likelihood, cfg.model.clamp = "laplace", DIFFUSERS_CLAMP
    vae = tiny_vae()
    trainer = Trainer(cfg, tiny_data, model=from_diffusers(vae))
    assert trainer.model.latent_shape == (4, 14, 14)
    before = trainer.evaluate()["neg_elbo_nats"]
    before_weights = vae.encoder.conv_in.weight.detach().clone()
    summary = trainer.fit()
    assert summary.steps == 6 and summary.skipped_steps == 0
    assert summary.test_neg_elbo_nats < before
    assert not torch.equal(vae.encoder.conv_in.weight, before_weights)  # the diffusers model itself trained
    # Between encode and decode: diffusers' own posterior, the fused op giving the same KL; pixels in diffusers'
    # [-1, 1] convention inside, vaefast's [0, 1] outside.
    x = tiny_data.test[:4].float() / 255
    with torch.no_grad():
        posterior = vae.encode(x * 2 - 1).latent_dist
        out = trainer.model(x, eps=torch.zeros_like(posterior.mean))
        expected = ((vae.decode(posterior.mode()).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out.kl, posterior.kl(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.mu, posterior.mean)
    torch.testing.assert_close(trainer.model.likelihood.mean(out.decoded), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # four CLI processes, each importing diffusers
def test_cli_trains_evaluates_resumes_and_exports_a_config_json(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    common = [sys.executable, "-m", "vaefast", "train", "--model", f"diffusers:{config}", "--likelihood", "laplace",
              "--batch-size", "32", "--epochs", "1", "--max-steps", "3", "--out", str(run), "--no-progress",
              "--precision", "fp32", "--ema", "0.9", "--json"]
    first = subprocess.run(common, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())["model"]
    assert saved["kind"] == f"diffusers:{config}" and saved["clamp"] == list(DIFFUSERS_CLAMP)
    again = [arg if arg != "3" else "5" for arg in common] + ["--resume", str(run)]  # --max-steps 3 -> 5
    resumed = subprocess.run(again,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 5
    ev = subprocess.run([sys.executable, "-m", "vaefast", "eval", "--checkpoint", str(run), "--limit", "64",
                         "--json"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout.strip().splitlines()[-1])["psnr"] > 0
    out = tmp_path / "exported"
    export = subprocess.run([sys.executable, "-m", "vaefast", "export", "--checkpoint", str(run), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    exported = diffusers.AutoencoderKL.from_pretrained(str(out), local_files_only=True)
    from vaefast.checkpoint import load_checkpoint

    ema = load_checkpoint(run)["ema"]["shadow"]
    for name, p in exported.named_parameters():
        assert torch.equal(p, ema[f"module.vae.{name}"]), name  # the EMA weights, by default


@pytest.mark.parametrize("preset, latent_channels", [("sd-kl-f8", 4), ("kl-f8-16ch", 16)])
def test_presets_are_the_field_layouts(preset, latent_channels):
    assert preset in PRESETS
    vae = load_autoencoder(preset)
    assert vae.config.latent_channels == latent_channels and list(vae.config.block_out_channels) == [128, 256, 512, 512]
    with torch.no_grad():
        moments = from_diffusers(vae).encode(torch.zeros(1, 3, 64, 64))
    assert moments.shape == (1, 2 * latent_channels, 8, 8)  # f8


def test_missing_specs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a preset"):
        load_autoencoder(str(tmp_path / "nowhere"))


def test_patch_keeps_values_and_gradients_and_unpatch_restores():
    vae = tiny_vae()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def run():
        vae.zero_grad()
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator().manual_seed(7))
        kl = posterior.kl()
        (vae.decode(z).sample.square().mean() + 1e-3 * kl.mean()).backward()
        return z.detach(), kl.detach(), [p.grad.clone() for p in vae.parameters()]

    original = run()
    patch()
    try:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        assert DiagonalGaussianDistribution.sample.__module__.startswith("vaefast.integrations.diffusers")
        fused = run()
    finally:
        unpatch()
    assert not DiagonalGaussianDistribution.sample.__module__.startswith("vaefast")
    torch.testing.assert_close(fused[0], original[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[1], original[1], rtol=1e-5, atol=1e-4)
    for a, b in zip(fused[2], original[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(run()[0], original[0], rtol=0, atol=0)  # unpatched again: diffusers' own math


def test_an_image_size_the_model_cannot_reconstruct_is_refused_before_training(tmp_path):
    from vaefast.config import ModelConfig
    from vaefast.models import build_model

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))  # two blocks: downsamples by 2
    with pytest.raises(ValueError, match="downsamples by 2: the image size must be a multiple of 2, got 15x15"):
        build_model(ModelConfig(kind=f"diffusers:{config}"), (1, 15, 15))
    with pytest.raises(ValueError, match="takes 1-channel images; the data has 3 channels"):
        build_model(ModelConfig(kind=f"diffusers:{config}"), (3, 16, 16))
    assert build_model(ModelConfig(kind=f"diffusers:{config}"), (1, 16, 16)).latent_shape == (4, 8, 8)


@pytest.mark.slow
def test_cli_trains_the_ldm_recipe_on_photographs_and_reports_lpips(tmp_path, random_vgg16):
    """`vaefast train --model diffusers:... --recipe ldm` on real RGB crops, then eval (PSNR, SSIM, LPIPS) and the
    inspect grids."""
    import numpy as np
    from conftest import photo_crops

    data = tmp_path / "crops.npy"
    np.save(data, photo_crops(160, 32))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "in_channels": 3, "out_channels": 3, "sample_size": 32}))
    run, vgg = tmp_path / "run", str(random_vgg16[0])
    train = subprocess.run([sys.executable, "-m", "vaefast", "train", "--model", f"diffusers:{config}", "--recipe",
                            "ldm", "--lpips-weights", vgg, "--data", str(data), "--batch-size", "8", "--epochs", "1",
                            "--max-steps", "4", "--disc-start", "2", "--out", str(run), "--no-progress",
                            "--precision", "fp32", "--json"], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["test_psnr"] > 0 and 0 < summary["test_lpips"] < 2
    assert "LPIPS" in train.stderr
    ev = subprocess.run([sys.executable, "-m", "vaefast", "eval", "--checkpoint", str(run), "--lpips-weights", vgg,
                         "--json"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads(ev.stdout.strip().splitlines()[-1])
    assert report["psnr"] > 0 and report["ssim"] is not None and 0 < report["lpips"] < 2
    pictures = tmp_path / "pictures"
    inspect = subprocess.run([sys.executable, "-m", "vaefast", "inspect", "--checkpoint", str(run), "--out",
                              str(pictures)], capture_output=True, text=True, timeout=300)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    from PIL import Image

    assert Image.open(pictures / "reconstructions.png").mode == "RGB"
