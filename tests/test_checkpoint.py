"""Checkpoints: bitwise round trips, exact resumption, atomic writes, clear errors."""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alignment_np import backend as B
from alignment_np.checkpoint import atomic_write, load_checkpoint, rng_from_state, save_checkpoint
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.module import Module, Parameter

try:  # the lead's optimizers; a stand-in with the same interface where missing
    from alignment_np.optim import AdamW
except ImportError:  # pragma: no cover - only before optim.py lands
    AdamW = None


@dataclasses.dataclass
class TinyConfig:
    """A config like GPTConfig: the shapes of the model."""

    d_in: int = 3
    d_out: int = 4
    n_blocks: int = 2
    dims: tuple = (3, 4)  # a tuple becomes a JSON list: equal after loading


class Block(Module):
    def __init__(self, xp, rng, d):
        self.w = Parameter(xp.asarray(rng.standard_normal((d, d)), dtype=xp.float32))


class Tiny(Module):
    def __init__(self, config=TinyConfig(), seed=0, xp=np):
        rng = np.random.default_rng(seed)
        self.config = config
        self.w = Parameter(xp.asarray(rng.standard_normal((config.d_in, config.d_out)), dtype=xp.float32))
        self.b = Parameter(xp.asarray(rng.standard_normal(config.d_out), dtype=xp.float32))
        self.blocks = [Block(xp, rng, config.d_out) for _ in range(config.n_blocks)]


class ScalarOptimizer:
    """A stand-in optimizer whose state mixes arrays, numpy scalars and python values."""

    def __init__(self):
        self.state = {}

    def state_dict(self):
        return {
            "t": 7,
            "lr": 0.1 + 0.2,  # a float whose every bit matters
            "betas": [0.9, 0.999],
            "name": "sgd",
            "scale": np.float32(2.5),
            "m/0": np.arange(6, dtype=np.float64).reshape(2, 3),
        }

    def load_state_dict(self, d):
        self.state = d


