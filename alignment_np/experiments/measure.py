"""Measuring the experiments' points: held-out evaluation, the reward model's score, best-of-N.

Every policy point goes through ``tasks/evaluate.py`` (``eval``'s machinery)
with the run's evaluation config (``eval`` in the stage preset: the same
held-out prompts, the same seed for every point), so every point is paired
with the same SFT samples and its gain over the SFT model is a paired
difference. Beside the rater's (gold) score each point gets its *proxy*
score: the sub-run's reward model on the same completions (what PPO
optimised). Each evaluation is cached in ``<sub-run>/evaluations.json``
under ``<stage>@<step>``, valid while the stage's id, the reward model's id
and the evaluation config are the ones it was made with; the samples go to
``<sub-run>/samples/<stage>_step<step>.jsonl`` (with both scores).

Best-of-N is measured without sampling each N afresh: the SFT model writes
N_max completions per held-out prompt once, the reward model and the rater
score them all, and for each n <= N_max the expected score of best-of-n is
computed exactly from those N_max samples with the unbiased estimator of
Gao et al. 2022 (Appendix, "best-of-n"): sort a prompt's samples by proxy
score, x_(1) <= ... <= x_(N); the i-th is the best of a random n-subset with
probability C(i-1, n-1) / C(N, n), so

    E[value of best-of-n] = sum_i C(i-1, n-1) / C(N, n) * value_(i)          (per prompt)

then the mean over prompts and its standard error. Its KL is the analytic
log n - (n-1)/n (``rl/best_of_n.py``), an upper bound.

Shapes: P held-out prompts, N samples per prompt.
"""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np

from ..io import atomic_write
from ..runs import RunFolder
from ..stats import mean_se, paired_difference
from .common import Stopped

__all__ = ["Measure", "best_of_n_weights", "best_of_n_expectation", "best_of_n_expectation_loop"]

EVALUATIONS = "evaluations.json"
BEST_OF_N = "best_of_n.json"


def best_of_n_weights(n_max: int, n: int) -> np.ndarray:
    """(N,) float64: w_i = C(i-1, n-1) / C(N, n), the chance that the i-th smallest of N is the best of n."""
    if not 1 <= n <= n_max:
        raise ValueError(f"n: expected 1 <= n <= {n_max}, got {n}")
    total = math.comb(n_max, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, n_max + 1)], dtype=np.float64)


def _rank_order(proxy: np.ndarray) -> np.ndarray:
    """(P, N) indices sorting each row by proxy ascending; among equal proxies the earliest sample
    ranks highest (best-of-N keeps the first maximum)."""
    p, n = proxy.shape
    later_first = np.broadcast_to(-np.arange(n), (p, n))
    return np.lexsort((later_first, proxy), axis=-1)


def best_of_n_expectation(proxy, values, n: int) -> np.ndarray:
    """(P,) the expected ``values`` of the sample best-of-``n`` keeps, per prompt (unbiased, exact).

    proxy: (P, N) the picker's scores. values: (P, N) what to average (gold
    score, proxy, grammatical 0/1). n: 1 <= n <= N.
    """
    proxy, values = np.asarray(proxy, np.float64), np.asarray(values, np.float64)
    order = _rank_order(proxy)
    ranked = np.take_along_axis(values, order, axis=1)  # (P, N) by proxy, ascending
    return ranked @ best_of_n_weights(proxy.shape[1], n)


def best_of_n_expectation_loop(proxy, values, n: int) -> np.ndarray:
    """The same by enumerating every n-subset of each prompt's samples (slow, obviously right)."""
    proxy, values = np.asarray(proxy, np.float64), np.asarray(values, np.float64)
    out = np.zeros(proxy.shape[0])
    for p in range(proxy.shape[0]):
        picks = []
        for subset in itertools.combinations(range(proxy.shape[1]), n):
            best = max(subset, key=lambda i: (proxy[p, i], -i))  # the first maximum in sampling order
            picks.append(values[p, best])
        out[p] = float(np.mean(picks))
    return out


