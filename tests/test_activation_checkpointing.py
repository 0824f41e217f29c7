"""Activation checkpointing: the same gradients, a fraction of the saved activations, and training runs with it."""

import torch

from vaefast.models import ModelConfig, build_model
from vaefast.train import Trainer

from conftest import quiet_config, tiny_diffusers_vae


def _grads_and_saved_bytes(model, x, eps):
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, eps)
        loss = model.nll(out.decoded, x).sum() + out.kl.sum()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()], sum(saved.values())


def _same_gradients_less_memory(model, x, eps):
    plain, plain_bytes = _grads_and_saved_bytes(model, x, eps)
    model.enable_activation_checkpointing()
    checkpointed, checkpointed_bytes = _grads_and_saved_bytes(model, x, eps)
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return plain_bytes, checkpointed_bytes


def test_conv_vae_checkpointing_keeps_gradients_and_saves_less():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="conv", channels=[16, 32], latent_channels=4), (1, 28, 28))
    x = torch.rand(8, 1, 28, 28)
    eps = torch.randn(8, 4, 7, 7)
    plain_bytes, checkpointed_bytes = _same_gradients_less_memory(model, x, eps)
    assert checkpointed_bytes <= 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)


def test_diffusers_models_use_their_own_block_checkpointing():
    from vaefast.models.likelihoods import Laplace

    vae, model = tiny_diffusers_vae(1, Laplace(), 28)
    x = torch.rand(4, 1, 28, 28)
    plain_bytes, checkpointed_bytes = _same_gradients_less_memory(model, x, torch.randn(4, 4, 14, 14))
    assert vae.encoder.gradient_checkpointing and vae.decoder.gradient_checkpointing and not model.checkpointed
    assert checkpointed_bytes < plain_bytes


def test_training_with_activation_checkpointing_matches_training_without(tmp_path, tiny_data):
    runs = {}
    for flag in (False, True):
        cfg = quiet_config(tmp_path / str(flag), epochs=1, max_steps=4, precision="fp32",
                           activation_checkpointing=flag)
        cfg.model.kind, cfg.model.channels, cfg.model.latent_channels = "conv", [16, 32], 4
        trainer = Trainer(cfg, tiny_data)
        trainer.fit()
        runs[flag] = [p.detach().clone() for p in trainer.model.parameters()]
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