def _bits_equal(a, b) -> bool:
    a, b = B.to_numpy(a), B.to_numpy(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _fake_step(model, optimizer, rng):
    """One training step with a random 'gradient' drawn from rng."""
    for p in model.parameters():
        p.grad[...] = B.to_device(rng.standard_normal(p.data.shape), B.get_backend())
    optimizer.step()


# ----------------------------------------------------------------- round trips
@pytest.mark.skipif(AdamW is None, reason="alignment_np.optim is not written yet")
def test_everything_round_trips(tmp_path, xp):
    model = Tiny(xp=xp)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(5)
    for _ in range(3):
        _fake_step(model, optimizer, rng)
    tok = CharTokenizer.from_text("the film was good .", unk=True)
    path = tmp_path / "ckpt.npz"
    extra = {"losses": [2.5, 1.25], "note": "épisode 1", "nan": None}
    save_checkpoint(path, model, optimizer, tokenizer=tok, step=3, rng_state=rng, extra=extra)

    fresh = Tiny(seed=99, xp=xp)
    fresh_opt = AdamW(fresh.parameters(), lr=1.0)
    out = load_checkpoint(path, fresh, fresh_opt)
    for (name, p), (name2, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert name == name2 and _bits_equal(p.data, q.data), name
        assert B.get_array_module(q.data) is xp  # loaded onto the model's device
    for key, value in optimizer.state_dict().items():
        assert _bits_equal(value, fresh_opt.state_dict()[key]), key
    assert out["step"] == 3 and isinstance(out["step"], int)
    assert out["config"] == {"d_in": 3, "d_out": 4, "n_blocks": 2, "dims": [3, 4]}  # from model.config
    assert out["config_class"] == "TinyConfig"
    assert out["tokenizer"] == tok
    assert out["extra"] == extra
    assert out["rng_state"] == rng.bit_generator.state
    assert set(out["model_state"]) == {"w", "b", "blocks.0.w", "blocks.1.w"}


@pytest.mark.skipif(AdamW is None, reason="alignment_np.optim is not written yet")
def test_resuming_from_a_checkpoint_continues_bit_for_bit(tmp_path):
    model = Tiny()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(4):
        _fake_step(model, optimizer, rng)
    save_checkpoint(tmp_path / "c.npz", model, optimizer, step=4, rng_state=rng)
    for step in range(3):  # the run that never stopped
        _fake_step(model, optimizer, rng)

    resumed = Tiny(seed=1)
    resumed_opt = AdamW(resumed.parameters(), lr=1e-2)
    out = load_checkpoint(tmp_path / "c.npz", resumed, resumed_opt)
    resumed_rng = rng_from_state(out["rng_state"])
    for step in range(3):
        _fake_step(resumed, resumed_opt, resumed_rng)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert _bits_equal(p.data, q.data)


def test_optimizer_state_keeps_its_types_and_order(tmp_path):
    model = Tiny()
    save_checkpoint(tmp_path / "c.npz", model, ScalarOptimizer())
    opt = ScalarOptimizer()
    load_checkpoint(tmp_path / "c.npz", model, opt)
    want = ScalarOptimizer().state_dict()
    assert list(opt.state) == list(want)
    assert opt.state["t"] == 7 and type(opt.state["t"]) is int
    assert opt.state["lr"] == 0.1 + 0.2 and type(opt.state["lr"]) is float
    assert opt.state["betas"] == [0.9, 0.999] and opt.state["name"] == "sgd"
    assert type(opt.state["scale"]) is np.float32 and opt.state["scale"] == np.float32(2.5)
    assert _bits_equal(opt.state["m/0"], want["m/0"])


class Holder(Module):
    def __init__(self, arrays):
        for i, a in enumerate(arrays):
            setattr(self, f"p{i}", Parameter(a))


arrays_any_bits = st.lists(
    hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int64, np.int8, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    min_size=1,
    max_size=4,
)


@given(arrays_any_bits, st.integers(0, 2**62))
def test_any_arrays_round_trip_bitwise(arrays, step):
    # NaN payloads, -0.0, infinities, empty and 0-d arrays: the bits come back unchanged.
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.npz")
        save_checkpoint(path, Holder(arrays), step=step)
        target = Holder([np.zeros_like(a) for a in arrays])
        out = load_checkpoint(path, target)
        assert out["step"] == step
        for a, p in zip(arrays, target.parameters()):
            assert _bits_equal(a, p.data)
        assert os.listdir(d) == ["c.npz"]


def test_the_file_is_a_plain_npz_without_pickle(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, Tiny(), config={"lr": 0.1}, extra={"a": 1})
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        assert {"model/w", "model/b", "model/blocks.0.w", "format", "config", "step"} <= keys
        assert all(f[k].dtype.kind != "O" for k in keys)
        assert str(f["config"][()]) == '{"lr": 0.1}'  # readable JSON


@pytest.mark.parametrize("make_rng", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_state_round_trips_for_every_bit_generator(tmp_path, make_rng):
    rng = np.random.Generator(make_rng(123))
    rng.random(5)
    save_checkpoint(tmp_path / "c.npz", Tiny(), rng_state=rng.bit_generator.state)
    restored = rng_from_state(load_checkpoint(tmp_path / "c.npz")["rng_state"])
    assert np.array_equal(restored.random(10), rng.random(10))


# ----------------------------------------------------------------- atomic writes
def _crash_mid_write(file, *args, **kwargs):
    file.write(b"PK\x03\x04 half a zip")  # some bytes reach the temporary file...
    raise RuntimeError("power cut")  # ...then the writer dies


def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    model = Tiny()
    save_checkpoint(path, model, step=1)
    before = model.state_dict()
    for p in model.parameters():
        p.data += 1.0
    monkeypatch.setattr(np, "savez", _crash_mid_write)
    with pytest.raises(RuntimeError, match="power cut"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()

    out = load_checkpoint(path, model)
    assert out["step"] == 1
    assert all(_bits_equal(before[name], p.data) for name, p in model.named_parameters())
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind


def test_a_crash_on_the_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", _crash_mid_write)
    with pytest.raises(RuntimeError, match="power cut"):
        save_checkpoint(tmp_path / "ckpt.npz", Tiny())
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"

    def fails(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # even an interrupt cleans up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fails)
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["f.bin"]


# ----------------------------------------------------------------- mismatches
def _state_bytes(model):
    return {k: v.tobytes() for k, v in model.state_dict().items()}


def _without_config(model):
    model.config = None  # a model with no config: only names and shapes are checked
    return model


def test_a_misshapen_parameter_names_it_and_both_shapes(tmp_path):
    save_checkpoint(tmp_path / "c.npz", Tiny())
    other = _without_config(Tiny(TinyConfig(d_in=5)))
    before = _state_bytes(other)
    with pytest.raises(ValueError, match=r"parameter 'w': checkpoint shape \(3, 4\), model shape \(5, 4\)"):
        load_checkpoint(tmp_path / "c.npz", other)
    assert _state_bytes(other) == before  # nothing was half-loaded


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    save_checkpoint(tmp_path / "c.npz", Tiny())
    more, fewer = _without_config(Tiny(TinyConfig(n_blocks=3))), _without_config(Tiny(TinyConfig(n_blocks=1)))
    with pytest.raises(ValueError, match=r"'blocks\.2\.w' \(shape \(4, 4\)\) is in the model but not in the checkpoint"):
        load_checkpoint(tmp_path / "c.npz", more)
    with pytest.raises(ValueError, match=r"'blocks\.1\.w' \(shape \(4, 4\)\) is in the checkpoint but not in the model"):
        load_checkpoint(tmp_path / "c.npz", fewer)


def test_a_config_that_disagrees_names_the_field(tmp_path):
    save_checkpoint(tmp_path / "c.npz", Tiny())
    other = Tiny(TinyConfig(n_blocks=3))
    before = _state_bytes(other)
    with pytest.raises(ValueError, match=r"config .*field 'n_blocks': checkpoint has 2, model has 3"):
        load_checkpoint(tmp_path / "c.npz", other)
    assert _state_bytes(other) == before

    @dataclasses.dataclass
    class Wider(TinyConfig):
        dropout: float = 0.0

    model = Tiny()
    model.config = Wider()
    with pytest.raises(ValueError, match=r"field 'dropout': missing from the checkpoint, model has 0\.0"):
        load_checkpoint(tmp_path / "c.npz", model)


def test_asking_for_optimizer_state_that_is_not_there(tmp_path):
    save_checkpoint(tmp_path / "c.npz", Tiny())
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "c.npz", Tiny(), ScalarOptimizer())


def test_a_failing_optimizer_load_rolls_the_model_back(tmp_path):
    save_checkpoint(tmp_path / "c.npz", Tiny(seed=0), ScalarOptimizer())

    class Refuses(ScalarOptimizer):
        def load_state_dict(self, d):
            raise ValueError("optimizer state 'm/0': expected shape (9,)")

    model = Tiny(seed=1)
    before = _state_bytes(model)
    with pytest.raises(ValueError, match="expected shape"):
        load_checkpoint(tmp_path / "c.npz", model, Refuses())
    assert _state_bytes(model) == before


# ----------------------------------------------------------------- bad files
def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.npz"):
        load_checkpoint(tmp_path / "nothing_here.npz")


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"this is not a checkpoint at all"), "corrupt or unreadable"),
        (lambda p: p.write_bytes(b""), "corrupt or unreadable"),
        (lambda p: p.write_bytes(_npy_bytes(np.arange(3))), r"single ndarray, not an \.npz"),
        (lambda p: _write_npz(p, weights=np.ones(3)), "missing entry 'format'"),
        (lambda p: _write_npz(p, format=np.array("{not json")), "entry 'format' is not valid JSON"),
        (lambda p: _write_npz(p, format=np.array('{"format": "other"}')), "expected format 'alignment_np.checkpoint'"),
        (lambda p: _write_npz(p, evil=np.array([object()], dtype=object)), "corrupt or unreadable .*pickle"),
    ],
)
def test_a_corrupt_file_raises_value_error_naming_the_path(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(ValueError, match=rf"bad\.npz.*{message}"):
        load_checkpoint(path, Tiny())


def test_a_truncated_checkpoint_raises_value_error(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, Tiny(), tokenizer=CharTokenizer.from_text("abc"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"c\.npz: corrupt or unreadable"):
        load_checkpoint(path)


def test_a_newer_version_is_refused(tmp_path, monkeypatch):
    from alignment_np import checkpoint

    monkeypatch.setattr(checkpoint, "VERSION", 2)
    save_checkpoint(tmp_path / "c.npz", Tiny())
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"c\.npz: .*version 2, this library reads 1"):
        load_checkpoint(tmp_path / "c.npz")


# ----------------------------------------------------------------- bad arguments
class NotAModule:
    pass


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"model": NotAModule()}, TypeError, "model must have a state_dict.*NotAModule"),
        ({"step": -1}, ValueError, "step must be an int >= 0, got -1"),
        ({"step": 1.5}, ValueError, "step .* 1.5"),
        ({"step": True}, ValueError, "step .* True"),
        ({"config": 5}, TypeError, "config must be a dataclass instance, a dict or None, got int"),
        ({"config": TinyConfig}, TypeError, "config must be a dataclass instance.*got type"),
        ({"config": {"f": object()}}, TypeError, "config must be JSON-serialisable"),
        ({"extra": {"f": {1, 2}}}, TypeError, "extra must be JSON-serialisable"),
        ({"rng_state": "seed 0"}, TypeError, "rng_state must be a numpy.random.Generator.*got str"),
        ({"tokenizer": "abc"}, TypeError, "tokenizer must have a to_dict"),
        ({"optimizer": object()}, TypeError, "optimizer must have a state_dict"),
        ({"model": Holder([np.array([None])])}, TypeError, "model parameter 'p0' has dtype object"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, exc, message):
    args = {"model": Tiny(), **kwargs}
    with pytest.raises(exc, match=message):
        save_checkpoint(tmp_path / "c.npz", **args)
    assert os.listdir(tmp_path) == []


