"""Tables and plots of the experiments: Markdown rows with ``mean ± SE``, error-bar panels (matplotlib)."""

from __future__ import annotations

__all__ = ["fmt_pm", "markdown_table", "plot_errorbars", "examples_lines"]


def fmt_pm(mean, se, digits: int = 3) -> str:
    """``mean ± se`` for a table ('—' when there is no number; the mean alone when its SE is undefined)."""
    from ..runs.report import pm

    return pm(mean, se, digits)


def markdown_table(headers, rows) -> list:
    """A Markdown table as a list of lines."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def examples_lines(examples, heading: str) -> list:
    """Completions as Markdown bullets with their gold (rater) and proxy (reward model) scores."""
    lines = [heading, ""]
    for s in examples:
        mark = "" if s.get("grammatical") else ", ungrammatical"
        lines.append(f"- `{s['prompt']}`{s['completion']}  — rater {s['score']:+.2f}, RM {s['proxy']:+.2f}{mark}")
    return lines + [""]


def _pyplot():
    from ..runs.plots import _pyplot as pyplot

    return pyplot()


def plot_errorbars(path: str, panels, styles: dict, title: str, label=None, hlines=None, xscale=None,
                   annotate=None) -> None:
    """One figure of error-bar panels, written to ``path``.

    panels: [(x label, y label, {series: [rows]}, xy)] where ``xy(row) -> (x, x_se, y, y_se)``;
    each series is drawn with its marker and colour from ``styles`` ({series: (marker, colour)})
    and error bars of 2 SE on both axes, its points joined in the given order.
    label: ``label(series, rows) -> str`` for the legend. hlines: {panel index: [(y, text)]}.
    xscale: None (linear) or "symlog" (linear below 1, logarithmic above: KLs from 0.2 to 200 on one axis).
    annotate: ``annotate(row) -> str or None``, a label written beside each point (its swept value).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.3), squeeze=False)
    for k, (ax, (xlabel, ylabel, series, xy)) in enumerate(zip(axes[0], panels)):
        for name, rows in series.items():
            if not rows:
                continue
            marker, colour = styles.get(name, ("o", None))
            xs, xe, ys, ye = zip(*(xy(r) for r in rows))
            ax.errorbar(xs, ys, xerr=[2 * e for e in xe], yerr=[2 * e for e in ye], marker=marker, color=colour,
                        linestyle="-" if len(rows) > 1 else "none", linewidth=1, markersize=6, capsize=3,
                        label=label(name, rows) if label else name)
            for row, x, y in zip(rows, xs, ys):
                text = annotate(row) if annotate else None
                if text:
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=colour)
        for y, text in (hlines or {}).get(k, []):
            ax.axhline(y, color="grey", linestyle="--", linewidth=1)
            ax.annotate(text, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                        va="bottom")
        if xscale == "symlog":
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
