"""vaefast's loss called as LDM's and generative-models' codebases call theirs: Lightning's two-optimizer step, run
for steps across disc_start once with the reference class (tests/ldm_reference.py) and once with vaefast's through
the same call, leaves the same parameters after every step (float64), the same gradients in each pass (float32),
and the same logs; with weights, a conditional discriminator, evaluation, and LDM's state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ldm_reference import ReferenceGeneralLoss, ReferenceLDMLoss, lightning_step
from vaefast import LPIPSWithDiscriminator
from vaefast.models.general_loss import GeneralLPIPSWithDiscriminator
from vaefast.models.lpips import LPIPS
from vaefast.models.patchgan import PatchGAN

diffusers = pytest.importorskip("diffusers")
DISC_LOGS = ("train/g_loss", "train/d_weight", "train/logits_real", "train/logits_fake")
GENERAL_DISC_LOGS = ("train/logits/real", "train/logits/fake")


class TinyLDMAutoencoder(nn.Module):
    """LDM's AutoencoderKL as its training_step uses it: a diffusers DiagonalGaussianDistribution posterior, its
    sample() as the latent, a decoder with a last convolution (get_last_layer); 2D or 3D convolutions."""

    def __init__(self, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.encoder = nn.Sequential(conv(3, 8, 3, padding=1), nn.SiLU(), conv(8, 8, 3, padding=1))
        self.decoder = nn.Sequential(conv(4, 8, 3, padding=1), nn.SiLU())
        self.conv_out = conv(8, 3, 3, padding=1)

    def forward(self, x):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        posterior = DiagonalGaussianDistribution(self.encoder(x))
        return self.conv_out(self.decoder(posterior.sample())), posterior

    def get_last_layer(self):
        return self.conv_out.weight


def _adam(params):
    return torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.9))


def _pair(dtype, *, general=False, dims=2, cond=False, exact_logs=False, disc_start=2, disc_loss="hinge",
          optimizer=_adam):
    """(reference, vaefast) runs from the same initial weights: each an (autoencoder, loss, optimizers)."""
    torch.manual_seed(0)
    ae = TinyLDMAutoencoder(dims).to(dtype)
    torch.manual_seed(3)
    lpips = LPIPS()  # a random VGG16 trunk (no ImageNet weights here) and the shipped linear layers
    lpips.load_linear()
    lpips = lpips.to(dtype)
    torch.manual_seed(5)
    disc = PatchGAN(3 + cond, ndf=8, layers=2).to(dtype)
    common = dict(disc_start=disc_start, logvar_init=0.1, disc_weight=0.5)
    if general:
        reference = ReferenceGeneralLoss(lpips, disc, dims=dims, learn_logvar=True,
                                         regularization_weights={"kl_loss": 1e-2}, **common)
        ours = GeneralLPIPSWithDiscriminator(dims=dims, learn_logvar=True, regularization_weights={"kl_loss": 1e-2},
                                             perceptual=copy.deepcopy(lpips), discriminator=copy.deepcopy(disc),
                                             exact_logs=exact_logs, **common)
    else:
        reference = ReferenceLDMLoss(lpips, disc, kl_weight=1e-2, disc_conditional=cond, disc_loss=disc_loss,
                                     **common)
        ours = LPIPSWithDiscriminator(copy.deepcopy(lpips), copy.deepcopy(disc), kl_weight=1e-2,
                                      disc_conditional=cond, exact_logs=exact_logs, disc_loss=disc_loss, **common)
    runs = []
    for loss in (reference, ours):
        model = copy.deepcopy(ae)
        loss = loss.to(dtype)
        optimizers = (optimizer([*model.parameters(), loss.logvar]), optimizer(list(loss.discriminator.parameters())))
        runs.append((model, loss, optimizers))
    return runs


def _data(dtype, dims=2, cond=False, weights=False):
    g = torch.Generator().manual_seed(11)
    shape = (4, 3, 32, 32) if dims == 2 else (2, 3, 3, 32, 32)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    kwargs = {}
    if cond:
        kwargs["cond"] = torch.rand((shape[0], 1, *shape[-2:]), generator=g, dtype=dtype)
    if weights:
        kwargs["weights"] = torch.rand((shape[0], 1, *shape[-2:]), generator=g, dtype=dtype) + 0.5
    return x, kwargs


def _params(model, loss):
    return [*model.parameters(), loss.logvar, *loss.discriminator.parameters()]


def _close(a, b, rtol):
    return float((a - b).norm()) <= rtol * max(float(b.norm()), 1e-30)


def _run_steps(runs, x, kwargs, steps, *, general=False, before_step=None):
    """Both runs step by step; yields (step, logs of each, gradients of each pass of each)."""
    for step in range(steps):
        if before_step is not None:
            before_step(runs)
        out = []
        for model, loss, optimizers in runs:
            out.append(lightning_step(model, loss, optimizers, x, step, last_layer=model.get_last_layer(),
                                      noise_seed=step, general=general, **kwargs))
        yield step, out


@pytest.mark.parametrize("variant", ["plain", "weights", "cond", "exact_logs", "vanilla"])
def test_lightning_steps_across_disc_start_leave_ldm_s_parameters_and_logs(variant):
    dtype = torch.float64
    runs = _pair(dtype, cond=variant == "cond", exact_logs=variant == "exact_logs",
                 disc_loss="vanilla" if variant == "vanilla" else "hinge")
    x, kwargs = _data(dtype, cond=variant == "cond", weights=variant == "weights")
    for step, ((ref_logs, _), (our_logs, _)) in _run_steps(runs, x, kwargs, 4):
        for a, b in zip(_params(*runs[1][:2]), _params(*runs[0][:2])):
            assert _close(a.detach(), b.detach(), 1e-9), f"step {step}: a parameter moved apart"
        assert our_logs.keys() == ref_logs.keys()
        for key, ref in ref_logs.items():
            if step < 2 and key in DISC_LOGS and variant != "exact_logs":
                assert float(our_logs[key]) == 0.0, key  # the discriminator did not run
                continue
            assert torch.allclose(our_logs[key].double(), ref.double(), rtol=1e-9, atol=1e-12), (step, key)
        # LDM's discriminator pass gives zero gradients before disc_start: its Adam counts those steps too
        ref_d, our_d = runs[0][2][1], runs[1][2][1]
        assert [int(s["step"]) for s in our_d.state.values()] == [int(s["step"]) for s in ref_d.state.values()]
        assert all(int(s["step"]) == step + 1 for s in our_d.state.values())


def _sync(runs) -> None:
    """The second run takes the first's weights and optimizer states (float32 rounding differences, which Adam
    grows over steps, start anew at every step)."""
    (model, loss, optimizers), (our_model, our_loss, our_optimizers) = runs
    our_model.load_state_dict(model.state_dict())
    our_loss.logvar.data.copy_(loss.logvar.data)
    our_loss.discriminator.load_state_dict(loss.discriminator.state_dict())
    for ours, theirs in zip(our_optimizers, optimizers):
        ours.load_state_dict(theirs.state_dict())


def test_float32_passes_leave_ldm_s_gradients():
    """Each pass at the same weights. SGD, not Adam, between the passes: Adam's normalized step moves a parameter
    whose gradient is at rounding level by about its learning rate, whatever that gradient's rounding."""
    runs = _pair(torch.float32, optimizer=lambda params: torch.optim.SGD(params, lr=1e-4))
    x, kwargs = _data(torch.float32)
    for step, ((_, ref_grads), (_, our_grads)) in _run_steps(runs, x, kwargs, 4, before_step=_sync):
        for pass_index in (0, 1):
            ref, ours = ref_grads[pass_index], our_grads[pass_index]
            ref_flat = torch.cat([g.flatten() for g in ref.values()])
            our_flat = torch.cat([g.flatten() for g in ours.values()])
            assert _close(our_flat, ref_flat, 1e-5) or float(ref_flat.norm()) == 0.0, (step, pass_index)
            assert float(ref_flat.norm()) > 0 or step < 2


