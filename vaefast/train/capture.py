"""The whole training step as one unit (``--compile-mode whole-step``): forward, backward, the device-side skip,
the optimizer update, the EMA and the schedules' advance, in one function over static input buffers.

The function is compiled with ``torch.compile`` and, on CUDA, captured once as a CUDA graph and then replayed, so
that a step costs the host one copy into the static input and one graph launch. That works because nothing in
the step lives on the host: the learning rate, the KL weight, the noise key, the NaN-guard and EMA counters are
device tensors advanced inside the step (vaefast.train.schedules, noise, guard; vaefast.models.ema), and the
optimizer is torch's fused Adam, which takes the skip flag as ``found_inf``.

Limits (the plan falls back to the ``default`` compile mode, and says why, where they bind):
- one process: DDP's gradient all-reduce inside a captured graph has not been run;
- torch's fused Adam/AdamW: the master-weights optimizer steps through a host-driven native kernel;
- one input shape: a group of another shape (an epoch's short last batch) runs the same step function uncompiled
  and uncaptured, and the next full group replays the graph again;
- on CUDA the first ``warmup_steps`` steps run on a side stream before the capture (real steps, as the PyTorch
  CUDA-graphs notes prescribe), and the graph's memory pool stays reserved for the run.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Sequence

import torch

WARMUP_STEPS = 3


class WholeStep:
    """Run ``step(micro_batches) -> outputs`` as described above. ``graphs`` is the CUDA graph API (``torch.cuda``
    on a CUDA device, None elsewhere: nothing to capture there); tests pass a CPU stand-in with the same methods."""

    def __init__(self, step: Callable[[list[torch.Tensor]], Sequence], *, compile: bool = True,
                 graphs: ModuleType | None = None, warmup_steps: int = WARMUP_STEPS):
        self.step = step
        self.compiled = torch.compile(step) if compile else step
        self.graphs = graphs
        self.warmup_steps = warmup_steps
        self.signature = None  # the (shape, dtype, device) of each micro-batch the step is compiled for
        self.static: list[torch.Tensor] | None = None  # the graph's input buffers (CUDA only)
        self.graph = None
        self.outputs = None
        self.calls = 0
        self.uncaptured_calls = 0  # groups of another shape, run by the plain step function

    @classmethod
    def for_device(cls, step, device: torch.device, *, compile: bool = True) -> "WholeStep":
        return cls(step, compile=compile, graphs=torch.cuda if device.type == "cuda" else None)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, micro_batches: list[torch.Tensor]):
        signature = [(x.shape, x.dtype, x.device) for x in micro_batches]
        if self.signature is None:
            self.signature = signature
        if signature != self.signature:
            self.uncaptured_calls += 1
            return self.step(micro_batches)
        self.calls += 1
        if self.graphs is None:  # nothing to capture: no static buffers, no copy
            return self.compiled(micro_batches)
        if self.static is None:
            self.static = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in micro_batches]
        for buffer, x in zip(self.static, micro_batches):
            buffer.copy_(x, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return _copies(self.outputs)
        if self.calls <= self.warmup_steps:
            return self._warm_up()
        return self._capture()

    def _warm_up(self):
        """A real step on a side stream: compilation, lazy library handles and allocator pools settle here, not in
        the capture."""
        side = self.graphs.Stream()
        side.wait_stream(self.graphs.current_stream())
        with self.graphs.stream(side):
            outputs = self.compiled(self.static)
        self.graphs.current_stream().wait_stream(side)
        return outputs

    def _capture(self):
        """Record the step into a graph (recording runs nothing), then replay it once for this step's update. The
        graph's output tensors are overwritten by each replay: callers get copies, which they may keep."""
        graph = self.graphs.CUDAGraph()
        # thread_local: a loader's threads (pinning the next batches) may call CUDA while this thread captures;
        # only this thread's calls must be capture-safe. The backward's device thread enqueues onto the captured
        # stream, so its kernels are recorded all the same.
        with self.graphs.graph(graph, capture_error_mode="thread_local"):
            outputs = self.compiled(self.static)
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return _copies(outputs)


def _copies(outputs):
    """The step's outputs (a tuple of tensors and Nones, e.g. a StepResult) with each tensor copied."""
    return type(outputs)(*(t.clone() if isinstance(t, torch.Tensor) else t for t in outputs))
