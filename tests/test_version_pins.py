"""Behaviour that torch has changed, or may change, between versions, pinned by vaefast's own code.

Each test fails on any torch where the project would silently inherit a different answer: torch 2.14 changed
``torch.clamp``'s gradient on the bounds, and the CPU bf16 probe goes through private ``torch.cpu`` functions.
"""

import math
from pathlib import Path

import pytest
import torch

from vaefast.models.likelihoods import DiscretizedLogistic
from vaefast.ops.reference import clamp_with_inclusive_gradient
from vaefast.models.objective import kl_objective
from vaefast.plan import native_bf16


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_clamp_gradient_passes_on_the_bounds_and_not_outside(dtype):
    x = torch.tensor([-10.0, 10.0, -10.5, 10.5, 0.0, math.nan], dtype=dtype, requires_grad=True)
    y = clamp_with_inclusive_gradient(x, -10.0, 10.0)
    torch.testing.assert_close(y, torch.clamp(x.detach(), -10.0, 10.0), equal_nan=True, rtol=0, atol=0)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_clamp_one_sided_and_unbounded():
    x = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    clamp_with_inclusive_gradient(x, 0.0, None).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0]
    x.grad = None
    clamp_with_inclusive_gradient(x, None, 0.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]
    assert clamp_with_inclusive_gradient(x, None, None) is x


def test_clamp_is_twice_differentiable():
    """gradgradcheck through the mask, away from the bounds where finite differences would straddle the kink."""
    x = torch.tensor([-3.0, -0.5, 0.7, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: clamp_with_inclusive_gradient(t, -1.0, 1.0) ** 3, (x,))


def test_free_bits_floor_passes_the_gradient_on_its_bound():
    """A dimension whose batch-mean KL sits exactly on the free-bits floor still gets the KL's gradient."""
    kl_per_dim = torch.tensor([0.5 * 4, 0.25 * 4, 1.0 * 4], requires_grad=True)  # batch 4: means 0.5, 0.25, 1
    loss = kl_objective(torch.zeros(4), kl_per_dim, batch_size=4, free_bits=0.5)
    assert loss.item() == pytest.approx((0.5 + 0.5 + 1.0) * 4)
    loss.backward()
    assert kl_per_dim.grad.tolist() == [1.0, 0.0, 1.0]


def test_discretized_logistic_scale_floor_passes_the_gradient_on_its_bound():
    likelihood = DiscretizedLogistic(init_log_scale=-7.0)
    x = torch.full((1, 4), 0.5)
    likelihood.nll(torch.zeros(1, 4), x).sum().backward()
    assert likelihood.log_scale.grad is not None and likelihood.log_scale.grad.item() != 0.0


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to check the probe against")
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags")


def test_native_bf16_probe_agrees_with_the_cpu_flags(monkeypatch):
    """`--precision auto` picks bf16 on CPUs with AVX512-BF16 or AMX through private `torch.cpu._is_*` probes; if a
    torch release renamed them, auto would fall back to fp32 without a word. The kernel's own flags decide here;
    VAEFAST_NATIVE_BF16 overrides the probe both ways and refuses anything but 0 and 1."""
    flags = _cpu_flags()
    monkeypatch.delenv("VAEFAST_NATIVE_BF16", raising=False)
    assert native_bf16(torch.device("cpu")) == bool({"avx512_bf16", "amx_tile"} & flags)
    for forced, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("VAEFAST_NATIVE_BF16", forced)
        assert native_bf16(torch.device("cpu")) is expected
    monkeypatch.setenv("VAEFAST_NATIVE_BF16", "yes")
    with pytest.raises(ValueError, match="VAEFAST_NATIVE_BF16 must be 0 or 1, got 'yes'"):
        native_bf16(torch.device("cpu"))
