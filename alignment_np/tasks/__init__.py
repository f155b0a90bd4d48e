"""Tasks the pipeline runs on: a corpus, prompts, an independent rater, a fluency check.

``get_task("sentiment")`` returns the sentiment task (``sentiment.py``): film
and food reviews from a grammar, judged by VADER (``rater.py``, the optional
extra ``tasks``). Importing this package needs NumPy only: the rater imports
``vaderSentiment`` when it is first used.
"""

from __future__ import annotations

from .sentiment import SentimentTask

__all__ = ["SentimentTask", "TASK_NAMES", "get_task"]

TASK_NAMES = ("sentiment",)


def get_task(name: str) -> SentimentTask:
    """The task called ``name``; ValueError listing the known names otherwise."""
    if name not in TASK_NAMES:
        raise ValueError(f"task: expected one of {list(TASK_NAMES)}, got {name!r}")
    return SentimentTask()
