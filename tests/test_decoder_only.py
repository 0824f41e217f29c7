"""``--train decoder`` (what trains, what a checkpoint and DDP hold), diffusers' other KL autoencoder classes through
the one adapter with the LDM recipe, and the bad inputs of fine-tuning, each refused in one line with nothing
written."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from conftest import quiet_config, refused_in_one_line
from vaefast.checkpoint import load_checkpoint
from vaefast.train import Trainer

OTHER_CLASSES = {
    "AutoencoderKLFlux2": {"block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
                           "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "latent_channels": 8,
                           "norm_num_groups": 8},
    "AutoencoderKLQwenImage": {"base_dim": 16, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1,
                               "temperal_downsample": [False], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
    "AutoencoderKLHunyuanImage": {"in_channels": 3, "out_channels": 3, "latent_channels": 8,
                                  "block_out_channels": [32, 64], "layers_per_block": 1,
                                  "spatial_compression_ratio": 2, "sample_size": 32},
}


@pytest.fixture(scope="module")
def rgb_data():
    from conftest import photo_crops
    from vaefast.data import ImageDataset

    images = torch.from_numpy(photo_crops(40, 32)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset("crops", images[:32], images[32:])


def test_decoder_only_trains_the_decoder_and_checkpoints_only_it(tmp_path, tiny_data):
    cfg = quiet_config(tmp_path / "run", model="conv", latent_channels=4, epochs=1, max_steps=3, train="decoder",
                       ema=0.9)
    trainer = Trainer(cfg, tiny_data)
    model = trainer.model
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert stepped == {id(p) for p in model.decoder.parameters()} | {id(p) for p in model.likelihood.parameters()}
    assert float(trainer.kl_schedule.value()) == 0.0  # the KL reaches nothing that trains
    trainer.fit()
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(v, decoder_before[k]) for k, v in model.decoder.state_dict().items())
    state = load_checkpoint(tmp_path / "run")
    for held in (state["model"], state["ema"]["shadow"]):
        assert held and not any(k.startswith("encoder.") for k in held)
    model.train()
    assert not any(m.training for m in model.encoder.modules()) and model.decoder.training

    from vaefast.eval.report import load_model

    evaluated, _ = load_model(tmp_path / "run")  # eval and export rebuild the frozen encoder the run started from
    assert all(torch.equal(v, encoder_before[k]) for k, v in evaluated.encoder.state_dict().items())
    resumed = Trainer(quiet_config(tmp_path / "run", model="conv", latent_channels=4, epochs=1, max_steps=4,
                                   train="decoder", ema=0.9, resume=str(tmp_path / "run")), tiny_data)
    assert resumed.step == 3
    assert all(torch.equal(v, encoder_before[k]) for k, v in resumed.model.encoder.state_dict().items())


def test_ddp_reduces_only_what_trains(tmp_path, tiny_data):
    """DDP registers only parameters that take gradients: its buckets hold the decoder's bytes alone."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = quiet_config(tmp_path / "run", model="conv", latent_channels=4, train="decoder")
    model = Trainer(cfg, tiny_data).model
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        logged = DDP(model)._get_ddp_logging_data()
    finally:
        dist.destroy_process_group()
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert 0 < trained < sum(p.numel() * p.element_size() for p in model.parameters())
    assert logged["total_parameter_size_bytes"] == trained


@pytest.mark.parametrize("name", list(OTHER_CLASSES))
@pytest.mark.parametrize("train", ["all", "decoder"])
def test_other_diffusers_classes_train_through_the_adapter_with_the_recipe(tmp_path, rgb_data, name, train,
                                                                           random_inception):
    diffusers = pytest.importorskip("diffusers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": name, **OTHER_CLASSES[name]}))
    fid = {"fid_weights": str(random_inception)} if (name, train) == ("AutoencoderKLFlux2", "all") else {}
    cfg = quiet_config(tmp_path / "run", model=f"diffusers:{config}", recipe="ldm", perceptual="none",
                       disc_start=1, disc_layers=2, batch_size=8, epochs=1, max_steps=3, train=train, **fid)
    trainer = Trainer(cfg, rgb_data)
    vae = trainer.model.module.vae
    assert type(vae) is getattr(diffusers, name)
    assert trainer.recipe.last_layer is vae.decoder.conv_out.weight  # LDM's get_last_layer()
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    summary = trainer.fit()
    assert summary.steps == 3 and summary.skipped_steps == 0 and summary.test_psnr > 0
    assert (summary.test_rfid is not None) == bool(fid)  # each evaluation's rFID, where the weights are given
    assert any(not torch.equal(v, decoder_before[k]) for k, v in vae.decoder.state_dict().items())
    encoder_same = all(torch.equal(v, encoder_before[k]) for k, v in vae.encoder.state_dict().items())
    assert encoder_same == (train == "decoder")
    x = rgb_data.test[:2].float() / 255
    with torch.no_grad():  # the fused op between the class's own _encode and _decode: its posterior mean
        trainer.model.eval()
        mu, _ = trainer.model.encode(x)
        frames = x.unsqueeze(2) if trainer.model.module.frames else x
        expected = vae.encode(frames * 2 - 1).latent_dist.mean
    torch.testing.assert_close(mu, expected.squeeze(2) if trainer.model.module.frames else expected)


# ------------------------------------------------------------------------------------------------ bad inputs


