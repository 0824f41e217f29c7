"""Fine-tuning released autoencoders through the CLI, as sd-vae-ft-mse was made: a "released" single file in the
original layout (SD's, and FLUX's: 16 channels, no quant convs, a shift factor) made from a small random
AutoencoderKL, fine-tuned with ``--train decoder --recipe ldm --pixel-loss mse --perceptual-weight 0.1 --ema 0.999``.
The encoder and the latents stay bit-identical, the export loads in diffusers, its single file round-trips through
``from_single_file``, the scaling factor is the original's (and, after ``--train all``, the one measured), and
``eval --json`` reports rFID beside PSNR, SSIM and LPIPS."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import photo_crops  # noqa: E402
from vaefast.integrations.diffusers.single_file import to_original_layout, write_single_file  # noqa: E402

TINY = {"in_channels": 3, "out_channels": 3, "block_out_channels": [16, 32], "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
        "norm_num_groups": 8, "sample_size": 32}
LAYOUTS = {
    "sd": {**TINY, "latent_channels": 4, "scaling_factor": 0.18215},
    "flux": {**TINY, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
             "scaling_factor": 0.3611, "shift_factor": 0.1159},
}
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Per layout: (the original diffusers model, its single file, a folder with its config.json)."""
    root = tmp_path_factory.mktemp("released")
    made = {}
    for name, config in LAYOUTS.items():
        torch.manual_seed(1)
        vae = diffusers.AutoencoderKL(**config)
        path = write_single_file(to_original_layout(vae.state_dict(), dict(vae.config)), root / f"{name}.safetensors")
        folder = root / f"{name}-config"
        vae.save_config(str(folder))
        made[name] = (vae.eval(), path, folder)
    return made


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "crops.npy"
    np.save(path, photo_crops(72, 32))
    return path


