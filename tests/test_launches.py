"""What one forward+backward of the fused ops launches (Triton under the interpreter): one kernel per op and pass,
and the partial-sum reduction only where a row spans several column blocks."""

import pytest

import vaefast
from vaefast.perf.launches import count_launches, fused_loss_step

KERNELS = {"latent_fwd_kernel": 1, "latent_bwd_kernel": 1, "bce_fwd_kernel": 1, "bce_bwd_kernel": 1}


@pytest.fixture(autouse=True)
def _triton():
    reason = vaefast.unavailable_backends("cpu").get("triton")
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("latent", [20, 512, 1024])
@pytest.mark.parametrize("seeded", [False, True])
def test_rows_that_fit_one_program_launch_four_kernels_and_nothing_else(latent, seeded):
    counts = count_launches(fused_loss_step("triton", 8, latent, 784, seeded=seeded))
    assert dict(counts["triton_kernels"]) == KERNELS
    assert not counts["aten_ops"], counts["aten_ops"]  # no partial sums, no randn, no copies
    assert counts["total"] == 4


def test_long_rows_add_one_reduction_per_spanning_op():
    counts = count_launches(fused_loss_step("triton", 8, 4096, 3 * 64 * 64))  # both rows span column blocks
    assert dict(counts["triton_kernels"]) == KERNELS
    assert dict(counts["aten_ops"]) == {"sum": 2}


def test_the_counter_sees_launches_it_should():
    """randn_like noise (eps=None, no seed) is one more aten kernel: the counter is not blind."""
    import torch

    mu, logvar = torch.randn(4, 20, requires_grad=True), torch.randn(4, 20, requires_grad=True)
    counts = count_launches(lambda: vaefast.reparameterize_kl(mu, logvar, backend="triton"))
    assert counts["aten_ops"]["randn_like"] == 1 and counts["triton_kernels"]["latent_fwd_kernel"] == 1
