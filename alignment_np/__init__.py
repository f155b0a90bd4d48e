"""alignment_np: LLM alignment built from first principles in NumPy.

The stage-10 names of the course are importable from here with their course
signatures; everything else lives in its own module (one concept per file).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it. Resolved on first access (PEP 562), so that
# ``import alignment_np`` stays fast and never imports an optional dependency.
_EXPORTS = {
    # backend and checking
    "set_backend": "alignment_np.backend",
    "apply_env_backend": "alignment_np.backend",
    "get_backend": "alignment_np.backend",
    "get_array_module": "alignment_np.backend",
    "to_numpy": "alignment_np.backend",
    "to_device": "alignment_np.backend",
    "check_gradients": "alignment_np.gradcheck",
    "numerical_gradient": "alignment_np.gradcheck",
    "relative_error": "alignment_np.gradcheck",
    # stage 10: preference data
    "PreferencePair": "alignment_np.data.preferences",
    "create_preference_dataset": "alignment_np.data.preferences",
    "load_preferences": "alignment_np.data.preferences",
    "save_preferences": "alignment_np.data.preferences",
    # stage 10: reward model
    "RewardModel": "alignment_np.nn.reward_mlp",
    "reward_model_loss": "alignment_np.losses.bradley_terry",
    # stage 10: log-probs and DPO
    "compute_log_probs": "alignment_np.functional.logprobs",
    "SequenceLogProbs": "alignment_np.nn.sequence_logprobs",
    "DPOTrainer": "alignment_np.trainers.dpo",
    "dpo_loss": "alignment_np.losses.dpo",
    # stage 10: PPO and KL
    "PPOBuffer": "alignment_np.rl.buffer",
    "compute_gae": "alignment_np.rl.gae",
    "whiten": "alignment_np.rl.gae",
    "ppo_loss": "alignment_np.losses.ppo",
    "value_loss": "alignment_np.losses.ppo",
    "entropy_from_logits": "alignment_np.losses.ppo",
    "kl_divergence": "alignment_np.losses.kl",
    "kl_penalty_reward": "alignment_np.losses.kl",
    "AdaptiveKLController": "alignment_np.rl.kl_control",
    "FixedKLController": "alignment_np.rl.kl_control",
    # beyond stage 10: helpers of the same concepts
    "reward_accuracy": "alignment_np.losses.bradley_terry",
    "train_reward_model": "alignment_np.trainers.reward_model",
    "evaluate_reward_model": "alignment_np.trainers.reward_model",
    "make_preference_features": "alignment_np.data.synthetic",
    "simpo_loss": "alignment_np.losses.dpo",
    "kl_estimate": "alignment_np.losses.kl",
    "compute_gae_reference": "alignment_np.rl.gae",
    # the tiny GPT and its training parts
    "GPTConfig": "alignment_np.nn.gpt",
    "TinyGPT": "alignment_np.nn.gpt",
    "Parameter": "alignment_np.nn.module",
    "Module": "alignment_np.nn.module",
    "SGD": "alignment_np.optim",
    "AdamW": "alignment_np.optim",
    "clip_grad_norm": "alignment_np.optim",
    "cosine_schedule": "alignment_np.optim",
    "CharTokenizer": "alignment_np.data.tokenizer",
    "save_checkpoint": "alignment_np.checkpoint",
    "SFTConfig": "alignment_np.trainers.sft",
    "SFTTrainer": "alignment_np.trainers.sft",
    "generate": "alignment_np.rl.generate",
    "collate_lm": "alignment_np.data.collate",
    "collate_sft": "alignment_np.data.collate",
    "collate_preferences": "alignment_np.data.collate",
    "generate_preference_pairs": "alignment_np.data.corpus",
    "DPOConfig": "alignment_np.trainers.dpo_lm",
    "DPOLMTrainer": "alignment_np.trainers.dpo_lm",
    "PreferenceDataset": "alignment_np.trainers.dpo_lm",
    "policy_logps_forward": "alignment_np.trainers.lm_logprobs",
    "policy_logps_backward": "alignment_np.trainers.lm_logprobs",
    "load_checkpoint": "alignment_np.checkpoint",
    # RLHF on the tiny GPT: one rollout, advantage estimators, GRPO / RLOO losses, the trainers
    "response_forward": "alignment_np.trainers.lm_logprobs",
    "response_backward": "alignment_np.trainers.lm_logprobs",
    "Rollout": "alignment_np.rl.rollout",
    "collect_rollout": "alignment_np.rl.rollout",
    "gae_advantages": "alignment_np.rl.advantages",
    "group_advantages": "alignment_np.rl.advantages",
    "leave_one_out_advantages": "alignment_np.rl.advantages",
    "grpo_loss": "alignment_np.losses.grpo",
    "rloo_loss": "alignment_np.losses.rloo",
    "best_of_n": "alignment_np.rl.best_of_n",
    "best_of_n_kl": "alignment_np.rl.best_of_n",
    "PPOConfig": "alignment_np.trainers.ppo",
    "PPOTrainer": "alignment_np.trainers.ppo",
    "GRPOConfig": "alignment_np.trainers.grpo",
    "GRPOTrainer": "alignment_np.trainers.grpo",
    "RLOOConfig": "alignment_np.trainers.rloo",
    "RLOOTrainer": "alignment_np.trainers.rloo",
    # preference learning on the tiny GPT: the task, collection, the reward model, evaluation
    "get_task": "alignment_np.tasks",
    "collect_preferences": "alignment_np.tasks.collect",
    "evaluate_policy": "alignment_np.tasks.evaluate",
    "RewardLMConfig": "alignment_np.trainers.reward_lm",
    "RewardLMTrainer": "alignment_np.trainers.reward_lm",
    "orpo_loss": "alignment_np.losses.orpo",
    "mean_se": "alignment_np.stats",
    "paired_difference": "alignment_np.stats",
    "win_rate": "alignment_np.stats",
    "spearman": "alignment_np.stats",
    # runs: the folder every command reads and writes
    "RunFolder": "alignment_np.runs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alignment_np' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain attribute
    return value


def __dir__():
    return __all__
