"""A graceful stop on SIGTERM or SIGINT: cluster preemption and Ctrl-C.

The first signal only sets a flag; the trainer finishes the step it is in, writes a checkpoint at that step
boundary, and ``vaefast train`` exits with ``PREEMPTED_EXIT_CODE`` (75, ``EX_TEMPFAIL``: try again), so a job
script or scheduler can requeue it with ``--resume`` and the run continues bit for bit. A second signal restores
the previous handlers and re-raises itself, so it acts at once (SIGTERM terminates, SIGINT raises
KeyboardInterrupt); the last complete checkpoint is never touched by that, since checkpoints are renamed into place
only once fully written. Under torchrun, which forwards the signal to every worker, the ranks agree on the stop at
the next log step (one all-reduce of the flag there), so they all write the same step. There a signal sent to the
job's process group (a scheduler's, or Ctrl-C) reaches each worker twice, directly and forwarded by the agent as it
stops the group; a repeat within ``FORWARDED_WINDOW_S`` is that same notice, not a second one (taken as a second,
it killed one rank in the middle of the others' last all-reduce).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch

PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_WINDOW_S = 5.0


class StopRequest:
    """Installed for the duration of a ``with`` block, in the main thread only (Python delivers signals there);
    elsewhere it never fires."""

    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.requested = False
        self._previous: dict[int, object] = {}
        self._first_at = 0.0
        self._under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self, dist, at_log_step: bool, device) -> bool:
        """A signal asked to stop: at once in one process; under DDP at a log step, where the ranks agree."""
        if not dist.enabled:
            return self.requested
        if not at_log_step:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        return bool(dist.all_reduce_(flag, op=torch.distributed.ReduceOp.MAX))

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self._under_torchrun and time.monotonic() - self._first_at < FORWARDED_WINDOW_S:
                return  # the agent's forward of the signal already received
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.requested = True
        self._first_at = time.monotonic()
        print(f"vaefast: {signal.Signals(signum).name} received: stopping with a checkpoint at the next step "
              "boundary; send it again to stop at once", file=sys.stderr, flush=True)
