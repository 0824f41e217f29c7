"""The extra-loss-term hook (perceptual / adversarial terms): its value and gradient enter the loss exactly as
documented, it switches on at start_step, it is logged, it survives torch.compile, and misuse is named."""

import json

import pytest
import torch
from conftest import quiet_config
from torch import nn

from vaefast import LossTerm, Trainer
from vaefast.models import ModelConfig, build_model
from vaefast.models.objective import NegativeELBO


class FrozenFeatureL1(LossTerm):
    """A stand-in for LPIPS with the same shape of computation: L1 between frozen conv features of the input and the
    reconstruction (random weights, since pretrained ones cannot be downloaded here)."""

    def __init__(self, weight=0.5, start_step=0, name="features"):
        super().__init__(name, weight=weight, start_step=start_step)
        torch.manual_seed(123)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, stride=2))
        self.features.requires_grad_(False)

    def forward(self, x, reconstruction, out):
        return (self.features(x) - self.features(reconstruction)).abs().flatten(1).sum(1)


def _objective(term):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="conv", latent_dim=8, backend="torch"), (1, 28, 28))
    return NegativeELBO(model, loss_terms=[term] if term else None)


def test_term_value_and_gradient_enter_the_loss_as_documented(tiny_data):
    x = tiny_data.train[:16].float() / 255
    kl_w, scale = torch.tensor(1.0), torch.tensor(1 / 16)
    term = FrozenFeatureL1(weight=0.5)
    with_term = _objective(term)
    torch.manual_seed(1)
    loss, nll, kl, _, term_sums = with_term(x, kl_w, scale, torch.tensor([0.5]))
    loss.backward()
    got = [p.grad.clone() for p in with_term.model.parameters()]

    plain = _objective(None)  # the same initial weights
    torch.manual_seed(1)  # the same noise draw
    base, *_ = plain(x, kl_w, scale)
    torch.manual_seed(1)
    nll_again, terms_out = plain.terms(x)
    recon = plain.model.likelihood.mean(terms_out.decoded)
    expected_term = term(x, recon, terms_out).sum()
    assert torch.allclose(term_sums, expected_term.detach().view(1), rtol=1e-5)
    manual = (nll_again.sum() + kl_w * terms_out.kl.sum() + 0.5 * expected_term) * scale
    assert torch.allclose(loss, manual, rtol=1e-6)
    assert torch.allclose(loss, base + 0.5 * expected_term * scale, rtol=1e-6)
    plain.zero_grad()
    manual.backward()
    for a, b in zip(got, plain.model.parameters()):
        assert torch.allclose(a, b.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in term.parameters()), "the frozen network gets no gradient"


def test_start_step_logging_and_training(tmp_path, tiny_data):
    term = FrozenFeatureL1(weight=0.25, start_step=4)
    trainer = Trainer(quiet_config(tmp_path, epochs=1, log_every=2, batch_size=32,
                                   model=ModelConfig(kind="conv", latent_dim=8)), tiny_data, loss_terms=[term])
    weights = []
    trainer.run(8, on_step=lambda step: weights.append(float(trainer.step_inputs.update_term_weights(trainer.step))))
    assert weights == [0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25, 0.25]  # the weight read after step s is for step s+1
    trainer.monitor.close()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [entry["train/features"] for entry in logged if "train/features" in entry]
    assert len(values) == 4 and all(v > 0 for v in values)


@torch._inductor.config.patch(fallback_random=True)  # eager's random numbers under compile, for the comparison
def test_terms_work_under_torch_compile(tmp_path, tiny_data):
    # fp32: the loss is called here outside the trainer's autocast ("auto" is bf16 with a bf16 model on a bf16 CPU).
    common = dict(epochs=1, batch_size=32, model=ModelConfig(kind="conv", latent_dim=8), precision="fp32")
    results = []
    for compile in (False, True):
        trainer = Trainer(quiet_config(tmp_path / str(compile), compile=compile, **common), tiny_data,
                          loss_terms=[FrozenFeatureL1()])
        x = next(iter(trainer.loader.batches()))
        torch.manual_seed(7)
        loss, nll, kl, _, term_sums = trainer.loss_fn(x, torch.tensor(1.0), torch.tensor(1 / 32),
                                                      trainer.step_inputs.update_term_weights(trainer.step))
        loss.backward()
        results.append((loss.detach(), term_sums, torch.cat([p.grad.flatten() for p in trainer.model.parameters()])))
    for eager, compiled in zip(*results):
        assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-6)


def test_misuse_is_named(tmp_path, tiny_data):
    class Trainable(FrozenFeatureL1):
        def __init__(self):
            super().__init__()
            self.features.requires_grad_(True)

    class WrongShape(FrozenFeatureL1):
        def forward(self, x, reconstruction, out):
            return super().forward(x, reconstruction, out).mean()

    cfg = quiet_config(tmp_path, epochs=1, batch_size=32, model=ModelConfig(kind="conv", latent_dim=8))
    with pytest.raises(ValueError, match="trainable parameters .*features.0.weight.*requires_grad_"):
        Trainer(cfg, tiny_data, loss_terms=[Trainable()])
    with pytest.raises(ValueError, match="distinct names"):
        Trainer(cfg, tiny_data, loss_terms=[FrozenFeatureL1(), FrozenFeatureL1()])
    with pytest.raises(TypeError, match="vaefast.LossTerm"):
        Trainer(cfg, tiny_data, loss_terms=[nn.L1Loss()])
    with pytest.raises(ValueError, match=r"returned shape \(\); it must return one loss per image, shape \(32,\)"):
        Trainer(cfg, tiny_data, loss_terms=[WrongShape()]).run(1)
    with pytest.raises(ValueError, match="plain identifier"):
        FrozenFeatureL1(name="lpips/vgg")
