"""K-sample draws and importance-weighted objectives: the fused K-sample op on every backend against the reference,
the log-weights against torch.distributions in float64, the IWAE bound of the objective, and DReG: the same decoder
gradient as the standard IWAE estimator, an encoder gradient equal to it in expectation, with lower variance."""

import math

import pytest
import torch
from conftest import quiet_config
from hypothesis import given, settings
from hypothesis import strategies as st

import vaefast
from vaefast.models import ModelConfig, build_model
from vaefast.models.objective import NegativeELBO, importance_log_weights
from vaefast.ops.reference import seeded_normal

TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


@settings(max_examples=15, deadline=None)
@given(shape=st.sampled_from([(3, 20), (2, 2100), (2, 3, 5, 5)]), samples=st.sampled_from([2, 3, 7]),
       seeded=st.booleans(), dtype=st.sampled_from(list(TOLERANCE)), per_dim=st.booleans())
def test_k_samples_match_the_reference(fused_backend, shape, samples, seeded, dtype, per_dim):
    g = torch.Generator().manual_seed(0)
    mu0, lv0 = torch.randn(shape, generator=g).to(dtype), (torch.randn(shape, generator=g) * 3).to(dtype)
    eps = None if seeded else torch.randn((samples, *shape), generator=g).to(dtype)
    upstream = torch.randn((samples, *shape), generator=g)
    results = []
    for backend in (fused_backend, "torch"):
        mu, lv = mu0.clone().requires_grad_(), lv0.clone().requires_grad_()
        out = vaefast.reparameterize_kl(mu, lv, eps, seed=7 if seeded else None, samples=samples, backend=backend,
                                        return_kl_per_dim=per_dim)
        assert out[0].shape == (samples, *shape)
        loss = (out[0].float() * upstream).sum() + (out[1] * 0.5).sum() + (out[2].sum() * 0.1 if per_dim else 0)
        loss.backward()
        results.append([t.detach().float() for t in out] + [mu.grad.float(), lv.grad.float()])
    rtol, atol = TOLERANCE[dtype]
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol * max(1.0, math.prod(shape[1:]) ** 0.5))


def test_k_seeded_samples_count_the_elements_of_k_b_n():
    """Sample k of a seeded K-sample draw is the reference stream at offset k * B * N: the same noise as one draw
    over mu repeated K times."""
    mu, lv = torch.randn(4, 30), torch.randn(4, 30)
    z, _ = vaefast.reparameterize_kl(mu, lv, seed=3, samples=5, backend="native")
    eps = seeded_normal(torch.tensor(3), (5, 4, 30))
    torch.testing.assert_close(z, mu + torch.exp(0.5 * lv) * eps, rtol=1e-5, atol=1e-5)
    single, _ = vaefast.reparameterize_kl(mu.repeat(5, 1), lv.repeat(5, 1), seed=3, backend="native")
    torch.testing.assert_close(z.flatten(0, 1), single)


def test_bad_sample_counts_are_named():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        vaefast.reparameterize_kl(mu, mu, samples=0)
    with pytest.raises(ValueError, match=r"eps must have shape \(4, 2, 3\)"):
        vaefast.reparameterize_kl(mu, mu, torch.zeros(2, 3), samples=4)


def test_log_weights_are_the_densities_in_float64():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g,
                                                                                  dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    nll = torch.rand(4, 3, generator=g, dtype=torch.float64) * 100
    normal = torch.distributions.Normal
    expected = (-nll + normal(0.0, 1.0).log_prob(z).sum(-1)
                - normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))
    torch.testing.assert_close(importance_log_weights(nll, z, mu, logvar, None), expected, rtol=1e-12, atol=1e-10)
    clamped = importance_log_weights(nll, z, mu, logvar * 10, (-2.0, 2.0))
    expected = (-nll + normal(0.0, 1.0).log_prob(z).sum(-1)
                - normal(mu, torch.exp(0.5 * (logvar * 10).clamp(-2, 2))).log_prob(z).sum(-1))
    torch.testing.assert_close(clamped, expected, rtol=1e-12, atol=1e-10)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden=[8], latent_dim=2, backend="torch")
    return build_model(cfg, (1, 3, 3)).double()


