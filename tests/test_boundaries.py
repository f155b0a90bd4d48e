"""Every public function of the numerics layers refuses a wrong type with an error naming the argument.

One table, in the spirit of thinc's layer tests: for each public function a
call that works, then each argument in turn replaced by something of the
wrong kind (None, a string, a dict, a ragged list, an array of strings, an
arbitrary object, a 3-D array, NaN, a negative number, a bool). Whatever the
function does with it, it must not be a NumPy error from deep inside a
kernel: either the value is legitimate there (a mask of None, a str where a
text is expected) and the call works, or it raises TypeError / ValueError
whose message names the argument. Values that are never legitimate for an
argument (the first six kinds, unless listed as allowed) must be refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.data.collate import collate_lm, collate_preferences, collate_sft
from alignment_np.data.synthetic import make_preference_features
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.functional.logprobs import compute_log_probs
from alignment_np.losses.bradley_terry import reward_accuracy, reward_model_loss
from alignment_np.losses.dpo import dpo_loss, simpo_loss
from alignment_np.losses.kl import kl_divergence, kl_estimate, kl_penalty_reward
from alignment_np.losses.ppo import entropy_from_logits, ppo_loss, value_loss
from alignment_np.nn.reward_mlp import RewardModel
from alignment_np.nn.sequence_logprobs import SequenceLogProbs
from alignment_np.optim import SGD
from alignment_np.rl.buffer import PPOBuffer
from alignment_np.rl.gae import compute_gae, whiten
from alignment_np.rl.kl_control import AdaptiveKLController, FixedKLController
from alignment_np.trainers.dpo import DPOTrainer
from alignment_np.trainers.reward_model import evaluate_reward_model, train_reward_model

WRONG = {
    "None": None,
    "str": "abc",
    "dict": {"a": 1},
    "ragged": [[1.0, 2.0], [3.0]],
    "strarr": np.array(["x", "y", "z"]),
    "object": object(),
    "3d": np.zeros((2, 2, 2)),
    "nan": float("nan"),
    "neg": -3,
    "bool": True,
}
NEVER_RIGHT = ("None", "str", "dict", "ragged", "strarr", "object")

LOGPS = np.array([-1.0, -2.0, -3.0])
LOGITS = np.zeros((2, 3, 4))
TOKENS = np.zeros((2, 3), dtype=np.int64)
X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


def _with_one_step(last_value=0.0):
    buffer = PPOBuffer()
    buffer.add(np.zeros(2), 1, 1.0, 0.0, -1.0)
    return buffer.compute_advantages(last_value)


def _train(**kwargs):
    model = kwargs.pop("model")
    args = {"optimizer": SGD(model.parameters(), lr=1e-3) if hasattr(model, "parameters") else None, **kwargs}
    return train_reward_model(model, **args)


def _cases():
    tok = CharTokenizer.from_text("abc def")
    return {
        # name: (callable, good keyword arguments, {argument: kinds that are legitimate there})
        "ppo_loss": (ppo_loss, dict(new_log_probs=LOGPS, old_log_probs=LOGPS, advantages=LOGPS, clip_ratio=0.2, mask=None, return_metrics=False), {"mask": {"None"}}),
        "value_loss": (value_loss, dict(values=LOGPS, old_values=LOGPS, returns=LOGPS, clip_range=0.2, mask=None, return_metrics=False), {"mask": {"None"}, "clip_range": {"None"}}),
        "entropy_from_logits": (entropy_from_logits, dict(logits=np.zeros((2, 3)), mask=None), {"mask": {"None"}}),
        "dpo_loss": (dpo_loss, dict(policy_chosen_logps=LOGPS, policy_rejected_logps=LOGPS, ref_chosen_logps=LOGPS, ref_rejected_logps=LOGPS, beta=0.1, label_smoothing=0.0, loss_type="sigmoid"), {}),
        "simpo_loss": (simpo_loss, dict(policy_chosen_logps=LOGPS, policy_rejected_logps=LOGPS, beta=2.0, gamma=0.5, label_smoothing=0.0), {}),
        "reward_model_loss": (reward_model_loss, dict(reward_chosen=LOGPS, reward_rejected=LOGPS, margin=None), {"margin": {"None"}}),
        "reward_accuracy": (reward_accuracy, dict(reward_chosen=LOGPS, reward_rejected=LOGPS), {}),
        "kl_divergence": (kl_divergence, dict(log_probs_p=np.log(np.full((2, 3), 1 / 3)), log_probs_q=np.log(np.full((2, 3), 1 / 3)), return_grad=False), {}),
        "kl_estimate": (kl_estimate, dict(policy_log_probs=LOGPS, ref_log_probs=LOGPS, estimator="k1", mask=None), {"mask": {"None"}}),
        "kl_penalty_reward": (kl_penalty_reward, dict(policy_log_probs=LOGPS, ref_log_probs=LOGPS, kl_coef=0.1, estimator="k1", mask=None), {"mask": {"None"}}),
        "compute_gae": (compute_gae, dict(rewards=LOGPS, values=LOGPS, gamma=0.99, lam=0.95, last_value=0.0, dones=None, mask=None), {"dones": {"None"}, "mask": {"None"}}),
        "whiten": (whiten, dict(x=LOGPS, mask=None, shift_mean=True, eps=1e-8, unbiased=True), {"mask": {"None"}}),
        "PPOBuffer": (PPOBuffer, dict(gamma=0.99, lam=0.95), {}),
        # an action may be anything the environment uses (a token id, a string, an object)
        "PPOBuffer.add": (PPOBuffer().add, dict(state=np.zeros(2), action=1, reward=1.0, value=0.5, log_prob=-0.1, done=False), {"action": set(NEVER_RIGHT)}),
        "PPOBuffer.compute_advantages": (_with_one_step, dict(last_value=0.0), {}),
        "AdaptiveKLController": (AdaptiveKLController, dict(init_kl_coef=0.1, target=6.0, horizon=100), {}),
        "AdaptiveKLController.update": (AdaptiveKLController(0.1, 6.0, 100).update, dict(current_kl=1.0, n_steps=10), {}),
        "FixedKLController": (FixedKLController, dict(kl_coef=0.1), {}),
        "compute_log_probs": (compute_log_probs, dict(logits=LOGITS, tokens=TOKENS, mask=None, average=False, shift=False), {"mask": {"None"}}),
        "SequenceLogProbs": (SequenceLogProbs, dict(average=False, shift=False), {}),
        "SequenceLogProbs.forward": (SequenceLogProbs().forward, dict(logits=LOGITS, tokens=TOKENS, mask=None), {"mask": {"None"}}),
        "DPOTrainer": (DPOTrainer, dict(beta=0.1, label_smoothing=0.0, loss_type="sigmoid"), {}),
        "DPOTrainer.compute_loss": (DPOTrainer().compute_loss, dict(policy_chosen_logps=LOGPS, policy_rejected_logps=LOGPS, ref_chosen_logps=LOGPS, ref_rejected_logps=LOGPS), {}),
        "RewardModel": (RewardModel, dict(input_dim=4, hidden_dim=8, seed=0, dtype=None), {"seed": {"None"}, "dtype": {"None"}}),
        "RewardModel.score": (RewardModel(4, 8, seed=0).score, dict(x=X), {}),
        "RewardModel.predict": (RewardModel(4, 8, seed=0).predict, dict(x=X), {}),
        "evaluate_reward_model": (evaluate_reward_model, dict(model=RewardModel(4, 8, seed=0), x_chosen=X, x_rejected=X, batch_size=None, margin=None), {"batch_size": {"None"}, "margin": {"None"}}),
        "train_reward_model": (_train, dict(model=RewardModel(4, 8, seed=0), x_chosen=X, x_rejected=X, epochs=1, batch_size=3, seed=0, loss_margin=None, eval_data=None, verbose=False), {"loss_margin": {"None"}, "eval_data": {"None"}}),
        "make_preference_features": (make_preference_features, dict(n_pairs=4, dim=3, seed=0, hidden=4, reward_scale=3.0, dtype=np.float32), {"dtype": {"None"}}),
        "CharTokenizer": (CharTokenizer, dict(chars="abc", unk=False), {"chars": {"str", "strarr"}}),
        "CharTokenizer.from_text": (CharTokenizer.from_text, dict(texts=["abc"], unk=False), {"texts": {"str", "strarr"}}),
        "CharTokenizer.encode": (tok.encode, dict(text="abc", add_bos=False, add_eos=False), {"text": {"str"}}),
        "CharTokenizer.encode_batch": (tok.encode_batch, dict(texts=["abc"], add_bos=False, add_eos=False, padding_side="right", max_length=None, truncation=False), {"max_length": {"None"}}),
        "CharTokenizer.decode": (tok.decode, dict(ids=np.array([3, 4]), skip_special=True), {}),
        "CharTokenizer.decode_batch": (tok.decode_batch, dict(ids=np.array([[3, 4]]), skip_special=True), {}),
        "CharTokenizer.from_dict": (CharTokenizer.from_dict, dict(d=tok.to_dict()), {}),
        "collate_lm": (collate_lm, dict(texts=["abc"], tokenizer=tok, block_size=16), {}),
        "collate_sft": (collate_sft, dict(pairs=[("ab", "c")], tokenizer=tok, block_size=16), {}),
        "collate_preferences": (collate_preferences, dict(prompts=["ab"], chosen=["c"], rejected=["d"], tokenizer=tok, block_size=16), {}),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_wrong_types_are_refused_naming_the_argument(name, capsys):
    fn, good, allowed = CASES[name]
    fn(**good)  # the baseline call works
    for arg in good:
        for kind, wrong in WRONG.items():
            args = dict(good, **{arg: wrong})
            try:
                fn(**args)
            except (TypeError, ValueError) as err:
                assert arg in str(err), f"{name}({arg}={kind}): the message does not name {arg!r}: {err}"
                continue
            except Exception as err:  # noqa: BLE001 - the point is to catch anything else
                pytest.fail(f"{name}({arg}={kind}) raised {type(err).__name__} instead of TypeError/ValueError: {err}")
            legitimate = kind not in NEVER_RIGHT or kind in allowed.get(arg, ())
            assert legitimate, f"{name}({arg}={kind}) was accepted"
    capsys.readouterr()  # train_reward_model may print with verbose=True


# --------------------------------------------------------------------------- dtypes
# float32 in, float32 out: under NumPy 1.x a float32 scalar (or 0-d array)
# times a Python float, or divided by a Python int, became float64 (value-based
# casting before NEP 50); under NumPy 2 a float32 array times a NumPy float64
# scalar does. CI runs this file under both.


def _float32_outputs():
    from alignment_np.functional import stable

    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    lp = -np.abs(f32(4)) - 0.1
    logits = f32(2, 3, 5)
    tokens = rng.integers(0, 5, size=(2, 3))
    seq = SequenceLogProbs()
    seq_out, seq_cache = seq.forward(logits, tokens)
    model = RewardModel(3, 4, seed=0)
    r, cache = model.score(f32(5, 3))
    return {
        "ppo_loss": ppo_loss(lp, lp * np.float32(1.1), f32(4)),
        "ppo_loss 0-d": ppo_loss(np.float32(-1.0), np.float32(-1.2), np.float32(0.5)),
        "value_loss": value_loss(f32(4), f32(4), f32(4)),
        "value_loss unclipped": value_loss(f32(4), f32(4), f32(4), clip_range=None),
        "entropy_from_logits": entropy_from_logits(f32(2, 3, 5)),
        "entropy_from_logits (V,)": entropy_from_logits(f32(5)),
        "dpo_loss": dpo_loss(lp, lp - 1, lp, lp, beta=0.1),
        "dpo_loss hinge": dpo_loss(lp, lp - 1, lp, lp, beta=0.1, loss_type="hinge"),
        "dpo_loss ipo": dpo_loss(lp, lp - 1, lp, lp, beta=0.1, loss_type="ipo"),
        "dpo_loss robust": dpo_loss(lp, lp - 1, lp, lp, beta=0.1, label_smoothing=0.1, loss_type="robust"),
        "simpo_loss": simpo_loss(lp, lp - 1),
        "reward_model_loss": reward_model_loss(f32(4), f32(4), margin=0.5)[1:],
        "reward_model_loss numpy-float64 margin": reward_model_loss(f32(4), f32(4), margin=np.float64(0.5))[1:],
        "kl_divergence": kl_divergence(stable.log_softmax(f32(2, 5)), stable.log_softmax(f32(2, 5)), return_grad=True),
        "kl_divergence (V,)": kl_divergence(stable.log_softmax(f32(5)), stable.log_softmax(f32(5)), return_grad=True),
        "kl_estimate k2": kl_estimate(lp, lp - 1, "k2"),
        "kl_estimate k3": kl_estimate(lp, lp - 1, "k3"),
        "kl_penalty_reward": kl_penalty_reward(lp, lp - 1, kl_coef=np.float64(0.1), estimator="k3"),
        "compute_gae": compute_gae(f32(2, 5), f32(2, 5), last_value=np.float32(0.3)),
        "compute_gae (T,)": compute_gae(f32(5), f32(5), gamma=0.9, lam=0.8, last_value=0.3),
        "whiten": whiten(f32(2, 5)),
        "whiten no shift": whiten(f32(2, 5), shift_mean=False),
        "compute_log_probs": compute_log_probs(logits, tokens, average=True),
        "SequenceLogProbs": (seq_out, seq.backward(np.ones(2, np.float32), seq_cache)),
        "DPOTrainer.compute_loss": DPOTrainer(beta=0.1).compute_loss(lp, lp - 1, lp, lp)[2:],
        "RewardModel": (r, model.backward(np.ones((5, 1), np.float32), cache)),
        "logsumexp": stable.logsumexp(f32(3, 4)),
        "logsigmoid/sigmoid/softplus": (stable.logsigmoid(f32(3)), stable.sigmoid(f32(3)), stable.softplus(f32(3))),
    }


def _arrays(out):
    if isinstance(out, (tuple, list)):
        for o in out:
            yield from _arrays(o)
    elif isinstance(out, dict):
        return  # metrics: Python floats by design
    elif isinstance(out, float):
        return  # documented Python-float losses (reward_model_loss, DPOTrainer)
    else:
        yield out


@pytest.mark.parametrize("name", sorted(_float32_outputs()))
def test_float32_in_float32_out(name):
    out = _float32_outputs()[name]
    arrays = list(_arrays(out))
    assert arrays, name
    for a in arrays:
        assert a.dtype == np.float32, f"{name}: {a.dtype} ({type(a).__name__}) on NumPy {np.__version__}"
