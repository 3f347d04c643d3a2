"""The CPU threads a run uses, set once for torch and for the BLAS / OpenMP pools (every command's --threads, and the
validation study's one thread per process)."""
from __future__ import annotations

import os


def apply_threads(threads: int | None) -> None:
    """--threads N: torch's threads and the BLAS / OpenMP pools numpy, scipy and scikit-learn use.

    The pools matter: on a machine shared with other jobs, a 2-thread OpenBLAS made every step of
    the probes' L-BFGS about 10x slower than one thread (the threads wait on each other). Pools
    already loaded are limited through threadpoolctl; scipy loads its own OpenBLAS only when first
    used, and reads the environment then.
    """
    if threads:
        import torch  # a run's dependency, not --help's
        from threadpoolctl import threadpool_limits

        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
        torch.set_num_threads(threads)
        threadpool_limits(threads)
