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


def test_gaussian_process_example():
    pytest.importorskip("scipy")
    from helpers import numerical_grad

    ns: dict = {}
    exec(compile(_block("def gp_loss(log_params, X, y):"), "README.md", "exec"), ns)
    fit, gp, gp_loss = ns["fit"], ns["gp"], ns["gp_loss"]
    assert fit.success and gp.recordings == 1 and gp.replays >= 5
    np.testing.assert_allclose(np.exp(fit.x), [0.93, 1.08, 0.12], atol=0.01)  # as printed
    # the gradient the optimiser used, against central differences of the same NumPy code
    p = np.array([0.3, -0.2, -1.0])
    value, grad = gp(p, ns["X"], ns["y"])
    fd = numerical_grad(lambda q: float(gp_loss(q, ns["X"], ns["y"])), [p])[0]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_higher_order_examples():
    ns: dict = {}
    exec(compile(_block("td.hvp(f, x, v)"), "README.md", "exec"), ns)
    td_, x, v, f = ns["td"], ns["x"], ns["v"], ns["f"]
    np.testing.assert_allclose(td_.jvp(lambda x: x ** 3, (x,), (v,))[1], [3.0, 12.0])
    np.testing.assert_allclose(ns["f_vjp"](np.array([1.0, 10.0]))[0], [2.0, 40.0])
    value, hv = td_.hvp(f, x, v)
    assert value == 9.0
    np.testing.assert_allclose(hv, [6.0, 12.0])
    np.testing.assert_allclose(td_.jacobian(lambda x: x ** 2)(x), [[2.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(td_.hessian(f)(x), [[6.0, 0.0], [0.0, 12.0]])
    assert td_.grad(td_.grad(lambda x: x ** 3))(2.0) == 12.0
    assert td_.grad(lambda x: x * td_.grad(lambda y: x * y)(2.0))(1.5) == 3.0
    ns = {}
    exec(compile(_block("penalty = (w.grad ** 2).sum()"), "README.md", "exec"), ns)
    np.testing.assert_allclose(ns["w"].grad.numpy(), [36.0, 288.0])


def test_trust_ncg_example():
    pytest.importorskip("scipy")
    ns: dict = {}
    exec(compile(_block('method="trust-ncg"'), "README.md", "exec"), ns)
    res = ns["res"]
    assert res.success and np.allclose(res.x, 1.0)
