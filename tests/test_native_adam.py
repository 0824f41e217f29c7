"""NativeAdam: torch's fused Adam/AdamW as one native call per step, bit for bit, with the NaN guard's gradient
check folded into it; and the same folded check in MasterWeightAdam."""

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from vaefast import native
from vaefast.train import MasterWeightAdam
from vaefast.train.optim import NativeAdam, make_optimizer

pytestmark = pytest.mark.skipif(native.load_error() is not None, reason=str(native.load_error()))

# Odd sizes too: the native chunks split tensors differently, and torch's vector loop leaves scalar tails.
SHAPES = [(300, 37), (37,), (5, 4, 3), (40000,), (1,)]


def _params(seed=0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.1).to(dtype)) for s in shapes]


def _set_grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _state(opt, params):
    return [(p.detach().clone(), *(opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")))
            for p in params]


def _assert_identical(a, b):
    for left, right in zip(a, b):
        for x, y in zip(left, right):
            assert torch.equal(x, y), (x - y).abs().max()


def _same_multiply_adds() -> bool:
    """Whether the native copy in use and torch's own CPU kernels both fuse multiply-adds (x86-64-v3 and up, AVX2
    and up) or both do not: on any real CPU they do alike; a VAEFAST_NATIVE_ISA=baseline cap on a machine where
    torch runs its AVX2/AVX-512 kernels (docs/testing.md) rounds each multiply-add once more."""
    native_fma = native.isa() != "baseline"
    return native_fma == (torch.backends.cpu.get_cpu_capability() != "DEFAULT")


def _assert_torch_bits(ours, theirs, steps=20):
    """Bit for bit where torch's vector loop ran: every element but the last size % 16 of each tensor (torch's
    scalar remainder contracts its multiply-adds differently: an ulp per step). Where only one side fuses its
    multiply-adds, within an ulp of the value per step instead."""
    if not _same_multiply_adds():
        for left, right in zip(ours, theirs):
            for x, y in zip(left, right):
                assert x.dim() == 0 and torch.equal(x, y) or (x - y).abs().max() <= steps * 2**-23 * y.abs().max()
        return
    for left, right in zip(ours, theirs):
        for x, y in zip(left, right):
            if x.dim() == 0:
                assert torch.equal(x, y)
                continue
            x, y = x.reshape(-1), y.reshape(-1)
            vector = x.numel() - x.numel() % 16
            assert torch.equal(x[:vector], y[:vector]), (x[:vector] - y[:vector]).abs().max()
            torch.testing.assert_close(x[vector:], y[vector:], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.01), (True, 0.0), (True, 0.1)])
def test_bit_identical_to_torch_fused_adam(decoupled, weight_decay):
    """Parameters, moments and step counts equal torch.optim.Adam(fused=True)'s bit for bit (its vector loop) over
    20 steps of two parameter groups, with a tensor learning rate that changes every step (as vaefast's LR schedule
    sets it)."""
    ours, theirs = _params(), _params()
    kwargs = dict(lr=torch.tensor(1e-2), betas=(0.9, 0.99), weight_decay=weight_decay,
                  decoupled_weight_decay=decoupled)
    opt = NativeAdam([{"params": ours[:2]}, {"params": ours[2:], "eps": 1e-6}], **kwargs)
    ref = torch.optim.Adam([{"params": theirs[:2]}, {"params": theirs[2:], "eps": 1e-6}], fused=True, **kwargs)
    for step in range(20):
        for o in (opt, ref):
            for group in o.param_groups:
                group["lr"].fill_(1e-2 * (1 - step / 30))
        _set_grads(ours, step)
        _set_grads(theirs, step)
        opt.step()
        ref.step()
    _assert_torch_bits(_state(opt, ours), _state(ref, theirs))
    assert float(opt.state[ours[0]]["step"]) == 20


