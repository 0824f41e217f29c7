"""The Latent-Diffusion recipe's drop-in loss leaves exactly the gradients of LDM's own flow, written out here from
its formulas (ldm/modules/losses/contperceptual.py as Lightning runs it), for both networks, before and after
disc_start, hinge and vanilla, float64 and float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaefast.models.ldm_loss import LPIPSWithDiscriminator
from vaefast.models.recipe_parts import frozen
from vaefast.models.lpips import LPIPS, LPIPSWeightsError
from vaefast.models.patchgan import PatchGAN


class TinyAutoencoder(nn.Module):
    """Packed moments, the reparameterization with a given eps, the per-image (or per-clip, with Conv3d) KL, a
    decoder with a last convolution."""

    def __init__(self, conv=nn.Conv2d):
        super().__init__()
        self.encoder = nn.Sequential(conv(3, 8, 3, padding=1), nn.SiLU(), conv(8, 8, 3, padding=1))
        self.decoder = nn.Sequential(conv(4, 8, 3, padding=1), nn.SiLU())
        self.conv_out = conv(8, 3, 3, padding=1)

    def forward(self, x, eps):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)
        return self.conv_out(self.decoder(z)), kl


def _lpips(dtype):
    torch.manual_seed(3)
    model = LPIPS()  # a random VGG16 trunk (no ImageNet weights here) and the shipped linear layers
    model.load_linear()
    return model.to(dtype)


def _setup(dtype, perceptual_weight=1.0, disc_loss="hinge", disc_start=3, pixel_loss="l1", learn_logvar=True):
    torch.manual_seed(0)
    ae = TinyAutoencoder().to(dtype)
    crit = LPIPSWithDiscriminator(_lpips(dtype) if perceptual_weight else None, PatchGAN(3, ndf=8, layers=2),
                                  kl_weight=1e-2, perceptual_weight=perceptual_weight, disc_weight=0.5,
                                  disc_start=disc_start, disc_loss=disc_loss, logvar_init=0.1,
                                  pixel_loss=pixel_loss, learn_logvar=learn_logvar).to(dtype)
    x = torch.rand(4, 3, 32, 32, dtype=dtype) * 2 - 1
    eps = torch.randn(4, 4, 32, 32, dtype=dtype)
    return ae, crit, x, eps


def ldm_generator_loss(ae, crit, nll_loss, kl_loss, g_loss, step):
    """LDM's generator loss from its terms, the adaptive weight by two autograd.grad to the last layer: (loss, the
    discriminator factor at ``step``)."""
    last = ae.conv_out.weight
    nll_grads = torch.autograd.grad(nll_loss, last, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach()
    d_weight = d_weight * crit.disc_weight
    disc_factor = crit.disc_factor if step >= crit.disc_start else 0.0
    return nll_loss + crit.kl_weight * kl_loss + d_weight * disc_factor * g_loss, disc_factor


def ldm_generator_step(ae, crit, x, eps, step):
    """LDM's optimizer-0 pass: forward, the loss with two autograd.grad for d_w, then loss.backward() with the
    discriminator toggled off (Lightning's toggle_optimizer). With ``pixel_loss="mse"`` the squared difference, as
    generative-models' GeneralLPIPSWithDiscriminator takes it for ``pixel_loss: l2``."""
    recon, kl = ae(x, eps)
    rec = (x - recon).abs() if crit.pixel_loss == "l1" else (x - recon) ** 2
    if crit.perceptual_weight > 0:
        rec = rec + crit.perceptual_weight * crit.perceptual(x.contiguous(), recon.contiguous())
    nll = rec / torch.exp(crit.logvar) + crit.logvar
    nll_loss = nll.sum() / nll.shape[0]
    kl_loss = kl.sum() / kl.shape[0]
    with frozen(crit.discriminator):
        logits_fake = crit.discriminator(recon.contiguous())
        g_loss = -torch.mean(logits_fake)
        loss, disc_factor = ldm_generator_loss(ae, crit, nll_loss, kl_loss, g_loss, step)
        loss.backward()
    return loss.detach()


def ldm_discriminator_step(ae, crit, x, eps, step, disc_loss):
    with torch.no_grad():
        recon, _ = ae(x, eps)
    logits_real = crit.discriminator(x.contiguous().detach())
    logits_fake = crit.discriminator(recon.contiguous().detach())
    disc_factor = crit.disc_factor if step >= crit.disc_start else 0.0
    if disc_loss == "hinge":
        d_loss = 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))
    else:
        d_loss = 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))
    (disc_factor * d_loss).backward()