@pytest.mark.parametrize("dims", [2, 3])
def test_generative_models_form_leaves_its_parameters_and_logs(dims):
    dtype = torch.float64
    runs = _pair(dtype, general=True, dims=dims)
    x, kwargs = _data(dtype, dims=dims)
    for step, ((ref_logs, _), (our_logs, _)) in _run_steps(runs, x, kwargs, 4, general=True):
        for a, b in zip(_params(*runs[1][:2]), _params(*runs[0][:2])):
            assert _close(a.detach(), b.detach(), 1e-9), f"step {step}: a parameter moved apart"
        assert our_logs.keys() == ref_logs.keys()
        for key, ref in ref_logs.items():
            if step < 2 and key in GENERAL_DISC_LOGS:
                continue  # generative-models runs D for these logs alone; vaefast does with exact_logs=True
            assert torch.allclose(our_logs[key].double(), ref.double(), rtol=1e-9, atol=1e-12), (step, key)
        # before disc_start no gradient reaches D in either: Adam has not stepped it
        assert len(runs[1][2][1].state) == len(runs[0][2][1].state) == (0 if step < 2 else 1) * len(
            list(runs[0][1].discriminator.parameters()))


@pytest.mark.parametrize("general", [False, True], ids=["LDM", "generative-models"])
def test_evaluation_logs_equal_without_a_graph(general):
    runs = _pair(torch.float64, general=general)
    x, _ = _data(torch.float64)
    logs = []
    for model, loss, _ in runs:
        model.eval(), loss.eval()
        out = {}
        with torch.no_grad():
            for idx in (0, 1):
                torch.manual_seed(idx)
                reconstruction, posterior = model(x)
                if general:
                    kl = posterior.kl()
                    _, log = loss(x, reconstruction, regularization_log={"kl_loss": kl.sum() / kl.shape[0]},
                                  optimizer_idx=idx, global_step=0, last_layer=model.get_last_layer(), split="val")
                else:
                    _, log = loss(x, reconstruction, posterior, idx, 0, last_layer=model.get_last_layer(),
                                  split="val")
                out.update(log)
        logs.append(out)
    assert logs[0].keys() == logs[1].keys() and all(k.startswith("val/") for k in logs[0])
    for key in logs[0]:
        assert torch.allclose(logs[1][key].double(), logs[0][key].double(), rtol=1e-9, atol=1e-12), key


