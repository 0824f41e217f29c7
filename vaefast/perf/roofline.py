"""The training step's compute roofline: its matrix products and convolutions timed alone, in the run's precision.

For each Linear, Conv2d and ConvTranspose2d of the model, on operands of the shapes it sees in a training step
(found with forward hooks), the kernels autograd calls are timed alone, without autograd: the forward product with
its bias, and in backward the input's gradient (not for the first layer, whose input is data), the weight's and the
bias's. The sum of their medians is the time a
step could take if nothing but those kernels ran; ``batch / that`` is the images/s ceiling the trainer is measured
against, in the same run, since the machine's own speed moves between runs.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
from torch import nn

COMPUTE_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def layer_inputs(model: nn.Module, x: torch.Tensor, autocast=None) -> list[tuple[nn.Module, torch.Size]]:
    """(layer, its input shape) for each compute layer a forward of ``x`` runs, in the order they run."""
    seen: list[tuple[nn.Module, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].shape)))
             for m in model.modules() if isinstance(m, COMPUTE_LAYERS)]
    try:
        with torch.no_grad(), autocast or nullcontext():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _kernels(layer: nn.Module, shape: torch.Size, dtype: torch.dtype, input_grad: bool):
    """The calls one training step makes for ``layer``, as a closure over preallocated operands: the forward
    product (with its bias) and the backward's input gradient (unless the input is data), weight gradient and bias
    gradient, as autograd would call them, in ``dtype``."""
    weight = layer.weight.detach().to(dtype)
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    x = torch.randn(shape, device=weight.device, dtype=dtype)
    if isinstance(layer, nn.Linear):
        flat = x.reshape(-1, shape[-1])
        grad = torch.randn(flat.shape[0], weight.shape[0], device=weight.device, dtype=dtype)

        def once():
            torch.addmm(bias, flat, weight.t()) if bias is not None else flat.mm(weight.t())
            if input_grad:
                grad.mm(weight)
            grad.t().mm(flat)
            if bias is not None:
                grad.sum(0)
        return once
    transposed = isinstance(layer, nn.ConvTranspose2d)
    conv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    extra = (layer.output_padding,) if transposed else ()
    out = conv(x, weight, bias, layer.stride, layer.padding, *extra, layer.groups, layer.dilation) if transposed \
        else conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    grad = torch.randn_like(out)
    bias_sizes = None if bias is None else [bias.shape[0]]
    output_padding = list(layer.output_padding) if transposed else [0, 0]

    def once():
        if transposed:
            conv(x, weight, bias, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
        else:
            conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, list(layer.stride), list(layer.padding),
                                            list(layer.dilation), transposed, output_padding, layer.groups,
                                            [input_grad, True, bias is not None])
    return once


def layer_seconds(layer: nn.Module, shape: torch.Size, *, dtype: torch.dtype, input_grad: bool, rounds: int = 15,
                  sync=lambda: None) -> float:
    """Median seconds of ``layer``'s forward and backward kernels alone on operands of ``shape``."""
    once = _kernels(layer, shape, dtype, input_grad)
    with torch.no_grad():
        for _ in range(3):
            once()
        times = []
        for _ in range(rounds):
            sync()
            t0 = time.perf_counter()
            once()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_compute_roofline(model: nn.Module, x: torch.Tensor, *, autocast=None, dtype: torch.dtype = torch.float32,
                          rounds: int = 15) -> dict:
    """The compute kernels of one training step timed alone, in ``dtype`` (the run's compute precision): per layer
    and in total, and the images/s ceiling."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    rows = []
    for index, (layer, shape) in enumerate(layer_inputs(model, x, autocast)):
        seconds = layer_seconds(layer, shape, dtype=dtype, input_grad=index > 0, rounds=rounds, sync=sync)
        rows.append({"layer": repr(layer), "input": list(shape), "seconds": seconds})
    total = sum(row["seconds"] for row in rows)
    return {"layers": rows, "seconds_per_step": total, "images_per_s": x.shape[0] / total if total else None}
