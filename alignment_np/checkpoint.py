"""Checkpoints: a whole training state in ONE ``.npz`` file, written atomically.

A checkpoint lets training stop and resume exactly where it was: the model's
weights, the optimizer's state (Adam's moments and step count), the config the
model was built from, the tokenizer, the step number and the random
generator's state. Resuming from it continues bit for bit as if training had
never stopped.

What is inside (a learner can look: ``f = np.load(path); list(f)``)::

    format          0-d str    JSON {"format": "alignment_np.checkpoint", "version": 1, ...}
    model/<name>    arrays     every ``model.state_dict()`` entry, dtype and bits kept
    optim/<key>     arrays     the array entries of ``optimizer.state_dict()``
    optim_json      0-d str    JSON: the optimizer state's other entries (python scalars)
    config          0-d str    JSON: the config dataclass as ``dataclasses.asdict``
    tokenizer       0-d str    JSON: ``tokenizer.to_dict()``
    step            0-d int64
    rng_state       0-d str    JSON: ``numpy.random.Generator.bit_generator.state``
    extra           0-d str    JSON: anything else the caller wants to keep

No pickle anywhere: every entry is a plain array or a JSON string, and the file
is read with ``allow_pickle=False``, so opening a checkpoint never runs code.

Atomic write: the file is written next to its destination under a temporary
name, flushed and fsync'ed to disk, then moved over the destination with
``os.replace`` (atomic on POSIX and Windows). A crash mid-save leaves the
previous checkpoint whole and loadable: nothing a user trained is lost.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .backend import to_numpy
from .io import atomic_write

FORMAT = "alignment_np.checkpoint"
VERSION = 1




# --------------------------------------------------------------------------- JSON entries
def _json_default(value):
    # NumPy scalars and arrays (e.g. MT19937's key in a generator state) -> Python.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def _to_json(value, what: str) -> np.ndarray:
    """``value`` as a 0-d str array holding JSON; TypeError naming ``what`` if it cannot be."""
    try:
        text = json.dumps(value, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable: {err}") from err
    return np.array(text)


def _config_as_dict(config, what: str = "config"):
    if config is None or isinstance(config, dict):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise TypeError(f"{what} must be a dataclass instance, a dict or None, got {type(config).__name__}")


# --------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | os.PathLike,
    model,
    optimizer=None,
    config=None,
    tokenizer=None,
    step: int = 0,
    rng_state=None,
    extra=None,
) -> None:
    """Write a training state to ``path`` (one ``.npz`` file), atomically.

    path: the file to create or replace (written exactly there; no suffix is added).
    model: a ``Module``; every ``state_dict()`` array is stored bit for bit.
    optimizer: anything with ``state_dict() -> dict`` (``SGD``, ``AdamW``):
        array values are stored as arrays, other values as JSON.
    config: a dataclass instance (stored as ``dataclasses.asdict``) or a dict;
        default the model's own ``model.config`` if it has one.
    tokenizer: anything with ``to_dict()`` (``CharTokenizer``).
    step: the number of optimizer steps taken, an int >= 0.
    rng_state: a ``numpy.random.Generator`` or its ``bit_generator.state`` dict.
    extra: any JSON-serialisable value (metrics, the data order, notes).
    """
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"model must have a state_dict() method (a Module), got {type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if config is None and dataclasses.is_dataclass(getattr(model, "config", None)):
        config = model.config
    config_dict = _config_as_dict(config)
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    if rng_state is not None and not isinstance(rng_state, dict):
        raise TypeError(
            f"rng_state must be a numpy.random.Generator, its bit_generator.state dict or None, "
            f"got {type(rng_state).__name__}"
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "to_dict", None)):
        raise TypeError(f"tokenizer must have a to_dict() method, got {type(tokenizer).__name__}")

    header = {"format": FORMAT, "version": VERSION, "has_optimizer": optimizer is not None}
    if config is not None and not isinstance(config, dict):
        header["config_class"] = type(config).__name__
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.state_dict().items():
        arrays[f"model/{name}"] = _plain_array(value, f"model parameter {name!r}")

    optim_json: dict = {"keys": [], "values": {}, "numpy_scalars": []}
    if optimizer is not None:
        if not callable(getattr(optimizer, "state_dict", None)):
            raise TypeError(f"optimizer must have a state_dict() method, got {type(optimizer).__name__}")
        for key, value in optimizer.state_dict().items():
            if not isinstance(key, str):
                raise TypeError(f"optimizer state keys must be str, got {key!r}")
            optim_json["keys"].append(key)  # the order, so load hands back the same dict
            if isinstance(value, np.generic):
                optim_json["numpy_scalars"].append(key)  # keep np.float32 etc. exactly
                arrays[f"optim/{key}"] = np.asarray(value)
            elif hasattr(value, "shape") and hasattr(value, "dtype"):  # NumPy or CuPy array
                arrays[f"optim/{key}"] = _plain_array(value, f"optimizer state {key!r}")
            else:
                optim_json["values"][key] = value

    arrays["format"] = _to_json(header, "format header")
    arrays["optim_json"] = _to_json(optim_json, "optimizer state (non-array entries)")
    arrays["config"] = _to_json(config_dict, "config")
    arrays["tokenizer"] = _to_json(None if tokenizer is None else tokenizer.to_dict(), "tokenizer")
    arrays["step"] = np.asarray(int(step), dtype=np.int64)
    arrays["rng_state"] = _to_json(rng_state, "rng_state")
    arrays["extra"] = _to_json(extra, "extra")

    # np.savez is looked up here, at call time, so a test can make it fail mid-write.
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _plain_array(value, what: str) -> np.ndarray:
    arr = to_numpy(value)
    if arr.dtype.kind == "O":
        # An object array would be pickled, and a pickle can run code when read.
        raise TypeError(f"{what} has dtype object; checkpoints store numeric arrays only (no pickle)")
    return arr


# --------------------------------------------------------------------------- load
def load_checkpoint(path: str | os.PathLike, model=None, optimizer=None) -> dict:
    """Read a checkpoint; restore it into ``model`` / ``optimizer`` if given.

    Everything is checked before anything is written: a config field, a
    parameter name or a shape that disagrees raises ValueError and leaves
    ``model`` and ``optimizer`` as they were.

    Returns a dict with keys
        step (int), config (dict or None), config_class (str or None),
        tokenizer (CharTokenizer or None), rng_state (dict or None; see
        ``rng_from_state``), extra, model_state (name -> array),
        optimizer_state (dict or None).
    Raises FileNotFoundError (missing file) or ValueError (corrupt file,
    not a checkpoint) naming ``path``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    data = _read_entries(path)
    try:
        header = data["format"]
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"its 'format' entry is {header!r}, expected format {FORMAT!r}")
        if header.get("version") != VERSION:
            raise ValueError(f"it has version {header.get('version')!r}, this library reads {VERSION}")
        step = int(data["step"])
        optim_json = data["optim_json"]
        config = data["config"]
        tokenizer_dict = data["tokenizer"]
        rng_state = data["rng_state"]
        extra = data["extra"]
        model_state = {k[len("model/") :]: v for k, v in data.items() if k.startswith("model/")}
        optimizer_state = None
        if header.get("has_optimizer"):
            optimizer_state = {}
            for key in optim_json["keys"]:
                if key in optim_json["values"]:
                    optimizer_state[key] = optim_json["values"][key]
                elif key in optim_json["numpy_scalars"]:
                    optimizer_state[key] = data[f"optim/{key}"][()]
                else:
                    optimizer_state[key] = data[f"optim/{key}"]
    except KeyError as err:
        raise ValueError(f"{path}: not an alignment_np checkpoint: missing entry {err}") from err
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: not an alignment_np checkpoint: {err}") from err

    tokenizer = None
    if tokenizer_dict is not None:
        from .data.tokenizer import CharTokenizer

        try:
            tokenizer = CharTokenizer.from_dict(tokenizer_dict)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: the stored tokenizer is invalid: {err}") from err

    if model is not None:
        _check_config(config, getattr(model, "config", None), path)
        _check_parameters(model_state, model, path)
    if optimizer is not None and optimizer_state is None:
        raise ValueError(f"{path}: the checkpoint holds no optimizer state, but an optimizer was given")

    if model is not None:
        before = model.state_dict() if optimizer is not None else None
        model.load_state_dict(model_state)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except BaseException:
            if model is not None:
                model.load_state_dict(before)  # leave nothing half-restored
            raise

    return {
        "step": step,
        "config": config,
        "config_class": header.get("config_class"),
        "tokenizer": tokenizer,
        "rng_state": rng_state,
        "extra": extra,
        "model_state": model_state,
        "optimizer_state": optimizer_state,
    }


