"""The progress bar (``alignment_np/progress.py``): tqdm when installed, plain lines otherwise."""

from __future__ import annotations

import io

import pytest

from alignment_np import progress as progress_module
from alignment_np.progress import Progress


def test_progress_plain_text_prints_about_ten_lines_and_the_end():
    stream = io.StringIO()
    bar = Progress(total=25, desc="sft", use_tqdm=False, stream=stream)
    for _ in range(25):
        bar.update(1, loss=0.5)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 13  # every 2 of 25 steps (25 // 10), and the last
    assert lines[-1].startswith("sft: 25/25 (100%)") and lines[-1].endswith("loss=0.5")


def test_progress_write_goes_to_the_log_stream():
    log, bar_stream = io.StringIO(), io.StringIO()
    bar = Progress(total=3, use_tqdm=False, stream=bar_stream, log_stream=log)
    bar.write("step 1 loss 2.0")
    assert log.getvalue() == "step 1 loss 2.0\n" and bar_stream.getvalue() == ""


def test_progress_disabled_prints_nothing(capsys):
    stream = io.StringIO()
    bar = Progress(total=5, enabled=False, stream=stream, log_stream=stream)
    for _ in range(5):
        bar.update(1, loss=1.0)
    bar.write("hello")
    bar.close()
    assert stream.getvalue() == "" and capsys.readouterr() == ("", "")
    assert bar.n == 5  # it still counts


def test_progress_uses_tqdm_when_installed():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with Progress(total=4, desc="sft", stream=stream, log_stream=stream) as bar:
        assert bar.uses_tqdm
        for _ in range(4):
            bar.update(1, loss=0.25)
        bar.write("a line")
    text = stream.getvalue()
    assert "a line" in text and "4/4" in text and "loss=0.25" in text


def test_progress_falls_back_without_tqdm(monkeypatch):
    monkeypatch.setattr(progress_module, "has_tqdm", lambda: False)
    stream = io.StringIO()
    bar = Progress(total=2, stream=stream)
    assert not bar.uses_tqdm
    bar.update(2)
    assert stream.getvalue().startswith("2/2 (100%)")


def test_progress_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"total: expected an int >= 0, got -1"):
        Progress(total=-1)
    with pytest.raises(ValueError, match=r"lines: expected a positive int, got 0"):
        Progress(total=3, lines=0)


class _Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_no_bar_when_stderr_is_not_a_terminal_but_log_lines_still_print(tty, monkeypatch):
    err, out = _Terminal(tty), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    bar = Progress(total=4, desc="sft", use_tqdm=False, log_stream=out)
    for _ in range(4):
        bar.update(1, loss=1.0)
    bar.write("step 4 loss 1.0")
    bar.close()
    assert ("sft: 4/4" in err.getvalue()) is tty
    assert out.getvalue() == "step 4 loss 1.0\n"
