"""Whole-step mode (vaefast.train.capture): the step, captured once and replayed, trains exactly as the plain step
does, in every configuration; compiled whole on CPU it trains as the eager step does, without recompiling.

There is no GPU here, so the capture runs against tests/graph_emulator.py, a CPU stand-in with CUDA graphs'
semantics: a replay re-runs the recorded ops on the same tensors and nothing else, so any state the step keeps on
the host (a Python counter, a float baked into an op) would freeze and the trajectories would part.
"""

import pytest
import torch
from conftest import quiet_config
from graph_emulator import EmulatedCudaGraphs, HostReadDuringCapture

from vaefast.models import ModelConfig
from vaefast.plan import plan_run
from vaefast.train import Trainer
from vaefast.train.capture import WholeStep
from vaefast.train.optim import NativeAdam

STEPS = 9

CONFIGS = {
    "fp32": {},
    "bf16 autocast": {"precision": "bf16", "master_weights": False},
    "fp16 GradScaler": {"precision": "fp16"},
    "clip": {"clip_grad": 1.0},
    "KL warm-up, cosine lr": {"kl_warmup_steps": 5, "lr_schedule": "cosine"},
    "KL cycles": {"kl_cycles": 3},
    "free bits": {"free_bits": 0.05},
    "grad accumulation": {"grad_accum": 2},
    "EMA": {"ema": 0.9},
    "randn noise": {"noise": "randn"},
    "activation checkpointing": {"activation_checkpointing": True},
    "IWAE, 3 samples, DReG": {"samples": 3, "objective": "iwae", "estimator": "dreg"},
    "conv, spatial latent": {"model": ModelConfig(kind="conv", channels=[8, 16], latent_channels=2, backend="torch")},
}
# The eager step calls the fused kernels from plain autograd Functions, which the emulator cannot see (the compiled
# step, which a GPU captures, calls them as custom ops: test_fused_custom_ops_replay covers those). So the trainer
# runs here use the torch reference of the loss, whose ops the emulator records.
# fp32 unless a configuration says otherwise: on a CPU with native bf16, "auto" would pick bf16 with master weights,
# whose host-driven native update the emulator cannot record.
REFERENCE_LOSS = {"model": ModelConfig(backend="torch"), "precision": "fp32"}


@pytest.fixture
def torch_adam(monkeypatch):
    """NativeAdam on torch's fused kernel, as it runs on CUDA: its native CPU path reads step counts and the learning
    rate from host memory, which a captured graph would freeze (and which the emulator, recording aten ops, would
    not replay), so the emulated-capture comparisons run both trainers on torch's update."""
    monkeypatch.setattr(NativeAdam, "_native_tensors", lambda self, group: None)


def _state(trainer) -> dict[str, torch.Tensor]:
    state = {f"param {name}": p.detach().clone() for name, p in trainer.model.named_parameters()}
    for i, p in enumerate(trainer.model.parameters()):
        for key, value in trainer.optimizer.state[p].items():
            state[f"optimizer {i} {key}"] = value.clone()
    if trainer.ema is not None:
        state.update({f"ema {i}": t.clone() for i, t in enumerate(trainer.ema.shadow)})
        state["ema updates"] = trainer.ema._updates.clone()
    state["guard"] = trainer.guard.counters.clone()
    state["lr"] = trainer.lr_schedule.values[0].clone()
    state["kl step"] = trainer.kl_schedule.step.clone()
    if trainer.noise_seeds is not None:
        state["noise draws"] = trainer.noise_seeds.draws.clone()
    if trainer.scaler.is_enabled():
        state["loss scale"] = trainer.scaler._scale.clone()
    return state


def _emulated_whole_step(trainer, graphs) -> WholeStep:
    """The trainer's own step function under whole-step capture, eager inside (the emulator records aten ops, which
    compiled kernels bypass)."""
    trainer.whole_step = WholeStep(trainer._step, compile=False, graphs=graphs)
    return trainer.whole_step


def _train(trainer, batches, poison=(), seed=None):
    if seed is not None:  # the two trainers of a comparison draw the same randn noise
        torch.manual_seed(seed)
    results = []
    for i, batch in enumerate(batches):
        group = [b * float("nan") if i in poison else b for b in batch]
        results.append(trainer.train_step(group))
        trainer.step += 1
    # Read only now: each step's result is the caller's to keep, a captured graph's replays included.
    return [torch.stack([result.nll, result.kl, result.applied.float()]) for result in results]


