"""The benchmark's workloads, one module each (``--only`` name: module).

* ``scalar``: ``scalar.py``, a scalar chain and a Horner polynomial (per-operation overhead);
* ``elementwise``: ``elementwise.py``, a mixed elementwise expression and Rosenbrock;
* ``mlp``: ``mlp.py``, one training step of two multilayer perceptrons;
* ``gmm``: ``gmm.py``, ADBench's Gaussian mixture model objective;
* ``ba``: ``ba.py``, ADBench's bundle adjustment objective;
* ``ops``: ``array_ops.py``, elementwise, matmul and indexing kernels;
* ``linalg``: ``linalg.py``, value and gradient of slogdet, solve and cholesky at n = 500;
* ``higher``: ``higher.py``, a Hessian-vector product against one gradient (Rosenbrock at
  n = 10^5, the MLP's flattened parameters) and the Hessian of Rosenbrock at n = 100;
* ``compile``: ``startup.py``, start-up cost (import, first backward, first replay) in a
  fresh process.

Each module defines ``WORKLOAD`` (its ``--only`` name) and ``cases(quick)``, a list of
``Case``, ``MetricsCase`` or ``FunctionsCase`` (``bench/case.py``).  ``MODULES`` lists them
in the order a run takes them; ``load`` imports one (``bench/runner.py`` loads them all, a
memory process, ``bench/memory.py``, only its own).
"""
from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {"scalar": "scalar", "elementwise": "elementwise", "mlp": "mlp", "gmm": "gmm",
           "ba": "ba", "ops": "array_ops", "linalg": "linalg", "higher": "higher",
           "compile": "startup"}


def load(name: str) -> ModuleType:
    """The workload module whose ``--only`` name is ``name`` (KeyError if there is none)."""
    if name not in MODULES:
        raise KeyError(f"no workload {name!r}; choose from {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{MODULES[name]}")
