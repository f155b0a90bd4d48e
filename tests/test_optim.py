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
        (dict(betas=(1.0, 0.9)), r"betas: expected two values in \[0, 1\)"),
        (dict(eps=0.0), "eps: expected > 0"),
        (dict(weight_decay=-0.1), "weight_decay: expected >= 0"),
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
