import numpy as np
import pytest

from alignment_np import backend as B


def test_default_backend_is_numpy():
    assert B.get_backend() in B.BACKENDS
    assert B.get_array_module(np.zeros(3)) is np
    assert B.get_array_module(1.0, [1, 2]) is np


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'torch'.*numpy.*cupy"):
        B.set_backend("torch")
    with pytest.raises(ValueError, match="unknown backend"):
        B.to_device(np.zeros(2), "jax")


def test_backend_name_must_be_str():
    with pytest.raises(TypeError, match="must be a str"):
        B.set_backend(3)


@pytest.mark.skipif(B.has_cupy_gpu(), reason="this machine has a GPU: the error path cannot be reached")
def test_cupy_without_gpu_raises_runtime_error_at_once():
    before = B.get_backend()
    with pytest.raises(RuntimeError, match="cupy"):
        B.set_backend("cupy")
    assert B.get_backend() == before  # a failed switch changes nothing
    with pytest.raises(RuntimeError, match="cupy"):
        B.to_device(np.zeros(2), "cupy")


def test_set_backend_is_case_insensitive_and_reversible():
    before = B.get_backend()
    B.set_backend(" NumPy ")
    assert B.get_backend() == "numpy"
    B.set_backend(before)


def test_env_var_selects_backend(monkeypatch):
    import importlib
    import subprocess
    import sys

    code = "import alignment_np.backend as b; print(b.get_backend())"
    env = dict(**__import__("os").environ, ALIGNMENT_NP_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"
    env["ALIGNMENT_NP_BACKEND"] = "nonsense"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown backend 'nonsense'" in bad.stderr
    assert "RuntimeError" in bad.stderr and "requested by ALIGNMENT_NP_BACKEND=nonsense" in bad.stderr
    importlib.reload  # keep the import used


@pytest.mark.skipif(B.has_cupy_gpu(), reason="this machine has a GPU: the error path cannot be reached")
def test_env_cupy_without_gpu_fails_cleanly_at_first_use_not_at_import():
    import os
    import subprocess
    import sys

    code = "\n".join(
        [
            "import alignment_np, alignment_np.backend as b",  # importing works on any machine
            "from alignment_np.losses.ppo import ppo_loss",
            "for f in (b.apply_env_backend, b.get_backend, b.xp_active):",
            "    try:",
            "        f()",
            "    except RuntimeError as err:",
            "        print(type(err).__name__, '|', err)",
            "b.set_backend('numpy')  # an explicit choice overrides the environment",
            "print('now', b.get_backend())",
        ]
    )
    env = dict(os.environ, ALIGNMENT_NP_BACKEND="cupy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "now numpy", out.stdout
    for line in lines[:3]:  # the same one-line message as set_backend('cupy'), and where it came from
        assert line.startswith("RuntimeError | backend 'cupy' was requested but ")
        assert line.endswith("(requested by ALIGNMENT_NP_BACKEND=cupy)")
    with pytest.raises(RuntimeError) as err:
        B.set_backend("cupy")
    assert lines[0] == f"RuntimeError | {err.value} (requested by ALIGNMENT_NP_BACKEND=cupy)"


def test_explicit_set_backend_overrides_the_environment(monkeypatch):
    monkeypatch.setattr(B, "_env_pending", True)
    monkeypatch.setenv("ALIGNMENT_NP_BACKEND", "nonsense")
    with pytest.raises(RuntimeError, match=r"unknown backend 'nonsense'.*requested by ALIGNMENT_NP_BACKEND=nonsense"):
        B.get_backend()
    before = B._active
    try:
        B.set_backend("numpy")
        assert B.get_backend() == "numpy" and B.apply_env_backend() == "numpy"
    finally:
        B._active = before


def test_active_module_creates_on_active_backend(xp):
    a = B.xp_active().ones(3)
    assert B.get_array_module(a) is xp


def test_to_numpy_and_to_device_round_trip(xp):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = B.to_device(x)
    assert B.get_array_module(d) is xp
    back = B.to_numpy(d)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, x)
    assert back.dtype == np.float32


def test_available_backends_always_has_numpy():
    assert B.available_backends()[0] == "numpy"


def test_keep_freed_memory_takes_effect_on_glibc():
    import platform
    import subprocess
    import sys

    code = "from alignment_np.backend import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == ("True" if on_glibc else "False")


def test_as_array_of_converts_lists_and_refuses_the_other_backend():
    import types

    out = B.as_array_of(np, [[1, 2]], "idx")
    assert isinstance(out, np.ndarray) and out.shape == (1, 2)
    x = np.zeros(2)
    assert B.as_array_of(np, x, "idx") is x  # no copy
    other = types.SimpleNamespace(__name__="cupy")  # stands in for the GPU module
    with pytest.raises(TypeError, match=r"idx: expected a cupy array \(the model's backend\), got numpy.ndarray"):
        B.as_array_of(other, x, "idx")
