"""Fuzzed inputs: truncated, bit-flipped and random bytes in place of IDX (plain and gzip), .npy, .npz, PNG/JPEG
and WebDataset tar files. The only outcomes allowed are a correct result (uint8 images of a consistent shape) or a
DataError naming the file: never another exception, a hang, or a silently wrong shape."""

import gzip
import io
import os
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaefast.data import DataError, load_dataset
from vaefast.data.arrays import numpy_images
from vaefast.data.folders import decode
from vaefast.data.shards import list_shard

# VAEFAST_FUZZ_EXAMPLES: the long run before a release of the readers (benchmarks/fuzz_readers.py: thousands per
# format, hypothesis' random seeds); 120 per test otherwise.
FUZZ = settings(max_examples=int(os.environ.get("VAEFAST_FUZZ_EXAMPLES", "120")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("random"), st.binary(max_size=3000), st.just(0)),
)


def mutate(raw: bytes, mutation) -> bytes:
    kind, where, mask = mutation
    if kind == "random":
        return where
    position = int(where * len(raw))
    if kind == "truncate":
        return raw[:position]
    data = bytearray(raw)
    data[position] ^= mask
    return bytes(data)


def _images(n=6, h=12, w=10, channels=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(array):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=array)
    return buffer.getvalue()


def _image_bytes(fmt):
    buffer = io.BytesIO()
    Image.fromarray(_images(1, 16, 16, 3)[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def _tar_bytes():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for i in range(4):
            payload = _image_bytes("PNG")
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _check_images(images, origin):
    assert images.dtype in (np.uint8, "uint8") or str(images.dtype) == "torch.uint8", origin
    assert images.ndim == 4 and images.shape[1] in (1, 3, 4) and min(images.shape) >= 1, (origin, images.shape)


def _write(tmp_path_factory, name, data):
    path = tmp_path_factory.getbasetemp() / name
    path.write_bytes(data)
    return path


@FUZZ
@given(mutations, st.booleans())
def test_idx(tmp_path_factory, reliability, mutation, gzipped):
    reliability.case("fuzzed bytes: IDX (plain, gzip)")
    raw = _idx_bytes(_images())
    raw = gzip.compress(raw) if gzipped else raw
    path = _write(tmp_path_factory, "fuzz-images-idx3-ubyte" + (".gz" if gzipped else ""), mutate(raw, mutation))
    try:
        dataset = load_dataset(str(path))
    except DataError as exc:
        assert path.name in str(exc)
        return
    _check_images(dataset.test.numpy(), path)
    if mutation[0] != "random":  # a damaged header never passes for another shape: the payload size must match it
        assert dataset.image_shape == (1, 12, 10) and dataset.num_train + len(dataset.test) == 6


@FUZZ
@given(mutations, st.sampled_from(["npy", "npz"]))
@example(("flip", 0.004502218702250684, 1), "npy")  # a flipped header byte: tokenize.TokenError escaped once
def test_numpy(tmp_path_factory, reliability, mutation, kind):
    reliability.case("fuzzed bytes: .npy, .npz")
    array = _images(channels=3)
    raw = _npy_bytes(array) if kind == "npy" else _npz_bytes(array)
    path = _write(tmp_path_factory, f"fuzz.{kind}", mutate(raw, mutation))
    try:
        images = numpy_images(path)
    except DataError as exc:
        assert path.name in str(exc)
        return
    _check_images(images.numpy(), path)


@FUZZ
@given(mutations, st.sampled_from(["PNG", "JPEG"]))
def test_image_files(tmp_path_factory, reliability, mutation, fmt):
    reliability.case("fuzzed bytes: PNG, JPEG")
    path = _write(tmp_path_factory, f"fuzz.{fmt.lower()}", mutate(_image_bytes(fmt), mutation))
    try:
        array = decode(path, 3, None)
    except DataError as exc:
        assert path.name in str(exc)
        return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[0] == 3


@FUZZ
@given(mutations)
def test_webdataset_shards(tmp_path_factory, reliability, mutation):
    reliability.case("fuzzed bytes: WebDataset tar shard")
    path = _write(tmp_path_factory, "fuzz.tar", mutate(_tar_bytes(), mutation))
    try:
        members = list_shard(path)
        arrays = [decode(member, 3, None) for member in members]
    except DataError as exc:
        assert path.name in str(exc)
        return
    assert all(a.dtype == np.uint8 and a.shape[0] == 3 for a in arrays)


def _video_bytes():
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for frame in _images(5, 16, 16, 3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@FUZZ
@given(mutations)
def test_video_files(tmp_path_factory, reliability, mutation):
    reliability.case("fuzzed bytes: MP4 (H.264) clip")
    from vaefast.data.clips import read_clip

    path = _write(tmp_path_factory, "fuzz.mp4", mutate(_video_bytes(), mutation))
    try:
        clip = read_clip(path, 3, None)
    except DataError as exc:
        assert path.name in str(exc)
        return
    assert clip.dtype == np.uint8 and clip.ndim == 4 and clip.shape[1] == 3 and len(clip) >= 1


def test_mutations_reach_both_outcomes(tmp_path):
    """The strategies are not vacuous: untouched files load, and cut ones fail with DataError."""
    path = tmp_path / "ok-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(_images()))
    assert load_dataset(str(path)).image_shape == (1, 12, 10)
    path.write_bytes(_idx_bytes(_images())[:-1])
    with pytest.raises(DataError):
        load_dataset(str(path))


def test_a_corrupt_compressed_npz_is_a_data_error(tmp_path, reliability):
    """savez_compressed: single-bit flips across the file (zlib errors, zip version and method fields included)
    give the correct array or a DataError naming the file, never another exception."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=_images(channels=3))
    raw = buffer.getvalue()
    for position in range(0, len(raw), max(1, len(raw) // 150)):
        reliability.case("fuzzed bytes: .npy, .npz")
        path = tmp_path / f"flip{position}.npz"
        path.write_bytes(mutate(raw, ("flip", position / len(raw), 1)))
        try:
            images = numpy_images(path)
        except DataError as exc:
            assert path.name in str(exc) and exc.__cause__ is not None
            continue
        _check_images(images.numpy(), path)


@pytest.mark.parametrize("field, offset, value", [("version needed to extract", 6, 173),
                                                   ("compression method", 10, 99)])
def test_an_npz_with_an_unsupported_zip_field_is_a_data_error(tmp_path, field, offset, value):
    """Fields that make zipfile raise NotImplementedError ("zip file version 17.3", "compression method is not
    supported"), set in the central directory of a compressed .npz: a DataError naming the file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=_images(channels=3))
    raw = bytearray(buffer.getvalue())
    header = raw.index(b"PK\x01\x02")  # the central directory entry of the one member
    raw[header + offset:header + offset + 2] = value.to_bytes(2, "little")
    path = tmp_path / "odd.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="odd.npz") as caught:
        numpy_images(path)
    assert isinstance(caught.value.__cause__, NotImplementedError), (field, caught.value.__cause__)
