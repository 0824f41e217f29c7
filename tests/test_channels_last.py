"""channels_last: the same values and gradients as the default layout, for vaefast's conv VAE and a diffusers
AutoencoderKL, with NHWC weights, and the fused latent op reading NHWC moments; and a run trains with it."""

import torch

from vaefast.models import ModelConfig, build_model
from vaefast.train import Trainer

from conftest import quiet_config, tiny_diffusers_vae
from numerics import assert_reordered_close, mutation_is_caught, reduction_lengths


def _loss_and_grads(model, x, eps, backend):
    model.backend = backend
    model.zero_grad()
    out = model(x, eps)
    loss = model.nll(out.decoded, x).sum() + out.kl.sum()
    loss.backward()
    return loss.detach(), out.kl_per_dim.detach(), [p.grad.clone() for p in model.parameters()]


def _same_as_default_layout(model, x, eps):
    for backend in ("torch", "native"):
        plain = _loss_and_grads(model, x, eps, backend)
        model.use_channels_last()
        nhwc = _loss_and_grads(model, x, eps, backend)
        model.memory_format = torch.contiguous_format
        model.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(nhwc[0], plain[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(nhwc[1], plain[1], rtol=1e-5, atol=1e-5)
        # The layouts sum in different orders: the rounding-error bound of the chain (numerics.py), over all the
        # gradients at once since some are zero in exact arithmetic (attention's key bias: softmax ignores a shift
        # shared by all keys) and only rounding noise in either layout.
        got, expected = torch.cat([g.flatten() for g in nhwc[2]]), torch.cat([g.flatten() for g in plain[2]])
        lengths = reduction_lengths(model) + [x.numel()]
        assert_reordered_close(got, expected, lengths, f"{backend} gradients")
        assert mutation_is_caught(lambda a, b: assert_reordered_close(a, b, lengths, "mutated"), got, expected)


def test_conv_vae_channels_last_matches():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="conv", channels=[16, 32], latent_channels=4), (3, 32, 32))
    model.use_channels_last()
    assert model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.memory_format = torch.contiguous_format
    model.to(memory_format=torch.contiguous_format)
    _same_as_default_layout(model, torch.rand(8, 3, 32, 32), torch.randn(8, 4, 8, 8))


def test_diffusers_channels_last_matches():
    from vaefast.models.likelihoods import Gaussian

    _, model = tiny_diffusers_vae(3, Gaussian(0.1), 16)
    _same_as_default_layout(model, torch.rand(4, 3, 16, 16), torch.randn(4, 4, 8, 8))


def test_a_run_with_channels_last_trains(tmp_path, tiny_data):
    cfg = quiet_config(tmp_path, epochs=1, max_steps=4, channels_last=True,
                       model=ModelConfig(kind="conv", channels=[16, 32], latent_channels=4))
    trainer = Trainer(cfg, tiny_data)
    summary = trainer.fit()
    assert summary.steps == 4 and summary.skipped_steps == 0
    assert trainer.model.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
