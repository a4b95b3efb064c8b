"""The README's examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if marker in block:
            return block
    raise AssertionError(f"no README code block contains {marker!r}")


def test_checking_gradients_example_is_a_working_test_file():
    ns: dict = {}
    exec(compile(_block("# test_my_model.py"), "README.md", "exec"), ns)
    tests = [v for k, v in ns.items() if k.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_gradcheck_example():
    ns: dict = {}
    code = _block("gradcheck(lambda x, y: td.sin(x) * y, (x, y))")
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["gradcheck"](lambda x, y: ns["td"].sin(x) * y, (ns["x"], ns["y"]))
    assert not ns["gradcheck"](lambda x: x.detach() * x, ns["x"], raise_exception=False)


def test_tour():
    ns: dict = {}
    exec(compile(_block("x.grad                      # tensor([2., 2., 2.])"), "README.md",
                 "exec"), ns)
    assert repr(ns["x"].grad) == "tensor([2., 2., 2.])"
    assert ns["w"].grad is None


def test_replay_with_scipy_example():
    pytest.importorskip("scipy")
    ns: dict = {}
    exec(compile(_block("scipy.optimize.minimize(fg"), "README.md", "exec"), ns)
    res, fg = ns["res"], ns["fg"]
    assert res.success and np.abs(res.x - 1.0).max() < 1e-4
    assert fg.recordings == 1 and fg.replays == res.nfev - 1
