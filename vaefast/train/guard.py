"""The NaN/Inf guard: non-finite updates are skipped on the device, and training stops with a diagnosis after
too many in a row."""

from __future__ import annotations

import torch

HINTS = (
    "Hints: lower the learning rate (--lr) or clip gradients (--clip-grad 1.0); keep the logvar clamp on "
    "(clamp (-10, 10) stops exp(logvar) from overflowing, above logvar ~ 11 in fp16); with --precision fp16 try "
    "bf16, whose range does not overflow; check the data for NaN or values outside [0, 1]."
)


class NonFiniteTraining(RuntimeError):
    """Training produced only non-finite steps for too long; the message says where it went wrong."""


class NaNGuard:
    """Counts skipped (non-finite) steps on the device and stops training after ``max_consecutive`` in a row.

    The host never waits for a step's verdict: ``record`` updates device counters (skipped steps, the current and
    the longest streak) and copies them to host memory without blocking, and the counters are looked at once that
    copy has landed: at once on CPU, where there is no device to wait for; on CUDA at a later step's ``record``
    (the copy is usually a step or two behind) and at the latest at ``check``, which waits for it and runs on log
    steps, before checkpoints and at epoch ends. So on a GPU the stop with diagnosis can come up to ``log_every``
    steps after the streak reached ``max_consecutive``; the skipped steps in between changed nothing.
    """

    def __init__(self, max_consecutive: int, device: torch.device | str = "cpu", companions: list | None = None):
        self.max_consecutive = max_consecutive
        self.device = torch.device(device)
        # [skipped, consecutive, the longest streak since the start]: a streak that reaches the limit is caught even
        # when the host only sees the counters of a later step. Float32, exact to 2^24 steps, so that a step's
        # update is three in-place ops with the float skip flag.
        self.counters = torch.zeros(3, device=self.device)
        self._keep = torch.tensor([1.0, 0.0, 1.0], device=self.device)
        self._streak_axis = torch.tensor([0.0, 1.0, 0.0], device=self.device)
        self._count_axis = torch.tensor([1.0, 1.0, 0.0], device=self.device)
        self._factor = torch.empty(3, device=self.device)
        self._streak, self._longest = self.counters[1:2], self.counters[2:]
        cuda = self.device.type == "cuda"
        # On CPU the counters are host memory already: no copy. The numpy view reads them with no dispatcher call.
        self._host = self.counters if self.device.type == "cpu" else torch.zeros(3, pin_memory=cuda)
        self._host_values = self._host.numpy()
        self._copied = torch.cuda.Event() if cuda else None
        self._diagnose = None
        self.companions: list[NaNGuard] = companions or []  # guards of other updates of the step, checked with it

    @property
    def skipped(self) -> int:
        """Steps skipped so far (a host read: for summaries and log steps)."""
        return int(self.counters[0])

    @skipped.setter
    def skipped(self, value: int) -> None:
        self.counters[0] = value

    @property
    def consecutive(self) -> int:
        return int(self.counters[1])

    def record(self, skip: torch.Tensor, diagnose) -> None:
        """Count a step from its float device flag (1.0: skipped) without reading it on the host."""
        self.count(skip)
        self.publish(diagnose)

    def count(self, skip: torch.Tensor) -> None:
        """The device half of ``record``: in-place tensor ops only, so it can run inside a captured step."""
        torch.addcmul(self._keep, self._streak_axis, skip, out=self._factor)  # [1, skip, 1]
        self.counters.mul_(self._factor).addcmul_(self._count_axis, skip)  # [skipped + s, (streak + 1)·s, longest]
        torch.maximum(self._longest, self._streak, out=self._longest)

    def publish(self, diagnose) -> None:
        """The host half: start the counters' copy to host memory (outside any captured graph: it records an event)
        and act on the last copy that has landed."""
        self._diagnose = diagnose
        if self._host is not self.counters:
            self._host.copy_(self.counters, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        self._look()

    def check(self) -> None:
        """Wait for the counters of the last recorded step and act on them (log steps, checkpoints, epoch ends)."""
        if self._copied is not None:
            self._copied.synchronize()
        self._look()
        for guard in self.companions:
            guard.check()

    def _look(self) -> None:
        if self._copied is not None and not self._copied.query():
            return  # not landed yet: a later record or check looks
        longest = int(self._host_values[2])  # host memory: no device read
        if longest >= self.max_consecutive:
            raise NonFiniteTraining(
                f"{longest} consecutive steps had a non-finite loss or gradient; training stopped. "
                f"{self._diagnose() if self._diagnose else 'no diagnosis'}. {HINTS}"
            )


def diagnose_non_finite(model: torch.nn.Module, plan, x: torch.Tensor) -> str:
    """Which of a batch's intermediate tensors, and which parameters or gradients, are non-finite."""
    from ..models.objective import NegativeELBO

    with torch.no_grad(), plan.autocast():
        nll, out = NegativeELBO(model).terms(x)
    return non_finite_report({"input": x, "mu": out.mu, "logvar": out.logvar, "z": out.z,
                              "decoder output": out.decoded, "reconstruction loss": nll, "kl": out.kl}, model)


def non_finite_report(named_tensors: dict[str, torch.Tensor | None], model: torch.nn.Module) -> str:
    """Which tensors and which parameters' gradients hold NaN or Inf (slow path: only after bad steps)."""
    bad = [name for name, t in named_tensors.items() if t is not None and not torch.isfinite(t).all()]
    bad_params = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    bad_grads = [name for name, p in model.named_parameters()
                 if p.grad is not None and not torch.isfinite(p.grad).all()]
    parts = [f"non-finite tensors: {', '.join(bad) or 'none'}"]
    if bad_grads:
        parts.append(f"non-finite gradients: {', '.join(bad_grads[:8])}{' ...' if len(bad_grads) > 8 else ''}")
    if bad_params:
        parts.append(f"non-finite parameters: {', '.join(bad_params[:8])}")
    return "; ".join(parts)


class SkipDecision:
    """Whether a step's update must be skipped, decided on the device as a float flag (1.0: skip; GradScaler's
    ``found_inf`` convention), from the loss and the gradients, the same on every rank.

    An optimizer with a ``check_gradients`` switch (NativeAdam, MasterWeightAdam) is asked to check the gradients
    itself, inside its update's own pass, and to set the flag it is given; the decision then holds the loss's half
    until the optimizer has run. That is the same decision on every rank: the gradients it checks are the
    all-reduced ones."""

    def __init__(self, model: torch.nn.Module, optimizer, device: torch.device, *, scaler_enabled: bool, dist):
        self.model, self.optimizer, self.device, self.dist = model, optimizer, device, dist
        self.scaler_enabled = scaler_enabled
        self.optimizer_checks = hasattr(optimizer, "check_gradients") and not scaler_enabled

    def __call__(self, loss_nonfinite: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """``loss_nonfinite``: the losses' ``nonfinite_flag`` (their maximum over the micro-batches). Returns the
        flag as a 0-dim float tensor, which an optimizer that checks the gradients itself may still set."""
        skip = loss_nonfinite if loss_nonfinite.dim() == 0 else loss_nonfinite.view(())  # DDP's losses are [1]
        if not self.scaler_enabled:  # with fp16 the scaler itself skips steps whose gradients overflowed
            if grad_norm is not None:  # clipping computed the norm anyway: a non-finite gradient makes it so
                skip = torch.maximum(skip, nonfinite_flag(grad_norm).view(()))
            elif not self.optimizer_checks:
                skip = torch.maximum(skip, self.grads_nonfinite().view(()))
        if self.optimizer_checks:
            self.optimizer.check_gradients = grad_norm is None
        if self.dist.enabled:
            # All ranks take the same decision, so they never diverge: any rank's NaN skips the step everywhere.
            skip = self.dist.all_reduce_(skip.view(1), op=torch.distributed.ReduceOp.MAX).view(())
        return skip

    def grads_nonfinite(self) -> torch.Tensor:
        """1.0 where a gradient is non-finite (``flag_nonfinite``)."""
        found_inf = torch.zeros(1, device=self.device)
        flag_nonfinite([p.grad for p in self.model.parameters() if p.grad is not None], found_inf)
        return found_inf


def nonfinite_flag(value: torch.Tensor) -> torch.Tensor:
    """1.0 where the one-element ``value`` (a loss, a norm) is NaN or infinite, else 0.0: a float32 tensor of its
    shape, on its device, never read on the host. ``v - v`` is exactly 0 for every finite v and NaN otherwise, and
    NaN becomes 1: two ops (no comparison, whose bool result a float flag would need converted), where
    ``torch.isfinite`` (four ops on CPU), a negation and a cast take six."""
    v = value.detach()
    if v.dtype != torch.float32:
        v = v.float()
    return (v - v).nan_to_num_(nan=1.0)


_UNIT_SCALES: dict[torch.device, torch.Tensor] = {}


def flag_nonfinite(grads: list[torch.Tensor], found_inf: torch.Tensor) -> None:
    """Set the one-element float ``found_inf`` to 1 if any of ``grads`` holds a NaN or Inf, on the device and without
    a host read: GradScaler's own multi-tensor check with a scale of 1 (it also rewrites each gradient times 1), one
    pass per device. The private torch kernel is pinned by the gradient-only NaN tests (tests/test_trainer.py,
    tests/test_native_adam.py)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, device_grads in by_device.items():
        unit = _UNIT_SCALES.get(device)
        if unit is None:  # made once per device: not a fill kernel per step
            unit = _UNIT_SCALES[device] = torch.ones(1, device=device)
        flag = found_inf if found_inf.device == device else torch.zeros_like(found_inf, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(device_grads, flag, unit)
        if flag is not found_inf:
            found_inf.copy_(torch.maximum(found_inf, flag.to(found_inf.device)))
