"""The weight EMA: its math, float32 shadows of bf16 models, exact resume, and eval's use of it."""

import pytest
import torch

from vaefast.checkpoint import load_checkpoint
from vaefast.config import TrainConfig
from vaefast.eval.report import evaluate_checkpoint, load_model
from vaefast.models.ema import WeightEMA
from vaefast.train import Trainer

from conftest import quiet_config


def test_ema_follows_the_closed_form():
    """After updates with weights w_1..w_k: ema_k = d^k w_0 + (1 - d) sum_i d^(k-i) w_i."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g)
    ema = WeightEMA({"w": w}, decay=0.9, warmup=False)
    history = [w.clone().double()]
    for _ in range(7):
        w.add_(torch.randn(5, 3, generator=g))  # the optimizer updates the source in place
        ema.update()
        history.append(w.clone().double())
    k, d = len(history) - 1, 0.9
    expected = d ** k * history[0] + sum((1 - d) * d ** (k - i) * history[i] for i in range(1, k + 1))
    torch.testing.assert_close(ema.state_dict()["shadow"]["w"].double(), expected, rtol=1e-6, atol=1e-6)


def test_ema_decay_warms_up():
    """(1 + n) / (10 + n) until it reaches the decay: 0.1, 2/11, 3/12, ... then 0.9 from n = 80 on (81/90)."""
    w = torch.zeros(3)
    ema = WeightEMA({"w": w}, decay=0.9)
    decays = []
    for _ in range(100):
        decays.append(ema.current_decay())
        w.add_(1.0)
        ema.update()
    assert decays[:3] == pytest.approx([0.1, 2 / 11, 3 / 12]) and decays[80:] == [0.9] * 20
    assert ema.updates == 100
    expected = torch.zeros(3, dtype=torch.float64)
    for n, d in enumerate(decays):
        expected = d * expected + (1 - d) * (n + 1)
    torch.testing.assert_close(ema.shadow[0].double(), expected, rtol=1e-6, atol=1e-5)


def test_ema_refuses_bad_decays_and_low_precision_sources():
    with pytest.raises(ValueError, match="decay must lie in"):
        WeightEMA({"w": torch.zeros(2)}, decay=1.0)
    with pytest.raises(ValueError, match="float32 masters"):
        WeightEMA({"w": torch.zeros(2, dtype=torch.bfloat16)}, decay=0.9)
    with pytest.raises(ValueError, match=r"--ema must be in \[0.0, 1.0\), got 1.5"):
        TrainConfig.from_options(ema=1.5)


def _cfg(tmp_path, name, **kw):
    cfg = quiet_config(tmp_path / name, ema=0.9, **kw)
    cfg.model.hidden, cfg.model.latent_dim = [64], 8
    return cfg


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_with_ema_is_bit_exact(tmp_path, tiny_data, precision):
    master_weights = precision == "bf16"
    full = Trainer(_cfg(tmp_path, "full", precision=precision, master_weights=master_weights), tiny_data)
    full.fit()
    if master_weights:  # the shadow reads the float32 masters, not the bf16 parameters
        masters = [full.optimizer.state[p]["master"] for p in full.model.parameters()]
        assert all(s is m for s, m in zip(full.ema.sources, masters))
    part = Trainer(_cfg(tmp_path, "part", precision=precision, master_weights=master_weights, max_steps=11),
                   tiny_data)
    part.fit()
    resumed = Trainer(_cfg(tmp_path, "resumed", precision=precision, master_weights=master_weights,
                           resume=str(part.checkpointer.latest())), tiny_data)
    resumed.fit()
    assert resumed.ema.updates == full.ema.updates == full.step
    for name, shadow in full.ema.state_dict()["shadow"].items():
        assert shadow.dtype == torch.float32
        assert torch.equal(resumed.ema.state_dict()["shadow"][name], shadow), name
    assert not all(torch.equal(s, t) for s, t in zip(full.ema.shadow, full.ema.sources))  # it lags the weights


def test_eval_uses_the_ema_unless_told_not_to(tmp_path, tiny_data):
    trainer = Trainer(_cfg(tmp_path, "run", precision="fp32"), tiny_data)
    trainer.fit()
    checkpoint = trainer.checkpointer.latest()
    ema_state = load_checkpoint(checkpoint)["ema"]
    with_ema, _ = load_model(checkpoint)
    trained, _ = load_model(checkpoint, use_ema=False)
    for name, p in with_ema.named_parameters():
        assert torch.equal(p, ema_state["shadow"][name])
    assert not all(torch.equal(a, b) for a, b in zip(with_ema.parameters(), trained.parameters()))
    a = evaluate_checkpoint(checkpoint, data=None, limit=128).test_neg_elbo_nats
    b = evaluate_checkpoint(checkpoint, data=None, limit=128, use_ema=False).test_neg_elbo_nats
    assert a != b