def vaefast(*args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vaefast", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fine_tune(tmp_path, released, crops, vgg, layout: str, train: str):
    _, path, folder = released[layout]
    run = tmp_path / f"run-{layout}-{train}"
    vaefast("train", "--model", f"diffusers:{path}", "--model-config", folder, "--train", train, "--recipe", "ldm",
            "--pixel-loss", "mse", "--perceptual-weight", "0.1", "--ema", "0.999", "--lpips-weights", vgg,
            "--data", crops, "--batch-size", 8, "--epochs", 1, "--max-steps", 4, "--disc-start", 2,
            "--lr", "1e-3", "--out", run, "--no-progress", "--precision", "fp32")
    return run


def encoder_state(vae) -> dict:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


@pytest.mark.parametrize("layout", ["sd", pytest.param("flux", marks=pytest.mark.slow)])
def test_decoder_only_fine_tuning_keeps_the_latents_and_exports_to_diffusers(tmp_path, released, crops, layout,
                                                                             random_vgg16, random_inception):
    original, _, _ = released[layout]
    run = fine_tune(tmp_path, released, crops, random_vgg16[0], layout, "decoder")

    from vaefast.checkpoint import load_checkpoint

    state = load_checkpoint(run)
    held = list(state["model"]) + list(state["ema"]["shadow"])
    assert held and not any(k.startswith(tuple(f"module.vae.{p}" for p in ENCODER_PREFIXES)) for k in held)

    folder = tmp_path / "exported"
    export = vaefast("export", "--checkpoint", run, "--out", folder)
    assert "kept the original latent statistics" in export.stdout
    exported = diffusers.AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval()
    ours, theirs = encoder_state(exported), encoder_state(original)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(exported.decoder.conv_out.weight, original.decoder.conv_out.weight)  # it trained
    x = torch.from_numpy(np.load(crops)[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(exported.encode(x).latent_dist.mean, original.encode(x).latent_dist.mean)
    for key in ("scaling_factor", "shift_factor"):
        assert exported.config.get(key) == original.config.get(key), key
    assert (exported.config.shift_factor is not None) == (layout == "flux")

    single = vaefast("export", "--checkpoint", run, "--out", tmp_path / "ae.safetensors", "--format", "single-file")
    assert "ae.safetensors" in single.stdout
    reread = diffusers.AutoencoderKL.from_single_file(str(tmp_path / "ae.safetensors"),
                                                      config=str(tmp_path / "ae-config"), local_files_only=True)
    assert reread.state_dict().keys() == exported.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(reread.state_dict().values(), exported.state_dict().values()))
    with torch.no_grad():
        z = exported.encode(x).latent_dist.mean
        assert torch.equal(reread.eval().decode(z).sample, exported.decode(z).sample)
    assert reread.config.scaling_factor == exported.config.scaling_factor

    report = json.loads(vaefast("eval", "--checkpoint", run, "--lpips-weights", random_vgg16[0], "--fid-weights",
                                random_inception, "--json").stdout.strip().splitlines()[-1])
    assert report["psnr"] > 0 and 0 < report["ssim"] < 1 and 0 < report["lpips"] < 2
    assert np.isfinite(report["rfid"]) and report["rfid"] >= 0
    assert len(report["latent_channel_std"]) == LAYOUTS[layout]["latent_channels"]


@pytest.mark.slow
def test_full_fine_tuning_exports_the_measured_scaling_factor(tmp_path, released, crops, random_vgg16):
    """--train all moves the encoder, so export measures the latents over training images: its scaling factor is
    1/std of z = mu + sigma * eps as diffusers' own posterior gives it for the same eps."""
    original, _, _ = released["flux"]
    run = fine_tune(tmp_path, released, crops, random_vgg16[0], "flux", "all")
    folder = tmp_path / "exported"
    export = vaefast("export", "--checkpoint", run, "--out", folder, "--stats-images", 40)
    assert "measured over 40 training images" in export.stdout
    exported = diffusers.AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval()
    assert not torch.equal(exported.encoder.conv_in.weight, original.encoder.conv_in.weight)

    from vaefast.data import load_dataset

    images = load_dataset(str(crops)).first_train_images(40).float() / 127.5 - 1
    generator = torch.Generator().manual_seed(0)  # the run's seed: export draws eps as measure_latents does
    samples = []
    with torch.no_grad():
        for batch in images.split(32):
            posterior = exported.encode(batch).latent_dist
            samples.append((posterior.mean + posterior.std * torch.randn(posterior.mean.shape,
                                                                         generator=generator)).double())
    z = torch.cat(samples)
    assert exported.config.scaling_factor == pytest.approx(1 / float(z.std(unbiased=False)), rel=1e-5)
    assert exported.config.shift_factor == pytest.approx(float(z.mean()), rel=1e-4, abs=1e-6)
    assert exported.config.scaling_factor != original.config.scaling_factor


def test_the_architecture_of_a_standard_layout_is_read_from_its_tensors(tmp_path, capsys):
    """Without --model-config: the shapes give the architecture; the statistics are those of the preset with the
    same layout, and the run says which preset shares it."""
    from vaefast.integrations.diffusers.loading import inferred_with_statistics, preset_config
    from vaefast.integrations.diffusers.single_file import infer_config

    config = {**TINY, "block_out_channels": [32, 64], "norm_num_groups": 32, "latent_channels": 4}
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**config)
    tensors = to_original_layout(vae.state_dict(), dict(vae.config))
    inferred = infer_config(tensors, "tiny")
    for key in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels"):
        assert inferred[key] == config[key], key
    assert inferred["use_quant_conv"] and inferred["use_post_quant_conv"]
    from vaefast.integrations.diffusers import load_autoencoder

    path = write_single_file(tensors, tmp_path / "tiny.safetensors")
    loaded = load_autoencoder(str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    assert "architecture read from its tensors" in capsys.readouterr().err
    for preset, shared, factors in (("sd-kl-f8", "sdxl", (0.18215, None)), ("flux", "sd3", (0.3611, 0.1159))):
        layout = {k: v for k, v in preset_config(preset).items() if k not in ("scaling_factor", "shift_factor",
                                                                               "sample_size")}
        chosen = inferred_with_statistics(layout, path, quiet=False)
        assert (chosen["scaling_factor"], chosen.get("shift_factor")) == factors
        assert f"--model-config {shared}" in capsys.readouterr().err
