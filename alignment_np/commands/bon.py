"""``bon``: best-of-N sampling with the reward model, the baseline every RL method must beat.

    python -m alignment_np bon --run runs/sentiment --n 16

No weights change: for each held-out prompt the SFT model writes N
completions and the reward model (``--reward rm``, default) or the rater
keeps the one it scores highest (``rl/best_of_n.py``). Its KL from the SFT
model is the analytic log N - (N - 1)/N (Stiennon et al. 2020; an upper bound,
Beirami et al. 2024). The rater judges the kept completions; the gain is the
paired difference from the *first* of the N samples of the same prompt, which
is a plain sample of the SFT model. Results go to results.json and the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..checks import check_choice, check_nonneg_int, check_positive_int
from .common import add_run_arguments, add_stage_config, open_stage, say
from .dpo import check_stage_name

HELP = "best-of-N: keep the reward model's favourite of N SFT samples (no training), judged by the rater"


@dataclass
class BoNStageConfig:
    """The ``bon`` stage: N, and the held-out prompts it is measured on."""

    n: int = 16
    """N: completions sampled per prompt; the reward model keeps one."""

    samples: int = 512
    """Held-out prompts (balanced over the task's evaluation split), one kept completion each."""

    reward: str = field(default="rm", metadata={"choices": ("rm", "rater")})
    """What picks the best: 'rm' (the run's reward model) or 'rater' (the task's rater: an oracle)."""

    batch_size: int = 256
    """Completions sampled per call of the model."""

    max_new_tokens: int = 0
    """Longest completion in tokens (0: the task's recommendation)."""

    seed: int = 1234
    """Seeds the prompts and the samples."""

    def __post_init__(self):
        self.n = check_positive_int("n", self.n)
        self.samples = check_positive_int("samples", self.samples)
        check_choice("reward", self.reward, ("rm", "rater"))
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.max_new_tokens = check_nonneg_int("max_new_tokens", self.max_new_tokens)
        self.seed = check_nonneg_int("seed", self.seed)


def add_arguments(parser) -> None:
    add_run_arguments(parser, resumable=False)
    parser.add_argument("--name", default="bon", help="the stage's name in the run (default %(default)s)")
    add_stage_config(parser, BoNStageConfig)


def measure_best_of_n(model, tokenizer, task, reward_fn, n: int, prompts, *, max_new_tokens: int, seed: int,
                      batch_size: int) -> dict:
    """Best-of-``n`` on ``prompts``: the rater's score, grammar and gain of the kept completions (JSON-ready)."""
    import numpy as np

    from ..rl.best_of_n import best_of_n
    from ..stats import mean_se, paired_difference, win_rate

    result = best_of_n(model, tokenizer, prompts, reward_fn, n, max_new_tokens, rng=seed, batch_size=batch_size)
    first = [c[0] for c in result.all_completions]  # a plain SFT sample of the same prompt
    score = task.rate(prompts, result.completions)
    base = task.rate(prompts, first)
    grammatical = task.grammatical(prompts, result.completions).astype(np.float64)
    return {"n": n, "kl": result.kl, "samples": len(prompts),
            **mean_se(score).as_dict("score"), **mean_se(base).as_dict("reference_score"),
            **paired_difference(score, base).as_dict("gain"), **win_rate(score, base).as_dict("win_rate"),
            **mean_se(grammatical).as_dict("grammatical"),
            "proxy": float(np.mean(result.scores)),
            "examples": [{"prompt": p, "completion": c, "score": float(s)}
                         for p, c, s in list(zip(prompts, result.completions, score))[:6]]}


def run(args) -> int:
    from ..runs.report import write_report
    from ..tasks import get_task
    from .checkpoints import load_policy
    from .online import reward_function

    name = check_stage_name(args.name, "bon")
    stage = open_stage(args, name, BoNStageConfig, steps_field=None, checkpointed=False,
                       inputs=lambda config: ("sft", "rm") if config.reward == "rm" else ("sft",))
    c, folder = stage.config, stage.run
    task = get_task(folder.task)
    model, tokenizer = load_policy(folder.checkpoint("sft"))
    reward_fn, _ = reward_function(folder, task, c.reward)
    prompts = task.prompts(c.samples, split="eval", seed=c.seed)
    start = time.perf_counter()
    with stage.work_written_at_the_end():
        result = measure_best_of_n(model, tokenizer, task, reward_fn, c.n, prompts,
                                   max_new_tokens=c.max_new_tokens or task.max_new_tokens, seed=c.seed,
                                   batch_size=c.batch_size)
        folder.save_results(name, {"kind": "best_of_n", "reward": c.reward, **result})
    folder.finish(name, "complete", 0, time.perf_counter() - start)
    write_report(folder, plots=False)
    say(f"best-of-{c.n}: rater score {result['score']:.3f} ± {result['score_se']:.3f}, gain over one SFT sample "
        f"{result['gain']:+.3f} ± {result['gain_se']:.3f}, grammatical {result['grammatical']:.3f}, "
        f"KL (analytic) {result['kl']:.3f}", stage.quiet)
    return 0
