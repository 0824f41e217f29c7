"""An exponential moving average of the weights, kept in float32.

``ema = d * ema + (1 - d) * w`` after every applied optimizer step, with ``d = min(decay, (1 + n) / (10 + n))``
after n updates (the warm-up diffusers' EMAModel and timm use, so that a short run's average is not mostly the
initialization; ``warmup=False`` uses ``decay`` throughout), over each parameter's float32 value:
the parameter itself in fp32 or autocast training, its float32 master with master weights (a bf16 shadow would
stall: at decay 0.999 an update is below half a bf16 ulp). One multi-tensor lerp per step. Checkpoints store the
shadow by parameter name, so resume is exact, and eval, sample and inspect use it unless told not to.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    def __init__(self, named_sources: dict[str, torch.Tensor], decay: float, warmup: bool = True):
        """``named_sources``: parameter name -> the float32 tensor the optimizer updates (read, never written)."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.names = list(named_sources)
        self.sources = [named_sources[name] for name in self.names]
        if any(t.dtype != torch.float32 for t in self.sources):
            raise ValueError("the EMA averages float32 weights; with bf16 weights pass the float32 masters")
        self.shadow = [t.detach().clone() for t in self.sources]
        # On the device, like the weights: a host count would be frozen into a captured step (vaefast.train.capture);
        # int64, as vaefast.train.schedules.step_counter says why.
        self._updates = torch.zeros((), dtype=torch.int64, device=self.shadow[0].device if self.shadow else "cpu")

    @property
    def updates(self) -> int:
        """EMA steps taken so far (a host read: for checkpoints and tests)."""
        return int(self._updates)

    @classmethod
    def for_model(cls, model: nn.Module, decay: float, masters: dict[int, torch.Tensor] | None = None) -> "WeightEMA":
        """Over ``model``'s trained parameters (a frozen encoder has nothing to average), or over their float32
        masters (``id(param) -> master``) when given."""
        masters = masters or {}
        return cls({name: masters.get(id(p), p) for name, p in model.named_parameters() if p.requires_grad}, decay)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, skip: torch.Tensor | None = None) -> None:
        """One EMA step. ``skip``, a float device flag (1.0 when the optimizer skipped the step), weights the lerp
        by 0 then, so the host never reads it; the warm-up counts the steps, skipped ones too. The decay is computed
        on the device from a device count, so a captured step replays it correctly."""
        if self.warmup:
            updates = self._updates.double()
            decay = torch.clamp_max((1.0 + updates) / (10.0 + updates), self.decay)
        else:
            decay = torch.full_like(self._updates, self.decay, dtype=torch.float64)
        weight = (1.0 - decay).float()
        if skip is not None:
            weight = weight * (1.0 - skip)
        torch._foreach_lerp_(self.shadow, self.sources, [weight] * len(self.shadow))
        self._updates.add_(1)

    def state_dict(self) -> dict:
        return {"shadow": dict(zip(self.names, self.shadow)), "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.names) - set(state["shadow"]))
        if missing:
            raise ValueError(f"the checkpoint's EMA lacks {', '.join(missing[:5])}")
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(state["shadow"][name])
        self._updates.fill_(state["updates"])


@torch.no_grad()
def load_ema_weights(model: nn.Module, ema_state: dict) -> None:
    """Overwrite ``model``'s parameters with the EMA shadow of a checkpoint (buffers stay as trained)."""
    params = dict(model.named_parameters())
    for name, value in ema_state["shadow"].items():
        params[name].copy_(value)
