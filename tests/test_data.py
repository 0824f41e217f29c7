"""Data sources and loaders on fixtures built from the real Fashion-MNIST files, DALI in CPU mode included."""

import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from vaefast.data import DataError, load_dataset, make_loader
from vaefast.data.arrays import to_nchw
from vaefast.data.streaming import dali_unavailable_reason

N_IMAGES = 240


@pytest.fixture(scope="module")
def fashion():
    d = load_dataset(None)
    return d.train[:N_IMAGES], d.train_labels[:N_IMAGES]


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, fashion):
    """PNG files in one subfolder per class, as CelebA/ImageNet-style folders hold them."""
    root = tmp_path_factory.mktemp("png")
    images, labels = fashion
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"class{int(label)}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, fashion):
    """RGB JPEGs at 32x36, to exercise resize + center-crop."""
    root = tmp_path_factory.mktemp("jpeg")
    images, _ = fashion
    for i, img in enumerate(images[:64]):
        rgb = Image.fromarray(img[0].numpy(), mode="L").convert("RGB").resize((36, 32))
        rgb.save(root / f"{i:05d}.jpg", quality=95)
    return root


def _seen(loader, epoch):
    """The images one epoch yields, as a multiset of byte strings (pixel-exact identities)."""
    loader.set_epoch(epoch)
    return Counter((b * 255).round().to(torch.uint8).numpy().tobytes() for batch in loader.batches() for b in batch)


# ------------------------------------------------------------------------------------------------ sources


def test_png_folder_matches_the_source_pixels(png_folder, fashion):
    d = load_dataset(str(png_folder), test_fraction=0.25, seed=3)
    assert d.image_shape == (1, 28, 28) and d.folder.classes == [f"class{c}" for c in range(10)]
    d.materialize()
    assert d.num_train + len(d.test) == N_IMAGES
    source = {img.numpy().tobytes() for img in fashion[0]}
    assert all(img.numpy().tobytes() in source for img in torch.cat([d.train, d.test]))


def test_jpeg_folder_resize_and_crop(jpeg_folder):
    d = load_dataset(str(jpeg_folder), image_size=16).materialize()
    assert d.image_shape == (3, 16, 16) and d.train.dtype == torch.uint8


def test_mixed_sizes_need_image_size(tmp_path, fashion):
    Image.fromarray(fashion[0][0, 0].numpy()).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"mixed image sizes: .*\.png is 32x32 but .*a\.png is 28x28.*--image-size"):
        load_dataset(str(tmp_path), test_fraction=0.3).materialize()
    assert load_dataset(str(tmp_path), image_size=16).materialize().image_shape == (1, 16, 16)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float"])
def test_numpy_layouts(tmp_path, fashion, layout):
    images = fashion[0][:, 0].numpy()  # [N, 28, 28]
    array = {"nhw": images, "nhwc": np.repeat(images[..., None], 3, axis=3),
             "nchw": np.repeat(images[:, None], 3, axis=1), "float": images.astype(np.float32) / 255}[layout]
    path = tmp_path / ("x.npz" if layout == "float" else "x.npy")
    np.savez(path, images=array) if layout == "float" else np.save(path, array)
    d = load_dataset(str(path))
    channels = 3 if layout in ("nhwc", "nchw") else 1
    assert d.image_shape == (channels, 28, 28)
    merged = torch.cat([d.train, d.test])
    expected = images if layout != "float" else np.rint(images.astype(np.float32) / 255 * 255).astype(np.uint8)
    assert Counter(img.tobytes() for img in merged[:, 0].numpy()) == Counter(img.tobytes() for img in expected)
    if channels == 3:
        assert torch.equal(merged[:, 0], merged[:, 2])