def test_state_dict_moves_between_native_and_torch():
    """A NativeAdam state loads into torch's fused Adam and back, and both continue to the same bits."""
    a, b = _params(), _params()
    opt_a = NativeAdam(a, lr=1e-2)
    for step in range(5):
        _set_grads(a, step)
        opt_a.step()
    for pa, pb in zip(a, b):
        pb.data.copy_(pa.data)
    opt_b = torch.optim.Adam(b, lr=1e-2, fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as a checkpoint holds it
    for step in range(5, 10):
        _set_grads(a, step)
        _set_grads(b, step)
        opt_a.step()
        opt_b.step()
    _assert_torch_bits(_state(opt_a, a), _state(opt_b, b))
    opt_c = NativeAdam(b, lr=1e-2)
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    _set_grads(b, 10)
    opt_c.step()
    assert float(opt_c.state[b[0]]["step"]) == 11


@pytest.mark.parametrize("where", [(0, 0), (0, -1), (3, 12345), (4, 0)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_gradients_skips_the_whole_step(where, bad):
    """One non-finite gradient element anywhere (first, last, inside a large tensor, a one-element tensor) skips
    the update of every tensor, sets found_inf, and leaves step counts alone; a finite step then applies."""
    params = _params()
    opt = NativeAdam(params, lr=1e-2, check_gradients=True)
    _set_grads(params, 0)
    opt.step()
    before = _state(opt, params)
    _set_grads(params, 1)
    tensor, index = where
    params[tensor].grad.view(-1)[index] = bad
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.found_inf) == 1.0
    _assert_identical(_state(opt, params), before)
    params[tensor].grad.view(-1)[index] = 0.0
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.found_inf) == 0.0 and float(opt.state[params[0]]["step"]) == 2
    assert not torch.equal(params[0].detach(), before[0][0])


def test_found_inf_skips_without_reading_gradients():
    """A set flag skips the step (GradScaler's protocol); without check_gradients a NaN gradient is applied, as
    torch's Adam applies it."""
    params = _params()
    opt = NativeAdam(params, lr=1e-2)
    _set_grads(params, 0)
    before = [p.detach().clone() for p in params]
    opt.found_inf = torch.ones(())
    opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert float(opt.state[params[0]]["step"]) == 0 and not opt.state[params[0]]["exp_avg"].any()
    opt.found_inf = torch.zeros(())
    params[0].grad[0, 0] = float("nan")
    opt.step()
    assert torch.isnan(params[0][0, 0]) and float(opt.found_inf) == 0.0


def test_check_across_groups_is_all_or_nothing():
    """With two parameter groups a bad gradient in the second leaves the first untouched too."""
    params = _params()
    opt = NativeAdam([{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}], lr=1e-2, check_gradients=True)
    _set_grads(params, 0)
    params[-1].grad[0] = float("nan")
    before = [p.detach().clone() for p in params]
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.found_inf) == 1.0
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_torch_path_keeps_the_check():
    """Parameters the kernel does not take (float64 here) step through torch.optim.Adam, and check_gradients still
    skips a non-finite step there."""
    ours, theirs = _params(dtype=torch.float64), _params(dtype=torch.float64)
    opt = NativeAdam(ours, lr=1e-2, check_gradients=True)
    ref = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(3):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        opt.found_inf = torch.zeros(())
        opt.step()
        ref.step()
    _assert_identical(_state(opt, ours), _state(ref, theirs))
    _set_grads(ours, 3)
    ours[1].grad[3] = float("inf")
    before = _state(opt, ours)
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.found_inf) == 1.0
    _assert_identical(_state(opt, ours), before)


def test_master_weight_adam_folds_the_check():
    """MasterWeightAdam with check_gradients: a non-finite bf16 gradient skips the step in the same native call,
    leaving masters, moments, bf16 weights and its step counts untouched."""
    module = torch.nn.ParameterList(_params(shapes=[(300, 37), (37,)]))
    opt = MasterWeightAdam.for_module(module, lr=1e-2, check_gradients=True)
    _set_grads(list(module), 0)
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.found_inf) == 0.0 and opt.state[module[0]]["step"] == 1
    snapshot = {k: opt.state[module[0]][k].clone() for k in ("master", "exp_avg", "exp_avg_sq")}
    weight = module[0].detach().clone()
    _set_grads(list(module), 1)
    module[1].grad[-1] = float("nan")
    opt.step()
    assert float(opt.found_inf) == 1.0 and opt.state[module[0]]["step"] == 1
    assert torch.equal(module[0].detach(), weight)
    assert all(torch.equal(opt.state[module[0]][k], v) for k, v in snapshot.items())


