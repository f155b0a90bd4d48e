"""Settings shared by tests/ and docs/.

The tests multiply tiny matrices (a few dozen rows), where BLAS threads cost
more than they save, and on a machine whose cores are busy OpenBLAS's
spinning threads make such a product 10-20 times slower. One thread keeps the
suite fast and its timings stable; the benchmarks choose threads themselves.
The library's own threads (``alignment_np.functional.parallel``) likewise:
one here, and ``tests/test_parallel.py`` runs every kernel that uses them on
several threads against one.
"""

import numpy  # noqa: F401  (loads OpenBLAS: threadpool_limits only limits libraries already loaded)
from threadpoolctl import threadpool_limits

threadpool_limits(limits=1, user_api="blas")

from alignment_np.functional import parallel  # noqa: E402

parallel.set_num_threads(1)