def test_numpy_bad_inputs(tmp_path):
    np.save(tmp_path / "rank2.npy", np.zeros((10, 784), np.uint8))
    with pytest.raises(DataError, match=r"rank2\.npy: expected images of rank 3.*got shape \(10, 784\)"):
        load_dataset(str(tmp_path / "rank2.npy"))
    np.save(tmp_path / "ints.npy", np.zeros((10, 8, 8), np.int64))
    with pytest.raises(DataError, match=r"ints\.npy: expected uint8 or float images, got dtype int64"):
        load_dataset(str(tmp_path / "ints.npy"))
    np.save(tmp_path / "range.npy", np.full((10, 8, 8), 3.0, np.float32))
    with pytest.raises(DataError, match=r"range\.npy: float images must lie in \[0, 1\]"):
        load_dataset(str(tmp_path / "range.npy"))
    np.save(tmp_path / "ambiguous.npy", np.zeros((10, 3, 4, 3), np.uint8))
    with pytest.raises(DataError, match="cannot tell whether shape"):
        load_dataset(str(tmp_path / "ambiguous.npy"))
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "ints.npy").read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot read NumPy file .*trunc\.npy"):
        load_dataset(str(tmp_path / "trunc.npy"))


def test_to_nchw_resolution():
    assert to_nchw(np.zeros((2, 28, 28, 3)), "x").shape == (2, 3, 28, 28)
    assert to_nchw(np.zeros((2, 1, 28, 28)), "x").shape == (2, 1, 28, 28)