def test_make_optimizer_builds_native_adam_with_torch_state():
    module = torch.nn.Linear(4, 3)
    opt = make_optimizer("adamw", module, lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    assert isinstance(opt, NativeAdam) and opt.param_groups[0]["decoupled_weight_decay"]
    assert opt.defaults["fused"] and opt.defaults["capturable"]
    module(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert set(opt.state[module.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[module.weight]["step"].dtype == torch.float32


@pytest.mark.parametrize("cls", [NativeAdam, MasterWeightAdam])
def test_step_hooks_and_profiler_ranges_see_what_torch_optim_gives_them(cls):
    """The step skips torch.optim's wrapper only while it has nothing to do (vaefast.train.quiet_optim): hooks,
    global hooks and a profiler still see every step, and zero_grad keeps torch's set_to_none=False behaviour."""
    params = _params()
    if cls is MasterWeightAdam:
        params = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params]
    opt = cls(params, lr=1e-3)
    calls = []
    handles = [opt.register_step_pre_hook(lambda *a: calls.append("pre")),
               opt.register_step_post_hook(lambda *a: calls.append("post")),
               register_optimizer_step_pre_hook(lambda *a: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda *a: calls.append("global post"))]
    try:
        _set_grads(params, 0)
        opt.step()
        assert calls == ["global pre", "pre", "post", "global post"]
    finally:
        for handle in handles:
            handle.remove()
    calls.clear()
    _set_grads(params, 1)
    opt.step()
    assert calls == [] and int(opt.state[params[0]]["step"]) == 2  # the quiet path still updates
    with torch.profiler.profile() as prof:
        opt.step()
        opt.zero_grad()
    names = {e.key for e in prof.key_averages()}
    assert {f"Optimizer.step#{cls.__name__}.step", f"Optimizer.zero_grad#{cls.__name__}.zero_grad"} <= names
    assert all(p.grad is None for p in params)
    _set_grads(params, 2)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)


def _with_subnormal_moments(flush: bool, eps: float = 1e-8):
    """(ours, torch's) state after two steps from identical states in which a quarter of the first moments are
    subnormal and their gradients zero, as a dead unit's moments become (they decay by beta1 per step)."""
    ours, theirs = _params(), _params()
    opt = NativeAdam(ours, lr=1e-3, eps=eps, flush_subnormals=flush)
    ref = torch.optim.Adam(theirs, lr=1e-3, eps=eps, fused=True)
    _set_grads(ours, 0)
    _set_grads(theirs, 0)
    opt.step()
    ref.step()
    g = torch.Generator().manual_seed(7)
    for step in (1, 2):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        for a, b in zip(ours, theirs):
            dead = torch.rand(a.shape, generator=g) < 0.25
            for p, o in ((a, opt), (b, ref)):
                p.grad[dead] = 0.0
                o.state[p]["exp_avg"][dead] = 3e-39
        opt.step()
        ref.step()
    return _state(opt, ours), _state(ref, theirs)


def _subnormal(t):
    return (t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)


@pytest.mark.skipif(not native.flushes_subnormals(), reason="the flush is x86-64's MXCSR mode")
def test_flush_subnormals_zeroes_only_subnormal_moments():
    """Flushed: the moments torch leaves subnormal are zero, every other bit of the state is torch's (the weights
    too: a subnormal moment's update is below half their ulp)."""
    ours, theirs = _with_subnormal_moments(flush=True)
    flushed = 0
    for (p, m, v, step), (tp, tm, tv, tstep) in zip(ours, theirs):
        sub = _subnormal(tm)
        flushed += int(sub.sum())
        assert not _subnormal(m).any() and (m[sub] == 0).all()
        _assert_torch_bits([(p, m, v, step)], [(tp, torch.where(sub, tm.new_zeros(()), tm), tv, tstep)])
    assert flushed > 10000


@pytest.mark.parametrize("flush, eps", [(False, 1e-8), (True, 0.0)])
def test_subnormal_moments_keep_torch_bits_without_the_flush(flush, eps):
    """flush_subnormals=False, or an eps of 0 (a flushed moment over a flushed denominator would be 0 / 0): the
    subnormal moments are torch's, bit for bit."""
    ours, theirs = _with_subnormal_moments(flush=flush, eps=eps)
    assert sum(int(_subnormal(m).sum()) for _, m, _, _ in theirs) > 10000
    _assert_torch_bits(ours, theirs)


def test_flushing_step_restores_the_threads_floating_point_mode():
    """After a flushing step, subnormal arithmetic is exact again on the caller's thread and on the OpenMP threads
    that torch's own kernels run on."""
    _with_subnormal_moments(flush=True)
    tiny = torch.full((1 << 20,), 3e-39)
    assert (tiny * 0.5 != 0).all()
    assert torch.tensor(3e-39).item() != 0.0 and float(torch.tensor(3e-39) * 0.5) != 0.0
