"""Optimizers: torch's fused Adam/AdamW, or the same update over float32 master weights for a bf16 model.

Under bf16 autocast a model keeps float32 weights: every forward casts each weight to bf16 and every backward casts
each weight gradient back to float32, two extra passes over the weights per step. On the CPU MLP VAE those casts
and their cache misses were ~12% of a step (benchmarks/README.md). ``MasterWeightAdam`` instead leaves the model
in bf16, so the forward and backward read and write bf16 only, and keeps the float32 weights in the optimizer
state. Its step is one native call (``kernels/optimizer_impl.cpp``) that makes one pass over every tensor: it reads
the bf16 gradient and the float32 master and moments, and writes them back together with the new bf16 weights. The
float32 master is what lets updates smaller than a bf16 ulp accumulate, so training matches autocast's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam as adam_update
from torch.optim.adamw import adamw as adamw_update

from .. import native
from . import native_optim
from .guard import flag_nonfinite
from .quiet_optim import quiet_step, zero_grad

LOW_PRECISION = (torch.bfloat16, torch.float16)


def make_optimizer(name: str, module: nn.Module, *, lr: float, weight_decay: float, device: torch.device,
                   master_weights: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                   extra_params: tuple[torch.Tensor, ...] = ()) -> torch.optim.Optimizer:
    """Adam or AdamW (``name``) over ``module``'s parameters and ``extra_params`` (e.g. the LDM recipe's logvar):
    torch's fused implementation (one kernel per step on CPU and CUDA alike), or with ``master_weights`` a
    ``MasterWeightAdam`` that also converts ``module`` to bf16."""
    decoupled = name == "adamw"
    if master_weights:
        if extra_params:
            raise ValueError("master weights cover a module's parameters only")
        return MasterWeightAdam.for_module(module, lr=lr, betas=betas, weight_decay=weight_decay,
                                           decoupled_weight_decay=decoupled)
    fused = device.type in ("cpu", "cuda")
    # capturable: the fused update already keeps its step counts on the device and does not read the flag, but
    # torch refuses to capture step() into a CUDA graph without it (whole-step mode, vaefast.train.capture).
    params = [*trained_parameters(module), *extra_params]
    if fused:
        return NativeAdam(params, lr=lr, betas=betas, weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                          capturable=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)


def trained_parameters(module: nn.Module) -> list[nn.Parameter]:
    """What an optimizer steps: the parameters that take gradients (not a frozen encoder's)."""
    return [p for p in module.parameters() if p.requires_grad]


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` device flag (GradScaler's protocol) by leaving
    everything untouched: torch's fused Adam/AdamW, NativeAdam and MasterWeightAdam."""
    return isinstance(optimizer, MasterWeightAdam) or all(group.get("fused") for group in optimizer.param_groups)


def apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skip: torch.Tensor) -> None:
    """Step ``optimizer`` through ``scaler`` unless ``skip`` is set: torch's fused Adam and MasterWeightAdam take the
    flag as GradScaler's ``found_inf`` and leave parameters, moments and step counts untouched."""
    if skips_on_device(optimizer):
        if not scaler.is_enabled():  # with fp16 the scaler passes its own overflow flag
            optimizer.found_inf = skip
        scaler.step(optimizer)
    elif not bool(skip):  # an optimizer without found_inf support: the decision is read on the host
        scaler.step(optimizer)
    scaler.update()


class NativeAdam(torch.optim.Adam):
    """torch's fused Adam (AdamW with ``decoupled_weight_decay=True``) whose step over float32 CPU parameters is
    one native call (``kernels/optimizer_impl.cpp``): one parallel region for every tensor of the step, with
    torch.optim's update rule and its state (``exp_avg``, ``exp_avg_sq``, a float32 ``step`` tensor per
    parameter), so a state dict moves between this and ``torch.optim.Adam(fused=True)`` either way. Elsewhere (CUDA,
    other dtypes, amsgrad, maximize, a GradScaler's unscaling) ``torch.optim.Adam.step`` runs.

    ``found_inf`` (GradScaler's protocol, a one-element float flag): nonzero skips the step, leaving parameters,
    moments and step counts untouched. With ``check_gradients`` the step also skips when a gradient is not finite,
    and sets ``found_inf`` to 1, as torch's ``_amp_foreach_non_finite_check_and_unscale_`` sets it: the NaN guard's
    check, folded into the update's own parallel region (each thread checks the chunks it then updates), instead
    of a separate pass that reads and rewrites every gradient.

    ``flush_subnormals`` (the native x86-64 path, with ``eps`` of at least float32's smallest normal number): the
    update reads subnormal values as zero and writes zero for subnormal results, where torch keeps them. When a unit
    stops receiving gradient (a dead ReLU) its first moment decays by ``beta1`` per step into the subnormal range,
    where the update's arithmetic takes microcode assists: in the MLP's training a quarter of the moments sat there,
    and the update ran 1.5x slower (docs/performance.md). A flushed moment changes no weight larger than
    ``2e-31 * lr / eps`` (the update would be below half its ulp); with False, the bits are torch's in that range
    too.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, decoupled_weight_decay: bool = False,
                 capturable: bool = False, check_gradients: bool = False, flush_subnormals: bool = True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True,
                         capturable=capturable, decoupled_weight_decay=decoupled_weight_decay)
        self.check_gradients = check_gradients
        self.flush_subnormals = flush_subnormals

    @quiet_step
    def step(self, closure=None):
        loss = _closure_loss(closure)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None and self.check_gradients:  # the check needs a flag to set, even a local one
            found_inf = torch.zeros(())
        groups = [self._native_tensors(group) for group in self.param_groups]
        if getattr(self, "grad_scale", None) is not None or any(g is None for g in groups) \
                or not _host_flag(found_inf):
            self._torch_step()
            return loss
        check = self.check_gradients
        if check and len(groups) > 1:  # all or nothing across groups: check every gradient before any update
            check = False
            if not native_optim.all_finite([g for _, grads, *_ in groups for g in grads]):
                found_inf.fill_(1.0)
        for group, (params, grads, exp_avgs, exp_avg_sqs, steps) in zip(self.param_groups, groups):
            native_optim.adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, found_inf=found_inf,
                                   check_grads=check, flush_subnormals=self.flush_subnormals, **_hyper(group))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grad(self, set_to_none, super().zero_grad)

    def _native_tensors(self, group: dict) -> tuple[list[torch.Tensor], ...] | None:
        """(params, grads, exp_avgs, exp_avg_sqs, step tensors) of ``group``'s parameters that have gradients, the
        state created as torch.optim.Adam creates it; None when the group is not for the native kernel."""
        if group["amsgrad"] or group["maximize"] or group["differentiable"] or not native_master_step_available() \
                or isinstance(group["betas"][0], torch.Tensor) or isinstance(group["betas"][1], torch.Tensor):
            return None
        float32, strided = torch.float32, torch.strided
        tensors = params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:  # one pass, no generators: this runs every step
            grad = p.grad
            if grad is None:
                continue
            if not (p.is_cpu and p.dtype == float32 and grad.dtype == float32 and grad.layout == strided
                    and p.is_contiguous() and grad.is_contiguous()):
                return None
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"]
            if not (step.is_cpu and step.dtype == float32):
                return None
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(step)
        return tensors

    @torch.no_grad()
    def _torch_step(self) -> None:
        if not self.check_gradients:
            super().step()
            return
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        given = getattr(self, "found_inf", None)
        found_inf = given if given is not None else torch.zeros((), device=grads[0].device if grads else "cpu")
        flag_nonfinite(grads, found_inf)
        self.found_inf = found_inf
        try:
            super().step()
        finally:
            if given is None:
                del self.found_inf


def native_master_step_available() -> bool:
    return native.load_error() is None


class MasterWeightAdam(torch.optim.Optimizer):
    """Adam (or AdamW with ``decoupled_weight_decay=True``) with the torch.optim update rule, for parameters held
    in bfloat16 or float16 whose float32 master weights this optimizer keeps.

    Build it with ``for_module``, which takes the master weights from the module's float32 parameters and then
    converts the module, so that no precision of the initialization is lost. The state (``state_dict``) holds the
    masters, so a run resumed from a checkpoint continues bit for bit. CPU tensors use the native fused kernel;
    elsewhere, or without the kernel, the same update runs through torch.optim's functional Adam on the masters
    followed by a copy into the parameters. ``found_inf``, ``check_gradients`` and ``flush_subnormals`` work as in
    ``NativeAdam``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, decoupled_weight_decay: bool = False, check_gradients: bool = False,
                 flush_subnormals: bool = True):
        if not lr >= 0.0 or not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self.check_gradients = check_gradients
        self.flush_subnormals = flush_subnormals

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            state = self.state[p]
            # Taken now, while a parameter built in float32 still is float32 (see for_module).
            state["master"] = p.detach().to(torch.float32, copy=True)
            state["exp_avg"] = torch.zeros_like(state["master"])
            state["exp_avg_sq"] = torch.zeros_like(state["master"])
            # A Python int, not torch.optim's 0-dim tensor: a tensor increment per parameter per step was ~20 µs
            # of a 1.5 ms CPU step.
            state["step"] = 0

    @classmethod
    def for_module(cls, module: nn.Module, dtype: torch.dtype = torch.bfloat16, **kwargs) -> "MasterWeightAdam":
        """Masters from ``module``'s current (float32) parameters, then ``module.to(dtype)``: the parameters stay
        the same objects, now holding the low-precision copies."""
        if dtype not in LOW_PRECISION:
            raise ValueError(f"master weights are for bfloat16 or float16 models, not {dtype}")
        optimizer = cls(trained_parameters(module), **kwargs)
        module.to(dtype)  # frozen parameters too: they compute in the run's precision
        return optimizer

    def _check(self, p: torch.Tensor) -> None:
        if p.dtype not in LOW_PRECISION:
            raise TypeError(f"MasterWeightAdam updates bfloat16/float16 parameters, got one of {p.dtype} with shape "
                            f"{tuple(p.shape)}: convert the model after building the optimizer "
                            "(MasterWeightAdam.for_module does both)")
        if p.grad is not None and p.grad.dtype != p.dtype:
            raise TypeError(f"gradient dtype {p.grad.dtype} differs from its parameter's {p.dtype}")

    @quiet_step
    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        if self._skip():
            return loss
        found_inf = getattr(self, "found_inf", None)
        calls, fallback = [], []  # (group, its native parameters of one dtype); (group, a parameter for torch)
        for group in self.param_groups:
            native: dict[torch.dtype, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._check(p)
                if self._native(p) and _host_flag(found_inf):
                    if self.state[p]["master"].shape != p.shape:  # the kernel writes numel() elements of both
                        raise ValueError(f"parameter of shape {tuple(p.shape)} no longer matches its master weight "
                                         f"{tuple(self.state[p]['master'].shape)}: was it replaced after the "
                                         "optimizer was built?")
                    native.setdefault(p.dtype, []).append(p)
                else:
                    fallback.append((group, p))
            # One native call per dtype for the whole group: per-tensor calls cost ~5-8 us each in Python and
            # foreign-call overhead, as much as the update of a 300k-element tensor.
            calls += [(group, params) for params in native.values()]
        # The check folds into the kernel when one call updates everything; else all gradients are checked first.
        folded = self.check_gradients and len(calls) == 1 and not fallback
        if self.check_gradients and not folded and not self.grads_finite():
            if found_inf is not None:
                found_inf.fill_(1.0)
            return loss
        if folded and found_inf is None:
            found_inf = torch.zeros(())
        for group, p in fallback:
            self._torch_step(p, self.state[p], _hyper(group))
        for group, params in calls:
            states = [self.state[p] for p in params]
            # The kernel counts float32 step tensors; this optimizer keeps Python ints, so it lends it copies.
            counts = list(torch.tensor([float(state["step"]) for state in states], dtype=torch.float32))
            native_optim.adam_step(params, [p.grad.contiguous() for p in params], [s["exp_avg"] for s in states],
                                   [s["exp_avg_sq"] for s in states], counts, masters=[s["master"] for s in states],
                                   found_inf=found_inf if folded else None, check_grads=folded,
                                   flush_subnormals=self.flush_subnormals, **_hyper(group))
            if folded and _host_value(found_inf) != 0:
                return loss
            for state in states:
                state["step"] = int(state["step"]) + 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grad(self, set_to_none, super().zero_grad)

    def _skip(self) -> bool:
        """Whether the trainer's ``found_inf`` flag asks to skip this step. The native kernel is driven from the
        host and its flag lives in CPU memory, so reading it is a memory load, not a device sync; off CPU the
        flag (and a tensor learning rate) is read from the device: the host reads of a master-weights step there."""
        found_inf = getattr(self, "found_inf", None)
        return found_inf is not None and _host_value(found_inf) != 0

    @torch.no_grad()
    def grads_finite(self) -> bool:
        """Whether every gradient is finite: the NaN guard's check, one read-only pass over the bf16 gradients in
        one native call per dtype. Off the native path the per-tensor flags stay on the device and are read once
        (one host sync, not one per parameter)."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        native: dict[torch.dtype, list[torch.Tensor]] = {}
        others = []
        for g in grads:
            if self._native(g):
                native.setdefault(g.dtype, []).append(g)
            else:
                others.append(torch.isfinite(g).all())
        if not all(native_optim.all_finite(group) for group in native.values()):
            return False
        return not others or bool(torch.stack(others).all())

    @staticmethod
    def _native(p: torch.Tensor) -> bool:
        return p.device.type == "cpu" and p.is_contiguous() and native_master_step_available()

    @staticmethod
    def _torch_step(p: torch.Tensor, state: dict, hyper: dict) -> None:
        update = adamw_update if hyper["decoupled"] else adam_update
        # The functional form takes the step count as a CPU tensor and increments it itself.
        step = torch.tensor(float(state["step"]))
        update([state["master"]], [p.grad.float()], [state["exp_avg"]], [state["exp_avg_sq"]], [], [step],
               foreach=False, amsgrad=False, beta1=hyper["beta1"], beta2=hyper["beta2"], lr=hyper["lr"],
               weight_decay=hyper["weight_decay"], eps=hyper["eps"], maximize=False)
        state["step"] = int(step.item())
        p.copy_(state["master"])

    def load_state_dict(self, state_dict: dict) -> None:
        if any("master" not in saved for saved in state_dict["state"].values()):
            raise ValueError("this optimizer state has no float32 master weights: it was saved by another "
                             "optimizer (e.g. torch.optim.Adam without master weights)")
        params = [p for group in self.param_groups for p in group["params"]]
        masters = {id(p): self.state[p]["master"] for p in params if "master" in self.state[p]}
        super().load_state_dict(state_dict)
        # torch.optim casts each floating state tensor to its parameter's dtype on load; here the masters and the
        # moments must stay float32, as saved. The masters are loaded into the tensors they were, which an EMA of
        # them keeps reading.
        for index, saved in state_dict["state"].items():
            state = self.state[params[index]]
            for key in ("master", "exp_avg", "exp_avg_sq"):
                value = saved[key].to(device=params[index].device, dtype=torch.float32, copy=True)
                kept = masters.get(id(params[index])) if key == "master" else None
                state[key] = kept.copy_(value) if kept is not None and kept.shape == value.shape else value

    def masters(self) -> dict[int, torch.Tensor]:
        """``id(param) -> float32 master`` (the tensors an EMA of the weights averages)."""
        return {id(p): self.state[p]["master"] for group in self.param_groups for p in group["params"]}

    def master_state_dict(self, module: nn.Module) -> dict:
        """``module.state_dict()`` with each parameter replaced by its float32 master (buffers as they are): the
        full-precision weights, loadable into a float32 copy of the model."""
        masters = self.masters()
        by_name = {name: masters[id(p)] for name, p in module.named_parameters() if id(p) in masters}
        return {name: by_name.get(name, value) for name, value in module.state_dict().items()}


def _closure_loss(closure):
    """torch.optim's closure protocol: the closure re-evaluates the model, with gradients on, and returns the loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _hyper(group: dict) -> dict:
    """The hyperparameters of ``group`` as the update functions take them (a tensor lr read from host memory)."""
    beta1, beta2 = group["betas"]
    return dict(lr=_host_value(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"])


def _host_flag(flag: torch.Tensor | None) -> bool:
    """Whether ``flag`` (a found_inf) is absent or a one-element float32 CPU tensor the native kernel can write."""
    return flag is None or (flag.device.type == "cpu" and flag.dtype == torch.float32 and flag.numel() == 1
                            and flag.is_contiguous())


def _host_value(value: float | torch.Tensor) -> float:
    """A float, or a one-element tensor's value: from CPU memory through numpy (a load, not a device sync and not a
    dispatcher call), from another device with a host read."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.device.type == "cpu":
        return float((value.detach() if value.requires_grad else value).numpy().reshape(()))
    return float(value)
