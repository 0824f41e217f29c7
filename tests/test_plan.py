"""The run plan: each policy decision, taken once with its reason, for CPU and (as a policy, without a GPU) CUDA."""

import pytest
import torch

from vaefast.plan import COMPILE_MIN_STEPS, plan_run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_cpu_defaults_run_eagerly_and_say_why():
    plan = plan_run(device=CPU, precision="fp32", total_steps=10_000)
    assert (plan.compile, plan.cuda_graphs, plan.master_weights) == (False, False, False)
    assert "no faster on cpu" in plan.reasons["compile"]
    assert "eager" in plan.describe() and "fp32" in plan.describe()


def test_long_cuda_runs_compile_with_cuda_graphs_on_one_device_only():
    one = plan_run(device=CUDA, precision="bf16", total_steps=COMPILE_MIN_STEPS)
    assert one.compile and one.compile_mode == "reduce-overhead" and one.cuda_graphs
    ddp = plan_run(device=CUDA, precision="bf16", total_steps=COMPILE_MIN_STEPS, distributed=True)
    assert ddp.compile and ddp.compile_mode == "default" and not ddp.cuda_graphs
    short = plan_run(device=CUDA, precision="bf16", total_steps=COMPILE_MIN_STEPS - 1)
    assert not short.compile and "too few" in short.reasons["compile"]


def test_explicit_settings_win():
    plan = plan_run(device=CPU, precision="bf16", compile=True, compile_mode="reduce-overhead", master_weights=False)
    assert plan.compile and plan.compile_mode == "reduce-overhead" and not plan.cuda_graphs  # no graphs on CPU
    assert plan.reasons["compile"] == "as requested"


def test_master_weights_default_on_for_single_process_bf16_cpu_with_the_native_step():
    assert plan_run(device=CPU, precision="bf16", native_master_step=True).master_weights
    assert not plan_run(device=CPU, precision="bf16", native_master_step=False).master_weights
    assert not plan_run(device=CPU, precision="bf16", native_master_step=True, distributed=True).master_weights
    with pytest.raises(ValueError, match="master weights are for bf16"):
        plan_run(device=CPU, precision="fp32", master_weights=True)


def test_the_plan_is_frozen_and_its_autocast_matches_the_precision():
    plan = plan_run(device=CPU, precision="bf16")
    with pytest.raises(AttributeError):
        plan.precision = "fp32"
    with plan.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with plan_run(device=CPU, precision="fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")
