"""Video autoencoders: clips as data (arrays, video files, folders of frames), seeded windows of --frames, diffusers'
spatio-temporal KL autoencoders through the adapter with the recipe in 5D (a PatchGAN on frames or a 3D one on
clips), decoder-only, evaluation over frames, and the bad inputs of clips, one line each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import quiet_config, refused_in_one_line
from vaefast.cli import main
from vaefast.data import load_dataset, make_loader
from vaefast.data.errors import DataError
from vaefast.data.sampling import FrameWindow, OneFrameBatches
from vaefast.train import Trainer

WAN = {"_class_name": "AutoencoderKLWan", "base_dim": 16, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1,
       "attn_scales": [], "temperal_downsample": [True], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}
VIDEO_CLASSES = {
    "AutoencoderKLWan": WAN,
    "AutoencoderKLLTXVideo": {"_class_name": "AutoencoderKLLTXVideo", "in_channels": 3, "out_channels": 3,
                              "latent_channels": 4, "block_out_channels": [8, 16],
                              "decoder_block_out_channels": [8, 16], "layers_per_block": [1, 1, 1],
                              "decoder_layers_per_block": [1, 1, 1], "spatio_temporal_scaling": [True, False],
                              "decoder_spatio_temporal_scaling": [True, False],
                              "decoder_inject_noise": [False, False, False], "upsample_residual": [False, False],
                              "upsample_factor": [1, 1], "patch_size": 1, "patch_size_t": 1},
    "AutoencoderKLCogVideoX": {"_class_name": "AutoencoderKLCogVideoX", "in_channels": 3, "out_channels": 3,
                               "down_block_types": ["CogVideoXDownBlock3D"] * 2,
                               "up_block_types": ["CogVideoXUpBlock3D"] * 2, "block_out_channels": [8, 16],
                               "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
                               "temporal_compression_ratio": 2},
}


def moving_shapes(n: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` clips ``[n, frames, size, size, 3]`` uint8: a coloured disc moving at a constant velocity over a plain
    background, wrapping at the edges."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, frames, size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        color, background = rng.integers(96, 256, 3), rng.integers(0, 64, 3)
        radius = int(rng.integers(3, 6))
        x0, y0 = rng.integers(0, size, 2)
        vx, vy = rng.integers(-2, 3, 2)
        for f in range(frames):
            mask = (xx - (x0 + vx * f) % size) ** 2 + (yy - (y0 + vy * f) % size) ** 2 <= radius ** 2
            clips[i, f] = background
            clips[i, f][mask] = color
    return clips


@pytest.fixture(scope="module")
def clips_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clips.npy"
    np.save(path, moving_shapes(24, 9, 32))
    return path


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """The same kind of clips as .mp4 files (H.264 through PyAV), and as folders of PNG frames."""
    av = pytest.importorskip("av")
    from PIL import Image

    root = tmp_path_factory.mktemp("videos")
    videos, frames = root / "mp4", root / "frames"
    videos.mkdir()
    frames.mkdir()
    for i, clip in enumerate(moving_shapes(6, 9, 32, seed=1)):
        with av.open(str(videos / f"clip{i}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0"}  # lossless, so that the decoded frames can be compared
            for frame in clip:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        (frames / f"clip{i}").mkdir()
        for f, frame in enumerate(clip):
            Image.fromarray(frame).save(frames / f"clip{i}" / f"{f:04d}.png")
    return root


# ------------------------------------------------------------------------------------------------ data


def test_clip_arrays_hold_windows_and_test_clips_start_at_the_first_frame(clips_npy):
    d = load_dataset(str(clips_npy), frames=5, frame_stride=2, test_fraction=0.25)
    raw = torch.from_numpy(np.load(clips_npy)).permute(0, 4, 1, 2, 3)
    assert d.image_shape == (3, 5, 32, 32) and d.train.shape[2] == 9  # training keeps the whole clip for windows
    assert any(torch.equal(d.test[0], clip[:, 0:9:2]) for clip in raw)


def test_frame_windows_are_seeded_resumed_and_the_same_in_memory_and_torch_loaders(clips_npy):
    d = load_dataset(str(clips_npy), frames=3, test_fraction=0.25)
    memory, _, _ = make_loader("memory", d, batch_size=4, device="cpu", seed=3)
    streaming, _, _ = make_loader("torch", d, batch_size=4, device="cpu", seed=3, num_workers=0)
    for epoch in range(2):
        memory.set_epoch(epoch)
        streaming.set_epoch(epoch)
        a, b = list(memory.batches()), list(streaming.batches())
        assert len(a) == len(b) == math.ceil(d.num_train / 4)
        assert all(x.shape[1:] == (3, 3, 32, 32) and torch.equal(x, y) for x, y in zip(a, b))
        assert all(torch.equal(x, y) for x, y in zip(a[2:], memory.batches(2), strict=True))
    full = d.train.float() / 255
    starts = set()
    for clip in torch.cat(a):  # each window is 3 consecutive frames of some training clip
        found = [(i, s) for i in range(len(full)) for s in range(7) if torch.equal(full[i, :, s:s + 3], clip)]
        assert found
        starts.add(found[0][1])
    assert len(starts) > 1  # random starts, not always the first frame
    window = FrameWindow(3, 2, seed=0)
    x = torch.arange(2 * 9).view(2, 1, 9, 1, 1).float()
    picked = window(x, 0, 0)
    assert all(torch.equal(p[0, :, 0, 0], p[0, 0, 0, 0] + torch.tensor([0.0, 2.0, 4.0])) for p in picked)


def test_dali_reads_clips_of_vp9_files_and_a_cpu_run_on_h264_falls_back_and_says_so(tmp_path, video_folder, caplog):
    """DALI's video reader on the CPU: VP9 files decode to the same frames as PyAV's, one window of --frames per
    span of each file; H.264 (which DALI's CPU reader leaves to NVDEC) falls back to PyAV with the reason logged."""
    av = pytest.importorskip("av")
    pytest.importorskip("nvidia.dali")
    from vaefast.data.video_dali import DALIClipLoader

    webm = tmp_path / "webm"
    webm.mkdir()
    for path in sorted((video_folder / "mp4").glob("*.mp4")):
        with av.open(str(path)) as source, av.open(str(webm / f"{path.stem}.webm"), "w") as container:
            stream = container.add_stream("libvpx-vp9", rate=8)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv444p"
            stream.options = {"lossless": "1"}
            for frame in source.decode(video=0):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"))):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    d = load_dataset(str(webm), frames=3, frame_stride=2, test_fraction=0.34)
    loader, kind, _ = make_loader("dali", d, batch_size=2, device="cpu", seed=1, num_workers=1)
    assert kind == "dali" and isinstance(loader, DALIClipLoader) and d.train is None  # nothing decoded up front
    assert len(loader) == 2  # 4 train clips of 9 frames, windows of span 5 at steps of 5: one each
    pyav = d.materialize().train.float() / 255  # [4, 3, 9, 32, 32]
    seen = []
    for loader_epoch in range(2):
        loader.set_epoch(loader_epoch)
        batches = list(loader.batches())
        assert [b.shape for b in batches] == [(2, 3, 3, 32, 32)] * 2
        for clip in torch.cat(batches):
            errors = [float((pyav[i, :, s:s + 5:2] - clip).abs().mean()) for i in range(4) for s in (0, 5)
                      if s + 5 <= 9]
            assert min(errors) < 2 / 255, min(errors)
            seen.append(int(np.argmin(errors)))
    assert sorted(set(seen)) == [0, 1, 2, 3]  # every training clip, in DALI's shuffled order
    config = tmp_path / "wan.json"
    config.write_text(json.dumps(WAN))
    assert main(["train", "--model", f"diffusers:{config}", "--data", str(webm), "--frames", "5", "--loader", "dali",
                 "--batch-size", "2", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress",
                 "--precision", "fp32", "--no-tensorboard"]) == 0
    from vaefast.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run")["step"] == 3  # a window of each of the 5 training clips, 2 a step
    h264 = load_dataset(str(video_folder / "mp4"), frames=3)
    with caplog.at_level("WARNING", logger="vaefast.data"):
        loader, kind, why = make_loader("dali", h264, batch_size=2, device="cpu")
    assert kind == "memory" and "h264 on a GPU only" in why and "PyAV" in why and why in caplog.text


def write_clip_shards(videos, out, per_shard: int = 2) -> list:
    """The .mp4 files of ``videos`` as WebDataset shards (video2dataset's layout: KEY.mp4 beside KEY.json)."""
    import io
    import tarfile

    files, shards = sorted(videos.glob("*.mp4")), []
    out.mkdir()
    for s in range(0, len(files), per_shard):
        shards.append(out / f"clips-{s // per_shard:04d}.tar")
        with tarfile.open(shards[-1], "w") as tar:
            for path in files[s:s + per_shard]:
                for name, payload in ((f"{path.stem}.mp4", path.read_bytes()), (f"{path.stem}.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return shards


def test_webdataset_shards_of_video_files_decode_to_the_folder_s_clips(tmp_path, video_folder, capsys):
    pytest.importorskip("av")
    shards = write_clip_shards(video_folder / "mp4", tmp_path / "shards")
    d = load_dataset(str(tmp_path / "shards"), frames=5)  # the last shard held out: 4 train clips, 2 test clips
    from vaefast.data.clips import clip_folder

    clips = clip_folder(video_folder / "mp4", frames=5)
    assert d.image_shape == (3, 5, 32, 32) and d.num_train == 4 and d.train is None  # decoded when a loader asks
    assert torch.equal(d.materialize().train, clips[:4])
    assert torch.equal(d.test, clips[4:, :, :5])
    loader, _, _ = make_loader("memory", d, batch_size=2, device="cpu", seed=1)
    assert all(x.shape[1:] == (3, 5, 32, 32) for x in loader.batches())
    payload = shards[1].read_bytes()
    shards[1].write_bytes(payload[:len(payload) // 2])  # cut inside a video member
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--data", tmp_path / "shards", "--frames", 5)
    assert "corrupt WebDataset shard" in line and "clips-0001.tar" in line
    video = (video_folder / "mp4" / "clip2.mp4").read_bytes()
    shards[1].write_bytes(payload.replace(video, bytes(len(video))))  # the tar is whole, a video inside it is not
    line = refused_in_one_line(capsys, tmp_path / "out2", "train", "--data", tmp_path / "shards", "--frames", 5)
    assert "cannot decode video" in line and "clips-0001.tar:clip" in line


def test_image_ratio_turns_a_seeded_share_of_batches_into_one_frame_clips_alike_on_every_rank():
    x = torch.arange(4 * 5).view(4, 1, 5, 1, 1).float().expand(4, 3, 5, 2, 2)
    ranks = [OneFrameBatches(0.3, seed=7, rank=r) for r in (0, 1)]
    kinds = [[t.is_images(epoch, b) for epoch in range(4) for b in range(100)] for t in ranks]
    assert kinds[0] == kinds[1]  # a step is of one kind on every rank
    share = sum(kinds[0]) / len(kinds[0])
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / len(kinds[0]))
    epoch, batch = next((e, b) for e in range(4) for b in range(100) if kinds[0][e * 100 + b])
    images = ranks[0](x, epoch, batch)
    assert images.shape == (4, 3, 1, 2, 2)
    assert all(float(img[0, 0, 0, 0]) in set(x[i, 0, :, 0, 0].tolist()) for i, img in enumerate(images))
    assert torch.equal(images, ranks[0](x, epoch, batch))  # drawn again alike on resume
    assert torch.equal(ranks[0](x, 0, next(b for b in range(100) if not kinds[0][b])), x)
    picks = [ranks[0](x, e, b)[:, 0, 0, 0, 0] for e in range(4) for b in range(100) if kinds[0][e * 100 + b]]
    assert len({float(p[0]) for p in picks}) > 1  # a random frame, not always the first


def test_video_files_and_frame_folders_decode_to_the_same_clips(video_folder):
    pytest.importorskip("av")
    from_videos = load_dataset(str(video_folder / "mp4"), frames=5, test_fraction=0.34)
    from_frames = load_dataset(str(video_folder / "frames"), frames=5, test_fraction=0.34)
    assert from_videos.image_shape == from_frames.image_shape == (3, 5, 32, 32)
    # H.264 at crf 0 in 4:4:4 is lossless in YUV; the RGB <-> YUV conversions leave a small rounding difference.
    from_videos.materialize(), from_frames.materialize()
    assert float((from_videos.train.float() - from_frames.train.float()).abs().mean()) < 2.0
    resized = load_dataset(str(video_folder / "frames"), frames=5, image_size=16, resize=24)
    assert resized.image_shape == (3, 5, 16, 16) and resized.materialize().train.shape[-2:] == (24, 24)
    loader, _, _ = make_loader("memory", resized, batch_size=2, device="cpu", crop="random")
    batch = next(iter(loader.batches()))
    assert batch.shape[1:] == (3, 5, 16, 16)


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("name", list(VIDEO_CLASSES))
@pytest.mark.parametrize("disc", ["patchgan", "patchgan3d"])
def test_video_classes_train_with_the_recipe_in_5d(tmp_path, clips_npy, name, disc):
    diffusers = pytest.importorskip("diffusers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(VIDEO_CLASSES[name]))
    cfg = quiet_config(tmp_path / "run", model=f"diffusers:{config}", data=str(clips_npy), frames=5, recipe="ldm",
                       perceptual="none", disc=disc, disc_layers=2, disc_start=1, batch_size=4, epochs=1,
                       max_steps=2)
    trainer = Trainer(cfg)
    vae = trainer.model.module.vae
    assert type(vae) is getattr(diffusers, name) and trainer.model.image_shape == (3, 5, 32, 32)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    summary = trainer.fit()
    assert summary.steps == 2 and summary.skipped_steps == 0
    assert summary.test_psnr > 0 and 0 < summary.test_ssim < 1 and summary.test_temporal > 0
    assert any(not torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    disc_params = [p.grad for p in trainer.recipe.disc.parameters()]
    assert isinstance(trainer.recipe.disc.main[0], torch.nn.Conv3d) == (disc == "patchgan3d")
    assert disc_params


def test_decoder_only_keeps_a_video_encoder_and_its_latents(tmp_path, clips_npy):
    pytest.importorskip("diffusers")
    config = tmp_path / "wan.json"
    config.write_text(json.dumps(WAN))
    cfg = quiet_config(tmp_path / "run", model=f"diffusers:{config}", data=str(clips_npy), frames=5, recipe="ldm",
                       perceptual="none", disc_start=1, disc_layers=2, batch_size=4, epochs=1, max_steps=2,
                       train="decoder")
    trainer = Trainer(cfg)
    vae = trainer.model.module.vae
    x = trainer.data.test[:2].float() / 255
    with torch.no_grad():
        before = vae.encode(x * 2 - 1).latent_dist.mean
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    trainer.fit()
    assert all(torch.equal(v, encoder[k]) for k, v in vae.encoder.state_dict().items())
    with torch.no_grad():
        assert torch.equal(vae.encode(x * 2 - 1).latent_dist.mean, before)


def test_cli_trains_resumes_exactly_and_evaluates_clips(tmp_path, clips_npy, capsys, random_vgg16,
                                                        random_inception):
    pytest.importorskip("diffusers")
    config = tmp_path / "wan.json"
    config.write_text(json.dumps(WAN))
    common = ["train", "--model", f"diffusers:{config}", "--data", str(clips_npy), "--frames", "5", "--recipe", "ldm",
              "--perceptual", "none", "--disc", "patchgan3d", "--disc-layers", "2", "--disc-start", "1",
              "--batch-size", "4", "--epochs", "1", "--no-progress", "--precision", "fp32", "--no-tensorboard"]
    assert main([*common, "--max-steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--max-steps", "2", "--out", str(tmp_path / "split")]) == 0
    assert main([*common, "--max-steps", "4", "--out", str(tmp_path / "split"), "--resume",
                 str(tmp_path / "split")]) == 0
    from vaefast.checkpoint import load_checkpoint

    straight, split = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert straight["step"] == split["step"] == 4
    for key in ("model", "recipe"):
        a, b = straight[key], split[key]
        tensors = [(k, a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor)] if key == "model" else \
            [(k, a["discriminator"][k], b["discriminator"][k]) for k in a["discriminator"]]
        assert all(torch.equal(x, y) for _, x, y in tensors), key
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "straight"), "--lpips-weights", str(random_vgg16[0]),
                 "--fid-weights", str(random_inception), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["psnr"] > 0 and 0 < report["ssim"] < 1 and report["temporal"] > 0
    assert 0 < report["lpips"] < 2 and np.isfinite(report["rfid"]) and report["rfid"] > 0  # over frames
    assert len(report["latent_channel_std"]) == 4
    assert main(["inspect", "--checkpoint", str(tmp_path / "straight"), "--out", str(tmp_path / "pictures")]) == 0
    from PIL import Image

    test_clips = len(load_dataset(str(clips_npy), frames=5).test)
    animation = Image.open(tmp_path / "pictures" / "clips.gif")
    assert animation.n_frames == 5 and animation.size == (2 * (2 * 34 + 2), 2 * (test_clips * 34 + 2))
    sheet = Image.open(tmp_path / "pictures" / "contact_sheet.png")
    assert sheet.size == (2 * (5 * 34 + 2), 2 * (2 * test_clips * 34 + 2) + 18)  # 5 frames wide, 2 rows a clip


def test_cli_trains_a_causal_model_on_clips_and_one_frame_clips_together(tmp_path, clips_npy, capsys):
    """--image-ratio: Wan trains on batches of 5-frame clips and of single frames in one run; the mixed run leaves
    other weights than the clips-only one, and its one-frame steps are of the recipe's 5D form (a 3D PatchGAN)."""
    pytest.importorskip("diffusers")
    config = tmp_path / "wan.json"
    config.write_text(json.dumps(WAN))
    common = ["train", "--model", f"diffusers:{config}", "--data", str(clips_npy), "--frames", "5", "--recipe", "ldm",
              "--perceptual", "none", "--disc", "patchgan3d", "--disc-layers", "2", "--disc-start", "1",
              "--batch-size", "4", "--epochs", "1", "--max-steps", "4", "--no-progress", "--precision", "fp32",
              "--no-tensorboard", "--json"]
    kinds = [OneFrameBatches(0.5, seed=0).is_images(0, b) for b in range(4)]
    assert any(kinds) and not all(kinds)  # the run below takes both kinds of step
    assert main([*common, "--image-ratio", "0.5", "--out", str(tmp_path / "mixed")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and np.isfinite(summary["test_temporal"])
    assert main([*common, "--out", str(tmp_path / "clips")]) == 0
    from vaefast.checkpoint import load_checkpoint

    mixed, clips = load_checkpoint(tmp_path / "mixed")["model"], load_checkpoint(tmp_path / "clips")["model"]
    assert any(not torch.equal(mixed[k], clips[k]) for k in mixed if isinstance(mixed[k], torch.Tensor))
    capsys.readouterr()
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--data", "embedded", "--image-ratio", 0.5)
    assert "--image-ratio" in line and "--frames" in line


def test_eval_tiles_long_clips_in_time_and_space_with_diffusers_own_tiling(tmp_path, clips_npy, capsys,
                                                                           monkeypatch):
    """eval --tile-frames / --tile-size: LTX-Video's temporal and spatial tiles are what encodes and decodes (the
    tiled paths run), and the tiled reconstruction stays near the untiled one (the tiles overlap and blend)."""
    diffusers = pytest.importorskip("diffusers")
    config = tmp_path / "ltx.json"
    config.write_text(json.dumps(VIDEO_CLASSES["AutoencoderKLLTXVideo"]))
    run = tmp_path / "run"
    assert main(["train", "--model", f"diffusers:{config}", "--data", str(clips_npy), "--frames", "9",
                 "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--out", str(run), "--no-progress",
                 "--precision", "fp32", "--no-tensorboard"]) == 0
    ltx = diffusers.AutoencoderKLLTXVideo
    calls = []
    for name in ("_temporal_tiled_encode", "_temporal_tiled_decode", "tiled_encode", "tiled_decode"):
        original = getattr(ltx, name)
        monkeypatch.setattr(ltx, name,
                            lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k))
    capsys.readouterr()
    reports = {}
    for label, extra in (("whole", []), ("tiled", ["--tile-frames", "4", "--tile-size", "16"])):
        calls.clear()
        assert main(["eval", "--checkpoint", str(run), "--json", *extra]) == 0
        reports[label] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        reports[label]["calls"] = set(calls)
    assert reports["whole"]["calls"] == set() and "tiling" not in reports["whole"]
    assert {"_temporal_tiled_encode", "_temporal_tiled_decode", "tiled_encode", "tiled_decode"} <= \
        reports["tiled"]["calls"]
    assert reports["tiled"]["tiling"] == "spatial tiles of 16 px and windows of 4 frames"
    assert abs(reports["tiled"]["psnr"] - reports["whole"]["psnr"]) < 3.0
    wan = tmp_path / "wan.json"
    wan.write_text(json.dumps(WAN))
    assert main(["train", "--model", f"diffusers:{wan}", "--data", str(clips_npy), "--frames", "5", "--batch-size",
                 "4", "--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "wan"), "--no-progress",
                 "--precision", "fp32", "--no-tensorboard"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "wan"), "--tile-frames", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AutoencoderKLWan tiles space only" in err[0]


# ------------------------------------------------------------------------------------------------ bad inputs


def test_a_frame_count_a_causal_model_drops_is_refused(tmp_path, clips_npy, capsys):
    pytest.importorskip("diffusers")
    config = tmp_path / "wan.json"
    config.write_text(json.dumps(WAN))
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--model", f"diffusers:{config}", "--data", clips_npy,
                    "--frames", 4)
    assert "gives back 1 frames for a clip of 4" in line and "1 + 4k" in line


def test_clips_shorter_than_the_window_are_refused(tmp_path, clips_npy, capsys, video_folder):
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--model", "conv", "--data", clips_npy, "--frames", 5,
                    "--frame-stride", 3)
    assert str(clips_npy) in line and "shorter than --frames 5" in line
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--data", video_folder / "mp4", "--frames", 12)
    assert "clip" in line and ".mp4 has 9 frames, fewer than --frames 12" in line


def test_frames_of_mixed_sizes_and_unreadable_videos_are_refused(tmp_path, capsys, video_folder):
    import shutil

    from PIL import Image

    mixed = tmp_path / "mixed"
    shutil.copytree(video_folder / "frames", mixed)
    Image.new("RGB", (40, 32)).save(mixed / "clip0" / "0003.png")
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--data", mixed, "--frames", 3)
    assert "clip0 has frames of mixed sizes" in line and "--image-size" in line
    broken = tmp_path / "broken"
    shutil.copytree(video_folder / "mp4", broken)
    (broken / "clip2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--data", broken, "--frames", 3)
    assert "cannot decode video" in line and "clip2.mp4" in line
    with pytest.raises(DataError, match="--frames takes a window of clips"):
        load_dataset(None, frames=3)


@pytest.mark.parametrize("name", ["AutoencoderKLWan", "AutoencoderKLLTXVideo"])
def test_activation_checkpointing_of_video_models_keeps_their_gradients(tmp_path, name):
    """LTX-Video checkpoints diffusers' blocks; Wan has no block checkpointing in diffusers, so vaefast recomputes its
    whole encoder and decoder (its feature caches are rebuilt in the recomputation). Same gradients either way."""
    pytest.importorskip("diffusers")
    from vaefast.config import ModelConfig
    from vaefast.models import build_model

    config = tmp_path / "config.json"
    config.write_text(json.dumps(VIDEO_CLASSES[name]))
    x = torch.from_numpy(moving_shapes(2, 5, 32)).permute(0, 4, 1, 2, 3).float() / 255

    def gradients(checkpointed: bool):
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=f"diffusers:{config}", likelihood="laplace"), (3, 5, 32, 32))
        if checkpointed:
            model.enable_activation_checkpointing()
        eps = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
        out = model(x, eps=eps)
        (model.nll(out.decoded, x).sum() + out.kl.sum()).backward()
        return model, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, reference = gradients(False)
    model, checkpointed = gradients(True)
    assert model.checkpointed == (name == "AutoencoderKLWan")  # vaefast's fallback, or diffusers' own blocks
    assert reference.keys() == checkpointed.keys() and len(reference) > 10
    for key in reference:
        torch.testing.assert_close(checkpointed[key], reference[key], rtol=1e-4, atol=1e-6)


def test_cli_trains_ltx_video_on_a_folder_of_video_files(tmp_path, video_folder, capsys):
    """The second class through the CLI, on clips written as .mp4 files: trained with the recipe, evaluated."""
    pytest.importorskip("diffusers")
    config = tmp_path / "ltx.json"
    config.write_text(json.dumps(VIDEO_CLASSES["AutoencoderKLLTXVideo"]))
    run = tmp_path / "run"
    assert main(["train", "--model", f"diffusers:{config}", "--data", str(video_folder / "mp4"), "--frames", "5",
                 "--recipe", "ldm", "--perceptual", "none", "--disc-layers", "2", "--disc-start", "1",
                 "--batch-size", "2", "--epochs", "1", "--max-steps", "2", "--out", str(run), "--no-progress",
                 "--precision", "fp32", "--no-tensorboard", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["test_temporal"] > 0
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["psnr"] > 0 and report["temporal"] > 0
