"""tapediff's benchmark runner: ``python -m bench`` (see ``bench/runner.py``).

Importing this package pins every numerical library to one thread.  It must happen before
NumPy, PyTorch or JAX is imported: BLAS and OpenMP read these variables once, when their
library loads, so ``bench/__init__.py`` (which Python runs before ``bench.runner`` or any
workload module) is the only place early enough.  One thread for every peer keeps the
comparison about the autodiff machinery, not about how many cores each library grabs on a
shared 2-core machine.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_var, "1")
# XLA (JAX's CPU backend): no multi-threaded Eigen, one intra-op thread.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
# JAX: CPU only (do not probe for accelerators), and keep JAX from preallocating.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
