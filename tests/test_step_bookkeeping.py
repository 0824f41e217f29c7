"""The trainer's per-step bookkeeping, trimmed to few ops per step (issue #28): the loss's non-finite flag, the
seeded-noise keys, and the metrics that wait for the log step."""

from __future__ import annotations

import math

import pytest
import torch

from vaefast.train.distributed import DistContext
from vaefast.train.guard import nonfinite_flag
from vaefast.train.metrics import StepResult, TrainMetrics
from vaefast.train.noise import NoiseSeeds


@pytest.mark.parametrize("value, flag", [(1.5, 0.0), (0.0, 0.0), (-3e38, 0.0), (3.4e38, 0.0), (math.nan, 1.0),
                                         (math.inf, 1.0), (-math.inf, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nonfinite_flag(value, flag, dtype):
    loss = torch.tensor(value, dtype=torch.float64).to(dtype).requires_grad_()
    out = nonfinite_flag(loss * 1)
    assert out.dtype == torch.float32 and out.shape == () and not out.requires_grad
    if dtype == torch.bfloat16 and value == 3.4e38:
        flag = 1.0  # beyond bfloat16's largest finite value: rounded to inf
    assert out.item() == flag


def test_noise_keys_are_the_base_plus_the_draw_count_and_resume():
    seeds = NoiseSeeds(7, 3, torch.device("cpu"))
    keys = [int(seeds.next()) for _ in range(4)]
    assert keys == [seeds.base + k for k in range(1, 5)] and int(seeds.draws) == 4
    resumed = NoiseSeeds(7, 3, torch.device("cpu"))
    resumed.load_state_dict(seeds.state_dict())
    assert int(resumed.next()) == int(seeds.next()) and resumed.state_dict() == {"draws": 5}


def test_noise_keys_wrap_as_int64_near_the_top():
    seeds = NoiseSeeds(0, 0, torch.device("cpu"))
    seeds.base = 2**63 - 2  # the largest bases: the key wraps as the int64 sum did
    seeds.load_state_dict({"draws": 0})
    assert [int(seeds.next()) for _ in range(3)] == [2**63 - 1, -2**63, -2**63 + 1]
    assert seeds.state_dict() == {"draws": 3}


class _Monitor:
    def __init__(self):
        self.logged = []

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def progress_line(self, text, final=False):
        pass


def test_metrics_sum_the_applied_steps_at_the_log_step():
    monitor = _Monitor()
    metrics = TrainMetrics(monitor, DistContext(), torch.device("cpu"), log_every=3, term_names=["lpips"])
    steps = [(10.0, 2.0, 0.5, True, 4), (math.nan, math.inf, math.nan, False, 4), (20.0, 6.0, 1.5, True, 2)]
    for nll, kl, term, applied, images in steps:
        per_dim = torch.full((3,), kl / 3)
        metrics.record(images, StepResult(torch.tensor(nll), torch.tensor(kl), per_dim, torch.tensor([term]),
                                          torch.tensor(applied)))
    for step in (1, 2):
        metrics.maybe_log(step, lambda: ({}, ""))
    assert monitor.logged == []
    metrics.maybe_log(3, lambda: ({}, ""))
    (step, logged), = monitor.logged
    assert step == 3 and logged["train/recon_nats"] == 30.0 / 6 and logged["train/kl_nats"] == 8.0 / 6
    assert logged["train/lpips"] == 2.0 / 6 and metrics.pending == []
    torch.testing.assert_close(metrics.kl_dim_sum, torch.full((3,), 8.0 / 3, dtype=torch.float64))
