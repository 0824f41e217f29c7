"""The continuous Bernoulli likelihood, fused into the BCE pass: the reference against torch.distributions in float64
over the whole logit range (lambda near 1/2 included), every fused backend against the reference with gradients, and
the trainer's --likelihood continuous_bernoulli."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaefast
from vaefast.models.likelihoods import make_likelihood
from vaefast.ops.reference import continuous_bernoulli_log_norm, continuous_bernoulli_nll_reference

TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}


def _logits_over_the_range(limit):
    """Dense near 0 (lambda = 1/2, where the log-normalizer switches to its Taylor series at |x| = 0.5), across
    the switch, and out to |x| = limit."""
    return torch.cat([torch.linspace(-limit, limit, 601), torch.linspace(-0.8, 0.8, 601),
                      torch.tensor([0.0, 1e-12, -1e-7, 0.4999999, 0.5, 0.5000001, -0.5])]).double()


def test_reference_is_torch_distributions_in_float64():
    """Up to |logit| = 12: beyond that torch.distributions forms log1p(-lambda) from lambda = sigmoid(x) and loses
    digits (relative error 2e-3 at x = 30); the closed form takes over there (next test)."""
    x = _logits_over_the_range(12.0).view(-1, 1)
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mine = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    got = continuous_bernoulli_nll_reference(mine, t)
    expected = -torch.distributions.ContinuousBernoulli(logits=theirs).log_prob(t).view(-1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    got.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-9)


def test_reference_far_out_is_the_closed_form():
    x = torch.cat([torch.linspace(0.2, 700, 2001), -torch.linspace(0.2, 700, 2001)]).double()
    torch.testing.assert_close(continuous_bernoulli_log_norm(x), torch.log(x.abs() / torch.tanh(x.abs() / 2)),
                               rtol=1e-13, atol=1e-13)


def test_log_normalizer_is_continuous_at_the_taylor_switch():
    """Both sides of |x| = 0.1 agree with the closed form evaluated in float64 far from cancellation."""
    x = torch.tensor([0.5 - 1e-9, 0.5 + 1e-9], dtype=torch.float64)
    closed_form = torch.log(x / torch.tanh(x / 2))
    torch.testing.assert_close(continuous_bernoulli_log_norm(x), closed_form, rtol=1e-10, atol=1e-10)
    assert continuous_bernoulli_log_norm(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(math.log(2))


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(1, 1), (3, 37), (2, 2100), (2, 3, 8, 8)]), dtype=st.sampled_from(list(TOLERANCE)),
       scale=st.sampled_from([0.05, 1.0, 8.0, 40.0]), seed=st.integers(0, 2**16))
def test_fused_backends_match_the_reference(fused_backend, shape, dtype, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g) * scale).to(dtype)
    target = torch.rand(shape, generator=g)
    upstream = torch.randn(shape[0], generator=g)
    results = []
    for backend in (fused_backend, "torch"):
        x = logits.clone().requires_grad_()
        out = vaefast.continuous_bernoulli_nll(x, target, backend=backend)
        (out * upstream).sum().backward()
        results.append((out, x.grad.float()))
    rtol, atol = TOLERANCE[dtype]
    n = math.prod(shape[1:])
    torch.testing.assert_close(results[0][0], results[1][0], rtol=rtol, atol=atol * n)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=rtol, atol=atol)


def test_fused_backends_near_lambda_one_half(fused_backend):
    """Logits within the Taylor region and across its edge, float32, against float64 torch.distributions."""
    x = torch.linspace(-0.8, 0.8, 257).view(1, -1)
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_()
    got = vaefast.continuous_bernoulli_nll(leaf, t, backend=fused_backend)
    got.sum().backward()
    reference = x.double().requires_grad_()
    expected = -torch.distributions.ContinuousBernoulli(logits=reference).log_prob(t.double()).sum()
    expected.backward()
    assert abs(got.item() - expected.item()) <= 1e-5 * abs(expected.item()) + 1e-4
    torch.testing.assert_close(leaf.grad.double(), reference.grad, rtol=1e-5, atol=1e-6)


def test_likelihood_is_the_dequantized_density_and_its_mean():
    likelihood = make_likelihood("continuous_bernoulli")
    logits = torch.randn(3, 1, 4, 4) * 3
    x = torch.rand(3, 1, 4, 4)
    distribution = torch.distributions.ContinuousBernoulli(logits=logits.double())
    expected = -distribution.log_prob(x.double()).flatten(1).sum(1) + 16 * math.log(256)
    torch.testing.assert_close(likelihood.nll(logits, x).double(), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(likelihood.mean(logits).double(), distribution.mean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(likelihood.mean(logits), torch.sigmoid(logits), atol=1e-2)


def test_trainer_learns_with_the_continuous_bernoulli(tmp_path, tiny_data):
    from conftest import quiet_config

    from vaefast.train import Trainer

    cfg = quiet_config(tmp_path, epochs=3)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [64], 8, "continuous_bernoulli"
    trainer = Trainer(cfg, tiny_data)
    before = trainer.evaluate()["neg_elbo_nats"]
    summary = trainer.fit()
    assert summary.test_neg_elbo_nats < before - 100, (before, summary.test_neg_elbo_nats)


def test_the_reference_log_normalizer_has_finite_gradients_at_huge_logits():
    """float32 logits of 4e5 and more: the unused Taylor branch once overflowed and made the gradient NaN; the
    derivative of log(x / tanh(x/2)) there is 1/x."""
    from vaefast.ops.reference import continuous_bernoulli_log_norm

    x = torch.tensor([1e6, -5e5, 4e5, 3.0, 0.1], requires_grad=True)
    continuous_bernoulli_log_norm(x).sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad
    torch.testing.assert_close(x.grad[:3], 1.0 / x.detach()[:3], rtol=1e-4, atol=0)
