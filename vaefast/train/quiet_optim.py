"""torch.optim's per-step wrappers, run only when they have something to do.

Every torch.optim optimizer's ``step`` is wrapped in a profiler range and its hook loops, and ``zero_grad`` in
another range and a dynamo guard. With no profiler on and no hook registered they do nothing, but each is a few
dispatcher and Python calls per step, and on the CPU every call in the step costs several times what it costs
alone, because the step's matrix products and optimizer pass evict the interpreter's caches between them
(docs/performance.md, issue #28). NativeAdam and MasterWeightAdam use these instead; tests/test_native_adam.py pins
that hooks, the profiler's ranges and torch.compile see what torch.optim gives them.
"""

from __future__ import annotations

import functools

import torch
from torch.optim import optimizer as torch_optimizer


def quiet_step(step):
    """``step`` wrapped as torch.optim wraps every optimizer's step (``Optimizer.profile_hook_step``: the profiler
    range and the step pre- and post-hooks) while a profiler is on or a hook is registered, and called directly
    otherwise. Marked ``hooked``, so that torch.optim does not wrap it again."""
    hooked = torch.optim.Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if torch.autograd._profiler_enabled() or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks \
                or _global_step_hooks[0] or _global_step_hooks[1]:
            return hooked(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    wrapper.hooked = True
    return wrapper


# torch.optim's registries of hooks for every optimizer (register_optimizer_step_pre_hook and _post_hook).
_global_step_hooks = (torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks)


def zero_grad(optimizer: torch.optim.Optimizer, set_to_none: bool, torch_zero_grad) -> None:
    """torch.optim's ``zero_grad``, and with ``set_to_none`` in eager mode without a profiler the same thing
    without its idle profiler range and its dynamo guard: every gradient set to None."""
    if not set_to_none or torch.autograd._profiler_enabled() or torch.compiler.is_compiling():
        torch_zero_grad(set_to_none)
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
