"""WebDataset tar shards of real RGB photographs (crops of scikit-image's bundled pictures): every loader, DALI's
fn.readers.webdataset on CPU included, sees every sample once per epoch, across ranks too; corrupt, truncated and
non-tar shards and undecodable samples raise errors that name the shard and the member."""

import io
import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from vaefast.data import DataError, load_dataset, make_loader
from vaefast.data.shards import expand_braces, is_shard_spec, sample_key
from vaefast.data.streaming import dali_unavailable_reason

SAMPLES_PER_SHARD = 12
SHARDS = 4
LOADERS = ["memory", "torch"] + (["dali"] if dali_unavailable_reason() is None else [])


def _photos():
    skimage_data = pytest.importorskip("skimage.data")
    return [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()]


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def write_shards(root, shards=SHARDS, per_shard=SAMPLES_PER_SHARD, size=40, seed=0):
    """Shards of random crops: PNG and (lossless-looking, high-quality) JPEG samples, each with a .cls label and
    a .json that the reader must ignore; every sixth sample has no image and must be skipped."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    root.mkdir(parents=True, exist_ok=True)
    key = 0
    for s in range(shards):
        with tarfile.open(root / f"train-{s:04d}.tar", "w") as archive:
            for i in range(per_shard):
                photo = photos[rng.integers(len(photos))]
                y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
                buffer = io.BytesIO()
                as_png = i % 2 == 0
                Image.fromarray(photo[y:y + size, x:x + size]).save(buffer, format="PNG" if as_png else "JPEG",
                                                                    quality=95)
                stem = f"part{s}/{key:06d}"
                if i % 6 != 5:
                    _add(archive, f"{stem}.{'png' if as_png else 'jpg'}", buffer.getvalue())
                _add(archive, f"{stem}.cls", str(i % 3).encode())
                _add(archive, f"{stem}.meta.json", b"{}")
                key += 1
    return root


IMAGES_PER_SHARD = SAMPLES_PER_SHARD - SAMPLES_PER_SHARD // 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("wds") / "shards")


def _seen(loader, epoch):
    loader.set_epoch(epoch)
    return Counter((b * 255).round().to(torch.uint8).numpy().tobytes() for batch in loader.batches() for b in batch)


def test_spec_parsing(shards):
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}-{1..2}.tar") == ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar"]
    assert sample_key("dir/sub/000123.seg.PNG") == ("dir/sub/000123", "seg.png")
    assert is_shard_spec(str(shards)) and is_shard_spec(f"{shards}/train-{{0000..0002}}.tar")
    assert is_shard_spec(f"{shards}/train-000{{0,1}}.tar,{shards}/train-0003.tar")
    assert not is_shard_spec(str(shards.parent / "elsewhere"))


@pytest.mark.parametrize("spec", ["{root}/train-{{0000..0003}}.tar", "{root}"])
def test_last_shard_is_the_test_split(shards, spec):
    d = load_dataset(spec.format(root=shards))
    assert d.num_train == 3 * IMAGES_PER_SHARD and len(d.test) == IMAGES_PER_SHARD
    assert d.image_shape == (3, 40, 40) and d.test.dtype == torch.uint8
    assert {m.shard.name for m in d.folder.train_files} == {f"train-000{i}.tar" for i in range(3)}


def test_explicit_train_test_pair_and_resize(shards):
    d = load_dataset(f"{shards}/train-000{{0,1}}.tar,{shards}/train-0003.tar", image_size=24)
    assert d.num_train == 2 * IMAGES_PER_SHARD and d.image_shape == (3, 24, 24)


def test_samples_decode_to_the_stored_pixels(shards):
    d = load_dataset(str(shards))
    member = d.folder.train_files[0]
    assert member.name.endswith(".png")
    with tarfile.open(member.shard) as archive:
        expected = np.array(Image.open(archive.extractfile(member.name)).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(d.folder.decode_all([member])[0][0].numpy(), expected)


@pytest.mark.parametrize("kind", LOADERS)
def test_every_loader_sees_every_sample_once_per_epoch(shards, kind):
    d = load_dataset(str(shards))
    reference = Counter(img.numpy().tobytes() for img in d.folder.decode_all(d.folder.train_files)[0])
    loader, chosen, _ = make_loader(kind, d, batch_size=8, device="cpu", num_workers=1)
    assert chosen == kind and len(loader) == -(-d.num_train // 8)
    for epoch in range(2):
        seen = _seen(loader, epoch)
        if kind == "dali":  # JPEG decoders may differ by a level on a few pixels; compare the PNG samples exactly
            assert sum(seen.values()) == d.num_train
            png = Counter(img.numpy().tobytes() for img in
                          d.folder.decode_all([m for m in d.folder.train_files if m.name.endswith(".png")])[0])
            assert png - seen == Counter()
        else:
            assert seen == reference, f"{kind} epoch {epoch}"


@pytest.mark.parametrize("kind", LOADERS)
def test_ranks_split_the_samples(shards, kind):
    d = load_dataset(str(shards))
    ranks = [make_loader(kind, d, batch_size=4, device="cpu", rank=r, world_size=2, num_workers=1)[0]
             for r in range(2)]
    assert len({len(loader) for loader in ranks}) == 1
    counts = [sum(len(b) for b in loader.batches()) for loader in ranks]
    assert sum(counts) == d.num_train and abs(counts[0] - counts[1]) <= 1


@pytest.mark.skipif(dali_unavailable_reason() is not None, reason="DALI not installed")
def test_dali_uses_index_files_when_present(tmp_path, shards):
    copy = tmp_path / "indexed"
    copy.mkdir()
    for tar in sorted(shards.glob("*.tar")):
        (copy / tar.name).write_bytes(tar.read_bytes())
        subprocess.run([sys.executable, "-m", "wds2idx", str(copy / tar.name), str(copy / (tar.stem + ".idx"))],
                       check=True, capture_output=True)
    assert is_shard_spec(str(copy))
    d = load_dataset(str(copy))
    loader, _, _ = make_loader("dali", d, batch_size=8, device="cpu", num_workers=1)
    assert sum(len(b) for b in loader.batches()) == d.num_train


# ------------------------------------------------------------------------------------------------ bad shards


def _corrupt_member(shard, member_suffix=".jpg", which=1):
    """Overwrite the middle of one image member's bytes in place; the tar structure stays valid."""
    with tarfile.open(shard) as archive:
        member = [m for m in archive.getmembers() if m.name.endswith(member_suffix)][which]
    data = bytearray(shard.read_bytes())
    data[member.offset_data + 100:member.offset_data + member.size - 4] = b"A" * (member.size - 104)
    shard.write_bytes(bytes(data))
    return member.name