_JSON_ENTRIES = ("format", "optim_json", "config", "tokenizer", "rng_state", "extra")


def _read_entries(path: str) -> dict:
    """Every entry of the file, arrays read eagerly and JSON entries decoded."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError(f"it holds a single {type(loaded).__name__}, not an .npz archive")
        with loaded as npz:
            out = {key: npz[key] for key in npz.files}
    except Exception as err:  # BadZipFile, zlib.error, EOFError, OSError, ValueError, ...
        raise ValueError(f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}: {err})") from err
    for key in _JSON_ENTRIES:
        if key in out:
            try:
                out[key] = json.loads(str(out[key][()]))
            except (ValueError, IndexError, TypeError) as err:
                raise ValueError(f"{path}: entry {key!r} is not valid JSON ({err})") from err
    return out


def _check_config(stored: dict | None, model_config, path: str) -> None:
    """Every field of the checkpoint's config must equal the model's (when both exist)."""
    if stored is None or model_config is None:
        return
    mine = _config_as_dict(model_config, "model.config")
    # Through JSON, so that a tuple in the model's config equals the list stored.
    mine = json.loads(json.dumps(mine, default=_json_default))
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: the stored config is {type(stored).__name__}, expected a dict")
    problems = []
    for field in sorted(set(stored) | set(mine)):
        if field not in stored:
            problems.append(f"field {field!r}: missing from the checkpoint, model has {mine[field]!r}")
        elif field not in mine:
            problems.append(f"field {field!r}: checkpoint has {stored[field]!r}, missing from the model's config")
        elif stored[field] != mine[field]:
            problems.append(f"field {field!r}: checkpoint has {stored[field]!r}, model has {mine[field]!r}")
    if problems:
        raise ValueError(f"{path}: config disagrees with the model's config: " + "; ".join(problems))


def _check_parameters(stored: dict, model, path: str) -> None:
    """Names and shapes of the checkpoint's parameters must match the model's."""
    params = {name: tuple(p.data.shape) for name, p in model.named_parameters()}
    problems = []
    for name in params:
        if name not in stored:
            problems.append(f"parameter {name!r} (shape {params[name]}) is in the model but not in the checkpoint")
        elif tuple(stored[name].shape) != params[name]:
            problems.append(
                f"parameter {name!r}: checkpoint shape {tuple(stored[name].shape)}, model shape {params[name]}"
            )
    for name in stored:
        if name not in params:
            problems.append(
                f"parameter {name!r} (shape {tuple(stored[name].shape)}) is in the checkpoint but not in the model"
            )
    if problems:
        raise ValueError(f"{path}: checkpoint does not fit the model: " + "; ".join(problems))


# --------------------------------------------------------------------------- rng helper
def rng_from_state(state: dict) -> np.random.Generator:
    """A ``numpy.random.Generator`` that continues exactly from a saved ``bit_generator.state``."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError(f"state must be a bit_generator.state dict with a 'bit_generator' key, got {state!r}")
    name = state["bit_generator"]
    bit_generator_cls = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_cls, type) and issubclass(bit_generator_cls, np.random.BitGenerator)):
        raise ValueError(f"state['bit_generator'] is {name!r}, not a numpy BitGenerator (e.g. 'PCG64')")
    bit_generator = bit_generator_cls()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