def test_a_state_dict_saved_from_ldm_s_class_loads():
    reference, ours = (loss for _, loss, _ in _pair(torch.float32))
    with torch.no_grad():
        reference.logvar.fill_(0.7)
        for p in reference.discriminator.parameters():
            p.add_(1.0)
    holder = nn.Module()
    holder.loss = reference  # as LDM's AutoencoderKL holds it: keys "loss.logvar", "loss.perceptual_loss.net..."
    state = holder.state_dict()
    assert any(k.startswith("loss.perceptual_loss.net.slice1.") for k in state)
    target = nn.Module()
    target.loss = ours
    target.load_state_dict(state)  # strict
    assert float(ours.logvar.detach()) == pytest.approx(0.7)
    assert all(torch.equal(a, b) for a, b in zip(ours.discriminator.state_dict().values(),
                                                 reference.discriminator.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(ours.perceptual.state_dict().values(),
                                                 reference.perceptual_loss._lpips[0].state_dict().values()))


def test_ldm_s_constructor_arguments_and_bad_calls():
    crit = LPIPSWithDiscriminator(50001, kl_weight=1e-6, disc_weight=0.5, disc_num_layers=2, disc_in_channels=4,
                                  disc_conditional=True, perceptual_weight=0.0)
    assert crit.disc_start == 50001 and crit.disc_conditional
    assert [k for k in crit.discriminator.state_dict()] == [k for k in PatchGAN(4, layers=2).state_dict()]
    assert crit.discriminator.main[0].in_channels == 4
    with pytest.raises(ValueError, match="use_actnorm"):
        LPIPSWithDiscriminator(disc_start=0, use_actnorm=True, perceptual_weight=0.0)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="cond="):
        crit(x, x.requires_grad_(), torch.zeros(2), 0, 0, last_layer=torch.zeros(1))
    plain = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    with pytest.raises(ValueError, match="optimizer_idx"):
        plain(x, x, torch.zeros(2), 2, 0)
    with pytest.raises(ValueError, match="last_layer"):
        plain(x.detach(), x.detach().requires_grad_(), torch.zeros(2), 0, 0)
    with pytest.raises(ValueError, match="without one"):
        LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, use_discriminator=False)(x, x, torch.zeros(2), 1, 0)
    with pytest.raises(ValueError, match="GeneralLPIPSWithDiscriminator"):
        plain(torch.rand(1, 3, 2, 32, 32), torch.rand(1, 3, 2, 32, 32), torch.zeros(1), 0, 0)


def test_generative_models_constructor_builds_its_default_discriminator_and_refuses_others():
    config = {"target": "sgm.modules.autoencoding.lpips.model.model.NLayerDiscriminator",
              "params": {"input_nc": 3, "n_layers": 2, "use_actnorm": False}}
    crit = GeneralLPIPSWithDiscriminator(disc_start=0, discriminator_config=config, perceptual_weight=0.0,
                                         pixel_loss="l2", dims=3)
    assert list(crit.discriminator.state_dict()) == list(PatchGAN(3, layers=2).state_dict())
    assert crit.pixel_loss == "mse" and not crit.logvar.requires_grad and crit.dims == 3
    with pytest.raises(ValueError, match="discriminator=module"):
        GeneralLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0,
                                      discriminator_config={"target": "my.project.Discriminator3D", "params": {}})