@pytest.fixture
def broken(tmp_path):
    return write_shards(tmp_path / "broken")


def test_truncated_shard_is_named(broken):
    victim = broken / "train-0001.tar"
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2 + 100])
    with pytest.raises(DataError, match=r"corrupt WebDataset shard .*train-0001\.tar"):
        load_dataset(str(broken))


@pytest.mark.parametrize("payload", [b"", b"not a tar at all" * 100, bytes(range(256)) * 40])
def test_non_tar_shard_is_named(broken, payload):
    (broken / "train-0002.tar").write_bytes(payload)
    with pytest.raises(DataError, match=r"train-0002\.tar"):
        load_dataset(str(broken))


def test_missing_shard_is_named(broken):
    with pytest.raises(DataError, match=r"1 of 5 shards not found \(first: .*train-0004\.tar\)"):
        load_dataset(f"{broken}/train-{{0000..0004}}.tar")


def test_one_shard_alone_is_refused_with_the_fix(broken):
    with pytest.raises(DataError, match="at least two, or a TRAIN,TEST pair"):
        load_dataset(f"{broken}/train-0000.tar")


@pytest.mark.parametrize("kind", ["memory", "torch"])
def test_corrupt_sample_is_named_or_skipped(broken, kind):
    name = _corrupt_member(broken / "train-0001.tar")
    with pytest.raises(DataError, match=rf"train-0001\.tar:{name}"):
        loader, _, _ = make_loader(kind, load_dataset(str(broken)), batch_size=8, device="cpu", num_workers=0)
        list(loader.batches())
    d = load_dataset(str(broken))
    loader, _, _ = make_loader(kind, d, batch_size=8, device="cpu", num_workers=0, skip_bad=True)
    assert sum(len(b) for b in loader.batches()) == 3 * IMAGES_PER_SHARD - 1


@pytest.mark.skipif(dali_unavailable_reason() is not None, reason="DALI not installed")
def test_dali_names_the_corrupt_sample(broken):
    name = _corrupt_member(broken / "train-0002.tar", ".png", which=0)
    d = load_dataset(str(broken))
    loader, _, _ = make_loader("dali", d, batch_size=8, device="cpu", num_workers=1)
    with pytest.raises(DataError, match=rf"undecodable image .*train-0002\.tar:{name}.*--loader torch"):
        list(loader.batches())
    with pytest.raises(DataError, match=rf"train-0002\.tar:{name}: DALI reads whole tar shards"):
        make_loader("dali", load_dataset(str(broken)), batch_size=8, device="cpu", skip_bad=True)