def _groups(trainer, steps):
    loader = iter(trainer.loader.batches())
    return [[next(loader) for _ in range(trainer.cfg.optim.grad_accum)] for _ in range(steps)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_captured_replays_train_exactly_like_plain_steps(tmp_path, tiny_data, torch_adam, name):
    cfg = dict(epochs=1, batch_size=16, log_every=1000, **{**REFERENCE_LOSS, **CONFIGS[name]})
    plain = Trainer(quiet_config(tmp_path / "plain", **cfg), tiny_data)
    captured = Trainer(quiet_config(tmp_path / "captured", **cfg), tiny_data)
    graphs = EmulatedCudaGraphs()
    whole = _emulated_whole_step(captured, graphs)
    batches = _groups(plain, STEPS)
    poison = {5}  # a NaN batch during the replays: skipped on the device, counted, nothing changed
    expected, got = _train(plain, batches, poison, seed=1), _train(captured, batches, poison, seed=1)
    assert graphs.captures == 1 and whole.captured and whole.graph.replays == STEPS - whole.warmup_steps
    for step, (a, b) in enumerate(zip(expected, got)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True, msg=f"{name}, step {step}: {b} vs {a}")
    assert got[5][2] == 0 and captured.guard.skipped == 1
    state_plain, state_captured = _state(plain), _state(captured)
    assert state_plain.keys() == state_captured.keys()
    for key, value in state_plain.items():
        assert torch.equal(value, state_captured[key]), (name, key)


def test_a_host_count_inside_the_step_would_be_caught(tmp_path, tiny_data, torch_adam):
    """The emulator's point: state kept on the host freezes at its captured value. A host-side EMA warm-up count
    (as WeightEMA had before whole-step) makes the replays part from the plain steps."""
    cfg = dict(epochs=1, batch_size=16, log_every=1000, ema=0.9, **REFERENCE_LOSS)
    plain = Trainer(quiet_config(tmp_path / "plain", **cfg), tiny_data)
    captured = Trainer(quiet_config(tmp_path / "captured", **cfg), tiny_data)
    for trainer in (plain, captured):
        ema, host_count = trainer.ema, [0]

        def update(skip, ema=ema, host_count=host_count):
            weight = 1.0 - min(ema.decay, (1 + host_count[0]) / (10 + host_count[0]))
            torch._foreach_lerp_(ema.shadow, ema.sources, [(1.0 - skip) * weight] * len(ema.shadow))
            host_count[0] += 1

        ema.update = update
    _emulated_whole_step(captured, EmulatedCudaGraphs())
    batches = _groups(plain, STEPS)
    _train(plain, batches), _train(captured, batches)
    assert not all(torch.equal(a, b) for a, b in zip(plain.ema.shadow, captured.ema.shadow))


def test_a_host_read_inside_the_step_fails_the_capture(tmp_path, tiny_data, torch_adam):
    trainer = Trainer(quiet_config(tmp_path, epochs=1, batch_size=16, log_every=1000, **REFERENCE_LOSS), tiny_data)
    step = trainer._step
    trainer.whole_step = WholeStep(lambda group: (step(group), float(trainer.guard.counters[0]))[0],
                                   compile=False, graphs=EmulatedCudaGraphs())
    batches = _groups(trainer, STEPS)
    with pytest.raises(HostReadDuringCapture):
        _train(trainer, batches)


def test_a_short_last_batch_runs_uncaptured_and_the_graph_resumes(tmp_path, tiny_data, torch_adam):
    """Batch 100 over 512 images: five full batches and a short one per epoch. The short one runs the plain step;
    the next epoch replays the same graph. The whole run matches plain training."""
    cfg = dict(epochs=2, batch_size=100, log_every=1000, ema=0.9, **REFERENCE_LOSS)
    plain = Trainer(quiet_config(tmp_path / "plain", **cfg), tiny_data)
    captured = Trainer(quiet_config(tmp_path / "captured", **cfg), tiny_data)
    graphs = EmulatedCudaGraphs()
    whole = _emulated_whole_step(captured, graphs)
    assert plain.run(12) == captured.run(12) == 12
    assert whole.uncaptured_calls == 2 and graphs.captures == 1 and whole.graph.replays == 10 - whole.warmup_steps
    state_plain, state_captured = _state(plain), _state(captured)
    for key, value in state_plain.items():
        assert torch.equal(value, state_captured[key]), key


def test_whole_step_compiled_on_cpu_trains_like_the_eager_step(tmp_path, tiny_data):
    """torch.compile of the whole step function (forward, backward, skip, optimizer, EMA, counters): the same
    trajectory within float tolerance, a skipped NaN step and a short batch (run uncompiled) included, and no
    recompilation after the first step."""
    cfg = dict(epochs=1, batch_size=16, log_every=1000, ema=0.9, kl_warmup_steps=4, lr_schedule="cosine",
               precision="fp32")  # compiled vs eager, not bf16 rounding (what "auto" picks on a bf16 CPU)
    eager = Trainer(quiet_config(tmp_path / "eager", **cfg), tiny_data)
    compiled = Trainer(quiet_config(tmp_path / "compiled", compile=True, compile_mode="whole-step", **cfg), tiny_data)
    assert compiled.plan.whole_step and compiled.whole_step is not None and compiled.loss_fn is compiled.objective
    # torch refuses to capture Adam.step() into a CUDA graph unless every group is capturable.
    assert all(group["capturable"] and group["fused"] for group in compiled.optimizer.param_groups)
    batches = _groups(eager, 6)
    batches.insert(4, [batches[4][0][:7]])
    torch._dynamo.reset()
    expected = _train(eager, batches, poison={3})
    got = _train(compiled, batches[:2], poison=())
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got += _train(compiled, batches[2:], poison={1})
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames, "recompiled after the first steps"
    assert compiled.whole_step.uncaptured_calls == 1
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert compiled.guard.skipped == eager.guard.skipped == 1
    state_eager, state_compiled = _state(eager), _state(compiled)
    for key, value in state_eager.items():
        torch.testing.assert_close(state_compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_plan_falls_back_where_whole_step_cannot_work():
    cpu = torch.device("cpu")
    plan = plan_run(device=cpu, precision="bf16", compile=True, compile_mode="whole-step", native_master_step=True)
    assert plan.whole_step and not plan.master_weights and "fused Adam" in plan.reasons["master weights"]
    ddp = plan_run(device=cpu, compile=True, compile_mode="whole-step", distributed=True)
    assert not ddp.whole_step and ddp.compile_mode == "default" and "DDP" in ddp.reasons["compile mode"]
    masters = plan_run(device=cpu, precision="bf16", compile=True, compile_mode="whole-step", master_weights=True)
    assert not masters.whole_step and masters.master_weights and "master weights" in masters.reasons["compile mode"]
    eager = plan_run(device=cpu, compile=False, compile_mode="whole-step")
    assert not eager.whole_step
    cuda = plan_run(device=torch.device("cuda"), precision="bf16", compile=True, compile_mode="whole-step")
    assert cuda.whole_step and not cuda.cuda_graphs and "the whole step as one CUDA graph" in cuda.describe()


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_fused_custom_ops_replay_like_eager_calls(backend):
    """The fused ops as the compiled (and on CUDA captured) step calls them, as torch.library custom ops, with a
    device seed advanced inside the step: captured once and replayed on new inputs, forward and backward, they give
    what eager calls give, with fresh noise on every replay and no host read."""
    from vaefast.ops.backends import unavailable_reason
    from vaefast.ops.dispatch import select

    if unavailable_reason(backend, "cpu") is not None:
        pytest.skip(unavailable_reason(backend, "cpu"))
    ops = select(backend, torch.device("cpu"), torch.float32)
    seed = torch.tensor([41], dtype=torch.int64)
    static = [torch.zeros(6, 20), torch.zeros(6, 20), torch.zeros(6, 30), torch.zeros(6, 30)]

    def step(latent, bce, inputs):
        mu, logvar, logits, target = [t.clone().requires_grad_(i < 3) for i, t in enumerate(inputs)]
        seed.add_(1)
        z, kl, _ = latent(mu, logvar, seed, -10.0, 10.0, False, True, 1)
        loss = bce(logits, target, False).sum() + kl.sum() + (z * z).sum()
        return [loss.detach(), *torch.autograd.grad(loss, [mu, logvar, logits])]

    def fresh():
        return [torch.randn(6, 20), torch.randn(6, 20), torch.randn(6, 30), torch.rand(6, 30)]

    graphs = EmulatedCudaGraphs()
    graph = graphs.CUDAGraph()
    with graphs.graph(graph):
        outputs = step(ops.latent_op, ops.bce_op, static)
    assert [func for func, *_ in graph.ops if "vaefast" in str(func)], "the custom ops were not recorded"
    for _ in range(3):
        inputs = fresh()
        for buffer, x in zip(static, inputs):
            buffer.copy_(x)
        graph.replay()
        seed.sub_(1)  # the eager call draws with the key the replay used
        expected = step(ops.latent, ops.bce, inputs)
        for got, want in zip(outputs, expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert int(seed) == 41 + 3


@pytest.mark.parametrize("compile_mode", ["default", "whole-step"])
def test_dreg_under_a_kl_warm_up_compiles_like_the_eager_step(tmp_path, tiny_data, compile_mode):
    """The DReG gradient hook (its factor 1 - β + β w̃ with β the step's device KL weight) under torch.compile of
    the loss and of the whole step: the same trajectory as eager steps while β warms up."""
    cfg = dict(epochs=1, batch_size=16, log_every=1000, samples=3, objective="iwae", estimator="dreg",
               kl_warmup_steps=6, precision="fp32")
    eager = Trainer(quiet_config(tmp_path / "eager", **cfg), tiny_data)
    compiled = Trainer(quiet_config(tmp_path / "compiled", compile=True, compile_mode=compile_mode, **cfg), tiny_data)
    batches = _groups(eager, 5)
    torch._dynamo.reset()
    expected = _train(eager, batches)
    got = _train(compiled, batches)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    state_eager, state_compiled = _state(eager), _state(compiled)
    for key, value in state_eager.items():
        torch.testing.assert_close(state_compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