def test_empty_folder_and_corrupt_image(tmp_path, png_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no .png"):
        load_dataset(str(empty))
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    files = sorted(png_folder.rglob("*.png"))[:40]
    for f in files:
        (bad_root / f.name).write_bytes(f.read_bytes())
    corrupt = bad_root / files[7].name
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # a truncated PNG among good ones
    with pytest.raises(DataError, match=rf"cannot decode image .*{corrupt.name}"):
        load_dataset(str(bad_root), test_fraction=0.05, seed=1).materialize()
    d = load_dataset(str(bad_root), test_fraction=0.05, seed=1, skip_bad=True).materialize(skip_bad=True)
    assert d.num_train + len(d.test) == 39


# ------------------------------------------------------------------------------------------------ loaders

LOADER_KINDS = ["memory", "torch"] + (["dali"] if dali_unavailable_reason() is None else [])


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_every_loader_sees_every_train_image_once_per_epoch(png_folder, kind):
    d = load_dataset(str(png_folder), test_fraction=0.25, seed=0)
    loader, chosen, _ = make_loader(kind, d, batch_size=32, device="cpu", num_workers=1)
    assert chosen == kind
    reference = Counter(img.numpy().tobytes() for img in d.folder.decode_all(d.folder.train_files)[0])
    for epoch in range(2):
        seen = _seen(loader, epoch)
        assert seen == reference, f"{kind} epoch {epoch}"
        batches = list(loader.batches()) if kind != "dali" else None
        if batches:
            assert batches[0].dtype == torch.float32 and 0.0 <= float(batches[0].min()) <= float(batches[0].max()) <= 1.0


def test_memory_loader_keeps_large_datasets_as_uint8_with_the_same_batches(monkeypatch):
    """Above FLOAT_CACHE_BYTES the in-memory loader keeps the uint8 bytes (a quarter of the memory) and converts
    each batch after its gather: the batches must be those of the pre-scaled float32 copy, bit for bit."""
    import vaefast.data.memory as memory

    images = torch.randint(0, 256, (300, 1, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cached = memory.InMemoryLoader(images, 64, seed=3, flip=True)
    monkeypatch.setattr(memory, "FLOAT_CACHE_BYTES", images.numel() * 4 - 1)
    kept = memory.InMemoryLoader(images, 64, seed=3, flip=True)
    assert cached.images.dtype == torch.float32 and kept.images.dtype == torch.uint8
    for epoch in range(2):
        cached.set_epoch(epoch)
        kept.set_epoch(epoch)
        pairs = list(zip(cached.batches(1), kept.batches(1), strict=True))
        assert len(pairs) == len(cached) - 1
        for a, b in pairs:
            assert b.dtype == torch.float32 and torch.equal(a, b)


def test_dali_is_required_by_ci():
    if "dali" in os.environ.get("VAEFAST_REQUIRE_BACKENDS", "").split(","):
        assert dali_unavailable_reason() is None, dali_unavailable_reason()


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_sharding_covers_every_sample_once_per_epoch(png_folder, kind, world_size):
    d = load_dataset(str(png_folder), test_fraction=0.1, seed=0)
    reference = Counter(img.numpy().tobytes() for img in d.folder.decode_all(d.folder.train_files)[0])
    ranks = [make_loader(kind, d, batch_size=16, device="cpu", rank=r, world_size=world_size, num_workers=1)[0]
             for r in range(world_size)]
    steps = {len(loader) for loader in ranks}
    assert len(steps) == 1, "every rank runs the same number of steps"
    for epoch in range(3):
        union = Counter()
        for loader in ranks:
            union += _seen(loader, epoch)
        if kind == "dali":  # DALI pads a shorter shard by repeating samples (pad_last_batch)
            assert set(union) == set(reference)
            assert sum(union.values()) - sum(reference.values()) < world_size * 16
        else:  # the unpadded sampler: exactly once, short or empty last batches instead of repeats
            assert union == reference


def test_auto_loader_choice(png_folder):
    d = load_dataset(str(png_folder))
    _, kind, why = make_loader("auto", d, 32, device="cpu")
    assert kind == "memory" and "fits" in why
    _, kind, _ = make_loader("auto", load_dataset(None), 32, device="cpu")
    assert kind == "memory"
    with pytest.raises(DataError, match="--loader dali reads image folders"):
        make_loader("dali", load_dataset(None), 32, device="cpu")


@pytest.mark.skipif(dali_unavailable_reason() is not None, reason="DALI not installed")
def test_dali_names_the_corrupt_file(tmp_path, png_folder):
    files = sorted(png_folder.rglob("*.png"))[:48]
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    corrupt = tmp_path / files[5].name
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    d = load_dataset(str(tmp_path), test_fraction=0.02, seed=0)
    assert corrupt in d.folder.train_files
    loader, _, _ = make_loader("dali", d, batch_size=8, device="cpu", num_workers=1)
    with pytest.raises(DataError, match=rf"undecodable image .*{corrupt.name}"):
        list(loader.batches())
    loader, _, _ = make_loader("dali", d, batch_size=8, device="cpu", num_workers=1, skip_bad=True)
    assert sum(len(b) for b in loader.batches()) == len(d.folder.train_files) == 46


@pytest.fixture(scope="module")
def npy_folder(tmp_path_factory, fashion):
    """Array shards: one [H, W, 1] uint8 image per .npy file."""
    root = tmp_path_factory.mktemp("npy")
    for i, img in enumerate(fashion[0][:96]):
        np.save(root / f"{i:05d}.npy", img[0].numpy()[..., None])
    return root


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_npy_shard_folder(npy_folder, fashion, kind):
    d = load_dataset(str(npy_folder), test_fraction=0.25)
    assert d.image_shape == (1, 28, 28)
    loader, _, _ = make_loader(kind, d, batch_size=16, device="cpu", num_workers=1)
    seen = _seen(loader, 0)
    source = Counter(img.numpy().tobytes() for img in fashion[0][:96])
    assert sum(seen.values()) == d.num_train and all(k in source for k in seen)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_flip_mirrors_about_half_of_the_images(png_folder, kind):
    d = load_dataset(str(png_folder), test_fraction=0.1)
    plain = _seen(make_loader(kind, d, batch_size=16, device="cpu", num_workers=1)[0], 0)
    d = load_dataset(str(png_folder), test_fraction=0.1)
    flipped = _seen(make_loader(kind, d, batch_size=16, device="cpu", num_workers=1, flip=True)[0], 0)
    mirrors = Counter(np.frombuffer(k, np.uint8).reshape(28, 28)[:, ::-1].tobytes() for k in plain.elements())
    unchanged = sum((flipped & plain).values())
    mirrored = sum((flipped & mirrors).values())
    assert unchanged + mirrored >= sum(flipped.values())
    assert 0.25 * len(list(plain.elements())) < mirrored < 0.75 * len(list(plain.elements()))


def test_npy_folder_mixed_with_images_is_refused(tmp_path, fashion):
    np.save(tmp_path / "a.npy", fashion[0][0, 0].numpy())
    Image.fromarray(fashion[0][1, 0].numpy()).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="mixes 1 .npy files with 1 image files"):
        load_dataset(str(tmp_path))
