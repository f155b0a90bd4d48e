"""``python -m alignment_np ...`` (and the ``alignment-np`` script): the command line of ``alignment_np.cli``.

One BLAS thread unless the user says otherwise, set here, before NumPy loads
its BLAS. The tiny GPT's matrix products are small: a second thread buys
little on a quiet machine, and where the cores are busy OpenBLAS's spinning
threads made every training step 5 to 15 times slower (measured on a shared
2-core machine). ``OPENBLAS_NUM_THREADS=2`` (or ``OMP_NUM_THREADS``) in the
environment wins over this default. The library's own threads
(``functional/parallel.py``) follow the same variables, or
``ALIGNMENT_NP_NUM_THREADS``. Code that imports ``alignment_np`` as a library
chooses its threads itself.
"""

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from .cli import main  # noqa: E402  (after the thread settings, which must precede NumPy)


def run() -> None:
    """The console script's entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