def _grads(module):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


def _assert_same(a, b, rtol, what):
    for name in a:
        scale = a[name].abs().max().clamp_min(1e-30)
        err = (a[name] - b[name]).abs().max() / scale
        assert err <= rtol, f"{what} {name}: relative difference {float(err):.2e}"


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("disc_loss", ["hinge", "vanilla"])
@pytest.mark.parametrize("step", [1, 5], ids=["before disc_start", "after disc_start"])
def test_gradients_equal_the_ldm_flow(dtype, rtol, disc_loss, step):
    ae, crit, x, eps = _setup(dtype, disc_loss=disc_loss)
    ae_ref, crit_ref = copy.deepcopy(ae), copy.deepcopy(crit)

    recon, kl = ae(x, eps)
    logs = crit.backward_generator(x, recon, kl, last_layer=ae.conv_out.weight, step=step)
    assert all(p.grad is None for p in crit.discriminator.parameters())  # frozen for the generator pass
    crit.backward_discriminator(x, recon, step=step)

    loss = ldm_generator_step(ae_ref, crit_ref, x, eps, step)
    crit_ref.discriminator.zero_grad(set_to_none=True)
    ldm_discriminator_step(ae_ref, crit_ref, x, eps, step, disc_loss)

    torch.testing.assert_close(logs["total"], loss, rtol=rtol, atol=0)
    _assert_same(_grads(ae_ref), _grads(ae), rtol, "autoencoder")
    torch.testing.assert_close(crit.logvar.grad, crit_ref.logvar.grad, rtol=rtol, atol=0)
    _assert_same(_grads(crit_ref.discriminator), _grads(crit.discriminator), rtol, "discriminator")
    if step >= crit.disc_start:
        assert logs["d_weight"] > 0 and any(p.grad.abs().sum() > 0 for p in crit.discriminator.parameters())
    else:  # skipped entirely before disc_start: no discriminator work at all
        assert float(logs["d_weight"]) == 0 and all(p.grad is None for p in crit.discriminator.parameters())


def test_a_device_step_reads_nothing_and_matches_the_int_step():
    ae, crit, x, eps = _setup(torch.float64)
    ae2, crit2 = copy.deepcopy(ae), copy.deepcopy(crit)
    for step in (1, 5):
        for model, loss, s in ((ae, crit, step), (ae2, crit2, torch.tensor(step))):
            model.zero_grad(set_to_none=True)
            loss.zero_grad(set_to_none=True)
            recon, kl = model(x, eps)
            loss.backward_generator(x, recon, kl, last_layer=model.conv_out.weight, step=s)
            loss.backward_discriminator(x, recon, step=s)
        _assert_same(_grads(ae), _grads(ae2), 1e-12, f"step {step} autoencoder")
        _assert_same(_grads(crit.discriminator), _grads(crit2.discriminator), 1e-12, f"step {step} discriminator")


def test_lpips_contributes_gradient():
    with_lpips, without = _setup(torch.float64), _setup(torch.float64, perceptual_weight=0.0)
    grads = []
    for ae, crit, x, eps in (with_lpips, without):
        recon, kl = ae(x, eps)
        logs = crit.backward_generator(x, recon, kl, last_layer=ae.conv_out.weight, step=5)
        grads.append(ae.conv_out.weight.grad)
    assert float(logs["lpips"]) == 0 and float(with_lpips[1].perceptual(with_lpips[2], with_lpips[2]).sum()) == 0
    assert (grads[0] - grads[1]).abs().max() > 1e-3 * grads[1].abs().max()


