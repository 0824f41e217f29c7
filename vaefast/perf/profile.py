"""`vaefast profile`: N training steps under torch.profiler, with every stage labelled.

Traces are written by `tensorboard_trace_handler`, so `tensorboard --logdir DIR` shows them in the PyTorch
Profiler tab (torch-tb-profiler); the same `*.pt.trace.json` files are Chrome trace-event JSON and open in
https://ui.perfetto.dev or chrome://tracing, which is the upstream recommendation now that the TensorBoard plugin
is deprecated. On CUDA the stages are also NVTX ranges, so Nsight Systems shows the same names.
"""

from __future__ import annotations

from pathlib import Path

from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from .. import instrument as stage_labels
from ..config import TrainConfig
from ..train import Trainer


def profile_training(cfg: TrainConfig, *, steps: int = 10, out: str | Path = "profile", wait: int = 1,
                     warmup: int = 2, record_shapes: bool = True, profile_memory: bool = False,
                     with_stack: bool = False, top: int = 15) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.logging.progress, cfg.logging.tensorboard = False, False
    stage_labels.enable(True)
    try:
        trainer = Trainer(cfg)
        cuda = trainer.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
                     on_trace_ready=tensorboard_trace_handler(str(out)), record_shapes=record_shapes,
                     profile_memory=profile_memory, with_stack=with_stack) as prof:
            trainer.run(wait + warmup + steps, on_step=lambda _: prof.step())
        trainer.close()
    finally:
        stage_labels.enable(False)
    return summarize(prof, out, steps, cuda, top)


def summarize(prof, out: Path, steps: int, cuda: bool, top: int) -> dict:
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total_attr = "device_time_total" if cuda else "cpu_time_total"
    step_time = sum(e.cpu_time_total for e in events if e.key.startswith("ProfilerStep"))
    ops = sorted((e for e in events if e.key not in stage_labels.STAGES and not e.key.startswith("ProfilerStep")),
                 key=lambda e: getattr(e, attr), reverse=True)
    top_ops = [{"name": e.key, "self_time_us": getattr(e, attr), "calls": e.count} for e in ops[:top]]
    stages = {}
    for name in stage_labels.STAGES:
        match = [e for e in events if e.key == name]
        time_us = sum(e.cpu_time_total for e in match)
        stages[name] = {"time_us": time_us, "share_of_step": time_us / step_time if step_time else 0.0,
                        "calls": sum(e.count for e in match)}
    traces = sorted(str(p) for p in out.glob("*.pt.trace.json"))
    return {"steps": steps, "step_time_us": step_time / max(steps, 1), "time_basis": total_attr,
            "stages": stages, "top_ops": top_ops, "traces": traces}


def format_report(report: dict) -> str:
    lines = [f"{report['steps']} profiled steps, {report['step_time_us'] / 1e3:.3f} ms per step (CPU wall time "
             "of the ProfilerStep ranges)", "", "stage          share of step   time/step", "-" * 44]
    for name, row in report["stages"].items():
        lines.append(f"{name:<14} {100 * row['share_of_step']:>12.1f}%   {row['time_us'] / report['steps'] / 1e3:.3f} ms")
    lines += ["", f"top operators by self time ({report['time_basis'].replace('_total', '')})", "-" * 60]
    for op in report["top_ops"]:
        lines.append(f"{op['name'][:44]:<44} {op['self_time_us'] / 1e3:>9.2f} ms  x{op['calls']}")
    lines += ["", "traces (TensorBoard: tensorboard --logdir DIR; or open in https://ui.perfetto.dev):"]
    lines += [f"  {t}" for t in report["traces"]]
    return "\n".join(lines)