def test_a_single_file_of_something_else_is_refused(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3)}
    path = tmp_path / "unet.safetensors"
    save_file(unet, str(path))
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--model", f"diffusers:{path}")
    assert str(path) in line and "not an autoencoder" in line


def test_a_truncated_safetensors_file_is_refused(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(16, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 16, 3, 3)},
              str(path))
    path.write_bytes(path.read_bytes()[:200])
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--model", f"diffusers:{path}")
    assert str(path) in line and "cannot read the weights" in line


@pytest.mark.parametrize("config", [
    {"_class_name": "AutoencoderTiny", "encoder_block_out_channels": [8, 8], "decoder_block_out_channels": [8, 8],
     "num_encoder_blocks": [1, 1], "num_decoder_blocks": [1, 1]},
    {"_class_name": "AutoencoderDC", "latent_channels": 4, "attention_head_dim": 8, "encoder_block_types": "ResBlock",
     "decoder_block_types": "ResBlock", "encoder_block_out_channels": [8, 16], "decoder_block_out_channels": [8, 16],
     "encoder_layers_per_block": [1, 1], "decoder_layers_per_block": [1, 1], "encoder_qkv_multiscales": [[], []],
     "decoder_qkv_multiscales": [[], []], "decoder_norm_types": "batch_norm"},
], ids=["AutoencoderTiny", "AutoencoderDC"])
def test_a_class_without_a_gaussian_posterior_is_refused(tmp_path, capsys, config):
    pytest.importorskip("diffusers")
    from conftest import photo_crops

    data = tmp_path / "crops.npy"
    import numpy as np

    np.save(data, photo_crops(8, 32))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--model", f"diffusers:{path}", "--data", data)
    assert config["_class_name"] in line and "Gaussian posterior" in line and str(path) in line


def test_inception_weights_of_the_wrong_shapes_are_refused(tmp_path, capsys):
    from vaefast.eval.fid import FIDInceptionV3

    state = FIDInceptionV3().state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's ImageNet classifier, not FID's 1008 classes
    path = tmp_path / "pt_inception-wrong.pth"
    torch.save(state, path)
    line = refused_in_one_line(capsys, tmp_path / "out", "train", "--recipe", "ldm", "--perceptual", "none",
                    "--fid-weights", path)
    assert str(path) in line and "fc.weight" in line and "(1000, 2048)" in line
    with pytest.raises(ValueError, match="not the FID Inception weights"):
        FIDInceptionV3.from_file(path)


def test_decoder_only_on_a_model_without_a_decoder_is_refused(tmp_path, tiny_data):
    class EncodeDecode(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Conv2d(1, 8, 4, 4), nn.ConvTranspose2d(4, 1, 4, 4)

        def encode(self, x):
            return self.enc(x)

        def decode(self, z):
            return self.dec(z)

    cfg = quiet_config(tmp_path / "out", train="decoder")
    with pytest.raises(ValueError, match="EncodeDecode has no decoder"):
        Trainer(cfg, tiny_data, model=EncodeDecode())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(OTHER_CLASSES))
def test_other_classes_export_to_their_own_class_with_measured_statistics(tmp_path, rgb_data, name):
    """Export writes a folder the class's own from_pretrained loads; the latent statistics are measured in the form
    the class keeps them (per-channel lists for Qwen-Image, a scaling factor for the others)."""
    diffusers = pytest.importorskip("diffusers")
    import numpy as np

    from vaefast.eval.latents import measure_latents
    from vaefast.eval.report import export_checkpoint, load_model

    data = tmp_path / "crops.npy"
    np.save(data, rgb_data.train.permute(0, 2, 3, 1).numpy())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": name, **OTHER_CLASSES[name]}))
    cfg = quiet_config(tmp_path / "run", model=f"diffusers:{config}", data=str(data), batch_size=8, epochs=1,
                       max_steps=2, likelihood="laplace")
    Trainer(cfg).fit()
    path, note = export_checkpoint(tmp_path / "run", tmp_path / "exported", stats_images=16)
    assert "measured over 16 training images" in note
    exported = getattr(diffusers, name).from_pretrained(str(path), local_files_only=True)
    model, _ = load_model(tmp_path / "run")
    from vaefast.data import load_dataset

    stats = measure_latents(model, load_dataset(str(data)).first_train_images(16))
    if name == "AutoencoderKLQwenImage":
        assert exported.config.latents_std == pytest.approx(stats.channel_std, abs=1e-6)
        assert exported.config.latents_mean == pytest.approx(stats.channel_mean, abs=1e-6)
    elif name == "AutoencoderKLFlux2":  # its pipeline's normalization: bn over 2x2-patchified posterior means
        means = measure_latents(model, load_dataset(str(data)).first_train_images(16), sample=False, patch=(2, 2))
        torch.testing.assert_close(exported.bn.running_mean, torch.tensor(means.channel_mean, dtype=torch.float32))
        torch.testing.assert_close(exported.bn.running_var,
                                   torch.tensor(means.channel_std, dtype=torch.float32).square())
        assert len(means.channel_mean) == 4 * OTHER_CLASSES[name]["latent_channels"]
    else:
        assert exported.config.scaling_factor == pytest.approx(1 / stats.std, abs=1e-6)
    reference = model.module.vae.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in exported.state_dict().items() if not k.startswith("bn."))
