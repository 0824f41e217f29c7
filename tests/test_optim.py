"""MasterWeightAdam: torch.optim's Adam/AdamW update on float32 masters of a bf16 model, native and fallback."""

import pytest
import torch

from vaefast.train import MasterWeightAdam
from vaefast.train.optim import NativeAdam, make_optimizer

SHAPES = [(300, 37), (37,), (5, 4, 3)]


def _module(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.ParameterList([torch.nn.Parameter(torch.randn(*s, generator=g) * 0.1) for s in SHAPES])


def _grads(step):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(*s, generator=g).bfloat16() for s in SHAPES]


def _run(module, optimizer, steps, first=0, lr_schedule=None):
    for step in range(first, first + steps):
        for p, grad in zip(module, _grads(step)):
            p.grad = grad.to(p.dtype)
        if lr_schedule:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule(step)
        optimizer.step()


@pytest.fixture(params=["native", "torch fallback"])
def path(request, monkeypatch):
    if request.param == "torch fallback":
        monkeypatch.setattr(MasterWeightAdam, "_native", staticmethod(lambda p: False))
    else:
        from vaefast import native

        if native.load_error():
            pytest.skip(native.load_error())
    return request.param


@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.01), (True, 0.1)])
def test_matches_torch_adam_on_float32(path, decoupled, weight_decay):
    """The masters follow torch.optim.Adam/AdamW run in float32 on the same (bf16-valued) gradients, and the model
    holds exactly the masters rounded to bf16."""
    schedule = lambda step: 1e-2 * (1 - step / 40)  # noqa: E731 - a changing lr, as schedulers set it
    reference = _module()
    ref_opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(reference, lr=1e-2, weight_decay=weight_decay)
    model = _module()
    opt = MasterWeightAdam.for_module(model, lr=1e-2, weight_decay=weight_decay, decoupled_weight_decay=decoupled)
    _run(reference, ref_opt, 25, lr_schedule=schedule)
    _run(model, opt, 25, lr_schedule=schedule)
    for p, ref in zip(model, reference):
        master = opt.state[p]["master"]
        assert p.dtype == torch.bfloat16 and master.dtype == torch.float32
        # Different association of the same float32 operations: a few ulp over 25 steps.
        torch.testing.assert_close(master, ref.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), master.bfloat16())
        assert opt.state[p]["step"] == 25


def test_for_module_keeps_the_float32_initialization():
    model = _module()
    before = [p.detach().clone() for p in model]
    opt = MasterWeightAdam.for_module(model)
    for p, original in zip(model, before):
        assert torch.equal(opt.state[p]["master"], original)
        assert p.dtype == torch.bfloat16


def test_small_updates_accumulate_in_the_master():
    """Updates far below a bf16 ulp still move the weights over many steps, which bf16 parameters alone lose."""
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(64))])
    opt = MasterWeightAdam.for_module(model, lr=1e-4)  # bf16 ulp at 1.0 is 2**-7, 78x this step
    for _ in range(400):
        model[0].grad = torch.ones(64, dtype=torch.bfloat16)
        opt.step()
    assert torch.allclose(opt.state[model[0]]["master"], torch.full((64,), 1 - 400e-4), atol=1e-4)
    assert (model[0].detach().float() < 0.97).all()


def test_state_dict_round_trip_keeps_float32_and_resumes_exactly(path, tmp_path):
    uninterrupted = _module()
    opt = MasterWeightAdam.for_module(uninterrupted, lr=1e-2)
    _run(uninterrupted, opt, 10)

    first = _module()
    opt_first = MasterWeightAdam.for_module(first, lr=1e-2)
    _run(first, opt_first, 6)
    torch.save({"optimizer": opt_first.state_dict(), "model": opt_first.master_state_dict(first)}, tmp_path / "c.pt")

    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed = _module(seed=1)  # other initial values: everything must come from the checkpoint
    opt_resumed = MasterWeightAdam.for_module(resumed, lr=1e-2)
    resumed.load_state_dict(saved["model"])
    opt_resumed.load_state_dict(saved["optimizer"])
    for p in resumed:
        assert all(opt_resumed.state[p][k].dtype == torch.float32 for k in ("master", "exp_avg", "exp_avg_sq"))
    _run(resumed, opt_resumed, 4, first=6)
    for p, q in zip(resumed, uninterrupted):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt_resumed.state[p]["master"], opt.state[q]["master"])


