"""Launchers of the native optimizer kernels (``kernels/optimizer.h``) that ``NativeAdam`` and ``MasterWeightAdam``
(vaefast.train.optim) step with."""

from __future__ import annotations

import ctypes

import torch

from ..native import check, dtype_code, library, threads

# Per tensor: n, master, grad, exp_avg, exp_avg_sq, param, step count (kernels/optimizer.h).
META_FIELDS = 7


def adam_step(params, grads, exp_avgs, exp_avg_sqs, step_counters, *, masters=None,
              found_inf: torch.Tensor | None = None, check_grads: bool = False, flush_subnormals: bool = False,
              lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool) -> None:
    """One fused Adam/AdamW step in place over lists of contiguous CPU tensors of matching sizes, in one call.

    ``params`` and ``grads`` share one dtype: float32 (the weights themselves; ``masters`` None), or bfloat16 /
    float16 with float32 ``masters`` (each param becomes its master rounded). ``step_counters``: one-element
    float32 tensors, each tensor's step count, which the kernel reads for the bias corrections and increments when
    the step is applied (torch.optim's state).

    ``found_inf``: GradScaler's one-element float32 CPU flag. Nonzero skips the step; with ``check_grads`` a
    non-finite gradient sets it to 1 and skips it too.

    ``flush_subnormals`` (x86-64, and only with an eps of at least float32's smallest normal): the update treats
    subnormal inputs and results as zero, where torch keeps them (kernels/optimizer.h)."""
    count = len(params)
    if count == 0:
        return
    meta = (ctypes.c_int64 * (META_FIELDS * count))()
    for i, (param, grad, exp_avg, exp_avg_sq, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs,
                                                                      step_counters)):
        meta[META_FIELDS * i:META_FIELDS * (i + 1)] = (
            param.numel(), 0 if masters is None else masters[i].data_ptr(), grad.data_ptr(), exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(), param.data_ptr(), step.data_ptr())
    hyper = (ctypes.c_double * 5)(lr, beta1, beta2, eps, weight_decay)
    flag = None if found_inf is None else found_inf.data_ptr()
    status = library().vf_adam_step(dtype_code(params[0]), count, meta, flag, int(check_grads), hyper,
                                    int(decoupled), int(flush_subnormals), threads())
    check(status, "Adam step")


def all_finite(tensors) -> bool:
    """Whether every element of the contiguous CPU ``tensors`` (one tensor or a list, all of one dtype) is finite:
    one read-only pass in one call."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    if not tensors:
        return True
    count = len(tensors)
    sizes = (ctypes.c_int64 * count)(*(t.numel() for t in tensors))
    data = (ctypes.c_void_p * count)(*(t.data_ptr() for t in tensors))
    result = library().vf_all_finite(dtype_code(tensors[0]), count, sizes, data, threads())
    if result < 0:
        check(-result, "finiteness check")
    return result == 1
