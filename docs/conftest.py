"""Run every Python code block of the course under pytest.

Sybil (a maintained pytest plugin for documentation) collects each
```` ```python ```` block of each Markdown page in ``docs/`` as one test item.
The blocks of one page run in order and share one namespace, so a chapter can
build up step by step the way a reader types it into a session: a name
defined in the first block is still there in the last. A block that fails
fails the test suite, which is the point: a course whose examples rot is worse
than none.

Blocks that should be shown but not run are fenced as ``text`` or ``bash``,
never as ``python``.

The exercise solutions in ``docs/solutions/test_chNN_*.py`` are ordinary
pytest files; pytest collects them by their names.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

from alignment_np import backend as B

# The same Hypothesis profiles as tests/conftest.py, registered here too so
# that ``python -m pytest docs`` alone behaves like the whole suite. When the
# tests' conftest already registered them, theirs are kept.
_PROFILES = {
    "dev": dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
    "ci": dict(
        max_examples=25,
        deadline=None,
        derandomize=True,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    ),
    "thorough": dict(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
}
for _name, _kwargs in _PROFILES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, **_kwargs)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


def _setup(namespace: dict) -> None:
    """Every page starts on the NumPy backend; it imports what it uses itself."""
    namespace["_previous_backend"] = B.get_backend()
    B.set_backend("numpy")


def _teardown(namespace: dict) -> None:
    B.set_backend(namespace["_previous_backend"])


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser()],
    patterns=["*.md"],
    # solutions.md only includes the solution files (snippets), which pytest
    # runs as the test files they are.
    excludes=["solutions.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
