"""Training crops of natural-image folders (``--resize R --image-size S --crop random|center``): every loader takes
S x S windows of the R x R decode, seeded and the same again on resume; evaluation center-crops. And the learning
rate's warm-up (``--warmup-steps``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_crops
from vaefast.data import load_dataset, make_loader
from vaefast.data.sampling import Crop
from vaefast.data.streaming import dali_unavailable_reason
from vaefast.train.schedules import LearningRate

SIZE, RESIZE = 16, 24


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Non-square RGB photographs (40 x 56), so that the resize keeps a central square."""
    root = tmp_path_factory.mktemp("photos")
    for i, crop in enumerate(photo_crops(40, 64)):
        Image.fromarray(crop[:40, 4:60]).save(root / f"{i:03d}.png")
    return root


def _is_window(crop: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether ``crop`` [C, S, S] is a window of ``image`` [C, R, R]."""
    size = crop.shape[-1]
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # [C, R-S+1, R-S+1, S, S]
    return bool((windows == crop[:, None, None]).all(-1).all(-1).all(0).any())


def test_random_crops_are_windows_seeded_by_epoch_and_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, RESIZE, RESIZE), dtype=torch.uint8, generator=generator)
    crop = Crop(SIZE, random=True, seed=1)
    first = crop(images, epoch=0, batch=3)
    assert first.shape == (6, 3, SIZE, SIZE) and first.is_contiguous()
    assert all(_is_window(c, image) for c, image in zip(first, images))
    assert torch.equal(first, Crop(SIZE, random=True, seed=1)(images, 0, 3))  # the same draw again
    assert not torch.equal(first, crop(images, 0, 4)) and not torch.equal(first, crop(images, 1, 3))
    assert not torch.equal(first, Crop(SIZE, random=True, seed=1, rank=1)(images, 0, 3))
    offset = (RESIZE - SIZE) // 2
    assert torch.equal(Crop(SIZE, random=False)(images, 0, 3), images[..., offset:offset + SIZE, offset:offset + SIZE])
    with pytest.raises(ValueError, match="cannot crop 32x32 from 24x24"):
        Crop(32, random=True)(images, 0, 0)


def test_folders_decode_the_resized_square_and_test_images_are_center_crops(photo_folder):
    d = load_dataset(str(photo_folder), test_fraction=0.25, seed=0, image_size=SIZE, resize=RESIZE)
    assert d.image_shape == (3, SIZE, SIZE) and d.folder.image_shape == (3, RESIZE, RESIZE)
    full = d.folder.decode_all(d.folder.test_files)[0]
    offset = (RESIZE - SIZE) // 2
    assert torch.equal(d.test, full[..., offset:offset + SIZE, offset:offset + SIZE])


@pytest.mark.parametrize("crop", ["random", "center"])
def test_memory_and_torch_loaders_take_the_same_crops_and_resume_them(photo_folder, crop):
    d = load_dataset(str(photo_folder), test_fraction=0.25, seed=0, image_size=SIZE, resize=RESIZE)
    memory, _, _ = make_loader("memory", d, batch_size=8, device="cpu", seed=5, crop=crop)
    streaming, _, _ = make_loader("torch", d, batch_size=8, device="cpu", seed=5, num_workers=0, crop=crop)
    decoded = {img.numpy().tobytes(): img for img in d.train}
    for epoch in range(2):
        memory.set_epoch(epoch)
        streaming.set_epoch(epoch)
        a, b = list(memory.batches()), list(streaming.batches())
        assert len(a) == len(b) == math.ceil(d.num_train / 8)
        for x, y in zip(a, b):
            assert x.shape[1:] == (3, SIZE, SIZE) and torch.equal(x, y)
        # Resuming at batch 2 of the epoch draws the crops of batches 2.. again.
        for x, y in zip(a[2:], memory.batches(2), strict=True):
            assert torch.equal(x, y)
    crops = torch.cat(a)
    offset = (RESIZE - SIZE) // 2
    centers = torch.stack([img[..., offset:offset + SIZE, offset:offset + SIZE] for img in decoded.values()])
    as_bytes = (crops * 255).round().to(torch.uint8)
    centered = sum(any(torch.equal(c, m) for m in centers) for c in as_bytes)
    assert centered == len(crops) if crop == "center" else centered < len(crops) // 2


@pytest.mark.skipif(dali_unavailable_reason() is not None, reason="DALI not installed")
def test_dali_takes_crops_of_the_resized_square(photo_folder):
    d = load_dataset(str(photo_folder), test_fraction=0.25, seed=0, image_size=SIZE, resize=RESIZE)
    centers = {}
    for crop in ("center", "random"):
        loader, kind, _ = make_loader("dali", d, batch_size=8, device="cpu", seed=5, num_workers=1, crop=crop)
        batches = list(loader.batches())
        assert kind == "dali" and all(x.shape[1:] == (3, SIZE, SIZE) for x in batches)
        centers[crop] = torch.cat(batches)
    # DALI resizes with its own filter: its center crops match PIL's within interpolation differences, and its
    # random crops differ from them.
    memory, _, _ = make_loader("memory", d, batch_size=8, device="cpu", seed=5, crop="center")
    reference = torch.cat(list(memory.batches()))
    nearest = torch.stack([min(reference, key=lambda r: float((r - x).abs().mean())) for x in centers["center"]])
    assert float((nearest - centers["center"]).abs().mean()) < 0.03
    assert float((centers["random"].sort(0).values - centers["center"].sort(0).values).abs().mean()) > 0.003


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_the_learning_rate_warms_up_linearly(kind):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=torch.tensor(1e-3))
    schedule = LearningRate(optimizer, kind, total_steps=20, device="cpu", warmup_steps=4)
    seen = []
    for _ in range(8):
        seen.append(float(optimizer.param_groups[0]["lr"]))
        schedule.advance()
    cosine = [(math.cos(math.pi * s / 20) + 1) / 2 if kind == "cosine" else 1.0 for s in range(8)]
    expected = [1e-3 * min(1.0, (s + 1) / 4) * cosine[s] for s in range(8)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    fresh = torch.optim.Adam([param], lr=torch.tensor(1e-3))  # a resumed run's: built anew, then loaded
    restored = LearningRate(fresh, kind, total_steps=20, device="cpu", warmup_steps=4)
    restored.load_state_dict({"last_epoch": 2})
    assert float(fresh.param_groups[0]["lr"]) == pytest.approx(expected[2], rel=1e-6)
