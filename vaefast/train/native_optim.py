"""Launchers of the native kernels that ``MasterWeightAdam`` (vaefast.train.optim) steps with."""

from __future__ import annotations

import ctypes
import math

import torch

from ..native import check, dtype_code, library, threads


def adam_master_step(masters, grads, exp_avgs, exp_avg_sqs, params, steps, *, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, decoupled: bool) -> None:
    """One fused Adam/AdamW step in place over lists of tensors, in one call: float32 ``masters``/``exp_avgs``/
    ``exp_avg_sqs``, low-precision ``grads`` and ``params`` of one dtype (each param becomes its master rounded to
    that dtype), ``steps`` the step count of each tensor after this step. The caller passes contiguous CPU tensors
    whose sizes match per position (``MasterWeightAdam`` checks them)."""
    count = len(params)
    if count == 0:
        return
    meta = (ctypes.c_int64 * (6 * count))()
    factors = (ctypes.c_float * (2 * count))()
    corrections = {}
    for i, (master, grad, exp_avg, exp_avg_sq, param, step) in enumerate(
            zip(masters, grads, exp_avgs, exp_avg_sqs, params, steps)):
        meta[6 * i:6 * i + 6] = (param.numel(), master.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(),
                                 exp_avg_sq.data_ptr(), param.data_ptr())
        if step not in corrections:
            corrections[step] = (lr / (1.0 - beta1**step), 1.0 / math.sqrt(1.0 - beta2**step))
        factors[2 * i:2 * i + 2] = corrections[step]
    status = library().vf_adam_master_step(dtype_code(params[0]), count, meta, factors, lr, beta1, beta2, eps,
                                           weight_decay, int(decoupled), threads())
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