def _x():
    return torch.rand(6, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def test_the_iwae_objective_is_the_bound():
    model, x, samples = _tiny_model(), _x(), 5
    objective = NegativeELBO(model, samples=samples, objective="iwae")
    loss, *_ = objective(x, torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64),
                         None, torch.tensor([11]))
    # The same draw by hand: encoder, the reference's seeded noise, decoder, densities.
    mu, logvar = model.encode(x)
    lv = logvar.clamp(*model.clamp)
    z = mu + torch.exp(0.5 * lv) * seeded_normal(torch.tensor([11]), (samples, *mu.shape)).double()
    nll = model.nll(model.decode(z.flatten(0, 1)), x.repeat(samples, 1, 1, 1)).view(samples, -1)
    normal = torch.distributions.Normal
    log_w = -nll + normal(0.0, 1.0).log_prob(z).sum(-1) - normal(mu, torch.exp(0.5 * lv)).log_prob(z).sum(-1)
    bound = torch.logsumexp(log_w, 0) - math.log(samples)
    torch.testing.assert_close(loss, -bound.sum(), rtol=1e-10, atol=1e-8)


def _gradients(estimator, seed, samples=8, beta=1.0):
    model, x = _tiny_model(), _x()
    objective = NegativeELBO(model, samples=samples, objective="iwae", estimator=estimator)
    one = torch.tensor(1.0, dtype=torch.float64)
    loss, *_ = objective(x, torch.tensor(beta, dtype=torch.float64), one, None, torch.tensor([seed]))
    loss.backward()
    encoder = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    decoder = torch.cat([p.grad.flatten() for p in model.decoder.parameters()])
    return encoder, decoder


def test_dreg_keeps_the_decoder_gradient_and_the_encoder_gradient_in_expectation():
    """Over 300 fixed seeds: DReG's decoder gradient equals the standard estimator's draw by draw; the means of the
    encoder gradients agree within 4 standard errors in every coordinate; DReG's total variance is lower."""
    standard, dreg = _encoder_gradients_agree_in_expectation(beta=1.0)
    assert dreg.var(0).sum() < 0.8 * standard.var(0).sum(), (dreg.var(0).sum(), standard.var(0).sum())


def test_training_with_iwae_and_dreg_improves_the_bound(tmp_path, tiny_data):
    from vaefast.eval.iwae import iwae_log_likelihood
    from vaefast.train import Trainer

    cfg = quiet_config(tmp_path, epochs=3, samples=4, objective="iwae", estimator="dreg")
    cfg.model.hidden, cfg.model.latent_dim = [64], 8
    trainer = Trainer(cfg, tiny_data)
    x = tiny_data.test[:64].float() / 255
    def bound():  # under the run's precision, as the steps run (a bf16 model on a CPU with native bf16)
        return -iwae_log_likelihood(trainer.model, x, 16, generator=torch.Generator().manual_seed(0),
                                    autocast=trainer.plan.autocast()).mean()

    before = bound()
    trainer.fit()
    after = bound()
    assert after < before - 50, (before, after)


def test_objective_misuse_is_named():
    model = _tiny_model()
    with pytest.raises(ValueError, match="--estimator dreg is for --objective iwae"):
        NegativeELBO(model, samples=4, estimator="dreg")
    with pytest.raises(ValueError, match="--free-bits floors"):
        NegativeELBO(model, free_bits=0.1, samples=4, objective="iwae")
    with pytest.raises(ValueError, match="--samples 2 or more"):
        NegativeELBO(model, objective="iwae")


@pytest.mark.parametrize("beta", [0.5, 0.2], ids=["beta 0.5", "KL warm-up at 0.2"])
def test_dreg_is_unbiased_under_any_kl_weight(beta):
    """With the KL weighted by β the DReG factor is w~(1 - β + β w~), not w~²: over 300 fixed seeds the encoder
    gradients' means agree with the standard IWAE estimator's within 4 standard errors in every coordinate, and
    the decoder gradient is the same draw by draw. (With w~² the bias at β = 0.5 fails this test.)"""
    _encoder_gradients_agree_in_expectation(beta)


def _encoder_gradients_agree_in_expectation(beta, seeds=300):
    """Standard and DReG gradients over fixed seeds: the decoder's equal draw by draw, the encoder's means within
    4 standard errors in every coordinate. Returns the two stacks of encoder gradients."""
    standard, dreg = [], []
    for seed in range(seeds):
        enc_s, dec_s = _gradients("standard", seed, beta=beta)
        enc_d, dec_d = _gradients("dreg", seed, beta=beta)
        torch.testing.assert_close(dec_d, dec_s, rtol=1e-10, atol=1e-12)
        standard.append(enc_s)
        dreg.append(enc_d)
    standard, dreg = torch.stack(standard), torch.stack(dreg)
    se = torch.sqrt(standard.var(0) / len(standard) + dreg.var(0) / len(dreg))
    assert ((standard.mean(0) - dreg.mean(0)).abs() <= 4 * se + 1e-12).all()
    return standard, dreg
