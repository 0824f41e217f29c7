"""No host read of a device value on a non-log step: every `.item()`, `bool(tensor)` or `float(tensor)` reaches the
dispatcher as aten._local_scalar_dense, which a TorchDispatchMode counts over many steps of each configuration.
And the device-side skip changes nothing on a non-finite step, exactly as the host-side decision did."""

import pytest
import torch
from conftest import quiet_config
from torch.utils._python_dispatch import TorchDispatchMode

from vaefast.models import ModelConfig
from vaefast.train import Trainer

STEPS = 12


class ScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


CONFIGS = {
    "fp32": {},
    "bf16 autocast": {"precision": "bf16", "master_weights": False},
    "bf16 master weights": {"precision": "bf16", "master_weights": True},
    "fp16 GradScaler": {"precision": "fp16"},
    "clip": {"clip_grad": 1.0},
    "KL warm-up": {"kl_warmup_steps": 50},
    "KL cycles": {"kl_cycles": 3},
    "cosine LR": {"lr_schedule": "cosine"},
    "free bits": {"free_bits": 0.05},
    "grad accumulation": {"grad_accum": 2},
    "EMA": {"ema": 0.99},
    "conv, spatial latent": {"model": ModelConfig(kind="conv", channels=[8, 16], latent_channels=2)},
    "IWAE, 4 samples, DReG": {"samples": 4, "objective": "iwae", "estimator": "dreg"},
    "randn noise": {"noise": "randn"},
}


def _reads_per_step(trainer, steps):
    counts = []
    with ScalarReads() as mode:
        trainer.run(steps, on_step=lambda step: counts.append(mode.count))
    return [b - a for a, b in zip(counts, counts[1:])]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_host_read_outside_log_steps(tmp_path, tiny_data, name):
    cfg = quiet_config(tmp_path, epochs=1, batch_size=16, log_every=1000, **CONFIGS[name])
    trainer = Trainer(cfg, tiny_data)
    assert trainer.steps_per_epoch > STEPS
    assert _reads_per_step(trainer, STEPS) == [0] * (STEPS - 1), name


def test_log_steps_read_once_per_log(tmp_path, tiny_data):
    trainer = Trainer(quiet_config(tmp_path, epochs=1, batch_size=16, log_every=4), tiny_data)
    reads = _reads_per_step(trainer, STEPS)
    assert [r > 0 for r in reads] == [(step + 2) % 4 == 0 for step in range(STEPS - 1)]


@pytest.mark.parametrize("config", ["fp32", "bf16 master weights", "EMA"])
def test_device_side_skip_changes_nothing(tmp_path, tiny_data, config, reliability):
    reliability.case("NaN batch: step skipped, nothing changed")
    trainer = Trainer(quiet_config(tmp_path, epochs=1, batch_size=16, log_every=1000, **CONFIGS[config]), tiny_data)
    trainer.run(2)
    state = lambda: [t.detach().clone() for t in trainer.model.parameters()] + (  # noqa: E731
        [t.clone() for t in trainer.ema.shadow] if trainer.ema else [])
    before = state()
    optimizer_before = {(i, k): v.clone() if isinstance(v, torch.Tensor) else v
                        for i, p in enumerate(trainer.model.parameters())
                        for k, v in trainer.optimizer.state[p].items()}
    x = next(iter(trainer.loader.batches()))
    result = trainer.train_step(x * float("nan"))
    assert not bool(result.applied) and trainer.guard.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(state(), before))
    optimizer_after = {(i, k): v for i, p in enumerate(trainer.model.parameters())
                       for k, v in trainer.optimizer.state[p].items()}
    for key, value in optimizer_before.items():
        after = optimizer_after[key]
        assert torch.equal(after, value) if isinstance(value, torch.Tensor) else after == value, key
    result = trainer.train_step(x)
    assert bool(result.applied) and not all(torch.equal(a, b) for a, b in zip(state(), before))
