"""Draw the course's figures from the package's own functions.

    python docs/figures/make_figures.py              # writes PNGs next to this file
    python docs/figures/make_figures.py --out DIR    # somewhere else (the tests do this)

Every curve is computed by calling the code the chapters describe, never
drawn by hand: if a loss changes, its figure changes with it. Needs
matplotlib (the ``plots`` or ``dev`` extra); the Agg backend needs no display.

Figures:
  dpo_variants.png    chapter 5: loss and gradient magnitude of each DPO-family loss against beta h
  ppo_clip.png        chapter 6: the clipped surrogate and its gradient, by region, for A > 0 and A < 0

The diagrams (the pipeline, the batch, the backward pass) are drawn by make_diagrams.py.
  kl_estimators.png   chapter 7: the per-sample KL estimators k1, k2, k3 against the log-ratio
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alignment_np.losses.dpo import dpo_loss  # noqa: E402
from alignment_np.losses.kl import kl_estimate  # noqa: E402
from alignment_np.losses.ppo import ppo_loss  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DPI = 110


def dpo_variants(path: str) -> None:
    """Per-pair loss and |d loss / d h| of each variant as a function of z = beta h."""
    beta = 0.5
    z = np.linspace(-6.0, 6.0, 481)
    h = z / beta
    zeros = np.zeros_like(h)  # with the other three log-probs 0, h = policy_chosen_logps
    variants = [
        ("DPO (sigmoid)", dict(loss_type="sigmoid")),
        ("cDPO, $\\eta$ = 0.1", dict(loss_type="sigmoid", label_smoothing=0.1)),
        ("IPO", dict(loss_type="ipo")),
        ("hinge (TRL's SLiC)", dict(loss_type="hinge")),
        ("rDPO, $\\eta$ = 0.1", dict(loss_type="robust", label_smoothing=0.1)),
    ]
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, kwargs in variants:
        losses, grad_chosen, _, _, _ = dpo_loss(h, zeros, zeros, zeros, beta=beta, **kwargs)
        # dpo_loss returns the gradient of the MEAN over the batch; times B is d loss_b / d h_b.
        dloss_dh = grad_chosen * h.shape[0]
        ax_loss.plot(z, losses, label=label)
        ax_grad.plot(z, np.abs(dloss_dh), label=label)
    ax_loss.set(xlabel=r"$\beta h$ (implicit reward margin)", ylabel="per-pair loss",
                title=rf"DPO-family losses, $\beta$ = {beta}", ylim=(-0.5, 7.0))
    ax_grad.set(xlabel=r"$\beta h$", ylabel=r"$|\partial L / \partial h|$",
                title="gradient weight", ylim=(0.0, 2.0))
    for ax in (ax_loss, ax_grad):
        ax.axvline(0.0, color="0.8", lw=0.8, zorder=0)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def ppo_clip(path: str) -> None:
    """The clipped surrogate min(rho A, clip(rho) A) and its gradient, for A = +1 and A = -1."""
    eps = 0.2
    ratio = np.linspace(0.05, 2.0, 391)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, A in zip(axes, (1.0, -1.0)):
        objective, grad = [], []
        for rho in ratio:  # one sample at a time: the "mean" is the sample's own term
            loss, g = ppo_loss(np.array([np.log(rho)]), np.zeros(1), np.array([A]), clip_ratio=eps)
            objective.append(-float(loss))  # the loss is the negative surrogate
            grad.append(-float(g[0]))  # d surrogate / d log pi
        objective, grad = np.array(objective), np.array(grad)
        ax.plot(ratio, objective, color="C0", label=r"surrogate $\min(\rho A, \mathrm{clip}(\rho)A)$")
        ax.plot(ratio, ratio * A, color="C0", ls=":", lw=1, label=r"unclipped $\rho A$")
        ax.plot(ratio, grad, color="C3", label=r"gradient w.r.t. $\log\pi$")
        flat = grad == 0.0
        ax.fill_between(ratio, -2.2, 2.2, where=flat, color="C3", alpha=0.08, label="zero gradient")
        for edge in (1 - eps, 1 + eps):
            ax.axvline(edge, color="0.6", lw=0.8, ls="--")
        ax.set(xlabel=r"ratio $\rho = \pi_\theta / \pi_{\mathrm{old}}$", title=f"A = {A:+.0f}", ylim=(-2.2, 2.2))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def kl_estimators(path: str) -> None:
    """k1, k2, k3 at one sampled token as functions of log(pi / pi_ref) at that token."""
    log_ratio = np.linspace(-3.0, 3.0, 301)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, style in (("k1", "-"), ("k2", "--"), ("k3", "-.")):
        k = kl_estimate(log_ratio, np.zeros_like(log_ratio), estimator=name)
        ax.plot(log_ratio, k, ls=style, label=name)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set(xlabel=r"$\log \pi(v) - \log \pi_{\mathrm{ref}}(v)$ at the sampled token $v$",
           ylabel="per-sample estimate", ylim=(-3.2, 6.0), title="KL estimators")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


FIGURES = {
    "dpo_variants.png": dpo_variants,
    "ppo_clip.png": ppo_clip,
    "kl_estimators.png": kl_estimators,
}


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="directory for the PNG files (default: next to this script)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        path = os.path.join(args.out, name)
        draw(path)
        written.append(path)
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
