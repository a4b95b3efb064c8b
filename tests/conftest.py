"""Hypothesis profiles for the test suite, selected by the environment variable
``HYPOTHESIS_PROFILE``:

* ``default`` (when unset): quick local runs, 25 examples per property;
* ``ci``: 150 examples, derandomized (the same examples on every run, so a failure
  reproduces on any machine), failing examples printed as reproducible blobs.

Both profiles disable the per-example deadline: the first example of a run may compile or
load Numba kernels, which takes seconds.  Tests that pass their own ``@settings(...)``
keep those values and take the rest (derandomize, deadline, ...) from the active profile.

    HYPOTHESIS_PROFILE=ci python -m pytest
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
