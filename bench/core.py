"""The core figures: scalar recording and sweep, Horner, Rosenbrock, compile time.

``python -m bench.core`` predates the runner; it now runs the runner's ``scalar``,
``elementwise`` (Rosenbrock at 10^6 is there) and ``compile`` workloads, with any further
runner options (``--quick``, ``--json`` ...).  ``python -m bench --only scalar,elementwise,compile``
is the same thing.
"""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main(["--only", "scalar,elementwise,compile", *sys.argv[1:]]))
