"""``sample``: continue prompts with any checkpoint of a run, as text or as JSON lines.

    python -m alignment_np sample --run runs/sentiment --stage dpo --prompt "the soup was"
    python -m alignment_np sample --ckpt runs/sentiment/sft.npz --num-samples 4 --format jsonl

``--format jsonl`` prints one JSON object per line, ``{"prompt", "completion",
"logp"}`` (``logp``: the completion's log-probability under the model at the
sampling temperature, eos included), so that anyone can score the outputs with
a rater of their own.
"""

from __future__ import annotations

import json

from ..backend import BACKENDS, to_numpy
from ..checks import check_float, check_nonneg_int, check_positive_int

HELP = "continue prompts with a trained checkpoint (text, or JSON lines to score elsewhere)"


def add_arguments(parser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ckpt", metavar="FILE", help="a checkpoint file (.npz) holding a TinyGPT and its tokenizer")
    where.add_argument("--run", metavar="DIR", help="a run folder; with --stage, which of its checkpoints")
    parser.add_argument("--stage", default="sft", help="with --run: the stage whose checkpoint to use (default sft)")
    parser.add_argument("--prompt", action="append",
                        help="a prompt (repeat for several; default: three held-out prompts of the run's task)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text: prompt and completion on a line; jsonl: {prompt, completion, logp} per line")
    parser.add_argument("--backend", choices=BACKENDS, default=None)


def sample_completions(model, tokenizer, prompts, *, temperature=1.0, top_k=None, seed=0, max_new_tokens=64):
    """(completions, logps): each prompt's sampled continuation (text up to eos) and its log-prob.

    Prompts are left-padded into one batch and sampled with the KV cache
    (``rl.generate.generate``); the continuation stops at eos or at
    ``max_new_tokens`` (fewer if the model's block_size leaves less room).
    logps: (N,) float64, the sum of the sampled tokens' log-probs at ``temperature``.
    """
    from ..rl.generate import generate

    ids, mask = tokenizer.encode_batch(list(prompts), add_bos=True, padding_side="left")
    room = model.config.block_size - ids.shape[1]
    if room < 1:
        raise ValueError(
            f"prompts: the longest prompt is {ids.shape[1]} tokens with <bos>, no room left in the model's "
            f"block_size={model.config.block_size}"
        )
    out = generate(model, ids, min(max_new_tokens, room), temperature=temperature, top_k=top_k, seed=seed,
                   attention_mask=mask, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    new = to_numpy(out["new_tokens"])
    logps = to_numpy(out["logprobs"]).astype("float64").sum(axis=1)
    return [tokenizer.decode(row) for row in new], logps


def continue_prompts(model, tokenizer, prompts, *, temperature=0.8, top_k=None, seed=0, max_new_tokens=64):
    """Each prompt's sampled continuation, as text (see ``sample_completions``)."""
    return sample_completions(model, tokenizer, prompts, temperature=temperature, top_k=top_k, seed=seed,
                              max_new_tokens=max_new_tokens)[0]


def run(args) -> int:
    from ..runs import RunFolder
    from .checkpoints import load_policy

    n = check_positive_int("--num-samples", args.num_samples)
    max_new = check_positive_int("--max-new-tokens", args.max_new_tokens)
    temperature = check_float("--temperature", args.temperature, 0)
    seed = check_nonneg_int("--seed", args.seed)
    if args.top_k is not None:
        check_positive_int("--top-k", args.top_k)
    task_name = None
    if args.run is not None:
        folder = RunFolder(args.run, create=False)
        folder.require(args.stage)
        path, task_name = folder.checkpoint(args.stage), folder.task
    else:
        path = args.ckpt
    model, tokenizer = load_policy(path)
    prompts = args.prompt
    if not prompts:
        from ..tasks import get_task

        prompts = get_task(task_name or "sentiment").prompts(3, split="eval", seed=seed)
    batch = [p for p in prompts for _ in range(n)]
    completions, logps = sample_completions(model, tokenizer, batch, temperature=temperature, top_k=args.top_k,
                                            seed=seed, max_new_tokens=max_new)
    for prompt, completion, logp in zip(batch, completions, logps):
        if args.format == "jsonl":
            print(json.dumps({"prompt": prompt, "completion": completion, "logp": float(logp)}, ensure_ascii=False))
        else:
            print(prompt + completion)
    return 0