def test_master_state_dict_holds_float32_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = MasterWeightAdam.for_module(model)
    state = opt.master_state_dict(model)
    assert state["0.weight"].dtype == torch.float32
    assert torch.equal(state["0.weight"], opt.state[model[0].weight]["master"])
    assert state["1.running_mean"].dtype == torch.bfloat16  # buffers as the module holds them
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(state)


def test_bad_parameters_and_hyperparameters_are_named():
    with pytest.raises(TypeError, match="bfloat16/float16 parameters, got one of torch.float32 with shape"):
        opt = MasterWeightAdam(_module().parameters())
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        opt.step()
    with pytest.raises(ValueError, match="betas"):
        MasterWeightAdam(_module().parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="for bfloat16 or float16 models"):
        MasterWeightAdam.for_module(_module(), dtype=torch.float64)


def test_make_optimizer_choices():
    module = _module()
    plain = make_optimizer("adamw", module, lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    assert isinstance(plain, NativeAdam) and plain.param_groups[0]["decoupled_weight_decay"]
    assert next(module.parameters()).dtype == torch.float32
    master = make_optimizer("adamw", module, lr=1e-3, weight_decay=0.1, device=torch.device("cpu"),
                            master_weights=True)
    assert isinstance(master, MasterWeightAdam) and master.param_groups[0]["decoupled_weight_decay"]
    assert next(module.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_grads_finite_finds_any_non_finite_gradient(path, bad):
    model = _module()
    opt = MasterWeightAdam.for_module(model)
    for p, grad in zip(model, _grads(0)):
        p.grad = grad
    model[0].grad[0, 0] = torch.finfo(torch.bfloat16).max  # large but finite
    assert opt.grads_finite()
    for index in (0, 150 * 37 + 5, 300 * 37 - 1):
        model[0].grad.view(-1)[index] = bad
        assert not opt.grads_finite()
        model[0].grad.view(-1)[index] = 1.0
    model[2].grad[4, 3, 2] = bad
    assert not opt.grads_finite()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_native_all_finite_checks_every_element(dtype):
    from vaefast import native
    from vaefast.train import native_optim

    if native.load_error():
        pytest.skip(native.load_error())
    x = torch.randn(100_003).to(dtype)  # several parallel chunks and a ragged tail
    assert native_optim.all_finite(x) and native_optim.all_finite(x[:0])
    for index in (0, 16383, 16384, 50_000, 100_002):
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = x.clone()
            y[index] = bad
            assert not native_optim.all_finite(y), (index, bad)


def test_param_groups_added_later_get_masters():
    model, extra = _module(), torch.nn.Parameter(torch.randn(7) * 0.1)
    opt = MasterWeightAdam.for_module(model, lr=1e-2)
    opt.add_param_group({"params": [extra], "lr": 1e-3})
    extra.data = extra.data.bfloat16()
    extra.grad = torch.ones(7, dtype=torch.bfloat16)
    before = opt.state[extra]["master"].clone()
    opt.step()
    assert torch.allclose(opt.state[extra]["master"], before - 1e-3, atol=1e-6)  # Adam's first step is lr


def test_one_call_updates_tensors_of_many_sizes_and_step_counts(path):
    """All tensors go through one native call (several chunks each, tiny ones, mixed bf16/fp16 dtypes grouped),
    and a parameter that sat out some steps keeps its own step count, as in torch.optim.Adam."""
    shapes = [(200, 100), (7,), (33_000,), (1,)]
    dtypes = [torch.bfloat16, torch.bfloat16, torch.float16, torch.bfloat16]
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(*s, generator=g) * 0.1 for s in shapes]
    reference = [torch.nn.Parameter(t.clone()) for t in init]
    ref_opt = torch.optim.Adam(reference, lr=1e-2)
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = MasterWeightAdam(params, lr=1e-2)
    for p, dtype in zip(params, dtypes):
        p.data = p.data.to(dtype)
    for step in range(12):
        for i, (p, ref) in enumerate(zip(params, reference)):
            sits_out = i == 1 and step % 3 == 0
            grad = None if sits_out else torch.randn(*shapes[i], generator=g).to(dtypes[i])
            p.grad = grad
            ref.grad = None if grad is None else grad.float()
        opt.step()
        ref_opt.step()
    for p, ref in zip(params, reference):
        torch.testing.assert_close(opt.state[p]["master"], ref.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), opt.state[p]["master"].to(p.dtype))
        assert opt.state[p]["step"] == int(ref_opt.state[ref]["step"])
    assert opt.state[params[1]]["step"] == 8