def test_the_discriminator_learns_only_in_its_own_step():
    ae, crit, x, eps = _setup(torch.float32)
    opt_d = torch.optim.Adam(crit.discriminator.parameters(), lr=1e-2, betas=(0.5, 0.9))
    before = copy.deepcopy(crit.discriminator.state_dict())
    recon, kl = ae(x, eps)
    crit.backward_generator(x, recon, kl, last_layer=ae.conv_out.weight, step=5)
    opt_d.step()  # no discriminator gradient: nothing moves
    params = dict(crit.discriminator.named_parameters())  # (BatchNorm's running statistics do move: train mode)
    assert all(torch.equal(before[k], v) for k, v in params.items())
    crit.backward_discriminator(x, recon, step=5)
    opt_d.step()
    moved = [k for k, v in crit.discriminator.state_dict().items() if "weight" in k and not torch.equal(before[k], v)]
    assert len(moved) == sum(1 for k in before if k.endswith("weight"))


def test_patchgan_layout_and_init():
    torch.manual_seed(0)
    d = PatchGAN(3, ndf=64, layers=3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs] == [
        (3, 64, 2, True), (64, 128, 2, False), (128, 256, 2, False), (256, 512, 1, False), (512, 1, 1, True)]
    assert d(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # pix2pix's 70x70 receptive field map
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.001
    scales = torch.cat([m.weight.detach() for m in d.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(scales.mean()) - 1.0) < 0.005 and 0.01 < float(scales.std()) < 0.03
    assert list(d.state_dict())[:2] == ["main.0.weight", "main.0.bias"]  # taming's keys


def test_missing_or_wrong_vgg_weights_are_one_clear_error(tmp_path):
    with pytest.raises(LPIPSWeightsError, match=r"not found at .*nothere\.pth: pass --lpips-weights PATH .*"
                                                r"--perceptual-weight 0"):
        LPIPS.from_files(tmp_path / "nothere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(LPIPSWeightsError, match="junk.pth: not a readable weights file"):
        LPIPS.from_files(tmp_path / "junk.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(LPIPSWeightsError, match="wrong.pth: not the weights LPIPS-VGG16 needs; missing: features.0"):
        LPIPS.from_files(tmp_path / "wrong.pth")


def test_vgg_weights_in_torchvision_format_load(tmp_path):
    source = LPIPS()
    torch.manual_seed(1)
    state = {f"features.{k}": torch.randn_like(v) for k, v in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's file also holds the classifier: ignored
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    loaded = LPIPS.from_files(tmp_path / "vgg16-397923af.pth")
    assert torch.equal(loaded.features[28].weight, state["features.28.weight"])
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loaded(x, x).abs().max()) == 0 and loaded(x, x.flip(-1)).shape == (2, 1, 1, 1)


@pytest.mark.parametrize("pixel_loss", ["l1", "mse"])
@pytest.mark.parametrize("learn_logvar", [True, False], ids=["learned logvar", "fixed logvar"])
def test_the_fine_tuning_losses_equal_their_flow(pixel_loss, learn_logvar):
    """--pixel-loss and --learn-logvar: LDM's flow with generative-models' choices (L1 or L2, the logvar learned or
    kept at logvar_init) gives the same gradients; a fixed logvar takes none and keeps its value."""
    ae, crit, x, eps = _setup(torch.float64, pixel_loss=pixel_loss, learn_logvar=learn_logvar)
    ae_ref, crit_ref = copy.deepcopy(ae), copy.deepcopy(crit)
    recon, kl = ae(x, eps)
    logs = crit.backward_generator(x, recon, kl, last_layer=ae.conv_out.weight, step=5)
    loss = ldm_generator_step(ae_ref, crit_ref, x, eps, 5)
    torch.testing.assert_close(logs["total"], loss, rtol=1e-10, atol=0)
    _assert_same(_grads(ae_ref), _grads(ae), 1e-10, "autoencoder")
    if learn_logvar:
        torch.testing.assert_close(crit.logvar.grad, crit_ref.logvar.grad, rtol=1e-10, atol=0)
    else:
        assert crit.logvar.grad is None and crit_ref.logvar.grad is None
        assert float(crit.logvar) == float(torch.tensor(0.1))  # logvar_init, as float32 holds it
    # The two pixel terms differ, so each test checks the term it names.
    other = _setup(torch.float64, pixel_loss="mse" if pixel_loss == "l1" else "l1", learn_logvar=learn_logvar)[1]
    assert not torch.equal(other.nll_sum(x, recon.detach())[0], crit.nll_sum(x, recon.detach())[0])


# ------------------------------------------------------------------------------------------------ clips (5D)


def _video_setup(dtype, disc: str, pixel_loss="l1"):
    from vaefast.models.patchgan import PatchGAN3D

    torch.manual_seed(0)
    ae = TinyAutoencoder(nn.Conv3d).to(dtype)  # clips [B, 3, T, H, W]
    discriminator = PatchGAN3D(3, ndf=8, layers=2) if disc == "3d" else PatchGAN(3, ndf=8, layers=2)
    crit = LPIPSWithDiscriminator(_lpips(dtype), discriminator, kl_weight=1e-2, perceptual_weight=1.0,
                                  disc_weight=0.5, disc_start=3, logvar_init=0.1, pixel_loss=pixel_loss).to(dtype)
    x = torch.rand(2, 3, 3, 32, 32, dtype=dtype) * 2 - 1
    eps = torch.randn(2, 4, 3, 32, 32, dtype=dtype)
    return ae, crit, x, eps


def generative_models_video_step(ae, crit, x, eps, step):
    """generative-models' GeneralLPIPSWithDiscriminator with dims=3, its two passes: inputs and reconstructions
    rearranged to frames before everything, the NLL summed over frames and divided by B·T, the KL per clip divided
    by B; a 2D discriminator on the frames, a 3D one on the clips; the adaptive weight by two autograd.grad; then
    loss.backward(); then the discriminator's pass."""
    def frames(t):
        return t.transpose(1, 2).flatten(0, 1)

    clips = isinstance(next(m for m in crit.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))),
                       nn.Conv3d)
    recon, kl = ae(x, eps)
    xf, rf = frames(x), frames(recon)
    rec = (xf - rf).abs() if crit.pixel_loss == "l1" else (xf - rf) ** 2
    rec = rec + crit.perceptual_weight * crit.perceptual(xf.contiguous(), rf.contiguous())
    nll = rec / torch.exp(crit.logvar) + crit.logvar
    nll_loss = nll.sum() / nll.shape[0]
    kl_loss = kl.sum() / kl.shape[0]
    with frozen(crit.discriminator):
        g_loss = -torch.mean(crit.discriminator(recon if clips else rf.contiguous()))
        loss, disc_factor = ldm_generator_loss(ae, crit, nll_loss, kl_loss, g_loss, step)
        loss.backward()
    crit.discriminator.zero_grad(set_to_none=True)
    real, fake = (x, recon.detach()) if clips else (xf, rf.detach())
    logits_real, logits_fake = crit.discriminator(real.contiguous()), crit.discriminator(fake.contiguous())
    d_loss = 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))
    (disc_factor * d_loss).backward()
    return loss.detach()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("disc", ["2d", "3d"], ids=["PatchGAN on frames", "PatchGAN3D on clips"])
