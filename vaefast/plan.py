"""The run plan: every policy decision of a run (device, precision, compile, master weights, CUDA graphs) taken
once, with its reason, in a small frozen object that the trainer, eval and the CLI share and print.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# reduce-overhead and max-autotune replay the compiled graphs as CUDA graphs on CUDA devices.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# vaefast's own mode: the whole step (forward, backward, optimizer) compiled, and on CUDA captured as one CUDA graph
# (vaefast.train.capture).
WHOLE_STEP = "whole-step"
# Below this many steps, compiling on CUDA costs more than it saves (see RunPlan.compile's reason).
COMPILE_MIN_STEPS = 2_000


# "0" or "1": what `--precision auto` takes this machine to have (bf16 hardware or not), to run here what auto
# chooses on another kind of CPU (the test suite runs both ways, docs/testing.md).
NATIVE_BF16_ENV = "VAEFAST_NATIVE_BF16"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here, so that bf16 autocast is a speed-up rather than an emulation."""
    forced = os.environ.get(NATIVE_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Private torch.cpu probes, pinned against /proc/cpuinfo by tests/test_version_pins.py.
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    return _precision(precision, device)[0]


def autocast(precision: str, device: torch.device, cache: bool = True):
    """The autocast context of a resolved precision (a no-op context for fp32). ``cache=False`` for a step captured
    as a CUDA graph: autocast's cast cache must not outlive the capture (PyTorch's CUDA-graphs notes)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision], cache_enabled=cache)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16", resolved
    compile: bool
    compile_mode: str
    master_weights: bool
    cuda_graphs: bool  # the compiled step replays CUDA graphs, whose outputs must be copied out to outlive a step
    reasons: dict[str, str]
    whole_step: bool = False  # compile the whole step; on CUDA, capture it as one CUDA graph

    def autocast(self):
        return autocast(self.precision, self.device, cache=not self.whole_step)

    def describe(self) -> str:
        compiled = f"compile {self.compile_mode}" if self.compile else "eager"
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        if self.whole_step and self.device.type == "cuda":
            graphs = ", the whole step as one CUDA graph"
        extras = (", master weights" if self.master_weights else "") + graphs
        why = "; ".join(f"{key}: {reason}" for key, reason in self.reasons.items())
        return f"{self.device} {self.precision}, {compiled}{extras} ({why})"


def _precision(requested: str, device: torch.device) -> tuple[str, str]:
    if requested != "auto":
        return requested, "as requested"
    if native_bf16(device):
        return "bf16", "auto: the hardware computes bf16 natively"
    return "fp32", "auto: no native bf16 here"


def _compile(requested: bool | None, device: torch.device, total_steps: int) -> tuple[bool, str]:
    """Explicit wins. Otherwise never on CPU, where compiling the forward and loss (or the whole step) cost seconds
    and measured no faster per step; on CUDA for long runs, where the small MLP and conv VAEs are bound by the
    host's kernel launches and CUDA graphs lift that (benchmarks/README.md)."""
    if requested is not None:
        return requested, "as requested"
    if device.type != "cuda":
        return False, f"auto: compiling measured no faster on {device.type}"
    if total_steps < COMPILE_MIN_STEPS:
        return False, f"auto: {total_steps} steps are too few to repay compilation"
    return True, f"auto: {total_steps} steps on CUDA"


def _compile_mode(requested: str | None, device: torch.device, distributed: bool) -> tuple[str, str]:
    """Explicit wins. Otherwise reduce-overhead on one CUDA device (measured there), and default under DDP, whose
    gradient collectives inside CUDA graphs were not run here (one GPU)."""
    if requested is not None:
        return requested, "as requested"
    if device.type == "cuda" and not distributed:
        return "reduce-overhead", "auto: CUDA graphs on one CUDA device"
    return "default", "auto"


def _whole_step(mode: str, mode_why: str, distributed: bool, master_weights: bool | None,
                recipe: bool = False) -> tuple[str, str]:
    """Whole-step capture where it can work; elsewhere the default mode, with the reason."""
    if mode != WHOLE_STEP:
        return mode, mode_why
    if recipe:
        return "default", ("whole-step falls back to default: the LDM recipe's step takes gradients in several "
                           "autograd calls and steps two optimizers, decided by the step count on the host")
    if distributed:
        return "default", ("whole-step falls back to default: DDP's gradient all-reduce inside a captured step has "
                           "not been run")
    if master_weights:
        return "default", ("whole-step falls back to default: master weights step through a host-driven native "
                           "kernel, not torch's fused Adam")
    return mode, mode_why


def _master_weights(requested: bool | None, precision: str, device: torch.device, distributed: bool,
                    native_step: bool, whole_step: bool = False, recipe: bool = False) -> tuple[bool, str]:
    """Explicit wins (bf16 only). Otherwise on for bf16 on CPU in one process with the native kernel, where the
    weight casts it removes were a tenth of a step (benchmarks/README.md). Under DDP the bf16 model would
    all-reduce bf16 gradients, so it stays opt-in there."""
    if requested is not None:
        if requested and precision != "bf16":
            raise ValueError(f"master weights are for bf16 training, but precision resolved to {precision}")
        return requested, "as requested"
    if whole_step:
        return False, "auto: off, whole-step needs torch's fused Adam"
    if recipe:
        return False, "auto: off, the LDM recipe steps logvar and the discriminator with torch's fused Adam"
    on = precision == "bf16" and device.type == "cpu" and not distributed and native_step
    return on, "auto: bf16 on CPU in one process with the native kernel" if on else "auto: off"


def plan_run(*, device: torch.device, precision: str = "auto", compile: bool | None = None,
             compile_mode: str | None = None, master_weights: bool | None = None, distributed: bool = False,
             total_steps: int = 0, native_master_step: bool = False, recipe: bool = False) -> RunPlan:
    """Resolve the requested settings (None or "auto" meaning: decide here) into a RunPlan."""
    precision, precision_why = _precision(precision, device)
    compiled, compile_why = _compile(compile, device, total_steps)
    mode, mode_why = _compile_mode(compile_mode, device, distributed)
    if compiled:
        mode, mode_why = _whole_step(mode, mode_why, distributed, master_weights, recipe)
    whole_step = compiled and mode == WHOLE_STEP
    masters, masters_why = _master_weights(master_weights, precision, device, distributed, native_master_step,
                                           whole_step, recipe)
    reasons = {"precision": precision_why, "compile": compile_why, "master weights": masters_why}
    if compiled:
        reasons["compile mode"] = mode_why
    return RunPlan(device=device, precision=precision, compile=compiled, compile_mode=mode, master_weights=masters,
                   cuda_graphs=compiled and device.type == "cuda" and mode in CUDA_GRAPH_MODES, reasons=reasons,
                   whole_step=whole_step)
