import math

import numpy as np
import pytest

from alignment_np.backend import to_numpy
from alignment_np.nn.module import Parameter
from alignment_np.optim import SGD, AdamW, clip_grad_norm, cosine_schedule


def make_params(xp, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Parameter(xp.asarray(rng.normal(size=s), dtype=dtype)) for s in [(3, 4), (4,)]]


def grads_for(step, shapes, seed=1):
    rng = np.random.default_rng(seed + step)
    return [rng.normal(size=s) for s in shapes]


def adamw_reference(w, grads, lr, b1, b2, eps, wd):
    """Algorithm 2 of Loshchilov & Hutter written out plainly, one step at a time."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        w = w - lr * wd * w
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


def test_adamw_matches_the_algorithm_written_out(xp):
    params = make_params(xp)
    w0 = [to_numpy(p.data).copy() for p in params]
    opt = AdamW(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, decay_mask=[True, True])
    history = [grads_for(s, [w.shape for w in w0]) for s in range(5)]
    for g in history:
        for p, gi in zip(params, g):
            p.grad[...] = xp.asarray(gi)
        opt.step()
    for i, p in enumerate(params):
        ref = adamw_reference(w0[i], [g[i] for g in history], 0.05, 0.8, 0.95, 1e-6, 0.1)
        np.testing.assert_allclose(to_numpy(p.data), ref, rtol=1e-12, atol=1e-14)


def test_adamw_default_decays_only_matrices():
    params = make_params(np)
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    assert opt.decay_mask == [True, False]
    bias_before = params[1].data.copy()
    opt.step()  # zero gradients: only the decay moves anything
    assert np.all(np.abs(params[0].data) < np.abs(make_params(np)[0].data))
    np.testing.assert_array_equal(params[1].data, bias_before)


def test_sgd_momentum_matches_the_recurrence():
    params = make_params(np)
    w = params[0].data.copy()
    opt = SGD(params, lr=0.1, momentum=0.9)
    v = np.zeros_like(w)
    for s in range(4):
        g = grads_for(s, [(3, 4), (4,)])
        params[0].grad[...] = g[0]
        params[1].grad[...] = g[1]
        opt.step()
        v = 0.9 * v + g[0]
        w = w - 0.1 * v
    np.testing.assert_allclose(params[0].data, w, rtol=1e-13)


def test_a_tied_parameter_steps_once():
    p = Parameter(np.ones(3))
    p.grad[...] = 1.0
    opt = SGD([p, p], lr=0.5)
    opt.step()
    np.testing.assert_allclose(p.data, 0.5)


def test_zero_grad_clears_every_gradient():
    params = make_params(np)
    for p in params:
        p.grad[...] = 3.0
    AdamW(params).zero_grad()
    assert all(np.all(p.grad == 0) for p in params)


def test_state_dict_round_trip_resumes_exactly():
    a, b = make_params(np), make_params(np)
    opt_a, opt_b = AdamW(a, lr=0.01), AdamW(b, lr=0.01)
    for s in range(3):
        for p, q, g in zip(a, b, grads_for(s, [(3, 4), (4,)])):
            p.grad[...] = g
            q.grad[...] = g
        opt_a.step()
        opt_b.step()
    fresh_params = [Parameter(p.data.copy()) for p in a]
    fresh = AdamW(fresh_params, lr=0.01)
    fresh.load_state_dict(opt_a.state_dict())
    g = grads_for(9, [(3, 4), (4,)])
    for p, q, gi in zip(fresh_params, b, g):
        p.grad[...] = gi
        q.grad[...] = gi
    fresh.step()
    opt_b.step()
    for p, q in zip(fresh_params, b):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_rejects_wrong_shapes():
    opt = AdamW(make_params(np))
    state = opt.state_dict()
    state["m/0"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"m/0.*expected shape \(3, 4\), got \(2, 2\)"):
        opt.load_state_dict(state)


def test_clip_grad_norm():
    params = make_params(np)
    for p in params:
        p.grad[...] = 2.0
    norm = clip_grad_norm(params, max_norm=1.0)
    assert norm == pytest.approx(2.0 * math.sqrt(16))
    total = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert total == pytest.approx(1.0)
    # below the threshold nothing changes
    assert clip_grad_norm(params, max_norm=5.0) == pytest.approx(1.0)
    assert math.sqrt(sum(float((p.grad**2).sum()) for p in params)) == pytest.approx(1.0)


def test_cosine_schedule_shape():
    lrs = [cosine_schedule(s, 1.0, warmup_steps=10, total_steps=110, min_lr=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:110]))  # decay falls
    assert lrs[60] == pytest.approx(0.1 + 0.45)  # halfway: the cosine's midpoint
    assert lrs[115] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr: expected a finite number >= 0, got -1.0"),
        (dict(lr=True), "lr: expected a finite number >= 0, got True"),
        (dict(lr=float("nan")), "lr: expected a finite number >= 0, got nan"),
        (dict(lr=float("inf")), "lr: expected a finite number >= 0, got inf"),
        (dict(lr="0.1"), "lr: expected a finite number >= 0, got '0.1'"),
        (dict(betas=(1.0, 0.9)), r"betas: expected two values in \[0, 1\)"),
        (dict(betas=(0.9,)), r"betas: expected two values in \[0, 1\), got \(0.9,\)"),
        (dict(betas=(0.9, float("nan"))), r"betas: expected two values in \[0, 1\)"),
        (dict(betas=(True, 0.9)), r"betas: expected two values in \[0, 1\)"),
        (dict(betas=0.9), r"betas: expected two values in \[0, 1\), got 0.9"),
        (dict(eps=0.0), "eps: expected a finite number > 0, got 0.0"),
        (dict(eps=float("nan")), "eps: expected a finite number > 0, got nan"),
        (dict(weight_decay=-0.1), "weight_decay: expected a finite number >= 0, got -0.1"),
        (dict(weight_decay=float("nan")), "weight_decay: expected a finite number >= 0, got nan"),
        (dict(decay_mask=[True]), "decay_mask: expected 2 entries"),
    ],
)
def test_adamw_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(make_params(np), **kwargs)


def test_bad_params_and_schedules():
    with pytest.raises(ValueError, match="at least one Parameter"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="expected Parameter objects, got ndarray"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        SGD(make_params(np), momentum=1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(make_params(np), 0.0)
    with pytest.raises(ValueError, match="warmup_steps=20, total_steps=10"):
        cosine_schedule(0, 1.0, warmup_steps=20, total_steps=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=True), "lr: expected a finite number >= 0, got True"),
        (dict(lr=float("nan")), "lr: expected a finite number >= 0, got nan"),
        (dict(momentum=float("nan")), r"momentum: expected a number in \[0, 1\), got nan"),
        (dict(momentum=True), r"momentum: expected a number in \[0, 1\), got True"),
        (dict(momentum=-0.1), r"momentum: expected a number in \[0, 1\), got -0.1"),
        (dict(weight_decay=-0.5), "weight_decay: expected a finite number >= 0, got -0.5"),
        (dict(weight_decay=float("nan")), "weight_decay: expected a finite number >= 0, got nan"),
    ],
)
def test_sgd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(make_params(np), **kwargs)


def test_optimisers_take_numpy_scalars_like_python_numbers():
    a, b = make_params(np), make_params(np)
    opt_np = AdamW(a, lr=np.float32(1e-3), betas=(np.float64(0.9), np.float32(0.99)), eps=np.float64(1e-8),
                   weight_decay=np.float32(0.5))
    opt_py = AdamW(b, lr=float(np.float32(1e-3)), betas=(0.9, float(np.float32(0.99))), eps=1e-8,
                   weight_decay=float(np.float32(0.5)))
    assert type(opt_np.lr) is float and all(type(x) is float for x in opt_np.betas)
    for p, q in zip(a, b):
        p.grad[...] = 1.0
        q.grad[...] = 1.0
    opt_np.step()
    opt_py.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
    assert SGD(make_params(np), lr=np.float64(0.1), momentum=np.float32(0.5)).momentum == 0.5


def test_decay_mask_entries_must_be_bools():
    with pytest.raises(TypeError, match=r"decay_mask\[1\]: expected a bool, got int 1"):
        AdamW(make_params(np), decay_mask=[True, 1])


@pytest.mark.parametrize("bad", [float("nan"), -1.0, True, "1.0", None])
def test_clip_grad_norm_refuses_a_bad_max_norm(bad):
    with pytest.raises(ValueError, match=r"max_norm: expected a number > 0 \(math.inf: measure only\), got"):
        clip_grad_norm(make_params(np), bad)


def test_clip_grad_norm_with_an_infinite_limit_only_measures():
    params = make_params(np)
    for p in params:
        p.grad[...] = 2.0
    assert clip_grad_norm(params, math.inf) == pytest.approx(8.0)
    assert all(np.all(p.grad == 2.0) for p in params)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step=-1), "step: expected an int >= 0, got -1"),
        (dict(step=1.5), "step: expected an int >= 0, got 1.5"),
        (dict(step=True), "step: expected an int >= 0, got True"),
        (dict(max_lr=float("nan")), "max_lr: expected a finite number >= 0, got nan"),
        (dict(max_lr=-1.0), "max_lr: expected a finite number >= 0, got -1.0"),
        (dict(min_lr=float("inf")), "min_lr: expected a finite number >= 0, got inf"),
        (dict(warmup_steps=2.0), "warmup_steps: expected an int, got 2.0"),
        (dict(total_steps=None), "total_steps: expected an int, got None"),
        (dict(warmup_steps=-1), "warmup_steps=-1, total_steps=10"),
        (dict(total_steps=0, warmup_steps=0), "warmup_steps=0, total_steps=0"),
    ],
)
def test_cosine_schedule_bad_arguments(kwargs, match):
    args = dict(step=0, max_lr=1.0, warmup_steps=2, total_steps=10, min_lr=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cosine_schedule(**args)


@pytest.mark.torch
def test_adamw_and_sgd_agree_with_torch():
    torch = pytest.importorskip("torch")
    params = make_params(np)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = AdamW(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, decay_mask=[True, True])
    topt = torch.optim.AdamW(tparams, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    for s in range(6):
        for p, tp, g in zip(params, tparams, grads_for(s, [(3, 4), (4,)])):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)

    params = make_params(np, seed=3)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = SGD(params, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9)
    for s in range(4):
        for p, tp, g in zip(params, tparams, grads_for(s, [(3, 4), (4,)])):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)


# ----------------------------------------------------------------- the flat layout


def gpt_params(dtype="float64", seed=0):
    from alignment_np.nn.gpt import GPTConfig, TinyGPT

    model = TinyGPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, d_model=8, dtype=dtype), seed=seed)
    return model, model.parameters()


def set_grads(params, step, xp=np):
    rng = np.random.default_rng(100 + step)
    for p in params:
        p.grad[...] = xp.asarray(rng.normal(size=p.data.shape))


def test_parameters_become_views_of_one_flat_buffer_with_their_values():
    model, params = gpt_params()
    before = [p.data.copy() for p in params]
    opt = AdamW(params, lr=1e-3)
    assert opt.flat is not None and opt.flat.data.size == sum(p.data.size for p in params)
    for p, b in zip(params, before):
        assert np.shares_memory(p.data, opt.flat.data) and np.shares_memory(p.grad, opt.flat.grad)
        np.testing.assert_array_equal(p.data, b)
    # decayed parameters (matrices) first: the decay is one prefix of the buffer
    offsets = [p.data.__array_interface__["data"][0] for p in params]
    decayed = [o for o, p in zip(offsets, params) if p.data.ndim >= 2]
    assert max(decayed) < min(o for o, p in zip(offsets, params) if p.data.ndim < 2)


def test_flat_steps_equal_the_algorithm_written_out_per_parameter(monkeypatch):
    """Chunks much smaller than the buffer, one of them straddling the decayed / not decayed
    boundary: every parameter still follows Algorithm 2 exactly."""
    import alignment_np.optim as optim

    monkeypatch.setattr(optim, "CHUNK", 37)
    model, params = gpt_params()
    w0 = [p.data.copy() for p in params]
    opt = AdamW(params, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    grads = []
    for step in range(4):
        set_grads(params, step)
        grads.append([p.grad.copy() for p in params])
        opt.step()
    for i, (p, decays) in enumerate(zip(params, opt.decay_mask)):
        ref = adamw_reference(w0[i], [g[i] for g in grads], 0.01, 0.8, 0.95, 1e-6, 0.1 if decays else 0.0)
        np.testing.assert_allclose(p.data, ref, rtol=1e-12, atol=1e-14)


def test_flat_and_per_parameter_steps_agree_bit_for_bit():
    """The chunked flat step and the per-parameter loop (parameters of two dtypes cannot
    share one buffer) do the same operations in the same order on every number."""
    _, params = gpt_params()
    mixed = [Parameter(p.data.copy()) for p in params] + [Parameter(np.zeros(3, dtype=np.float32))]
    flat_opt, loop_opt = AdamW(params, lr=0.01), AdamW(mixed, lr=0.01)
    assert flat_opt.flat is not None and loop_opt.flat is None
    for step in range(3):
        set_grads(params, step)
        for p, q in zip(params, mixed):
            q.grad[...] = p.grad
        flat_opt.step()
        loop_opt.step()
    for p, q in zip(params, mixed):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_replaced_parameter_array_is_laid_out_again():
    _, params = gpt_params()
    twin = [Parameter(p.data.copy()) for p in params]
    opt, ref = AdamW(params, lr=0.01), AdamW(twin, lr=0.01)
    for step in range(2):
        set_grads(params, step)
        for p, q in zip(params, twin):
            q.grad[...] = p.grad
        opt.step()
        ref.step()
        if step == 0:  # replace one array, as a gradient check or Module.to would
            params[3].data = params[3].data.copy()
            params[5].grad = params[5].grad.copy()
    assert np.shares_memory(params[3].data, opt.flat.data)  # laid out again, values kept
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p.data, q.data)
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(opt.state_dict()[key], value, err_msg=key)


def test_two_optimisers_over_the_same_parameters_both_keep_working():
    _, params = gpt_params()
    first, second = AdamW(params, lr=0.01), SGD(params, lr=0.1)
    first_twin_params = [Parameter(p.data.copy()) for p in params]
    set_grads(params, 0)
    for p, q in zip(params, first_twin_params):
        q.grad[...] = p.grad
    first.step()
    AdamW(first_twin_params, lr=0.01).step()
    for p, q in zip(params, first_twin_params):
        np.testing.assert_array_equal(p.data, q.data)
    second.step()  # SGD reads p.data and p.grad wherever they live now
    assert np.shares_memory(params[0].data, first.flat.data)


def test_zero_grad_and_clipping_run_on_the_flat_buffer():
    _, params = gpt_params()
    opt = AdamW(params, lr=0.01)
    set_grads(params, 0)
    expected = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    from alignment_np.optim import _covering_buffer

    assert _covering_buffer(params) is opt.flat.grad
    assert _covering_buffer(params[1:]) is None  # a subset: clipped parameter by parameter
    assert clip_grad_norm(params, 1.0) == pytest.approx(expected, rel=1e-12)
    assert math.sqrt(sum(float((p.grad**2).sum()) for p in params)) == pytest.approx(1.0, rel=1e-12)
    opt.zero_grad()
    assert not np.any(opt.flat.grad) and all(not np.any(p.grad) for p in params)


def test_state_dict_keeps_one_entry_per_parameter_and_loads_into_a_fresh_layout():
    _, params = gpt_params()
    opt = AdamW(params, lr=0.01)
    for step in range(2):
        set_grads(params, step)
        opt.step()
    state = opt.state_dict()
    assert {f"m/{i}" for i in range(len(params))} <= set(state)
    for i, p in enumerate(params):
        assert state[f"m/{i}"].shape == p.data.shape
    _, other = gpt_params(seed=1)
    fresh = AdamW(other, lr=0.5)
    fresh.load_state_dict(state)
    assert fresh.lr == 0.01 and fresh.t == 2
    for key, value in state.items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)