def test_rng_from_state_rejects_bad_states():
    with pytest.raises(ValueError, match="'bit_generator' key"):
        rng_from_state({"state": 1})
    with pytest.raises(ValueError, match=r"state\['bit_generator'\] is 'os', not a numpy BitGenerator"):
        rng_from_state({"bit_generator": "os"})


# ----------------------------------------------------------------- with TinyGPT
def test_tiny_gpt_round_trips_and_rebuilds_from_its_config(tmp_path):
    gpt = pytest.importorskip("alignment_np.nn.gpt")
    tok = CharTokenizer.from_text(["the film was good .", "the soup was bland ."])
    config = gpt.GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, d_model=8)
    model = gpt.TinyGPT(config, seed=0)
    path = tmp_path / "gpt.npz"
    save_checkpoint(path, model, tokenizer=tok, step=10)

    # the user's path back: config -> model -> weights, tokenizer -> ids
    out = load_checkpoint(path)
    rebuilt = gpt.TinyGPT(gpt.GPTConfig(**out["config"]), seed=1)
    load_checkpoint(path, rebuilt)
    for (name, p), q in zip(model.named_parameters(), rebuilt.parameters()):
        assert _bits_equal(p.data, q.data), name
    ids, mask = out["tokenizer"].encode_batch(["the film was", "the soup"], add_bos=True, padding_side="left")
    logits, _ = model.forward(ids, mask)
    logits2, _ = rebuilt.forward(ids, mask)
    assert _bits_equal(logits["logits"], logits2["logits"])

    deeper = gpt.TinyGPT(dataclasses.replace(config, n_layer=2), seed=0)
    with pytest.raises(ValueError, match=r"field 'n_layer': checkpoint has 1, model has 2"):
        load_checkpoint(path, deeper)
