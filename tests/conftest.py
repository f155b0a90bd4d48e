"""Shared test configuration: Hypothesis profiles and the backend fixture.

Profiles (select with ``--hypothesis-profile NAME``):
  dev       the default: quick, randomised;
  ci        derandomized and chosen automatically when ``CI=true``;
  thorough  many more examples, for a long local run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from alignment_np import backend as B

settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param(
        "cupy",
        id="cupy",
        marks=[
            pytest.mark.cupy,
            pytest.mark.skipif(not B.has_cupy_gpu(), reason="CuPy with a CUDA device is not available"),
        ],
    ),
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    """The array module of each available backend, made active for the test."""
    previous = B.get_backend()
    B.set_backend(request.param)
    try:
        yield B.xp_active()
    finally:
        B.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory):
    """A whole ``pipeline --preset tiny`` run folder (sft, collect, rm, dpo, eval), made once per session.

    Tests that change a run copy it first (``shutil.copytree``). Needs the
    sentiment task's rater (vaderSentiment, in the dev extra).
    """
    pytest.importorskip("vaderSentiment")
    from alignment_np.cli import main

    run = tmp_path_factory.mktemp("tiny_pipeline") / "run"
    assert main(["pipeline", "--out", str(run), "--task", "sentiment", "--preset", "tiny", "--quiet"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_rl_run(tiny_pipeline_run, tmp_path_factory):
    """The tiny pipeline run plus ``ppo``, ``grpo``, ``rloo`` and ``bon`` (tiny preset), then ``eval``.

    Made once per session from a copy of ``tiny_pipeline_run``; tests that
    change it copy it first.
    """
    import shutil

    from alignment_np.cli import main

    run = tmp_path_factory.mktemp("tiny_rl") / "run"
    shutil.copytree(tiny_pipeline_run, run)
    for command in ("ppo", "grpo", "rloo", "bon"):
        assert main([command, "--run", str(run), "--preset", "tiny", "--quiet"]) == 0, command
    assert main(["eval", "--run", str(run), "--preset", "tiny", "--quiet"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_experiment_run(tiny_pipeline_run, tmp_path_factory):
    """The tiny pipeline run plus ``experiment all --preset tiny`` (two points per sweep, three iterations).

    Made once per session from a copy of ``tiny_pipeline_run`` (tests/test_experiments.py and the figure
    script's test read it); tests that change it copy it first.
    """
    import shutil

    from alignment_np.cli import main

    run = tmp_path_factory.mktemp("tiny_experiments") / "run"
    shutil.copytree(tiny_pipeline_run, run)
    assert main(["experiment", "all", "--run", str(run), "--preset", "tiny", "--quiet"]) == 0
    return run