def _read(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path: str, value) -> None:
    text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_lines(path: str, rows) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class Measure:
    """Evaluations of one experiment session (cached in the sub-runs).

    parent: the run. eval_config: the ``eval`` stage's config (``EvalStageConfig``).
    force: evaluate again (once per point this session) instead of using the cache.
    """

    def __init__(self, parent: RunFolder, eval_config, *, force: bool = False, quiet: bool = False):
        from ..commands.checkpoints import load_policy
        from ..tasks import get_task

        self.parent, self.config, self.force, self.quiet = parent, eval_config, force, quiet
        self.task = get_task(parent.task)
        self.reference, self.tokenizer = load_policy(parent.checkpoint("sft"))
        self.prompts = self.task.prompts(eval_config.samples, split="eval", seed=eval_config.seed)
        self.max_new_tokens = eval_config.max_new_tokens or self.task.max_new_tokens
        self.setup = {"samples": eval_config.samples, "seed": eval_config.seed, "batch_size": eval_config.batch_size,
                      "max_new_tokens": self.max_new_tokens}
        self._rms: dict = {}
        self.redone: set = set()
        self.evaluated = 0  # points evaluated (not taken from the cache) this session

    # ------------------------------------------------------------------ the reward model
    def reward_model(self, sub: RunFolder):
        """The sub-run's reward model (loaded once per session)."""
        from ..trainers.reward_lm import RewardLMTrainer

        rid = sub.require("rm", by="the experiment")["id"]
        if rid not in self._rms:
            self._rms[rid] = RewardLMTrainer.resume(sub.checkpoint("rm"))
        return self._rms[rid]

    def proxy_scores(self, sub: RunFolder, prompts, completions) -> np.ndarray:
        """(N,) the sub-run's reward model on ``completions``, each read as the rollout reads it.

        An evaluated completion writes a special token it sampled mid-text (``<pad>``); the
        rollout that trained the policy decoded it without (``skip_special``): so does this.
        """
        drop = [t for t in (getattr(self.tokenizer, "specials", ()) or ()) if t != "<unk>"]
        texts = []
        for c in completions:
            for token in drop:
                c = c.replace(token, "")
            texts.append(c)
        return self.reward_model(sub).score(list(prompts), texts)

    # ------------------------------------------------------------------ policies
    def evaluate(self, sub: RunFolder, stage: str, step: int | None = None, path: str | None = None) -> dict:
        """The held-out numbers of stage ``stage``'s policy (at ``step``, from checkpoint ``path``).

        Returns {"n", "score", "score_se", "gain", "gain_se", "win_rate", "win_rate_se",
        "grammatical", "grammatical_se", "kl", "kl_se", "eos_fraction", "eos_fraction_se",
        "proxy", "proxy_se", "length_mean", "stage", "step"}: ``evaluate_policy``'s numbers, with
        the gain the paired difference from the SFT model's samples.
        """
        from ..commands.checkpoints import load_policy
        from ..runs.signals import Interrupted, stop_at_once
        from ..tasks.evaluate import evaluate_policy

        if path is None:  # the stage's own checkpoint: the training must be complete
            record = sub.require(stage, by="the experiment")
        else:  # a checkpoint it kept along the way: usable even if the training later failed
            record = sub.stage(stage)
            if record is None or sub.stale_inputs(stage):
                raise ValueError(f"{sub.path}: stage {stage!r} is missing or stale; make it again with --force")
        step = int(record.get("step") or 0) if step is None else int(step)
        key = f"{stage}@{step}"
        cache_path = sub.file(EVALUATIONS)
        cache = _read(cache_path)
        rm_id = sub.require("rm", by="the experiment")["id"]
        want = {"stage_id": record["id"], "rm_id": rm_id, "eval": self.setup}
        hit = cache.get(key)
        if hit and {k: hit.get(k) for k in want} == want and not (self.force and (sub.path, key) not in self.redone):
            return hit["numbers"]
        say_ = f"evaluating {os.path.basename(sub.path)}/{key} on {len(self.prompts)} held-out prompts"
        if not self.quiet:
            print(say_, flush=True)
        try:
            with stop_at_once():
                is_sft = stage == "sft"
                model = self.reference if is_sft else load_policy(path or sub.checkpoint(stage))[0]
                r = evaluate_policy(model, None if is_sft else self.reference, self.tokenizer, self.prompts,
                                    self.task.rate, lambda text: self.task.is_grammatical(text, ""),
                                    seed=self.config.seed, max_new_tokens=self.max_new_tokens,
                                    batch_size=self.config.batch_size, progress=not self.quiet)
                samples = r.pop("samples")
                proxy = self.proxy_scores(sub, [s["prompt"] for s in samples], [s["completion"] for s in samples])
        except Interrupted as stopped:
            raise Stopped(stopped.exit_code, f"{stopped} while evaluating {key}") from None
        numbers = {"stage": stage, "step": step, **{k: v for k, v in r.items() if not isinstance(v, (list, dict))},
                   "gain": r["score_diff"], "gain_se": r["score_diff_se"], **mean_se(proxy).as_dict("proxy")}
        if is_sft:  # the SFT model against itself: no gain (as `eval` reports it), the win rate only a baseline
            numbers.update(gain=None, gain_se=None)
        for s, p in zip(samples, proxy):
            s["proxy"] = float(p)
        _write_lines(sub.file(os.path.join("samples", f"{stage}_step{step}.jsonl")), samples)
        cache = _read(cache_path)
        cache[key] = {**want, "numbers": numbers}
        _write(cache_path, cache)
        self.redone.add((sub.path, key))
        self.evaluated += 1
        return numbers

    def samples(self, sub: RunFolder, stage: str, step: int) -> list:
        """The evaluated samples of ``stage`` at ``step`` (prompt, completion, score, proxy, grammatical, ...)."""
        path = sub.file(os.path.join("samples", f"{stage}_step{step}.jsonl"))
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    # ------------------------------------------------------------------ best-of-N
    def best_of_n_samples(self, sub: RunFolder, n_max: int, prompts: int) -> dict:
        """N_max SFT completions for each of the first ``prompts`` held-out prompts, scored by both judges.

        Cached in ``<sub>/best_of_n.json`` (valid for the same SFT model, reward model, N_max,
        prompts and evaluation config). Returns {"prompts", "completions" (P lists of N),
        "proxy", "gold", "grammatical" (P lists of N)}.
        """
        from ..rl.best_of_n import best_of_n
        from ..runs.signals import Interrupted, stop_at_once

        prompts = self.prompts[:prompts]
        want = {"sft_id": sub.require("sft")["id"], "rm_id": sub.require("rm")["id"], "n_max": n_max,
                "prompts": len(prompts), "eval": self.setup}
        path = sub.file(BEST_OF_N)
        cached = _read(path)
        if cached.get("config") == want and not (self.force and (sub.path, "best_of_n") not in self.redone):
            return cached
        if not self.quiet:
            print(f"best-of-N: {n_max} SFT samples for each of {len(prompts)} held-out prompts", flush=True)
        try:
            with stop_at_once():
                result = best_of_n(self.reference, self.tokenizer, prompts, self.reward_model(sub).score, n_max,
                                   self.max_new_tokens, rng=self.config.seed, batch_size=self.config.batch_size)
                rows = [p for p in prompts for _ in range(n_max)]
                flat = [c for group in result.all_completions for c in group]
                gold = self.task.rate(rows, flat).reshape(len(prompts), n_max)
                grammatical = self.task.grammatical(rows, flat).reshape(len(prompts), n_max)
        except Interrupted as stopped:
            raise Stopped(stopped.exit_code, f"{stopped} while sampling best-of-N") from None
        value = {"config": want, "prompts": list(prompts), "completions": result.all_completions,
                 "proxy": result.all_scores.tolist(), "gold": gold.tolist(),
                 "grammatical": grammatical.astype(int).tolist()}
        _write(path, value)
        self.redone.add((sub.path, "best_of_n"))
        self.evaluated += 1
        return value

    def best_of_n(self, sub: RunFolder, ns, prompts: int) -> list:
        """One row per n in ``ns``: gold and proxy score, grammatical fraction, gain over n = 1, analytic KL.

        Each with its standard error over prompts (the per-prompt estimates are exact expectations
        over the N_max samples of that prompt; see the module docstring).
        """
        from ..rl.best_of_n import best_of_n_kl

        ns = sorted(ns)
        data = self.best_of_n_samples(sub, ns[-1], prompts)
        proxy = np.asarray(data["proxy"], np.float64)
        gold = np.asarray(data["gold"], np.float64)
        grammatical = np.asarray(data["grammatical"], np.float64)
        base = best_of_n_expectation(proxy, gold, 1)
        rows = []
        for n in ns:
            g = best_of_n_expectation(proxy, gold, n)
            kl = best_of_n_kl(n)
            rows.append({"n": n, "kl": kl, "kl_se": 0.0, "kl_kind": "analytic: log n - (n-1)/n, an upper bound",
                         "samples": int(proxy.shape[0]), "n_max": int(proxy.shape[1]),
                         **mean_se(g).as_dict("score"),
                         **paired_difference(g, base).as_dict("gain"),
                         **mean_se(best_of_n_expectation(proxy, proxy, n)).as_dict("proxy"),
                         **mean_se(best_of_n_expectation(proxy, grammatical, n)).as_dict("grammatical")})
        return rows

    def best_of_n_examples(self, sub: RunFolder, n_max: int, prompts: int, count: int) -> list:
        """The completions best-of-N_max keeps for the first ``count`` prompts, with both scores."""
        data = self.best_of_n_samples(sub, n_max, prompts)
        out = []
        for p in range(min(count, len(data["prompts"]))):
            proxy = data["proxy"][p]
            best = max(range(len(proxy)), key=lambda i: (proxy[i], -i))
            out.append({"prompt": data["prompts"][p], "completion": data["completions"][p][best],
                        "proxy": proxy[best], "score": data["gold"][p][best],
                        "grammatical": bool(data["grammatical"][p][best])})
        return out
