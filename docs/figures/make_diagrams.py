"""Draw the course's diagrams: boxes and arrows, and one batch laid out by the package.

    python docs/figures/make_diagrams.py              # writes PNGs next to this file
    python docs/figures/make_diagrams.py --out DIR    # somewhere else (the tests do this)

The figures of ``make_figures.py`` plot the package's functions; these explain
how the pieces fit. Where a diagram shows data, the data come from the package:
the batch diagram is drawn from what ``collate_preferences`` returns for two
real pairs, so a change in the layout of a batch changes the picture. Needs
matplotlib (the ``plots`` or ``dev`` extra); the Agg backend needs no display.

Diagrams:
  pipeline.png          chapter 5: RLHF's three stages (SFT, reward model, PPO) beside DPO's two
  preference_batch.png  chapter 3: a batch of 2B rows, chosen then rejected, with its masks and causal shift
  backward_graph.png    chapter 8: one DPO step through the tiny GPT, forward and backward, the tied weight
  ppo_loop.png          chapter 10: one PPO iteration for RLHF: rollout, per-token rewards, GAE, epochs of updates
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

from alignment_np.data.collate import collate_preferences  # noqa: E402
from alignment_np.data.tokenizer import CharTokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DPI = 110

# One colour per kind of thing, the same in every diagram.
MODEL = "#dbe9f6"  # a network that is trained
FROZEN = "#e8e8e8"  # a network that is not (the reference, the rater)
DATA = "#fff2cc"  # data: pairs, rollouts, batches
LOSS = "#f8d7d3"  # a loss
FORWARD = "#2b6cb0"
BACKWARD = "#c0392b"


def _box(ax, x, y, w, h, text, color, fontsize=9, weight="normal"):
    """A rounded box centred at (x, y); returns its edges for the arrows."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="0.35", lw=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)
    return {"left": (x - w / 2, y), "right": (x + w / 2, y), "top": (x, y + h / 2), "bottom": (x, y - h / 2)}


