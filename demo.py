"""Stage 10 of the course: Alignment - RLHF and DPO, with really trained numbers.

    python demo.py                    # NumPy on the CPU, about 20 s
    python demo.py --backend cupy     # the same code on a GPU
    python demo.py --seed 1

1. a Bradley-Terry reward model trained on synthetic preference features;
2. DPO on a tiny GPT: supervised fine-tuning on a generated review corpus,
   then preference optimisation towards positive reviews;
3. the PPO components of RLHF on rollouts of that same tiny GPT: rewards
   from a rater, per-token KL penalties, GAE, the clipped surrogate, the
   value loss and the adaptive KL controller;
4. RLHF against DPO, side by side, with the costs measured in this run.

Everything is seeded: two runs with the same seed print the same numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The demo's models are tiny (a few dozen rows per matrix product), where BLAS
# threads cost more than they save; set before NumPy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Stage 10: Alignment - RLHF and DPO, trained for real.")
    p.add_argument("--seed", type=int, default=0, help="seed for data, models and sampling (default 0)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="array backend (default: numpy, or $ALIGNMENT_NP_BACKEND)")
    return p.parse_args(argv)


def rule(title: str, char: str = "-") -> None:
    print()
    print(title)
    print(char * len(title))


def table(rows, headers) -> None:
    """Print a small aligned table; floats with 4 decimals."""
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))


# --------------------------------------------------------------------------- 1
def reward_model_section(seed: int) -> dict:
    from alignment_np import RewardModel, to_numpy
    from alignment_np.data.synthetic import make_preference_features
    from alignment_np.stats import mean_se
    from alignment_np.optim import AdamW
    from alignment_np.trainers.reward_model import evaluate_reward_model, train_reward_model

    rule("1. Reward Model Training")
    n_train, n_test, dim = 2000, 1000, 16
    data = make_preference_features(n_train + n_test, dim, seed=seed)
    xc_tr, xr_tr = data.x_chosen[:n_train], data.x_rejected[:n_train]
    xc_te, xr_te = data.x_chosen[n_train:], data.x_rejected[n_train:]
    # The true reward's own accuracy on the held-out labels: no model can beat it.
    ceiling = float(np.mean(to_numpy(data.reward_chosen[n_train:]) > to_numpy(data.reward_rejected[n_train:])))
    model = RewardModel(dim, hidden_dim=64, seed=seed)
    print(f"  data: {n_train} training / {n_test} held-out pairs of {dim}-d response features;")
    print("  labels drawn from a hidden true reward with Bradley-Terry noise")
    print(f"  model: RewardModel({dim} -> 64 -> 1), loss -mean(logsigmoid(r_chosen - r_rejected)), AdamW")
    before = evaluate_reward_model(model, xc_te, xr_te)
    t0 = time.perf_counter()
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    train_reward_model(model, xc_tr, xr_tr, epochs=30, batch_size=64, optimizer=opt, seed=seed)
    seconds = time.perf_counter() - t0
    after = evaluate_reward_model(model, xc_te, xr_te)
    # The accuracy is a mean of per-pair outcomes (1 = ranked right): its standard error.
    correct = to_numpy(model.predict(xc_te) > model.predict(xr_te))[:, 0]
    accuracy = mean_se(correct)
    print()
    table(
        [["before training", before["loss"], before["accuracy"], before["margin"]],
         ["after 30 epochs", after["loss"], after["accuracy"], after["margin"]]],
        ["held-out", "loss", "accuracy", "reward margin"],
    )
    print(f"\n  held-out accuracy {accuracy.mean:.4f} ± {accuracy.se:.4f} (standard error over {accuracy.n} pairs): "
          f"{(accuracy.mean - 0.5) / accuracy.se:.1f} standard errors above chance (0.5)")
    print(f"  the best any model can do on these noisy labels (the true reward's accuracy): {ceiling:.4f}")
    print(f"  trained in {seconds:.2f} s")
    return {"before": before, "after": after, "ceiling": ceiling, "seconds": seconds, "accuracy": accuracy}


# --------------------------------------------------------------------------- 2
def dpo_section(seed: int) -> dict:
    from alignment_np import CharTokenizer, GPTConfig, TinyGPT
    from alignment_np.data.corpus import generate_preference_pairs, generate_sft_pairs, unigram_entropy
    from alignment_np.stats import paired_difference
    from alignment_np.trainers.dpo_lm import DPOConfig, DPOLMTrainer
    from alignment_np.trainers.sft import SFTConfig, SFTTrainer

    rule("2. Direct Preference Optimization (DPO)")
    sft_pairs = generate_sft_pairs(3000, seed=seed)
    held_out_sft = generate_sft_pairs(300, seed=seed + 1000)
    tokenizer = CharTokenizer.from_text([p + r for p, r in sft_pairs])
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=4, d_model=48)
    policy = TinyGPT(config, seed=seed)
    print(f"  policy: TinyGPT(layers={config.n_layer}, width={config.d_model}, heads={config.n_head}), "
          f"{policy.num_parameters():,} parameters, character vocabulary of {tokenizer.vocab_size}")

    # Step 1: supervised fine-tuning on the generated review corpus gives the reference model.
    t0 = time.perf_counter()
    sft_steps = 600
    sft = SFTTrainer(policy, tokenizer, SFTConfig(lr=1e-2, min_lr=1e-3, warmup_steps=20, steps=sft_steps,
                                                  batch_size=32, seed=seed, log_every=0))
    sft.train(sft_pairs, progress=False)
    sft_seconds = time.perf_counter() - t0
    sft_loss = sft.evaluate(held_out_sft)
    entropy = unigram_entropy([p + r for p, r in sft_pairs])
    print(f"  SFT: {sft_steps} steps in {sft_seconds:.1f} s; held-out loss {sft_loss:.3f} nats/char "
          f"(unigram entropy {entropy:.3f})")

    reference = TinyGPT(config, seed=seed)
    reference.load_state_dict(policy.state_dict())  # the frozen SFT model

    # Step 2: DPO on pairs where a positive verdict is preferred to a negative one.
    train_pairs = generate_preference_pairs(640, seed=seed)
    test_pairs = generate_preference_pairs(200, seed=seed + 1000)
    dpo_config = DPOConfig(beta=0.1, lr=1e-3, steps=60, batch_size=16, seed=seed)
    trainer = DPOLMTrainer(policy, reference, tokenizer, dpo_config)
    train_data, test_data = trainer.prepare(train_pairs), trainer.prepare(test_pairs)
    before = trainer.evaluate(test_data)
    sentiment_before = sampled_sentiment(reference, tokenizer, seed)
    t0 = time.perf_counter()
    trainer.train(train_data, progress=False)
    dpo_seconds = time.perf_counter() - t0
    after = trainer.evaluate(test_data)
    sentiment_after = sampled_sentiment(policy, tokenizer, seed)
    margin, accuracy = held_out_margins(policy, test_data, dpo_config.beta, dpo_config.averaged)
    positive = paired_difference(sentiment_after, sentiment_before)
    print(f"  DPO: {len(train_pairs)} pairs (\"the soup was\" + positive chosen, negative rejected), "
          f"beta={dpo_config.beta}, {dpo_config.steps} steps of {dpo_config.batch_size} pairs in {dpo_seconds:.1f} s")
    print()
    keys = ["loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "rewards/margins"]
    table(
        [["before (policy = reference)"] + [before[k] for k in keys],
         [f"after {dpo_config.steps} DPO steps"] + [after[k] for k in keys]],
        ["held-out pairs", "loss", "accuracy", "chosen reward", "rejected reward", "reward margin"],
    )
    print("\n  at the start every implicit reward beta*(log pi - log ref) is 0, so the loss is log 2 = 0.6931")
    print("  and no pair is ranked correctly yet (accuracy counts strict wins)")
    print(f"  after DPO, per held-out pair: reward margin {margin.mean:.4f} ± {margin.se:.4f}, "
          f"accuracy {accuracy.mean:.4f} ± {accuracy.se:.4f} (standard errors over {margin.n} pairs)")
    n = len(sentiment_before)
    print(f"  sampled completions of {n} held-out prompts judged positive by the lexicon rater: "
          f"{float(np.mean(sentiment_before)):.3f} before, {float(np.mean(sentiment_after)):.3f} after;")
    print(f"  difference {positive.mean:+.3f} ± {positive.se:.3f} (standard error, paired by prompt): "
          f"{positive.mean / positive.se:.1f} standard errors")
    return {"policy": policy, "reference": reference, "tokenizer": tokenizer, "before": before,
            "after": after, "dpo_step_seconds": dpo_seconds / dpo_config.steps,
            "sentiment": (float(np.mean(sentiment_before)), float(np.mean(sentiment_after))),
            "positive": positive, "margin": margin, "accuracy": accuracy}


def held_out_margins(policy, data, beta: float, average: bool = False):
    """Per-pair implicit reward margins on held-out pairs, and the accuracy, each with its standard error.

    margin_i = beta * ((log pi - log ref)(y_c) - (log pi - log ref)(y_r)) (Rafailov et al. 2023, Eq. 5);
    the accuracy is the mean of margin_i > 0. One forward over the 2N rows.
    """
    from alignment_np import to_numpy
    from alignment_np.stats import mean_se
    from alignment_np.trainers.lm_logprobs import policy_logps_forward

    logps, _ = policy_logps_forward(policy, data.input_ids, data.attention_mask, data.loss_mask, average,
                                    targets=data.targets)
    logratios = to_numpy(logps - data.ref_logps).astype(np.float64)  # (2N,): chosen rows, then rejected
    n = data.n_pairs
    margins = beta * (logratios[:n] - logratios[n:])
    return mean_se(margins), mean_se(margins > 0)


SENTIMENT_PROMPTS = 512  # enough that a change of a few points exceeds two standard errors


def sampled_sentiment(model, tokenizer, seed: int) -> np.ndarray:
    """1.0 / 0.0 per held-out prompt: is the model's sampled completion positive to the lexicon rater?

    The same SENTIMENT_PROMPTS prompts (and sampling seed) for every model, so
    two models' outcomes pair up prompt by prompt.
    """
    from alignment_np import generate
    from alignment_np.data.corpus import generate_prompts, sentiment_score

    prompts = generate_prompts(SENTIMENT_PROMPTS, seed=seed + 2000)
    ids, mask = tokenizer.encode_batch(prompts, add_bos=True, padding_side="left")
    out = generate(model, ids, max_new_tokens=20, temperature=1.0, seed=seed, attention_mask=mask,
                   eos_id=tokenizer.eos_id)
    texts = [tokenizer.decode(row) for row in to_numpy_rows(out["new_tokens"])]
    return np.array([sentiment_score(t) > 0 for t in texts], dtype=np.float64)


def to_numpy_rows(x):
    from alignment_np import to_numpy

    return list(to_numpy(x))


# --------------------------------------------------------------------------- 3
def ppo_section(models: dict, seed: int) -> dict:
    from alignment_np import (AdaptiveKLController, PPOBuffer, compute_gae, generate, kl_penalty_reward,
                              ppo_loss, to_numpy, value_loss, whiten)
    from alignment_np.backend import get_array_module
    from alignment_np.data.corpus import generate_prompts, sentiment_score
    from alignment_np.functional.logprobs import token_logprobs_backward, token_logprobs_forward
    from alignment_np.optim import AdamW

    rule("3. PPO Components (for RLHF)")
    policy, reference, tokenizer = models["policy"], models["reference"], models["tokenizer"]
    t0 = time.perf_counter()
    # Rollout: sample a response for each prompt; the sampler returns each token's log-prob.
    prompts = generate_prompts(16, seed=seed + 3000)
    ids, mask = tokenizer.encode_batch(prompts, add_bos=True, padding_side="left")
    out = generate(policy, ids, max_new_tokens=20, temperature=1.0, seed=seed + 1, attention_mask=mask,
                   eos_id=tokenizer.eos_id)
    tokens, full_mask = out["tokens"], out["attention_mask"]
    response_mask = out["response_mask"]
    xp = get_array_module(tokens)
    old_logps = out["logprobs"]  # (B, N) log pi_old(a_t | s_t)
    P = ids.shape[1]
    N = response_mask.shape[1]
    texts = [tokenizer.decode(r) for r in to_numpy(out["new_tokens"])]
    scores = xp.asarray([sentiment_score(t) for t in texts], dtype=old_logps.dtype)  # the rater's reward

    def response_logps(model, heads=("logits",)):
        """Log-probs (B, N) of the sampled response tokens under ``model``; logits at t-1 score token t."""
        outputs, cache = model.forward(tokens, full_mask, heads=heads)
        logps, lp_cache = token_logprobs_forward(outputs["logits"][:, P - 1:P + N - 1], tokens[:, P:])
        return logps, outputs, cache, lp_cache

    ref_logps, _, _, _ = response_logps(reference)
    # Per-token rewards (Ziegler et al. 2019): -kl_coef * (log pi - log ref) at every token,
    # and the rater's score added at each response's last token.
    kl_coef = 0.05
    rewards = kl_penalty_reward(old_logps, ref_logps, kl_coef=kl_coef, estimator="k1") * response_mask
    last = response_mask.sum(axis=1).astype(np.int64) - 1
    rewards[xp.arange(len(texts)), last] += scores
    _, outputs, _, _ = response_logps(policy, heads=("logits", "values"))
    values = outputs["values"][:, P - 1:P + N - 1] * response_mask  # V(s_t), s_t = prompt + a_<t
    advantages, returns = compute_gae(rewards, values, gamma=1.0, lam=0.95, mask=response_mask)
    advantages = whiten(advantages, mask=response_mask)
    seq_kl = float(((old_logps - ref_logps) * response_mask).sum(axis=1).mean())

    # The buffer does the same GAE, one step at a time, for the first response.
    buffer = PPOBuffer(gamma=1.0, lam=0.95)
    n0 = int(to_numpy(last)[0]) + 1
    r0, v0, lp0 = (to_numpy(a)[0] for a in (rewards, values, old_logps))
    for t in range(n0):
        buffer.add(state=t, action=int(to_numpy(tokens)[0, P + t]), reward=float(r0[t]), value=float(v0[t]),
                   log_prob=float(lp0[t]), done=(t == n0 - 1))
    buffer_adv, _ = buffer.compute_advantages(last_value=0.0)
    raw_adv, _ = compute_gae(rewards, values, gamma=1.0, lam=0.95, mask=response_mask)
    gae_agrees = np.allclose(to_numpy(buffer_adv), to_numpy(raw_adv)[0, :n0], rtol=1e-5, atol=1e-5)

    # Four PPO epochs on this batch: clipped surrogate on the policy, clipped value loss on the value head.
    optimizer = AdamW(policy.parameters(), lr=5e-4, weight_decay=0.0)
    old_values = values.copy()
    first = None
    for epoch in range(4):
        optimizer.zero_grad()
        new_logps, outputs, cache, lp_cache = response_logps(policy, heads=("logits", "values"))
        loss, d_new, m = ppo_loss(new_logps, old_logps, advantages, clip_ratio=0.2, mask=response_mask,
                                  return_metrics=True)
        new_values = outputs["values"][:, P - 1:P + N - 1]
        v_loss, d_values = value_loss(new_values, old_values, returns, clip_range=0.2, mask=response_mask)
        m.update(loss=float(loss), value_loss=float(v_loss))
        first = first or m
        d_logits = xp.zeros_like(outputs["logits"])
        d_logits[:, P - 1:P + N - 1] = token_logprobs_backward(d_new, lp_cache)
        d_full_values = xp.zeros_like(outputs["values"])
        d_full_values[:, P - 1:P + N - 1] = 0.5 * d_values  # vf_coef = 0.5
        policy.backward({"logits": d_logits, "values": d_full_values}, cache)
        optimizer.step()
    new_logps, _, _, _ = response_logps(policy)
    final_loss, _, final = ppo_loss(new_logps, old_logps, advantages, clip_ratio=0.2, mask=response_mask,
                                    return_metrics=True)
    final["loss"] = float(final_loss)
    seconds = time.perf_counter() - t0

    controller = AdaptiveKLController(init_kl_coef=kl_coef, target=1.0, horizon=1000)
    new_coef = controller.update(seq_kl, n_steps=len(texts))

    print(f"  rollout: {len(texts)} prompts, responses sampled from the DPO policy (e.g. \"{prompts[0]}\" ->"
          f" \"{texts[0].strip()}\")")
    print(f"  rewards: lexicon rater score at the last token, -{kl_coef} * (log pi - log ref) at every token")
    print(f"  mean rater score {float(to_numpy(scores).mean()):.3f}; KL(policy || SFT reference) per response "
          f"(k1, summed over tokens) {seq_kl:.3f} nats")
    print(f"  GAE (gamma=1, lam=0.95) over {int(to_numpy(response_mask).sum())} response tokens; "
          f"PPOBuffer step by step agrees with the vectorised GAE: {gae_agrees}")
    print()
    table(
        [["first epoch (ratio = 1)", first["loss"], first["clip_fraction"], first["approx_kl"], first["ratio_mean"]],
         ["after 4 epochs", final["loss"], final["clip_fraction"], final["approx_kl"], final["ratio_mean"]]],
        ["clipped surrogate", "loss", "clip fraction", "approx KL", "mean ratio"],
    )
    print(f"\n  value loss (clipped, PPO2): {first['value_loss']:.4f}")
    print(f"  adaptive KL controller (target 1.0, horizon 1000): kl_coef {kl_coef:.4f} -> {new_coef:.4f}")
    return {"ppo_seconds": seconds, "seq_kl": seq_kl, "first": first, "final": final}


# --------------------------------------------------------------------------- 4
def comparison_section(dpo: dict, ppo: dict) -> None:
    rule("4. RLHF vs DPO Comparison")
    rows = [
        ["models in memory", "policy, reference, reward model, value head", "policy, reference"],
        ["training data", "prompts; responses sampled online", "fixed preference pairs (offline)"],
        ["reward", "explicit reward model + KL penalty", "implicit: beta * log(pi / ref)"],
        ["KL to reference", "penalty per token, adaptive coefficient", "built into the loss through beta"],
        ["per update", "generate, score, GAE, several PPO epochs", "one forward + backward over 2B rows"],
        ["hyperparameters", "kl_coef, clip, gamma, lam, vf_coef, epochs", "beta (and label smoothing)"],
        ["time per update here", f"{ppo['ppo_seconds']:.2f} s (16 rollouts, 4 epochs)",
         f"{dpo['dpo_step_seconds']:.3f} s (16 pairs)"],
        ["stability", "sensitive: clipping and KL control keep it sane", "a classification loss: stable"],
        ["can improve beyond the data", "yes: explores with fresh samples", "no: limited to the pairs"],
    ]
    table(rows, ["", "RLHF (PPO)", "DPO"])


def main(argv=None) -> int:
    args = parse_args(argv)
    from alignment_np import backend

    try:
        if args.backend is not None:
            backend.set_backend(args.backend)
        else:
            backend.apply_env_backend()  # $ALIGNMENT_NP_BACKEND, if set
    except RuntimeError as err:  # CuPy missing or no GPU: say so in one line
        print(f"demo.py: {err}", file=sys.stderr)
        return 2
    backend.keep_freed_memory()  # reuse activation memory between steps (see backend.py)
    start = time.perf_counter()
    title = "Stage 10: Alignment - RLHF and DPO"
    print(title)
    print("=" * len(title))
    print(f"backend: {backend.get_backend()}, seed: {args.seed}")
    reward_model_section(args.seed)
    dpo = dpo_section(args.seed)
    ppo = ppo_section(dpo, args.seed)
    comparison_section(dpo, ppo)
    print(f"\nTotal time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
