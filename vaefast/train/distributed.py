"""Process-group setup for runs launched by torchrun, and the few collectives the trainer needs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and MASTER_ADDR/PORT or a c10d rendezvous);
without them the run is a single process and every collective is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | None = None, backend: str | None = None, timeout_s: float = 300.0):
        """Join the torchrun job described by the environment, if any.

        The backend is nccl for CUDA devices and gloo for CPU unless ``backend`` says otherwise; each rank uses
        its LOCAL_RANK GPU. On CPU the cores are split evenly among the ranks of a node (torchrun's default of one
        thread per rank wastes the rest); VAEFAST_NUM_THREADS overrides. A collective that waits longer than
        ``timeout_s`` (a peer died or hangs) raises, so the job never hangs silently.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        ctx = cls(rank=int(os.environ.get("RANK", "0")), world_size=world_size,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if not use_cuda:
            threads = os.environ.get("VAEFAST_NUM_THREADS")
            if threads or ctx.local_world_size > 1:
                torch.set_num_threads(int(threads) if threads else max(1, (os.cpu_count() or 1) // ctx.local_world_size))
        if not ctx.enabled:
            return ctx
        ctx.backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(ctx.local_rank)
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=timeout_s)
            dist.init_process_group(ctx.backend, timeout=timeout, store=_attempt_store(ctx, timeout),
                                    rank=ctx.rank, world_size=ctx.world_size)
        return ctx

    def device(self, requested: str | None) -> torch.device:
        if requested and requested != "cuda":
            return torch.device(requested)
        if torch.cuda.is_available() and requested != "cpu":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def describe(self) -> str:
        return f"{self.world_size} process{'es' if self.world_size > 1 else ''}"

    def all_reduce_(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=op)
        return tensor

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _attempt_store(ctx: DistContext, timeout: datetime.timedelta) -> dist.Store | None:
    """The store of this attempt of a torchrun job, or None for init_process_group's own (env://).

    Under torchrun the workers connect to the agent's store, which outlives a restart (--max-restarts), and the keys
    the last attempt's process group wrote there (each rank's Gloo address) stay: a restarted rank read its dead
    peer's address and failed with "connection refused", or both waited in ProcessGroupGloo's constructor (4 of 8
    kills here). Each attempt's keys go under a prefix of its own instead."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ctx.world_size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"vaefast/attempt_{attempt}", agent)
