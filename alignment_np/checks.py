"""Argument checks for public boundaries, written once.

Every public function, config and command of the package validates its
arguments with these helpers, so the same mistake gets the same message
everywhere: the argument's name, what was expected, what was given::

    lr: expected a finite number >= 0, got True
    steps: expected a positive int, got -1

Rules, applied alike everywhere:

* ``bool`` is never accepted as a number (``lr=True`` is a mistake, not 1.0);
* NumPy scalars are numbers (``lr=np.float32(1e-3)`` is fine) and come back
  as Python ``int`` / ``float``;
* NaN and infinities are refused wherever a finite number is expected;
* inner kernels do not call these: they trust their callers and stay fast.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "is_int",
    "is_real",
    "check_int",
    "check_positive_int",
    "check_nonneg_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_finite_array",
    "check_float_array",
    "check_mask",
    "check_float_dtype",
    "NonFiniteLossError",
    "check_finite_metrics",
]


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for Python and NumPy real numbers (ints included), False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (either bound may be None); ValueError otherwise."""
    ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            want = f"an int in [{low}, {high}]"
        elif low is not None:
            want = "a positive int" if low == 1 else f"an int >= {low}"
        elif high is not None:
            want = f"an int <= {high}"
        else:
            want = "an int"
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1."""
    return check_int(name, value, low=1)


def check_nonneg_int(name: str, value) -> int:
    """``value`` as an int >= 0."""
    return check_int(name, value, low=0)


def check_float(
    name: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high``.

    low_open / high_open: exclude the bound itself (e.g. ``beta > 0``:
    ``check_float("beta", beta, 0, low_open=True)``). NaN and +-inf are
    always refused, whatever the bounds.
    """
    ok = is_real(value) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name}: expected {_describe(low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def _describe(low, high, low_open, high_open) -> str:
    lo_inf, hi_inf = math.isinf(low), math.isinf(high)
    if lo_inf and hi_inf:
        return "a finite number"
    if hi_inf:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if lo_inf:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_bool(name: str, value) -> bool:
    """``value`` as a bool; TypeError for anything else (0 and 1 included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices`` (strings); ValueError listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def check_finite_array(name: str, x) -> None:
    """ValueError if the float array ``x`` holds a NaN or an infinity (where the first one is).

    Public losses and metrics call this on their inputs: a NaN must never
    come out as a finite loss or accuracy. Integer and bool arrays pass.
    """
    from .backend import get_array_module, to_numpy

    xp = get_array_module(x)
    if getattr(x, "dtype", None) is None or x.dtype.kind not in "fc":
        return
    if bool(xp.isfinite(x).all()):
        return
    bad = to_numpy(~xp.isfinite(x))
    where = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    value = to_numpy(x)[where] if where else to_numpy(x)[()]
    raise ValueError(f"{name}: expected finite values, got {value} at index {where}")


def _describe_value(x) -> str:
    if isinstance(x, (str, bytes)):
        return f"{type(x).__name__} {x[:40]!r}"
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        return f"a {type(x).__name__} of dtype {x.dtype} and shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:120]


def _as_array(name: str, x, xp, want: str):
    """``x`` as an array of ``xp`` (or of its own module when ``xp`` is None), or TypeError."""
    from .backend import get_array_module

    if x is None or isinstance(x, (str, bytes, dict, set, frozenset)):
        raise TypeError(f"{name}: expected {want}, got {_describe_value(x)}")
    if xp is None:
        xp = get_array_module(x)
    elif hasattr(x, "shape") and get_array_module(x) is not xp:
        raise TypeError(
            f"{name}: expected a {xp.__name__} array like the other inputs, got "
            f"{type(x).__module__}.{type(x).__name__}; move it with alignment_np.to_device"
        )
    try:
        arr = xp.asarray(x)
    except (TypeError, ValueError) as err:  # a ragged list, a list of dicts, ...
        raise TypeError(f"{name}: expected {want}, got {type(x).__name__} that is not one ({err})") from None
    return arr


def check_float_array(name: str, x, xp=None, *, integers: bool = False):
    """``x`` as a floating-point array (a list of numbers becomes one); TypeError otherwise.

    xp: the array module the other inputs live on (None: ``x``'s own); an
        array of the other backend raises TypeError (moving is explicit).
    integers: also accept integer arrays (returned as they are; the caller
        decides the float dtype), e.g. sparse 0/1 rewards.

    None, strings, dicts, ragged or nested non-numeric lists, bool, complex
    and object arrays raise TypeError naming ``name`` instead of a NumPy
    error from deep inside a kernel. Shapes are the caller's to check.
    """
    want = "a floating-point array" + (" (or integers)" if integers else "")
    arr = _as_array(name, x, xp, want)
    kinds = "fiu" if integers else "f"
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name}: expected {want}, got dtype {arr.dtype}")
    return arr


def check_mask(name: str, mask, shape, xp=None, like: str = "the first argument"):
    """``mask`` as a boolean array of ``shape`` (None stays None).

    Accepts bools or numbers that are all 0 or 1 (1 = counted); anything
    else (None aside) raises TypeError / ValueError naming ``name``.
    like: what ``shape`` belongs to, for the message.
    """
    if mask is None:
        return None
    m = _as_array(name, mask, xp, "an array of 0/1 or bools")
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected an array of 0/1 or bools, got dtype {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} like {like}, got {tuple(m.shape)}")
    if m.dtype.kind != "b":
        from .backend import get_array_module

        if bool(get_array_module(m).any((m != 0) & (m != 1))):  # NaN is neither
            raise ValueError(f"{name} must contain only 0 and 1 (or booleans), got other values")
    return m.astype(bool)


def check_float_dtype(name: str, dtype, default=np.float32) -> np.dtype:
    """``dtype`` (None: ``default``) as a floating NumPy dtype (NumPy dtypes serve CuPy too).

    "float32", np.float64 and np.dtype("float32") pass; an integer dtype raises
    ValueError, anything NumPy cannot read as a dtype TypeError, naming ``name``.
    """
    if isinstance(dtype, (bool, np.bool_, int, float, dict, list, tuple)):
        raise TypeError(f"{name}: expected a floating dtype (float32 or float64), got {dtype!r}")
    try:
        dt = np.dtype(default if dtype is None else dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a floating dtype (float32 or float64), got {dtype!r}") from None
    if dt.kind != "f":
        raise ValueError(f"{name}: expected a floating dtype (float32 or float64), got {dt}")
    return dt


class NonFiniteLossError(FloatingPointError):
    """A training step produced a NaN or infinite loss (or gradient norm).

    Trainers raise it *before* the optimiser step, so the model still holds
    the parameters of the last good step; the run mechanism then stops the
    run, names the step and keeps the last good checkpoint.

    step: the step that failed (1-based: the step that would have been taken).
    name: which metric was not finite ("loss", "grad_norm", ...). value: it.
    """

    def __init__(self, step: int, name: str, value: float):
        self.step, self.name, self.value = int(step), str(name), float(value)
        super().__init__(f"step {self.step}: {self.name} is {self.value} (not finite); the update was not applied")


def check_finite_metrics(step: int, metrics: dict, names=("loss", "grad_norm")) -> None:
    """Raise ``NonFiniteLossError`` if any of ``metrics[name]`` (when present) is NaN or infinite.

    Call it after the backward pass and before ``optimizer.step()``.
    """
    for name in names:
        if name in metrics and not math.isfinite(float(metrics[name])):
            raise NonFiniteLossError(step, name, float(metrics[name]))
