"""Any module with encode(x) and decode(z) trains: packed moments or a (mu, logvar) pair, flat or spatial latents."""

import pytest
import torch
from torch import nn

from vaefast.checkpoint import load_checkpoint
from vaefast.ops.reference import reparameterize_kl_reference
from vaefast.train import Trainer

from conftest import quiet_config


class PackedConvAE(nn.Module):
    """Latent-Diffusion style: encode returns [B, 2C, h, w] moments, a spatial latent of C=4 channels at 7x7."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(32, 8, 1))
        self.dec = nn.Sequential(nn.Conv2d(4, 32, 1), nn.SiLU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(16, 1, 4, 2, 1))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)


class PairMLP(nn.Module):
    """encode returns a (mu, logvar) pair of flat latents."""

    def __init__(self, latent=6):
        super().__init__()
        self.body, self.mu, self.logvar = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU()), \
            nn.Linear(64, latent), nn.Linear(64, latent)
        self.dec = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, 784), nn.Unflatten(1, (1, 28, 28)))

    def encode(self, x):
        h = self.body(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.dec(z)


def _cfg(tmp_path, name, **kw):
    return quiet_config(tmp_path / name, precision="fp32", **kw)


@pytest.mark.parametrize("module_cls, latent_shape", [(PackedConvAE, (4, 7, 7)), (PairMLP, (6,))])
def test_a_hand_written_module_trains_with_the_fused_latent_op(tmp_path, tiny_data, module_cls, latent_shape):
    torch.manual_seed(0)
    trainer = Trainer(_cfg(tmp_path, module_cls.__name__), tiny_data, model=module_cls())
    assert trainer.model.latent_shape == latent_shape
    before = trainer.evaluate()["neg_elbo_nats"]
    summary = trainer.fit()
    assert summary.skipped_steps == 0 and summary.steps == 16
    assert 50 < summary.peak_memory_mb < 24 * 1024  # peak RSS of this process, in MiB
    assert summary.test_neg_elbo_nats < 0.95 * before, (before, summary.test_neg_elbo_nats)  # it learns

    # What the trainer computes between encode and decode is the reference reparameterization and KL.
    x = tiny_data.test[:8].float() / 255
    eps = torch.randn(8, *latent_shape)
    with torch.no_grad():
        out = trainer.model(x, eps)
        moments = trainer.model.module.encode(x)
        mu, logvar = moments if isinstance(moments, tuple) else moments.chunk(2, dim=1)
        z_ref, kl_ref = reparameterize_kl_reference(mu, logvar, eps, -10.0, 10.0)
        torch.testing.assert_close(out.z, z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.kl, kl_ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out.decoded, trainer.model.module.decode(out.z))


def test_a_module_resumes_bit_exactly(tmp_path, tiny_data):
    torch.manual_seed(1)
    init = PackedConvAE().state_dict()

    def module():
        m = PackedConvAE()
        m.load_state_dict(init)
        return m

    full = Trainer(_cfg(tmp_path, "full"), tiny_data, model=module())
    full.fit()
    part = Trainer(_cfg(tmp_path, "part", max_steps=11), tiny_data, model=module())
    part.fit()
    latest = part.checkpointer.latest()
    assert load_checkpoint(latest)["architecture"] == "PackedConvAE"
    resumed = Trainer(_cfg(tmp_path, "resumed", resume=str(latest)), tiny_data, model=module())
    resumed.fit()
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)


def test_modules_that_break_the_protocol_are_named(tiny_data, tmp_path):
    class NoDecode(nn.Module):
        def encode(self, x):
            return x

    with pytest.raises(TypeError, match="NoDecode has no decode"):
        Trainer(_cfg(tmp_path, "a"), tiny_data, model=NoDecode())

    class OddMoments(PackedConvAE):
        def encode(self, x):
            return self.enc(x)[:, :7]

    with pytest.raises(ValueError, match=r"OddMoments.encode must return packed moments.*\(1, 7, 7, 7\)"):
        Trainer(_cfg(tmp_path, "b"), tiny_data, model=OddMoments())