@pytest.mark.parametrize("step", [1, 5], ids=["before disc_start", "after disc_start"])
def test_clip_gradients_equal_the_generative_models_flow(dtype, rtol, disc, step):
    """The drop-in on [B, C, T, H, W]: the same loss value and gradients (autoencoder, logvar, discriminator) as
    generative-models' dims=3 flow, with a discriminator on frames and one on clips."""
    ae, crit, x, eps = _video_setup(dtype, disc)
    ae_ref, crit_ref = copy.deepcopy(ae), copy.deepcopy(crit)
    recon, kl = ae(x, eps)
    logs = crit.backward_generator(x, recon, kl, last_layer=ae.conv_out.weight, step=step)
    crit.backward_discriminator(x, recon, step=step)
    loss = generative_models_video_step(ae_ref, crit_ref, x, eps, step)
    torch.testing.assert_close(logs["total"], loss, rtol=rtol, atol=0)
    _assert_same(_grads(ae_ref), _grads(ae), rtol, "autoencoder")
    torch.testing.assert_close(crit.logvar.grad, crit_ref.logvar.grad, rtol=rtol, atol=0)
    _assert_same(_grads(crit_ref.discriminator), _grads(crit.discriminator), rtol, "discriminator")
    if step >= crit.disc_start:
        assert logs["d_weight"] > 0
