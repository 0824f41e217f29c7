"""A CPU stand-in for the CUDA-graph API (``torch.cuda.CUDAGraph``, ``graph``, ``Stream``) with CUDA graphs' semantics,
to test on CPU that a step survives capture and replay.

Capturing records every aten op (and custom op) that reaches the dispatcher, autograd's backward included, with
the very tensors it read and wrote; at the end of the capture every tensor an op wrote and the RNG state are put
back as they were, because recording a CUDA graph runs nothing. ``replay`` runs the recorded ops again on the same
tensors, writing fresh outputs into the tensors the capture allocated, so a replay changes exactly what the GPU's
would: weights, optimizer state and device counters advance, while Python state touched during the capture (a
host int, a float baked into an op) stays frozen. A host read inside the capture raises, as CUDA's does
("operation not permitted when stream is capturing").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

HOST_READS = {torch.ops.aten._local_scalar_dense.default}


class HostReadDuringCapture(RuntimeError):
    pass


def _written_tensors(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors ``func`` writes in place (its schema's ``Tensor(a!)`` arguments, lists included)."""
    written = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = kwargs.get(arg.name) if arg.name in kwargs else (args[i] if i < len(args) else None)
        written += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return written


class EmulatedGraph:
    def __init__(self):
        self.ops = []  # (func, args, kwargs, [(output, freshly allocated)])
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        # Below autograd, where the ops were recorded: a replay, like a GPU's, builds no autograd graph.
        with torch._C._AutoDispatchBelowADInplaceOrView():
            for func, args, kwargs, outputs in self.ops:
                result = func(*args, **kwargs)
                for (output, fresh), value in zip(outputs, tree_flatten(result)[0]):
                    if fresh:
                        output.copy_(value)


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: EmulatedGraph):
        super().__init__()
        self.graph = graph
        self.snapshots = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            raise HostReadDuringCapture(f"{func} (a host read of a device value) inside a captured step")
        for tensor in _written_tensors(func, args, kwargs):
            self.snapshots.append((tensor, tensor.clone()))
        result = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        outputs = [(t, isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs)
                   for t in tree_flatten(result)[0]]
        self.graph.ops.append((func, args, kwargs, outputs))
        return result


class _Stream:
    def wait_stream(self, other) -> None:
        pass


class EmulatedCudaGraphs:
    """The subset of ``torch.cuda`` that vaefast.train.capture.WholeStep uses."""

    CUDAGraph = EmulatedGraph

    def __init__(self):
        self.captures = 0

    @staticmethod
    def Stream():  # noqa: N802 - torch.cuda's name
        return _Stream()

    @staticmethod
    def current_stream():
        return _Stream()

    @staticmethod
    @contextmanager
    def stream(_):
        yield

    @contextmanager
    def graph(self, graph: EmulatedGraph, capture_error_mode: str = "global"):
        assert capture_error_mode in ("global", "thread_local", "relaxed"), capture_error_mode
        self.captures += 1
        rng = torch.get_rng_state()
        recorder = _Recorder(graph)
        with recorder:
            yield
        with torch._C._AutoDispatchBelowADInplaceOrView():
            for tensor, before in reversed(recorder.snapshots):
                tensor.copy_(before)
        torch.set_rng_state(rng)