def _arrow(ax, start, end, color="0.25", text=None, offset=(0.0, 0.12), style="-|>", ls="-", fontsize=8, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.3,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def _canvas(width, height):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


# ----------------------------------------------------------------------------- the pipeline


def pipeline(path: str) -> None:
    """RLHF (SFT -> reward model -> PPO with a KL penalty) beside DPO (SFT -> one loss on the pairs)."""
    fig, ax = _canvas(12.6, 6.4)

    # RLHF: one chain, with the pairs feeding the reward model and the reference the rollout.
    y = 4.55
    ax.text(0.25, 5.8, "RLHF", fontsize=13, weight="bold", va="center")
    sft = _box(ax, 1.2, y, 1.9, 1.0, "SFT model\n(supervised on\ndemonstrations)", MODEL)
    rm = _box(ax, 3.85, y, 2.3, 1.0, "reward model $r_\\phi$\nBradley-Terry loss\n(chapter 4)", MODEL)
    rollout = _box(ax, 6.75, y, 2.5, 1.0, "rollout: sample $y \\sim \\pi_\\theta$,\nscore $r_\\phi(x, y)$,\n"
                   "reference log-probs", DATA)
    rewards = _box(ax, 9.35, y, 1.95, 1.0, "$r_t = -\\beta k_t$\n(+ score at the end),\nGAE: $A_t$", DATA)
    ppo = _box(ax, 11.55, y, 1.75, 1.0, "PPO update\n(chapter 6)", LOSS)
    pairs_top = _box(ax, 3.85, 5.8, 2.3, 0.55, "preference pairs $(x, y_w, y_l)$", DATA, fontsize=8)
    ref_top = _box(ax, 6.75, 3.35, 2.5, 0.6, "reference $\\pi_{\\mathrm{ref}}$: frozen SFT copy", FROZEN,
                   fontsize=8)
    _arrow(ax, sft["right"], rm["left"], text="init")
    _arrow(ax, pairs_top["bottom"], rm["top"])
    _arrow(ax, rm["right"], rollout["left"], text="scores")
    _arrow(ax, ref_top["top"], rollout["bottom"])
    _arrow(ax, rollout["right"], rewards["left"])
    ax.text(8.4, y - 0.62, "KL (chapter 7)", fontsize=7.5, ha="center", color="0.35")
    _arrow(ax, rewards["right"], ppo["left"])
    _arrow(ax, ppo["top"], (rollout["top"][0] + 0.5, rollout["top"][1]), color=FORWARD, rad=0.35,
           text="the updated $\\pi_\\theta$ samples again", offset=(0.2, 0.42))
    ax.text(1.2, y - 0.62, "$\\pi_\\theta$ and $\\pi_{\\mathrm{ref}}$ start here", fontsize=7.5,
            ha="center", va="top", color="0.35")
    ax.text(10.45, 3.35, "online: the policy samples\nits own training data", ha="center", va="center",
            fontsize=8, style="italic", color="0.35")
    ax.plot([0.1, 12.5], [2.95, 2.95], color="0.75", lw=0.8, ls="--", zorder=0)

    # DPO: the same start and the same pairs, one loss.
    y = 1.25
    ax.text(0.25, 2.45, "DPO", fontsize=13, weight="bold", va="center")
    sft_b = _box(ax, 1.2, y, 1.9, 1.0, "SFT model", MODEL)
    ref_b = _box(ax, 3.85, y, 2.3, 1.0, "reference log-probs\nof every pair,\ncomputed once", FROZEN,
                 fontsize=8)
    dpo = _box(ax, 7.1, y, 3.2, 1.0, "DPO loss $-\\log\\sigma(\\beta h)$:\none forward and backward\n"
               "over $2B$ rows (chapter 5)", LOSS)
    pairs_b = _box(ax, 7.1, 2.45, 2.3, 0.55, "the same preference pairs", DATA, fontsize=8)
    policy = _box(ax, 10.95, y, 2.6, 1.0, "policy $\\pi_\\theta$, its own\nreward model\n"
                  "$\\hat r_\\theta = \\beta \\log(\\pi_\\theta / \\pi_{\\mathrm{ref}})$", MODEL, fontsize=8)
    _arrow(ax, sft_b["right"], ref_b["left"], text="copy")
    ax.text(1.2, y - 0.62, "$\\pi_\\theta$ starts here", fontsize=7.5, ha="center", va="top", color="0.35")
    _arrow(ax, ref_b["right"], dpo["left"])
    _arrow(ax, pairs_b["bottom"], dpo["top"])
    _arrow(ax, dpo["right"], policy["left"], text="update")
    ax.text(10.95, 2.4, "offline: no reward model,\nno sampling, no critic", ha="center", va="center",
            fontsize=8, style="italic", color="0.35")

    for i, (color, label) in enumerate(((MODEL, "trained network"), (FROZEN, "frozen"), (DATA, "data"),
                                        (LOSS, "loss and update"))):
        ax.add_patch(Rectangle((0.25 + 2.6 * i, 0.05), 0.3, 0.22, facecolor=color, edgecolor="0.35"))
        ax.text(0.65 + 2.6 * i, 0.16, label, va="center", fontsize=8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- the batch


BATCH_PAIRS = [("the soup was", " hot .", " cold ."), ("the plot", " is gripping .", " drags .")]


def preference_batch(path: str) -> None:
    """The (2B, T) batch ``collate_preferences`` builds, cell by cell: ids, targets, masks, the shift."""
    prompts, chosen, rejected = (list(column) for column in zip(*BATCH_PAIRS))
    tok = CharTokenizer.from_text([p + c + r for p, c, r in BATCH_PAIRS])
    batch = collate_preferences(prompts, chosen, rejected, tok, block_size=64)
    ids, targets = batch["input_ids"], batch["targets"]
    loss_mask, attention = batch["loss_mask"], batch["attention_mask"]
    rows, T = ids.shape
    B = rows // 2

    def label(token_id):
        text = tok.decode([int(token_id)], skip_special=False)
        return {"<bos>": "bos", "<eos>": "eos", "<pad>": "", " ": "\u2423"}.get(text, text)

    cell, gap = 0.36, 0.45
    x0 = 2.2
    width = x0 + T * cell + 0.2
    height = 0.55 + rows * (2 * cell + gap) + 0.8
    fig, ax = _canvas(width, height)
    top = height - 0.75
    ax.text(x0 - 0.08, top + 0.16, "position $t$", fontsize=7, color="0.45", va="center", ha="right")
    for t in range(T):
        ax.text(x0 + (t + 0.5) * cell, top + 0.1, str(t), ha="center", va="bottom", fontsize=6, color="0.45")
    for r in range(rows):
        y_ids = top - r * (2 * cell + gap) - cell
        y_tgt = y_ids - cell
        role = "chosen" if r < B else "rejected"
        ax.text(0.05, y_ids, f"row {r}\n{role} {r % B}", fontsize=9, va="center", weight="bold",
                color="#1f5f99" if r < B else "#a33a2c")
        ax.text(x0 - 0.08, y_ids + cell / 2, "input_ids", fontsize=7, va="center", ha="right", color="0.3")
        ax.text(x0 - 0.08, y_tgt + cell / 2, "targets", fontsize=7, va="center", ha="right", color="0.3")
        for t in range(T):
            x = x0 + t * cell
            real = attention[r, t] == 1
            ax.add_patch(Rectangle((x, y_ids), cell, cell, facecolor="white" if real else "#f0f0f0",
                                   edgecolor="0.6", lw=0.5, hatch=None if real else "///"))
            ax.text(x + cell / 2, y_ids + cell / 2, label(ids[r, t]), ha="center", va="center", fontsize=7)
            counted = loss_mask[r, t] == 1
            face = ("#cfe2f3" if r < B else "#f4cccc") if counted else ("white" if real else "#f0f0f0")
            ax.add_patch(Rectangle((x, y_tgt), cell, cell, facecolor=face, edgecolor="0.6", lw=0.5,
                                   hatch=None if real else "///"))
            ax.text(x + cell / 2, y_tgt + cell / 2, label(targets[r, t]), ha="center", va="center", fontsize=7,
                    color="black" if counted else "0.55")
    # The causal shift, shown once: targets[t] is input_ids[t + 1], so the logits at
    # position t (computed from input_ids[:t + 1]) score the token that comes next.
    t_demo = 5
    y_ids = top - cell
    ax.add_patch(FancyArrowPatch((x0 + (t_demo + 1.5) * cell, y_ids + 0.3 * cell),
                                 (x0 + (t_demo + 0.5) * cell, y_ids - 0.3 * cell), arrowstyle="-|>",
                                 mutation_scale=14, color=FORWARD, lw=2.0, zorder=5))
    ax.text(x0 + (t_demo + 2.2) * cell, top + 0.36, "targets[t] = input_ids[t + 1]: the causal shift,"
            " done once in the data", fontsize=8, color=FORWARD, va="bottom")
    # Legend.
    y_leg = 0.15
    items = (("#cfe2f3", "loss_mask = 1, chosen"), ("#f4cccc", "loss_mask = 1, rejected"),
             ("white", "loss_mask = 0: prompt"), ("#f0f0f0", "attention_mask = 0: padding"))
    for i, (color, text) in enumerate(items):
        ax.add_patch(Rectangle((x0 + i * 2.2, y_leg), 0.3, 0.22, facecolor=color, edgecolor="0.5",
                               hatch="///" if "padding" in text else None))
        ax.text(x0 + i * 2.2 + 0.4, y_leg + 0.11, text, fontsize=7.5, va="center")
    ax.text(0.05, y_leg + 0.11, f"B = {B} pairs\n= {rows} rows", fontsize=8, va="center")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- the backward pass


def backward_graph(path: str) -> None:
    """One DPO step through TinyGPT: the forward left to right, the backward right to left."""
    fig, ax = _canvas(13.4, 5.0)
    y_f, h = 3.05, 1.0
    stages = [  # (centre x, width, text, colour)
        (0.8, 1.2, "token ids\n(2B, T)", DATA),
        (2.35, 1.6, "embedding\n$W_{te}[\\mathrm{idx}] + W_{pe}$", MODEL),
        (4.45, 2.2, "L blocks:\n$u + \\mathrm{attn}(\\mathrm{LN}(u))$\n$u + \\mathrm{mlp}(\\mathrm{LN}(u))$",
         MODEL),
        (6.45, 1.4, "$\\tilde u = \\mathrm{LN}_f(u)$\n(2B, T, D)", MODEL),
        (8.15, 1.6, "tied head\n$\\tilde u\\, W_{te}^\\top$\nlogits (2B, T, V)", MODEL),
        (10.1, 1.9, "log-softmax, gather,\nmask, sum over $t$:\nlogps (2B,)", DATA),
        (12.25, 1.6, "DPO loss $L$\n(with the reference\nlog-probs)", LOSS),
    ]
    boxes = [_box(ax, x, y_f, w, h, text, color, fontsize=8) for x, w, text, color in stages]
    for left, right in zip(boxes, boxes[1:]):
        _arrow(ax, left["right"], right["left"], color=FORWARD)
    ax.text(0.2, y_f + 0.75, "forward", color=FORWARD, fontsize=10, weight="bold")

    # The backward: each arrow carries the gradient of L with respect to the output
    # of the box it points to; no gradient reaches the token ids.
    y_b = 1.75
    carried = {6: "$\\partial L/\\partial\\,$logps", 5: "$\\partial L/\\partial\\,$logits",
               4: "$\\partial L/\\partial \\tilde u$", 3: "$\\partial L/\\partial u$",
               2: "$\\partial L/\\partial u$"}
    for i in range(len(boxes) - 1, 1, -1):
        start, end = (stages[i][0] - 0.15, y_b), (stages[i - 1][0] + 0.15, y_b)
        _arrow(ax, start, end, color=BACKWARD)
        ax.text((start[0] + end[0]) / 2, y_b + 0.1, carried[i], ha="center", va="bottom", fontsize=8,
                color=BACKWARD)
    for i in range(1, len(boxes)):
        ax.plot([stages[i][0]] * 2, [y_f - h / 2, y_b + 0.05], color=BACKWARD, lw=0.6, ls=":")
    ax.text(0.2, y_b + 0.1, "backward", color=BACKWARD, fontsize=10, weight="bold")
    notes = {
        6: "$\\mp\\frac{\\beta}{B}\\sigma(-\\beta h)$\nfor chosen, rejected",
        5: "$g\\,(\\mathbf{e}_{y_t} - p_t)$ where\nthe mask is 1, else 0",
        4: "$\\partial W_{te}$ += $d\\mathrm{logits}^\\top \\tilde u$",
        3: "LayerNorm's\nrow-mean backward",
        2: "each block adds its\n$\\partial w$, $\\partial b$ (+=)",
        1: "$\\partial W_{te}$ += scatter-add,\n$\\partial W_{pe}$",
    }
    for i, text in notes.items():
        ax.text(stages[i][0], y_b - 0.2, text, ha="center", va="top", fontsize=7.5, color=BACKWARD)

    # The tied weight: two uses, two contributions, summed.
    y_w = 4.45
    ax.text(5.25, y_w, "one weight, two uses: $\\partial L/\\partial W_{te}$ = the head's "
            "$d\\mathrm{logits}^\\top \\tilde u$ + the embedding's scatter-add",
            ha="center", va="center", fontsize=8.5, color=BACKWARD,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor=BACKWARD, lw=0.8))
    _arrow(ax, (8.15, y_w - 0.2), boxes[4]["top"], color=BACKWARD, ls="--")
    _arrow(ax, (2.35, y_w - 0.2), boxes[1]["top"], color=BACKWARD, ls="--")
    ax.text(6.7, 0.75, "Each module's backward(dout, cache) returns the gradient of its input and adds (+=) "
            "its parameters' gradients; the caches come from the forward.",
            ha="center", fontsize=8, style="italic", color="0.35")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- the PPO loop


def ppo_loop(path: str) -> None:
    """One iteration of PPO for RLHF (``PPOTrainer.train_step``): rollout, rewards, GAE, update, KL control."""
    fig, ax = _canvas(14.0, 6.6)
    y_top, y_mid, y_low = 5.4, 3.45, 1.35

    # The rollout: the policy samples, three frozen or trained models score the same tokens.
    prompts = _box(ax, 1.05, y_top, 1.7, 0.8, "B prompts $x$\n(training split)", DATA)
    policy = _box(ax, 3.55, y_top, 2.4, 0.95, "policy $\\pi_\\theta$\nsamples $y$ with the\nKV cache at temp", MODEL)
    samples = _box(ax, 6.35, y_top, 2.2, 0.95, "tokens, response mask\n$m_{i,t}$, last token\nof each response", DATA,
                   fontsize=8)
    _arrow(ax, prompts["right"], policy["left"])
    _arrow(ax, policy["right"], samples["left"])
    scorers = [  # (text, colour, y): every one reads the same sampled tokens
        ("$\\pi_\\theta$: one forward\n$\\log\\pi_\\theta(y_t)$ at temp", MODEL, 6.15),
        ("$\\pi_{\\mathrm{ref}}$ (frozen SFT):\n$\\log\\pi_{\\mathrm{ref}}(y_t)$ at temp", FROZEN, 5.25),
        ("reward model $r_\\phi$ (frozen):\nscore at the last token;\n$-p$ if no <eos>", FROZEN, 4.3),
        ("value model $V_\\psi$:\n$V(s_t)$ at each token", MODEL, 3.25),
    ]
    boxes = []
    for text, color, y in scorers:
        b = _box(ax, 9.0, y, 2.5, 0.75, text, color, fontsize=7.5)
        boxes.append(b)
        _arrow(ax, samples["right"], b["left"])
    ax.text(9.0, 6.75, "the rollout: no gradients", ha="center", fontsize=8.5, style="italic", color="0.35")

    # Rewards and advantages.
    rewards = _box(ax, 12.15, 5.2, 2.1, 1.25, "per-token reward\n$r_t = -\\beta k_t$\n"
                   "+ score at the last $t$\n(chapter 7)", DATA, fontsize=8)
    for b in boxes[:3]:
        _arrow(ax, b["right"], rewards["left"])
    gae = _box(ax, 12.15, y_mid - 0.35, 2.1, 1.25, "GAE with the mask,\n$\\gamma = 1$: $A_t$, returns\n"
               "$R^\\lambda_t = A_t + V(s_t)$;\nwhiten $A_t$", DATA, fontsize=8)
    _arrow(ax, rewards["bottom"], gae["top"])
    _arrow(ax, boxes[3]["right"], gae["left"])

    # The update: epochs of minibatches.
    update = _box(ax, 7.6, y_low, 5.0, 1.35, "num_ppo_epochs x num_mini_batches:\n"
                  "clipped surrogate($\\rho_t$, $A_t$) + $c_V\\,$clipped value loss($V$, $R^\\lambda$)\n"
                  "$- c_{\\mathcal{H}}\\,$entropy; backward; clip the gradient norm;\nNaN guard; AdamW step",
                  LOSS, fontsize=8)
    _arrow(ax, gae["bottom"], update["right"], rad=-0.2)
    control = _box(ax, 12.15, y_low - 0.35, 2.1, 0.9, "KL controller:\n$\\beta \\leftarrow \\beta(1 + K_\\beta \\xi)$\n"
                   "(fixed: unchanged)", FROZEN, fontsize=8)
    _arrow(ax, (13.5, control["right"][1]), (13.5, rewards["right"][1]), color="0.45", ls="--")
    ax.plot([control["right"][0], 13.5], [control["right"][1]] * 2, color="0.45", lw=1.3, ls="--")
    ax.plot([rewards["right"][0], 13.5], [rewards["right"][1]] * 2, color="0.45", lw=1.3, ls="--")
    ax.text(13.62, (control["right"][1] + rewards["right"][1]) / 2, "the next iteration's $\\beta$",
            rotation=90, ha="left", va="center", fontsize=8, color="0.45")
    ax.text(2.6, y_low, "the updated $\\pi_\\theta$ and $V_\\psi$\nroll out the next batch",
            ha="center", va="center", fontsize=8.5, color=FORWARD)
    _arrow(ax, update["left"], (policy["bottom"][0], policy["bottom"][1]), color=FORWARD, rad=-0.3)
    ax.text(7.6, 0.25, "Chapter 6: the clipped surrogate and the value loss; chapter 7: the KL estimate $k_t$ "
            "and the controller; chapter 8: the model's forward and backward.",
            ha="center", fontsize=8, style="italic", color="0.35")
    for i, (color, label) in enumerate(((MODEL, "trained"), (FROZEN, "frozen"), (DATA, "data"),
                                        (LOSS, "loss and update"))):
        ax.add_patch(Rectangle((0.25, 3.9 - 0.42 * i), 0.3, 0.22, facecolor=color, edgecolor="0.35"))
        ax.text(0.65, 4.01 - 0.42 * i, label, va="center", fontsize=8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


DIAGRAMS = {
    "pipeline.png": pipeline,
    "preference_batch.png": preference_batch,
    "backward_graph.png": backward_graph,
    "ppo_loop.png": ppo_loop,
}


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="directory for the PNG files (default: next to this script)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, draw in DIAGRAMS.items():
        path = os.path.join(args.out, name)
        draw(path)
        written.append(path)
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
