"""Loading a run's checkpoints for the commands (one place that knows the formats)."""

from __future__ import annotations

__all__ = ["load_policy", "copy_model"]


def load_policy(path):
    """(TinyGPT, CharTokenizer) from any stage's checkpoint that holds a language model.

    Every trainer's ``save`` stores the model's config and the tokenizer with
    the weights, so one loader serves sft.npz, dpo.npz, ppo.npz, ... The
    on-policy trainers (PPO, GRPO, RLOO) keep the policy's weights under
    ``policy.`` beside a value model's; only the policy is loaded. A file that
    is missing, corrupt or not a model checkpoint raises an error naming it.
    """
    import os

    from ..checkpoint import load_checkpoint
    from ..nn.gpt import GPTConfig, TinyGPT
    from ..trainers.sft import load_model

    info = load_checkpoint(path)
    extra = info["extra"] if isinstance(info["extra"], dict) else {}
    if "policy_config" not in extra:
        return load_model(path)
    if info["tokenizer"] is None:
        raise ValueError(f"{os.fspath(path)}: the checkpoint stores no tokenizer")
    model = TinyGPT(GPTConfig(**extra["policy_config"]))
    state = {k[len("policy."):]: v for k, v in info["model_state"].items() if k.startswith("policy.")}
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: the policy's weights do not fit its config: {err}") from err
    return model, info["tokenizer"]


def copy_model(model):
    """A separate TinyGPT with the same config and weights (nothing shared: training one leaves the other)."""
    from ..nn.gpt import TinyGPT

    twin = TinyGPT(model.config)
    twin.load_state_dict(model.state_dict())
    return twin
