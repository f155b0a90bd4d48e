"""DPOTrainer: the DPO family's loss, gradients and TRL-style metrics for one batch.

Direct Preference Optimization (Rafailov et al. 2023) trains the policy on
preference pairs with no reward model and no sampling: given the log-probs of
the chosen and rejected responses under the policy and under a frozen
reference (computed once per dataset), one step is

    loss, metrics, d_chosen, d_rejected = trainer.compute_loss(pi_c, pi_r, ref_c, ref_r)

after which ``SequenceLogProbs.backward`` turns ``d_chosen`` / ``d_rejected``
into gradients of the logits and the model's backward does the rest.

``compute_loss`` is self-contained (arrays in, numbers and gradients out), so
the training loop that will wrap it over a language model can be added
without changing it.

Non-finite log-probs are refused (ValueError naming the argument and the
pair, from ``dpo_loss``): the metrics are means and strict comparisons, and
a NaN would come out as a finite loss and an accuracy that counts it wrong.
"""

from __future__ import annotations

from ..losses.dpo import LOSS_TYPES, check_dpo_hyperparameters, dpo_loss

__all__ = ["DPOTrainer"]


class DPOTrainer:
    """Loss and metrics of DPO and its variants for batches of preference pairs.

    beta: > 0, the implicit KL strength (TRL ``DPOConfig.beta``; 0.1 is common).
    label_smoothing: in [0, 0.5), the assumed rate of flipped labels; used by
        loss_type "sigmoid" (conservative DPO) and "robust".
    loss_type: one of "sigmoid" (DPO), "ipo", "hinge" (SLiC), "robust" (rDPO);
        see ``alignment_np.losses.dpo`` for the formulas and papers.

    Raises ValueError for beta <= 0 or not a number, label_smoothing outside
    [0, 0.5), or an unknown loss_type (the message lists the choices).
    """

    loss_types = tuple(sorted(LOSS_TYPES))

    def __init__(self, beta=0.1, label_smoothing=0.0, loss_type="sigmoid"):
        self.beta, self.label_smoothing, self.loss_type = check_dpo_hyperparameters(
            beta, label_smoothing, loss_type
        )

    def compute_loss(
        self,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
    ):
        """The mean loss over the batch, its metrics and its gradients.

        policy_chosen_logps, policy_rejected_logps: (B,) log-probs under the policy.
        ref_chosen_logps, ref_rejected_logps: (B,) log-probs under the frozen reference.

        Returns (loss, metrics, grad_policy_chosen (B,), grad_policy_rejected (B,)):
          loss: the mean per-pair loss, a Python float;
          metrics: Python floats, means over the batch, named as in TRL's logs:
            "loss";
            "chosen_reward"   (TRL rewards/chosen):   beta * (pi_c - ref_c);
            "rejected_reward" (TRL rewards/rejected): beta * (pi_r - ref_r);
            "reward_margin"   (TRL rewards/margins):  chosen minus rejected reward;
            "accuracy"        (TRL rewards/accuracies): fraction of pairs whose
                              chosen reward is strictly greater than the rejected one;
          grad_policy_chosen, grad_policy_rejected: d loss / d policy log-probs,
            arrays in the inputs' dtype on the inputs' device.

        Raises ValueError if the four inputs do not share one (B,) shape
        (the message lists all four shapes).
        """
        losses, grad_chosen, grad_rejected, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_type=self.loss_type,
        )
        loss = float(losses.mean())
        metrics = {
            "loss": loss,
            "accuracy": float((chosen_rewards > rejected_rewards).mean()),
            "chosen_reward": float(chosen_rewards.mean()),
            "rejected_reward": float(rejected_rewards.mean()),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
        }
        return loss, metrics, grad_chosen, grad_rejected

    def __repr__(self) -> str:
        return (
            f"DPOTrainer(beta={self.beta}, label_smoothing={self.label_smoothing}, "
            f"loss_type={self.loss_type!r})"
        )
