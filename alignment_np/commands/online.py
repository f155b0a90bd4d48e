"""What ``ppo``, ``grpo`` and ``rloo`` share: an on-policy trainer driven on the run's prompts.

    python -m alignment_np ppo --run runs/sentiment                    # against the reward model (RLHF)
    python -m alignment_np grpo --run runs/sentiment --reward rater    # against VADER itself
    python -m alignment_np rloo --run runs/sentiment --kl-coef 0.1 --name rloo_kl01

Each reads the SFT model (the policy's start and the frozen reference) and,
with ``--reward rm`` (the default), the reward model of the run folder; it
trains on the task's training prompts and writes ``<run>/<name>.npz`` (default
the method's name), its metrics under TRL's names, and a report section. The
held-out numbers come from ``eval``, like every other policy's.

The reward: ``rm`` scores each completion with the reward model (the RLHF
pipeline of Ouyang et al. 2022: the policy never sees the rater); ``rater``
scores it with the task's rater directly (the rater is then the reward, and
nothing stops the policy from exploiting it except the KL penalty). PPO's
separate value model starts from the reward model when there is one (as TRL
does), from the SFT model otherwise.
"""

from __future__ import annotations

import dataclasses

from ..checks import check_choice
from .common import add_run_arguments, add_stage_config, open_stage, say
from .dpo import check_stage_name

REWARDS = ("rm", "rater")

REWARD_DOC = ("What scores a completion: 'rm' (the run's reward model, as RLHF does) or 'rater' "
              "(the task's rater itself).")


def stage_config(trainer_config):
    """The stage's config class: the trainer's dataclass plus ``reward``."""

    def post_init(self):
        trainer_config.__post_init__(self)
        check_choice("reward", self.reward, REWARDS)

    cls = dataclasses.make_dataclass(
        f"{trainer_config.__name__[:-6]}StageConfig",
        [("reward", str, dataclasses.field(default="rm", metadata={"choices": REWARDS, "doc": REWARD_DOC}))],
        bases=(trainer_config,),
        namespace={"__post_init__": post_init, "__doc__": f"The stage: {trainer_config.__doc__}"},
    )
    return cls


def trainer_config(config, cls):
    """The trainer's own config (``cls``) from the stage's (which adds ``reward``)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def add_arguments(parser, method: str, stage_cls) -> None:
    add_run_arguments(parser)
    parser.add_argument("--name", default=method,
                        help="the stage's name in the run: its checkpoint is <name>.npz (default %(default)s)")
    add_stage_config(parser, stage_cls, exclude=("log_every",), section=method)


def reward_function(folder, task, reward: str):
    """The callable ``reward_fn(prompts, completions) -> (B,)`` the trainer optimises, and the RM if any."""
    if reward == "rater":
        return task.rate, None
    from ..trainers.reward_lm import RewardLMTrainer

    rm = RewardLMTrainer.resume(folder.checkpoint("rm"))
    return rm.score, rm


def run(args, method: str, stage_cls, config_cls, trainer_cls) -> int:
    from ..runs.report import write_report
    from ..tasks import get_task
    from .checkpoints import copy_model, load_policy

    name = check_stage_name(args.name, method)
    stage = open_stage(args, name, stage_cls, config_section=method,
                       inputs=lambda config: ("sft", "rm") if config.reward == "rm" else ("sft",))
    c, folder = stage.config, stage.run
    task = get_task(folder.task)
    config = dataclasses.replace(trainer_config(c, config_cls), log_every=0 if stage.quiet else 10)
    reference, tokenizer = load_policy(folder.checkpoint("sft"))
    reward_fn, rm = reward_function(folder, task, c.reward)
    value_model = None
    if method == "ppo" and not config.shared_value_trunk:
        # TRL (and InstructGPT) start the critic from the reward model: it already reads a response's value.
        value_model = copy_model(rm.model) if rm is not None else copy_model(reference)
    extra = {"value_model": value_model} if method == "ppo" else {}
    if stage.resume:
        trainer = trainer_cls.resume(stage.checkpoint, reference, reward_fn, config=config)
    else:
        policy = copy_model(reference)
        trainer = trainer_cls(policy, reference, reward_fn, tokenizer, config, **extra)
    prompts = list(task.prompt_set("train"))
    say(f"{name}: {method} on {len(prompts)} training prompts, reward from the "
        f"{'reward model' if c.reward == 'rm' else 'rater'}, {c.steps} iterations", stage.quiet)
    outcome = stage.train(trainer, prompts, kind="policy")
    if outcome.status != "complete":
        return outcome.exit_code
    rows = folder.metrics(name)
    tail = rows[-max(1, len(rows) // 10):]  # the last tenth of training
    summary = {k: sum(r[k] for r in tail) / len(tail) for k in tail[0]
               if k not in ("stage", "step") and all(isinstance(r.get(k), (int, float)) for r in tail)}
    folder.save_results(name, {"kind": "online", "method": method, "reward": c.reward, "iterations": trainer.step,
                               "final": summary, "seconds": folder.stage(name)["seconds"]})
    write_report(folder, plots=False)
    say(f"done: {outcome.message}", stage.quiet)
    return 0
