"""Reconstructions to look at while training: the same held-out images, their reconstructions and (LDM recipe) the
discriminator's verdict on both, as a TensorBoard image and a PNG in the run folder, on the steps asked for only."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import photo_crops, quiet_config
from vaefast.data import ImageDataset
from vaefast.train import Trainer


@pytest.fixture(scope="module")
def rgb_data():
    images = torch.from_numpy(photo_crops(40, 32)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset("crops", images[:32], images[32:])


@pytest.mark.parametrize("recipe", ["elbo", "ldm"])
def test_snapshots_every_n_steps_hold_the_images_their_reconstructions_and_the_verdicts(tmp_path, rgb_data, recipe):
    pytest.importorskip("tensorboard")
    options = dict(recipe="ldm", perceptual="none", disc_start=0, disc_layers=2) if recipe == "ldm" else {}
    cfg = quiet_config(tmp_path / "run", model="conv", latent_channels=4, batch_size=8, epochs=1, max_steps=4,
                       image_every=2, tensorboard=True, **options)
    trainer = Trainer(cfg, rgb_data)
    written = []
    trainer.run(1, on_step=lambda step: written.append(sorted(p.name for p in (tmp_path / "run" / "images").glob("*"))
                                                       if (tmp_path / "run" / "images").exists() else []))
    assert written == [[]]  # step 1: not a snapshot step, nothing computed or written
    trainer.run(3)
    pngs = sorted(p.name for p in (tmp_path / "run" / "images").glob("*.png"))
    assert pngs == ["step000000002.png", "step000000004.png"]
    rows = 4 if recipe == "ldm" else 2  # held-out images, reconstructions (, D on each)
    tile = 32 + 2
    png = Image.open(tmp_path / "run" / "images" / "step000000004.png")
    assert png.height == 2 * (rows * tile + 2) + 18 and png.width == 2 * (8 * tile + 2)  # scale 2, a title banner
    trainer.monitor.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Images("reconstructions")] == [2, 4]
    # The first row is the held-out test images themselves, unchanged between snapshots.
    top = torch.from_numpy(__import__("numpy").array(png.convert("RGB"))).permute(2, 0, 1)[:, 18 + 4:18 + 4 + 64:2,
                                                                                             4:4 + 64:2]
    assert torch.equal(top, rgb_data.test[0])
