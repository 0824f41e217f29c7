"""BatchNorm over the global batch of a DDP job, on every device: the discriminator's BatchNorm under DDP.

A PatchGAN normalizes with its batch's statistics in training; under DDP each rank would see only its share, and
the discriminator would differ from the one process on the same global batch. torch's ``SyncBatchNorm`` fixes that
with CUDA-only kernels and refuses CPU tensors; this one all-reduces the sums with torch.distributed.nn's
autograd-aware ``all_reduce``, so the gloo runs of the tests execute the same code as NCCL runs on GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class GlobalBatchNorm:
    """A BatchNorm (same parameters, buffers and state-dict keys) whose training statistics are those of the whole
    batch across the process group; outside training or a multi-process group it is the plain BatchNorm. Mixed into
    ``nn.BatchNorm2d`` (images) and ``nn.BatchNorm3d`` (clips)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        wide = torch.promote_types(x.dtype, torch.float32)
        xw, dims, shape = x.to(wide), (0, *range(2, x.dim())), (1, -1, *[1] * (x.dim() - 2))
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=wide, device=x.device)
        sums = dist_nn.all_reduce(torch.cat([xw.sum(dims), count]))
        n, mean = sums[-1], sums[:-1] / sums[-1]
        centered = xw - mean.view(shape)  # two passes, as BatchNorm itself: no E[x²] - E[x]² cancellation
        var = dist_nn.all_reduce(centered.square().sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        unbiased = var * (n / (n - 1).clamp_min(1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class GlobalBatchNorm2d(GlobalBatchNorm, nn.BatchNorm2d):
    pass


class GlobalBatchNorm3d(GlobalBatchNorm, nn.BatchNorm3d):
    pass


def synchronize_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with each BatchNorm2d / BatchNorm3d replaced by its global form holding the same parameters and
    buffers."""
    kinds = {nn.BatchNorm2d: GlobalBatchNorm2d, nn.BatchNorm3d: GlobalBatchNorm3d}
    if type(module) in kinds:
        synced = kinds[type(module)](module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats, device=module.weight.device if module.affine else None)
        synced.load_state_dict(module.state_dict())
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, synchronize_batch_norm(child))
    return module
